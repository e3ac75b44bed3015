//! `medrelay plan` and `medrelay explain`: what will be sent when, and why.
//!
//! Both print each step's due time in the appointment's local time, why it was scheduled then (its
//! offset, a quiet-hours move), and what became of it: sent (with the WhatsApp status), withdrawn,
//! dropped, skipped or failed, with the recorded reason. Rendered text is masked unless `--show-phi`
//! is given on a terminal; reasons never contain patient data.

use std::io::IsTerminal;
use std::path::Path;

use clap::Args;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use medrelay_mapping::consent::Purpose;
use medrelay_mapping::model::EhrConsent;
use medrelay_mapping::template::render_parameters;
use medrelay_pipeline::store::Store;
use serde_json::json;

use super::load_config;
use crate::config::Loaded;
use crate::wiring::open_store;
use crate::{Failure, Output, exit};

/// Arguments of `medrelay explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Appointment: `connector/filler-id` or just the filler id.
    pub appointment: String,
}

/// Arguments of `medrelay plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// One appointment: `connector/filler-id` or the filler id.
    #[arg(long, conflicts_with = "date")]
    pub appointment: Option<String>,
    /// Every appointment starting on this local date (YYYY-MM-DD).
    #[arg(long)]
    pub date: Option<Date>,
    /// Show patient data in the rendered text (only allowed on a terminal).
    #[arg(long)]
    pub show_phi: bool,
}

fn mask(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => format!("{first}{}", "*".repeat(c.count().min(6))),
        None => String::new(),
    }
}

fn local(t: Timestamp, zone: &str) -> String {
    let tz = TimeZone::get(zone).unwrap_or(TimeZone::UTC);
    t.to_zoned(tz).strftime("%Y-%m-%d %H:%M %Z").to_string()
}

