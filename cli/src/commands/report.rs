//! `medrelay report`: the KPI report for appointments starting in a period (definitions in
//! README.md, "The KPI report"). Counts and rates only: no patient appears in it.

use std::path::Path;

use clap::{Args, ValueEnum};
use jiff::Timestamp;
use medrelay_pipeline::store::report::{KpiRow, ReportGroup};

use super::load_config;
use crate::wiring::open_store;
use crate::{Failure, Output, exit};

/// What rows the report has.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ByArg {
    All,
    Site,
    Practitioner,
    /// The EHR's appointment type (it can reveal a condition: share the output accordingly).
    ServiceType,
    /// The first template each appointment got (its messages all count there).
    Template,
}

/// How it is printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Table,
    Csv,
    Json,
}

/// Arguments of `medrelay report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// First instant of the period (RFC 3339); appointments starting from then.
    #[arg(long)]
    pub from: Timestamp,
    /// End of the period (RFC 3339, exclusive).
    #[arg(long)]
    pub to: Timestamp,
    #[arg(long, value_enum, default_value = "all")]
    pub by: ByArg,
    #[arg(long, value_enum, default_value = "table")]
    pub format: FormatArg,
}

fn pct(r: Option<f64>) -> String {
    r.map_or("-".into(), |r| format!("{:.1} %", r * 100.0))
}

fn secs(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{s:.0} s"))
}

const CSV_HEADER: [&str; 43] = [
    "group",
    "appointments",
    "messaged",
    "messages_sent",
    "messages_delivered",
    "messages_read",
    "messages_failed",
    "confirmed",
    "cancelled_via_whatsapp",
    "reschedule_requests",
    "confirmation_rate",
    "opt_outs",
    "opt_out_rate",
    "reminded",
    "no_show_reminded",
    "no_show_rate_reminded",
    "not_messaged",
    "no_show_not_messaged",
    "no_show_rate_not_messaged",
    "reply_seconds_median",
    "reply_seconds_p90",
    "billable_messages",
    "currency",
    "cost",
    "cost_utility",
    "cost_marketing",
    "cost_authentication",
    "cost_service",
    "unpriced_billable",
    "cost_per_confirmed",
    "inbox_conversations",
    "staff_reply_seconds_median",
    "staff_reply_seconds_p90",
    "surveys_sent",
    "surveys_answered",
    "survey_good",
    "survey_ok",
    "survey_poor",
    "survey_response_rate",
    "nps_responses",
    "nps",
    "survey_low",
    "survey_low_rate",
];

fn csv_line(r: &KpiRow, currency: &str) -> Vec<String> {
    let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.4}"));
    let by = |c: &str| {
        f(r.cost
            .map(|_| r.cost_by_category.get(c).copied().unwrap_or(0.0)))
    };
    vec![
        r.group.clone(),
        r.appointments.to_string(),
        r.messaged.to_string(),
        r.messages_sent.to_string(),
        r.messages_delivered.to_string(),
        r.messages_read.to_string(),
        r.messages_failed.to_string(),
        r.confirmed.to_string(),
        r.cancelled_via_whatsapp.to_string(),
        r.reschedule_requests.to_string(),
        f(r.confirmation_rate),
        r.opt_outs.to_string(),
        f(r.opt_out_rate),
        r.reminded.to_string(),
        r.no_show_reminded.to_string(),
        f(r.no_show_rate_reminded),
        r.not_messaged.to_string(),
        r.no_show_not_messaged.to_string(),
        f(r.no_show_rate_not_messaged),
        f(r.reply_seconds_median),
        f(r.reply_seconds_p90),
        r.billable_messages.to_string(),
        currency.to_string(),
        f(r.cost),
        by("utility"),
        by("marketing"),
        by("authentication"),
        by("service"),
        r.unpriced_billable.to_string(),
        f(r.cost_per_confirmed),
        r.inbox_conversations.to_string(),
        f(r.staff_reply_seconds_median),
        f(r.staff_reply_seconds_p90),
        r.surveys_sent.to_string(),
        r.surveys_answered.to_string(),
        r.survey_good.to_string(),
        r.survey_ok.to_string(),
        r.survey_poor.to_string(),
        f(r.survey_response_rate),
        r.nps_responses.to_string(),
        f(r.nps),
        r.survey_low.to_string(),
        f((r.surveys_answered > 0).then(|| r.survey_low as f64 / r.surveys_answered as f64)),
    ]
}