async fn describe(
    store: &Store,
    loaded: &Loaded,
    id: i64,
    show_phi: bool,
    o: &mut Output<'_>,
) -> anyhow::Result<()> {
    let Some(rec) = store.load_appointment(id).await? else {
        return Ok(());
    };
    let a = &rec.appointment;
    let steps = store.steps_of(id).await?;
    let mut consent = Vec::new();
    for purpose in [Purpose::Logistics, Purpose::FollowUp] {
        let d = store
            .consent_decision(&rec, purpose, loaded.compiled.opt_in_required)
            .await?;
        consent.push((purpose.as_str(), d.permits(), d.reason()));
    }
    let site = loaded.compiled.sites.get(&a.site);
    let rendered: Vec<(String, String)> = steps
        .iter()
        .map(|s| {
            // The template the step was planned with (a move's step name carries its number).
            let text = loaded
                .compiled
                .templates
                .get(&s.template)
                .zip(site)
                .and_then(|(t, site)| {
                    let params = render_parameters(&t.body, a, &site.facts).ok()?;
                    // PHI: read only to mask it in the rendered text unless --show-phi.
                    #[allow(clippy::disallowed_methods)]
                    let given = a.patient.given_name.as_ref().map(|g| g.expose().clone());
                    let params: Vec<String> = params
                        .into_iter()
                        .map(|p| match &given {
                            Some(g) if !show_phi && p == *g => mask(&p),
                            _ => p,
                        })
                        .collect();
                    Some(format!("{}({})", t.name, params.join(" | ")))
                })
                .unwrap_or_default();
            (s.step.clone(), text)
        })
        .collect();
    let feeds = store.feeds_of(id).await?;
    let ignored = store
        .ignored_events(Some((&a.key.source, &a.key.id)), 20)
        .await?;
    if o.json {
        o.json(&json!({
            "appointment": a.key.to_string(),
            "feeds": feeds,
            "status": a.status.as_str(),
            "start": a.start,
            "time_zone": a.time_zone,
            "phone": if rec.contact_hash.is_some() { "usable" } else { "unusable" },
            "phone_problem": rec.phone_problem,
            "contact": rec.contact_hash,
            "consent": consent.iter().map(|(p, ok, r)| json!({"purpose": p, "permitted": ok, "reason": r})).collect::<Vec<_>>(),
            "ehr_privacy": {
                "consent": a.ehr_consent.map(|c| match c { EhrConsent::OptIn => "opt_in", EhrConsent::OptOut => "opt_out" }),
                "consent_since": a.ehr_consent.map(|_| rec.ehr_consent_at),
                "consent_feed": rec.ehr_consent_feed,
                "protected": a.patient.protected == Some(true),
                "protected_feed": rec.protected_feed,
            },
            "steps": serde_json::to_value(&steps)?,
            "ignored_events": serde_json::to_value(&ignored)?,
        }));
        return Ok(());
    }
    o.line(format!(
        "{}  {}  starts {}",
        a.key,
        a.status.as_str(),
        local(a.start, &a.time_zone)
    ));
    if !feeds.is_empty() {
        o.line(format!("  listed by {}", feeds.join(", ")));
    }
    match (&rec.contact_hash, &rec.phone_problem) {
        (Some(h), _) => o.line(format!("  contact {h}")),
        (None, p) => o.line(format!(
            "  no usable phone: {}",
            p.as_deref().unwrap_or("none on record")
        )),
    }
    for (p, ok, reason) in &consent {
        o.line(format!(
            "  consent {p}: {} ({reason})",
            if *ok { "permitted" } else { "denied" }
        ));
    }
    // Where the EHR's own signals came from: one system can have CSV, HL7 and FHIR feeds.
    if let Some(c) = a.ehr_consent {
        o.line(format!(
            "  EHR {} since {}, from feed {}",
            match c {
                EhrConsent::OptIn => "opt-in",
                EhrConsent::OptOut => "opt-out",
            },
            local(rec.ehr_consent_at, &a.time_zone),
            rec.ehr_consent_feed
                .as_deref()
                .unwrap_or("(before feeds were recorded)")
        ));
    }
    if a.patient.protected == Some(true) {
        o.line(format!(
            "  EHR protection flag set by feed {}",
            rec.protected_feed
                .as_deref()
                .unwrap_or("(before feeds were recorded)")
        ));
    }
    // Events that changed nothing although they differed: said as such, never as "unchanged".
    for i in &ignored {
        o.line(format!(
            "  ignored: a {} event from feed {} ({}, version {}) is older than the stored {} (version {}): older, ignored",
            i.status,
            i.feed,
            i.raw_ref,
            local(i.version_at, &a.time_zone),
            i.stored_status.as_deref().unwrap_or("appointment"),
            i.stored_version_at
                .map_or("-".to_string(), |t| local(t, &a.time_zone)),
        ));
    }
    if steps.is_empty() {
        o.line("  no steps planned (the appointment is not booked, or planning has not run yet)");
    }
    for (s, (_, text)) in steps.iter().zip(&rendered) {
        let mut line = format!(
            "  {:<22} {:<9} due {}",
            s.step,
            s.state,
            local(s.due, &a.time_zone)
        );
        if s.slot_start != a.start {
            line.push_str(&format!(
                " (for the old slot {})",
                local(s.slot_start, &a.time_zone)
            ));
        }
        o.line(line);
        // Why it was scheduled when it is (and moved, for quiet hours)...
        if let Some(n) = &s.plan_note {
            o.line(format!("      scheduled: {n}"));
        }
        // ...and what became of it.
        match (s.state.as_str(), &s.reason) {
            ("sent", _) => {
                let mut l = format!(
                    "      sent: {}",
                    s.sent_at.map_or("-".into(), |t| local(t, &a.time_zone))
                );
                if let Some(m) = &s.message_status {
                    l.push_str(&format!(", WhatsApp: {m}"));
                }
                if let Some(c) = s.error_code {
                    l.push_str(&format!(" (error {c})"));
                }
                o.line(l);
            }
            ("pending" | "sending", Some(r)) => o.line(format!(
                "      retrying ({} attempt(s) so far): {r}",
                s.attempts
            )),
            (_, Some(r)) => o.line(format!("      {}: {r}", s.state)),
            _ => {}
        }
        if s.state == "pending" && !text.is_empty() {
            o.line(format!("      text: {text}"));
        }
    }
    Ok(())
}

/// Resolves `connector/filler-id` (or `system/filler-id`, or a filler id alone) to a stored
/// appointment. Appointments are keyed by system, so a connector name is translated to its system:
/// `legacy/50002` finds the appointment `openemr/50002` when both carry OpenEMR ids.
async fn find(store: &Store, loaded: &Loaded, reference: &str) -> anyhow::Result<Option<i64>> {
    if let Some((prefix, id)) = reference.split_once('/') {
        let system = loaded.system_of(prefix);
        if system != prefix
            && let Some(found) = store.find_appointment(&format!("{system}/{id}")).await?
        {
            return Ok(Some(found));
        }
    }
    Ok(store.find_appointment(reference).await?)
}