/// Runs `medrelay report`.
pub async fn run(config: &Path, args: ReportArgs, o: &mut Output<'_>) -> anyhow::Result<u8> {
    if args.to <= args.from {
        return Err(Failure::usage("--to must be after --from"));
    }
    let loaded = load_config(config)?;
    let store = open_store(&loaded).await?;
    let by = match args.by {
        ByArg::All => ReportGroup::All,
        ByArg::Site => ReportGroup::Site,
        ByArg::Practitioner => ReportGroup::Practitioner,
        ByArg::ServiceType => ReportGroup::ServiceType,
        ByArg::Template => ReportGroup::Template,
    };
    let rates = loaded.config.costs.as_ref();
    let currency = rates.map_or("", |r| r.currency.as_str());
    let rows = store.kpi_report(args.from, args.to, by, rates).await?;
    store.close().await;
    let format = if o.json { FormatArg::Json } else { args.format };
    match format {
        FormatArg::Json => o.json(&serde_json::json!({
            "from": args.from, "to": args.to, "currency": rates.map(|r| &r.currency), "rows": rows,
        })),
        FormatArg::Csv => {
            let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
            w.write_record(CSV_HEADER)?;
            for r in &rows {
                w.write_record(csv_line(r, currency))?;
            }
            let text = String::from_utf8(w.into_inner()?)?;
            for line in text.lines() {
                o.line(line);
            }
        }
        FormatArg::Table => {
            o.line(format!(
                "appointments starting {} .. {}",
                args.from, args.to
            ));
            if rows.is_empty() {
                o.line("  none");
            }
            for r in &rows {
                o.line(format!("{}:", r.group));
                o.line(format!(
                    "  appointments {}, messaged {} ({} not messaged)",
                    r.appointments, r.messaged, r.not_messaged
                ));
                o.line(format!(
                    "  messages sent {}, delivered {}, read {}, failed {}",
                    r.messages_sent, r.messages_delivered, r.messages_read, r.messages_failed
                ));
                o.line(format!(
                    "  confirmed {} (confirmation rate {}), cancelled via WhatsApp {}, reschedule requests {}",
                    r.confirmed,
                    pct(r.confirmation_rate),
                    r.cancelled_via_whatsapp,
                    r.reschedule_requests
                ));
                o.line(format!(
                    "  opt-outs {} (opt-out rate {})",
                    r.opt_outs,
                    pct(r.opt_out_rate)
                ));
                o.line(format!(
                    "  no-shows: reminded {} of {} ({}), not messaged {} of {} ({})",
                    r.no_show_reminded,
                    r.reminded,
                    pct(r.no_show_rate_reminded),
                    r.no_show_not_messaged,
                    r.not_messaged,
                    pct(r.no_show_rate_not_messaged)
                ));
                o.line(format!(
                    "  reply time to a tap: median {}, p90 {}",
                    secs(r.reply_seconds_median),
                    secs(r.reply_seconds_p90)
                ));
                o.line(format!(
                    "  staff inbox: {} conversation(s), first answer median {}, p90 {}",
                    r.inbox_conversations,
                    secs(r.staff_reply_seconds_median),
                    secs(r.staff_reply_seconds_p90)
                ));
                if r.surveys_sent > 0 || r.surveys_answered > 0 {
                    o.line(format!(
                        "  surveys: sent {}, answered {} ({}): good {}, ok {}, poor {}; NPS {} over {} score(s); {} low, followed up in the inbox",
                        r.surveys_sent,
                        r.surveys_answered,
                        pct(r.survey_response_rate),
                        r.survey_good,
                        r.survey_ok,
                        r.survey_poor,
                        r.nps.map_or("-".into(), |n| format!("{n:+.0}")),
                        r.nps_responses,
                        r.survey_low
                    ));
                }
                let categories: Vec<String> = r
                    .messages_by_category
                    .iter()
                    .map(|(c, n)| format!("{c} {n}"))
                    .collect();
                o.line(format!(
                    "  messages by pricing category: {} ({} billable)",
                    if categories.is_empty() {
                        "-".into()
                    } else {
                        categories.join(", ")
                    },
                    r.billable_messages
                ));
                if let Some(cost) = r.cost {
                    let by: Vec<String> = r
                        .cost_by_category
                        .iter()
                        .map(|(c, v)| format!("{c} {v:.4}"))
                        .collect();
                    o.line(format!(
                        "  cost {cost:.4} {currency} ({}); per confirmed appointment {}{}",
                        if by.is_empty() {
                            "-".into()
                        } else {
                            by.join(", ")
                        },
                        r.cost_per_confirmed
                            .map_or("-".into(), |c| format!("{c:.4} {currency}")),
                        if r.unpriced_billable > 0 {
                            format!(
                                "; {} billable without a price in [costs]",
                                r.unpriced_billable
                            )
                        } else {
                            String::new()
                        }
                    ));
                }
            }
        }
    }
    Ok(exit::OK)
}