/// `medrelay explain ID`.
pub async fn explain(config: &Path, args: ExplainArgs, o: &mut Output<'_>) -> anyhow::Result<u8> {
    let loaded = load_config(config)?;
    let store = open_store(&loaded).await?;
    let Some(id) = find(&store, &loaded, &args.appointment).await? else {
        return Err(Failure::usage(format!(
            "no appointment `{}`",
            args.appointment
        )));
    };
    describe(&store, &loaded, id, false, o).await?;
    store.close().await;
    Ok(exit::OK)
}

/// `medrelay plan`.
pub async fn plan(config: &Path, args: PlanArgs, o: &mut Output<'_>) -> anyhow::Result<u8> {
    if args.show_phi && !std::io::stdout().is_terminal() {
        return Err(Failure::usage(
            "--show-phi is only allowed when output goes to a terminal",
        ));
    }
    let loaded = load_config(config)?;
    let store = open_store(&loaded).await?;
    let ids = match (&args.appointment, args.date) {
        (Some(a), _) => match find(&store, &loaded, a).await? {
            Some(id) => vec![id],
            None => return Err(Failure::usage(format!("no appointment `{a}`"))),
        },
        (None, Some(d)) => {
            // Local dates differ per site: take a wide UTC window, then keep the local-date matches.
            let from = d.to_zoned(TimeZone::UTC)?.timestamp() - SignedDuration::from_hours(14);
            let to = from + SignedDuration::from_hours(14 + 24 + 14);
            let mut ids = Vec::new();
            for id in store.appointments_between(from, to).await? {
                if let Some(rec) = store.load_appointment(id).await? {
                    let tz = TimeZone::get(&rec.appointment.time_zone).unwrap_or(TimeZone::UTC);
                    if rec.appointment.start.to_zoned(tz).date() == d {
                        ids.push(id);
                    }
                }
            }
            ids
        }
        (None, None) => {
            return Err(Failure::usage("give --appointment ID or --date YYYY-MM-DD"));
        }
    };
    for id in &ids {
        describe(&store, &loaded, *id, args.show_phi, o).await?;
    }
    if let (None, Some(d)) = (&args.appointment, args.date) {
        messaging_need(&store, &loaded, d, o).await?;
    }
    store.close().await;
    Ok(exit::OK)
}

/// What the day asks of WhatsApp's messaging limit: pending steps due that day (in the first
/// site's zone) and their distinct recipients, against the limit in force (as WhatsApp stated it,
/// else `[whatsapp] messaging_limit`). Recipients who write first (an open service window) and
/// those already counted in the moving 24 h cost less; the figure is the most the day can need.
async fn messaging_need(
    store: &medrelay_pipeline::store::Store,
    loaded: &crate::config::Loaded,
    date: jiff::civil::Date,
    o: &mut Output<'_>,
) -> anyhow::Result<()> {
    let zone_name = loaded
        .config
        .sites
        .values()
        .next()
        .map_or("UTC", |s| s.time_zone.as_str());
    let zone = TimeZone::get(zone_name).unwrap_or(TimeZone::UTC);
    let from = date.to_zoned(zone.clone())?.timestamp();
    let until = date.tomorrow()?.to_zoned(zone)?.timestamp();
    let (jobs, recipients) = store.pending_need(from, until).await?;
    let reported = store.reported_messaging_limit().await?;
    let (limit, source) = match &reported {
        Some(r) => (r.limit, format!("as WhatsApp stated it ({})", r.source)),
        None => (
            loaded.config.whatsapp.messaging_limit,
            "whatsapp.messaging_limit".to_owned(),
        ),
    };
    let verdict = match limit {
        None => "no messaging limit applies".to_owned(),
        Some(l) if recipients as u64 > u64::from(l) => format!(
            "OVER the limit of {l} ({source}): {} recipients would wait for the moving window, by lane",
            recipients as u64 - u64::from(l)
        ),
        Some(l) if recipients as u64 * 5 > u64::from(l) * 4 => format!(
            "within the limit of {l} ({source}), above 80 %: the messaging_limit alert will fire"
        ),
        Some(l) => format!("within the limit of {l} ({source})"),
    };
    if o.json {
        o.json(&serde_json::json!({
            "date": date.to_string(), "zone": zone_name, "pending_steps": jobs,
            "recipients": recipients, "messaging_limit": limit,
        }));
    } else {
        o.line(format!(
            "messaging limit on {date} ({zone_name}): {jobs} pending step(s) to {recipients} recipient(s); {verdict}"
        ));
    }
    Ok(())
}
