//! Pipeline configuration: sites, consent policy, the reminder plan and the templates.
//!
//! Deserialised from the `[sites]`, `[consent]`, `[[plan.steps]]` and `[templates]` tables of
//! `medrelay.toml` (the cli owns the file). [`PipelineConfig::compile`] validates everything without
//! touching the network and produces the [`Compiled`] form the runtime uses; every problem is reported,
//! not just the first.

use std::collections::BTreeMap;

use jiff::SignedDuration;
use jiff::civil::Time;
use jiff::tz::TimeZone;
use medrelay_mapping::plan::{PlanPolicy, QuietHours, StepKind, StepSpec, parse_duration};
use medrelay_mapping::policy::{NEUTRAL_FIELDS, SensitiveAction, SensitivePolicy};
use medrelay_mapping::reply::{Choice, Rating, ReplyAction};
use medrelay_mapping::template::{PhiLevel, SiteFacts, TemplateField};
use serde::Deserialize;

/// One site (a hospital or clinic): its zone, region and message policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// IANA zone, e.g. `America/Sao_Paulo`.
    pub time_zone: String,
    /// ISO 3166 region used to read national phone numbers, e.g. `BR`.
    pub default_region: String,
    /// Public phone number of the site (renderable as `site_phone`).
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default = "default_date_format")]
    pub date_format: String,
    #[serde(default = "default_time_format")]
    pub time_format: String,
    /// How much a message may reveal.
    #[serde(default)]
    pub phi_level: PhiLevel,
    /// Local quiet hours such as `21:00-08:00`.
    #[serde(default)]
    pub quiet_hours: Option<String>,
    /// Reminders arriving closer than this to the start are dropped (default `30m`).
    #[serde(default = "default_min_lead")]
    pub min_lead: String,
    /// WhatsApp template languages to try when the patient's language has no template (in order).
    #[serde(default = "default_languages")]
    pub fallback_languages: Vec<String>,
    /// When staff answer the inbox, local time, e.g. `Mon-Fri 08:00-18:00; Sat 09:00-12:00`:
    /// the reply SLA runs only then. Unset: every hour counts.
    #[serde(default)]
    pub opening_hours: Option<String>,
    /// How soon staff answer a patient's message in the inbox (opening time), default `60m`.
    #[serde(default = "default_reply_sla")]
    pub reply_sla: String,
}

fn default_reply_sla() -> String {
    "60m".into()
}

fn default_date_format() -> String {
    "%d/%m/%Y".into()
}
fn default_time_format() -> String {
    "%H:%M".into()
}
fn default_min_lead() -> String {
    "30m".into()
}
fn default_languages() -> Vec<String> {
    vec!["en_US".into()]
}

/// Consent policy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// No recorded opt-in means no message (the default, as GDPR/LGPD and Meta expect).
    #[serde(default = "yes")]
    pub opt_in_required: bool,
}

fn yes() -> bool {
    true
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            opt_in_required: true,
        }
    }
}

/// One step of the reminder plan.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Unique name; part of each message's idempotency key, so renaming a step re-sends it.
    pub name: String,
    /// `confirmation`, `reminder`, `follow_up` or `no_show`.
    pub kind: StepKind,
    /// `48h` before the start for reminders, after the end for follow-ups and no-show follow-ups.
    #[serde(default)]
    pub offset: Option<String>,
    /// Key into `[templates]`.
    pub template: String,
    /// Only for these sites (names in `[sites]`); empty or absent: every site.
    #[serde(default)]
    pub sites: Vec<String>,
    /// Only for these appointment (service) types, matched case-insensitively; empty or absent:
    /// every type. Lets a clinic send, say, a fasting reminder only for lab visits.
    #[serde(default)]
    pub service_types: Vec<String>,
}

/// The reminder plan.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Every step any appointment may get; per-site and per-type filters narrow each one.
    pub steps: Vec<StepConfig>,
}

/// A WhatsApp template as approved in the WhatsApp Business Account.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    /// The template name in WhatsApp Manager.
    pub name: String,
    /// Languages it is approved in (`en_US`, `pt_BR`, `es`).
    pub languages: Vec<String>,
    /// Body parameters, in order, from the allow-list.
    #[serde(default)]
    pub body: Vec<String>,
    /// Parameter names when the template uses `parameter_format: NAMED` (same order as `body`).
    #[serde(default)]
    pub parameter_names: Option<Vec<String>>,
    /// The one parameter of a TEXT header (`{{1}}` in the header text), from the same allow-list as
    /// the body; absent when the header is fixed text or there is none.
    #[serde(default)]
    pub header: Option<String>,
    /// The header parameter's name when the template uses `parameter_format: NAMED`.
    #[serde(default)]
    pub header_parameter_name: Option<String>,
    /// Quick-reply buttons, in order: `confirm`, `reschedule`, `cancel`; for a survey template
    /// the ratings `good`, `ok`, `poor`.
    #[serde(default)]
    pub buttons: Vec<Choice>,
    /// The template's `message_send_ttl_seconds` in WhatsApp Manager (`1h`; utility templates allow
    /// 30 s to 12 h). WhatsApp drops a message it could not deliver within it, so a reminder held up
    /// by an outage on Meta's side cannot arrive after the appointment. `medrelay templates check`
    /// compares it with the registry.
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Texts medrelay itself sends inside the 24 h service window (never template-only content):
/// the defaults, and the same texts per WhatsApp language (`[reply_texts.languages.pt_BR]`, every
/// text required), chosen from the patient's language with the site's fallbacks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyTexts {
    #[serde(default = "default_stale")]
    pub stale: String,
    #[serde(default = "default_emergency")]
    pub emergency: String,
    #[serde(default = "default_stopped")]
    pub stopped: String,
    #[serde(default = "default_started")]
    pub started: String,
    /// When a patient's message opens an inbox conversation in opening hours; `{within}` is
    /// the site's reply SLA ("60 minutes"). Empty: no acknowledgement.
    #[serde(default = "default_acknowledgement")]
    pub acknowledgement: String,
    /// The same outside the site's opening hours. Empty: no acknowledgement.
    #[serde(default = "default_out_of_hours")]
    pub out_of_hours: String,
    /// After a survey rating: the 0-10 question, the body of a list message.
    #[serde(default = "default_survey_score")]
    pub survey_score: String,
    /// The list's button (at most 20 characters).
    #[serde(default = "default_survey_score_button")]
    pub survey_score_button: String,
    /// After the score: asking for a comment.
    #[serde(default = "default_survey_comment")]
    pub survey_comment: String,
    /// When the survey is over.
    #[serde(default = "default_survey_thanks")]
    pub survey_thanks: String,
    /// The language of the texts above (default `en`).
    #[serde(default = "default_texts_language")]
    pub language: String,
    /// The texts in other languages, by WhatsApp language code (`pt_BR`) or language (`pt`).
    #[serde(default)]
    pub languages: BTreeMap<String, LanguageTexts>,
}

fn default_texts_language() -> String {
    "en".into()
}

/// Every reply text in one language (all required: a language with a missing text is refused
/// when the configuration is read).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanguageTexts {
    pub stale: String,
    pub emergency: String,
    pub stopped: String,
    pub started: String,
    pub acknowledgement: String,
    pub out_of_hours: String,
    pub survey_score: String,
    pub survey_score_button: String,
    pub survey_comment: String,
    pub survey_thanks: String,
}

/// The texts chosen for one patient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Texts<'a> {
    pub stale: &'a str,
    pub emergency: &'a str,
    pub stopped: &'a str,
    pub started: &'a str,
    pub acknowledgement: &'a str,
    pub out_of_hours: &'a str,
    pub survey_score: &'a str,
    pub survey_score_button: &'a str,
    pub survey_comment: &'a str,
    pub survey_thanks: &'a str,
}

impl ReplyTexts {
    /// The texts for a patient whose language is `language` (a WhatsApp code such as `pt_BR`,
    /// or a bare `pt`), then the site's `fallbacks` in order, then the defaults. A code matches
    /// exactly, else by its language part.
    pub fn for_language(&self, language: Option<&str>, fallbacks: &[String]) -> Texts<'_> {
        let find = |code: &str| {
            let code = code.replace('-', "_");
            self.languages.get(&code).or_else(|| {
                let lang = code.split('_').next().unwrap_or(&code).to_ascii_lowercase();
                self.languages
                    .iter()
                    .find(|(k, _)| k.split('_').next().unwrap_or(k).eq_ignore_ascii_case(&lang))
                    .map(|(_, v)| v)
            })
        };
        let lang_of = |code: &str| {
            code.replace('-', "_")
                .split('_')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase()
        };
        let chosen = language
            .into_iter()
            .chain(fallbacks.iter().map(String::as_str))
            .find_map(|code| {
                if lang_of(code) == lang_of(&self.language) {
                    Some(None)
                } else {
                    find(code).map(Some)
                }
            })
            .flatten();
        match chosen {
            Some(t) => Texts {
                stale: &t.stale,
                emergency: &t.emergency,
                stopped: &t.stopped,
                started: &t.started,
                acknowledgement: &t.acknowledgement,
                out_of_hours: &t.out_of_hours,
                survey_score: &t.survey_score,
                survey_score_button: &t.survey_score_button,
                survey_comment: &t.survey_comment,
                survey_thanks: &t.survey_thanks,
            },
            None => Texts {
                stale: &self.stale,
                emergency: &self.emergency,
                stopped: &self.stopped,
                started: &self.started,
                acknowledgement: &self.acknowledgement,
                out_of_hours: &self.out_of_hours,
                survey_score: &self.survey_score,
                survey_score_button: &self.survey_score_button,
                survey_comment: &self.survey_comment,
                survey_thanks: &self.survey_thanks,
            },
        }
    }
}

fn default_stale() -> String {
    "This appointment has changed since that message. Please check your latest message from us or call the clinic.".into()
}
fn default_emergency() -> String {
    "If this is an emergency, call your local emergency number now. This chat is not monitored for emergencies.".into()
}
fn default_stopped() -> String {
    "You will no longer receive appointment messages on WhatsApp. Reply START to receive them again.".into()
}
fn default_started() -> String {
    "You will receive appointment messages on WhatsApp again. Reply STOP to stop.".into()
}
fn default_acknowledgement() -> String {
    "Thank you for your message. A person from the clinic will answer here within {within}.".into()
}
fn default_out_of_hours() -> String {
    "Thank you for your message. The clinic is closed now; a person will answer here when it opens."
        .into()
}

fn default_survey_score() -> String {
    "Thank you! How likely are you to recommend us to a friend or family member? Choose from 0 (not at all likely) to 10 (extremely likely), or type the number.".into()
}
fn default_survey_score_button() -> String {
    "Choose a score".into()
}
fn default_survey_comment() -> String {
    "Thank you. Is there anything you would like to tell us about your visit? Just write it here."
        .into()
}
fn default_survey_thanks() -> String {
    "Thank you for your feedback.".into()
}

impl Default for ReplyTexts {
    fn default() -> Self {
        ReplyTexts {
            stale: default_stale(),
            emergency: default_emergency(),
            stopped: default_stopped(),
            started: default_started(),
            acknowledgement: default_acknowledgement(),
            out_of_hours: default_out_of_hours(),
            survey_score: default_survey_score(),
            survey_score_button: default_survey_score_button(),
            survey_comment: default_survey_comment(),
            survey_thanks: default_survey_thanks(),
            language: default_texts_language(),
            languages: BTreeMap::new(),
        }
    }
}

/// Everything the pipeline needs from `medrelay.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub sites: BTreeMap<String, SiteConfig>,
    #[serde(default)]
    pub consent: ConsentConfig,
    pub plan: PlanConfig,
    pub templates: BTreeMap<String, TemplateConfig>,
    #[serde(default)]
    pub reply_texts: ReplyTexts,
    /// Sensitive services: no message, or only a neutral template.
    #[serde(default)]
    pub sensitive: SensitivePolicy,
    /// Post-visit surveys: what is asked after the rating, and what counts as a low score.
    #[serde(default)]
    pub survey: SurveyConfig,
}

/// `[survey]`: what follows a patient's rating of a visit (the survey step's template buttons).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SurveyConfig {
    /// After the rating, ask "how likely are you to recommend us" with a 0-10 list (NPS).
    #[serde(default = "yes")]
    pub score: bool,
    /// Then ask for a comment in the patient's own words.
    #[serde(default = "yes")]
    pub comment: bool,
    /// A rating at or below this one is low (default `poor`).
    #[serde(default = "default_low_rating")]
    pub low_rating: Rating,
    /// A score at or below this one is low (default 6: the NPS detractors).
    #[serde(default = "default_low_score")]
    pub low_score: u8,
    /// How long the patient has to answer the score or comment question (default `24h`, the
    /// customer service window the rating opened).
    #[serde(default = "default_answer_within")]
    pub answer_within: String,
}

fn default_low_rating() -> Rating {
    Rating::Poor
}
fn default_low_score() -> u8 {
    6
}
fn default_answer_within() -> String {
    "24h".into()
}

impl Default for SurveyConfig {
    fn default() -> Self {
        SurveyConfig {
            score: true,
            comment: true,
            low_rating: default_low_rating(),
            low_score: default_low_score(),
            answer_within: default_answer_within(),
        }
    }
}

impl SurveyConfig {
    /// How long a score or comment question stays open (`answer_within`, at most 24 h: after
    /// that WhatsApp would not deliver the thank-you).
    pub fn answer_window(&self) -> SignedDuration {
        parse_duration(&self.answer_within)
            .filter(|d| d.is_positive())
            .unwrap_or(SignedDuration::from_hours(24))
            .min(SignedDuration::from_hours(24))
    }
}

/// A site, validated.
#[derive(Clone, Debug)]
pub struct CompiledSite {
    pub name: String,
    pub zone: TimeZone,
    pub time_zone: String,
    pub default_region: String,
    pub facts: SiteFacts,
    pub phi_level: PhiLevel,
    pub plan_policy: PlanPolicy,
    pub fallback_languages: Vec<String>,
    /// `opening_hours`, parsed.
    pub opening_hours: Option<crate::inbox::OpeningHours>,
    /// `reply_sla`, parsed.
    pub reply_sla: SignedDuration,
}

/// A template, validated against the allow-list.
#[derive(Clone, Debug)]
pub struct CompiledTemplate {
    pub key: String,
    pub name: String,
    pub languages: Vec<String>,
    pub body: Vec<TemplateField>,
    pub parameter_names: Option<Vec<String>>,
    /// The TEXT header's one parameter, if the header has one.
    pub header: Option<TemplateField>,
    /// Its name, for NAMED templates.
    pub header_parameter_name: Option<String>,
    pub buttons: Vec<Choice>,
    /// `message_send_ttl_seconds` expected in the registry.
    pub ttl: Option<SignedDuration>,
}

impl CompiledTemplate {
    /// Picks the template language: the patient's language (`pt-BR` matches `pt_BR`, then `pt`), then
    /// the site's fallback chain, then the template's first language.
    pub fn choose_language(&self, patient: Option<&str>, fallback: &[String]) -> String {
        let normal = |s: &str| s.replace('-', "_").to_ascii_lowercase();
        let has = |want: &str| {
            self.languages
                .iter()
                .find(|l| normal(l) == normal(want))
                .cloned()
        };
        if let Some(p) = patient.filter(|p| !p.trim().is_empty()) {
            if let Some(l) = has(p) {
                return l;
            }
            let base = normal(p).split('_').next().unwrap_or_default().to_string();
            if let Some(l) = self
                .languages
                .iter()
                .find(|l| normal(l) == base || normal(l).starts_with(&format!("{base}_")))
            {
                return l.clone();
            }
        }
        fallback
            .iter()
            .find_map(|f| has(f))
            .unwrap_or_else(|| self.languages[0].clone())
    }
}

/// The validated configuration the runtime uses.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub sites: BTreeMap<String, CompiledSite>,
    pub opt_in_required: bool,
    pub steps: Vec<StepSpec>,
    pub templates: BTreeMap<String, CompiledTemplate>,
    pub reply_texts: ReplyTexts,
    pub sensitive: SensitivePolicy,
    /// What follows a survey rating.
    pub survey: SurveyConfig,
    /// Things that work but deserve a look (shown by `medrelay check`).
    pub warnings: Vec<String>,
    /// WhatsApp's messaging limit of the business portfolio: unique recipients of
    /// business-initiated (template) messages in a moving 24 h (250 for a new portfolio, then
    /// 2,000 / 10,000 / 100,000); `None`: unlimited. Set by the cli from `[whatsapp]`.
    pub messaging_limit: Option<u32>,
    /// What a `template_category_update` moving a configured template away from UTILITY does.
    /// Set by the cli from `[whatsapp] on_recategorised`.
    pub on_recategorised: RecategorisedPolicy,
}

impl Compiled {
    /// A fingerprint of what planning depends on (steps, templates, each site's plan policy):
    /// when it changes, future appointments are planned again (`Store::plan_changed`).
    pub fn plan_fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let policies: Vec<(&String, &PlanPolicy)> = self
            .sites
            .values()
            .map(|s| (&s.name, &s.plan_policy))
            .collect();
        let text = format!("{:?}|{:?}|{:?}", self.steps, self.templates, policies);
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    /// Whether the plan still has the step a job was planned from (`reminder_48h`, or the
    /// numbered announcements of a step, `room_change#2`).
    pub fn has_step(&self, job_step: &str) -> bool {
        let base = job_step.split('#').next().unwrap_or(job_step);
        self.steps.iter().any(|s| s.name == base)
    }
}

/// What happens when WhatsApp recategorises a configured template away from UTILITY (it is then
/// priced as MARKETING, not delivered to +1 numbers, and under other TTL rules).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecategorisedPolicy {
    /// An alert; the template keeps being sent (reminders still reach patients).
    #[default]
    Warn,
    /// An alert, and the template is held (its steps wait) until it is UTILITY again.
    Halt,
}

fn parse_quiet(s: &str) -> Option<QuietHours> {
    let (a, b) = s.split_once('-')?;
    let t = |x: &str| Time::strptime("%H:%M", x.trim()).ok();
    Some(QuietHours {
        start: t(a)?,
        end: t(b)?,
    })
}

impl PipelineConfig {
    /// Validates and compiles. Pure: no network, no files.
    pub fn compile(&self) -> Result<Compiled, Vec<String>> {
        let mut errors = Vec::new();
        let mut sites = BTreeMap::new();
        if self.sites.is_empty() {
            errors.push("at least one [sites.<name>] table is required".to_string());
        }
        let mut levels = Vec::new();
        for (name, s) in &self.sites {
            let zone = match TimeZone::get(&s.time_zone) {
                Ok(z) => z,
                Err(_) => {
                    errors.push(format!(
                        "sites.{name}.time_zone: unknown IANA zone `{}`",
                        s.time_zone
                    ));
                    continue;
                }
            };
            if medrelay_mapping::phone::check_region(&s.default_region).is_err() {
                errors.push(format!(
                    "sites.{name}.default_region: unknown region `{}`",
                    s.default_region
                ));
            }
            let probe = jiff::Timestamp::UNIX_EPOCH.to_zoned(zone.clone());
            for (field, f) in [
                ("date_format", &s.date_format),
                ("time_format", &s.time_format),
            ] {
                if jiff::fmt::strtime::format(f.as_str(), &probe).is_err() {
                    errors.push(format!("sites.{name}.{field}: invalid format `{f}`"));
                }
            }
            let quiet_hours = match &s.quiet_hours {
                None => None,
                Some(q) => match parse_quiet(q) {
                    Some(q) => Some(q),
                    None => {
                        errors.push(format!(
                            "sites.{name}.quiet_hours: expected `HH:MM-HH:MM`, got `{q}`"
                        ));
                        None
                    }
                },
            };
            let min_lead = parse_duration(&s.min_lead).unwrap_or_else(|| {
                errors.push(format!(
                    "sites.{name}.min_lead: expected a duration like `30m`, got `{}`",
                    s.min_lead
                ));
                SignedDuration::from_mins(30)
            });
            let opening_hours = s.opening_hours.as_deref().and_then(|h| {
                let parsed = crate::inbox::OpeningHours::parse(h);
                if parsed.is_none() {
                    errors.push(format!(
                        "sites.{name}.opening_hours: expected days and times like `Mon-Fri 08:00-18:00; Sat 09:00-12:00`, got `{h}`"
                    ));
                }
                parsed
            });
            let reply_sla = parse_duration(&s.reply_sla)
                .filter(|d| d.is_positive())
                .unwrap_or_else(|| {
                    errors.push(format!(
                        "sites.{name}.reply_sla: expected a duration like `60m`, got `{}`",
                        s.reply_sla
                    ));
                    SignedDuration::from_mins(60)
                });
            levels.push(s.phi_level);
            sites.insert(
                name.clone(),
                CompiledSite {
                    name: name.clone(),
                    zone,
                    time_zone: s.time_zone.clone(),
                    default_region: s.default_region.to_ascii_uppercase(),
                    facts: SiteFacts {
                        phone: s.phone.clone(),
                        date_format: s.date_format.clone(),
                        time_format: s.time_format.clone(),
                    },
                    phi_level: s.phi_level,
                    plan_policy: PlanPolicy {
                        quiet_hours,
                        min_lead,
                        ..PlanPolicy::default()
                    },
                    fallback_languages: s.fallback_languages.clone(),
                    opening_hours,
                    reply_sla,
                },
            );
        }
        // A template is shared by every site, so it must fit the most restrictive one.
        let level = if levels.contains(&PhiLevel::Minimal) || levels.is_empty() {
            PhiLevel::Minimal
        } else {
            PhiLevel::Standard
        };
        let mut templates = BTreeMap::new();
        for (key, t) in &self.templates {
            if t.languages.is_empty() {
                errors.push(format!("templates.{key}.languages: at least one language"));
                continue;
            }
            let mut body = Vec::new();
            for f in &t.body {
                match TemplateField::parse(f, level) {
                    Ok(field) => body.push(field),
                    Err(e) => errors.push(format!("templates.{key}.body: {e}")),
                }
            }
            let header = match t.header.as_deref().map(|f| TemplateField::parse(f, level)) {
                None => None,
                Some(Ok(field)) => Some(field),
                Some(Err(e)) => {
                    errors.push(format!("templates.{key}.header: {e}"));
                    None
                }
            };
            if t.header.is_none() && t.header_parameter_name.is_some() {
                errors.push(format!(
                    "templates.{key}.header_parameter_name: set without a `header` parameter"
                ));
            }
            if t.header.is_some()
                && t.parameter_names.is_some() != t.header_parameter_name.is_some()
            {
                errors.push(format!(
                    "templates.{key}: a NAMED template names every parameter (`parameter_names` and `header_parameter_name`), a positional one none"
                ));
            }
            if t.buttons.contains(&Choice::Reply(ReplyAction::NotNotified)) {
                errors.push(format!(
                    "templates.{key}.buttons: `not_notified` is not something a patient can tap"
                ));
            }
            if t.buttons.iter().any(|b| matches!(b, Choice::Score(_))) {
                errors.push(format!(
                    "templates.{key}.buttons: a 0-10 score is asked in a list after the rating, not as a template button"
                ));
            }
            if t.buttons.len() > 3 {
                errors.push(format!(
                    "templates.{key}.buttons: WhatsApp templates have at most 3 quick-reply buttons here ({} configured)",
                    t.buttons.len()
                ));
            }
            if let Some(names) = &t.parameter_names
                && names.len() != t.body.len()
            {
                errors.push(format!(
                    "templates.{key}.parameter_names: {} names for {} body parameters",
                    names.len(),
                    t.body.len()
                ));
            }
            templates.insert(
                key.clone(),
                CompiledTemplate {
                    key: key.clone(),
                    name: t.name.clone(),
                    languages: t.languages.clone(),
                    body,
                    parameter_names: t.parameter_names.clone(),
                    header,
                    header_parameter_name: t.header_parameter_name.clone(),
                    buttons: t.buttons.clone(),
                    ttl: match t.ttl.as_deref().map(|d| (d, parse_duration(d))) {
                        None => None,
                        Some((_, Some(d))) if (30..=43_200).contains(&d.as_secs()) => Some(d),
                        Some((raw, _)) => {
                            errors.push(format!(
                                "templates.{key}.ttl: `{raw}` must be a duration from 30s to 12h (WhatsApp's range for utility templates)"
                            ));
                            None
                        }
                    },
                },
            );
        }
        let mut steps = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        if self.plan.steps.is_empty() {
            errors.push("plan.steps: at least one step".to_string());
        }
        for s in &self.plan.steps {
            if !names.insert(s.name.clone()) {
                errors.push(format!("plan.steps: duplicate step name `{}`", s.name));
            }
            if !self.templates.contains_key(&s.template) {
                errors.push(format!(
                    "plan.steps.{}: unknown template `{}` (not in [templates])",
                    s.name, s.template
                ));
            }
            let offset = match (&s.offset, s.kind) {
                (None, StepKind::Confirmation | StepKind::LocationChange) => SignedDuration::ZERO,
                (None, _) => {
                    errors.push(format!("plan.steps.{}: `offset` is required", s.name));
                    SignedDuration::ZERO
                }
                (Some(o), _) => parse_duration(o).unwrap_or_else(|| {
                    errors.push(format!(
                        "plan.steps.{}: offset `{o}` is not a duration like `48h`",
                        s.name
                    ));
                    SignedDuration::ZERO
                }),
            };
            for site in &s.sites {
                if !self.sites.contains_key(site) {
                    errors.push(format!(
                        "plan.steps.{}.sites: unknown site `{site}` (not in [sites])",
                        s.name
                    ));
                }
            }
            if s.service_types.iter().any(|t| t.trim().is_empty()) {
                errors.push(format!(
                    "plan.steps.{}.service_types: an empty type matches nothing",
                    s.name
                ));
            }
            steps.push(StepSpec {
                sites: s.sites.clone(),
                service_types: s
                    .service_types
                    .iter()
                    .map(|t| t.trim().to_lowercase())
                    .collect(),
                ..StepSpec::new(&s.name, s.kind, offset, &s.template)
            });
        }
        // A message about a move that does not say where to is no help.
        for step in steps.iter().filter(|s| s.kind == StepKind::LocationChange) {
            if let Some(t) = templates.get(&step.template)
                && !t
                    .body
                    .iter()
                    .chain(&t.header)
                    .any(|f| *f == TemplateField::Location)
            {
                errors.push(format!(
                    "plan.steps.{}: a location_change step's template must show `location` (templates.{} does not)",
                    step.name, step.template
                ));
            }
        }
        // A survey's buttons are ratings and only a survey's are: a rating tap is not an answer
        // about the appointment, and a Confirm tap after the visit would mean nothing.
        for step in &steps {
            let Some(t) = templates.get(&step.template) else {
                continue;
            };
            let ratings = t
                .buttons
                .iter()
                .filter(|b| matches!(b, Choice::Rating(_)))
                .count();
            if step.kind == StepKind::Survey && (t.buttons.is_empty() || ratings != t.buttons.len())
            {
                errors.push(format!(
                    "plan.steps.{}: a survey step's template needs rating buttons only (good, ok, poor); templates.{} has {:?}",
                    step.name,
                    step.template,
                    t.buttons.iter().map(|b| b.name()).collect::<Vec<_>>()
                ));
            } else if step.kind != StepKind::Survey && ratings > 0 {
                errors.push(format!(
                    "plan.steps.{}: rating buttons (good, ok, poor) belong to a survey step's template, not to a {} step (templates.{})",
                    step.name,
                    step.kind.as_str(),
                    step.template
                ));
            }
        }
        for (code, texts) in
            std::iter::once(("default", self.reply_texts.survey_score_button.as_str())).chain(
                self.reply_texts
                    .languages
                    .iter()
                    .map(|(k, t)| (k.as_str(), t.survey_score_button.as_str())),
            )
        {
            let n = texts.chars().count();
            if n == 0 || n > 20 {
                errors.push(format!(
                    "reply_texts ({code}): survey_score_button must be 1 to 20 characters (WhatsApp's limit for a list button), it has {n}"
                ));
            }
        }
        if parse_duration(&self.survey.answer_within)
            .is_none_or(|d| !d.is_positive() || d > SignedDuration::from_hours(24))
        {
            errors.push(format!(
                "survey.answer_within: expected a duration up to 24h (the customer service window), got `{}`",
                self.survey.answer_within
            ));
        }
        if self.survey.low_score > 10 {
            errors.push(format!(
                "survey.low_score: {} is not a score from 0 to 10",
                self.survey.low_score
            ));
        }
        if self.sensitive.action == SensitiveAction::Neutral {
            match self
                .sensitive
                .neutral_template
                .as_ref()
                .map(|k| (k, templates.get(k)))
            {
                None => errors.push(
                    "sensitive.neutral_template: required when action = \"neutral\"".to_string(),
                ),
                Some((k, None)) => errors.push(format!(
                    "sensitive.neutral_template: unknown template `{k}` (not in [templates])"
                )),
                Some((k, Some(t))) => {
                    for f in t.body.iter().chain(&t.header) {
                        if !NEUTRAL_FIELDS.contains(f) {
                            errors.push(format!(
                                "templates.{k}: a neutral template may render only given_name, local_date, local_time and site_phone (it names {f:?})"
                            ));
                        }
                    }
                }
            }
        }
        // A template used for confirmations or reminders must expire before the appointment:
        // the sender gives up at `min_lead` before the start, so WhatsApp must too.
        let mut warnings = Vec::new();
        let min_lead = sites
            .values()
            .map(|s: &CompiledSite| s.plan_policy.min_lead)
            .min()
            .unwrap_or(SignedDuration::from_mins(30));
        let mut checked = std::collections::BTreeSet::new();
        for step in &steps {
            if !matches!(
                step.kind,
                StepKind::Confirmation | StepKind::Reminder | StepKind::LocationChange
            ) || !checked.insert(step.template.clone())
            {
                continue;
            }
            let Some(t) = templates.get(&step.template) else {
                continue;
            };
            match t.ttl {
                Some(ttl) if ttl > min_lead => errors.push(format!(
                    "templates.{}.ttl: {} is longer than the shortest min_lead ({}): a message WhatsApp delivers late could arrive after the appointment",
                    t.key,
                    medrelay_mapping::plan::fmt_duration(ttl),
                    medrelay_mapping::plan::fmt_duration(min_lead)
                )),
                Some(_) => {}
                None => warnings.push(format!(
                    "templates.{}: no ttl; WhatsApp keeps retrying undelivered messages for 30 days, so a reminder could arrive after the appointment (set ttl <= {} and apply it in WhatsApp Manager)",
                    t.key,
                    medrelay_mapping::plan::fmt_duration(min_lead)
                )),
            }
        }
        if errors.is_empty() {
            Ok(Compiled {
                sites,
                opt_in_required: self.consent.opt_in_required,
                steps,
                templates,
                reply_texts: self.reply_texts.clone(),
                sensitive: self.sensitive.clone(),
                survey: self.survey.clone(),
                warnings,
                messaging_limit: None,
                on_recategorised: RecategorisedPolicy::default(),
            })
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
// PHI: tests read values back to check them.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn config(extra_body: &str) -> PipelineConfig {
        toml::from_str(&format!(
            r#"
            [sites.main]
            time_zone = "America/Sao_Paulo"
            default_region = "BR"
            quiet_hours = "21:00-08:00"
            [[plan.steps]]
            name = "reminder_48h"
            kind = "reminder"
            offset = "48h"
            template = "reminder"
            [templates.reminder]
            name = "appt_reminder"
            languages = ["pt_BR", "en_US"]
            body = ["given_name", "local_date"{extra_body}]
            buttons = ["confirm", "cancel"]
            "#
        ))
        .unwrap()
    }

    #[test]
    fn reply_texts_follow_the_patients_language_then_the_sites_fallbacks() {
        let pt = |text: &str| {
            format!(
                "[languages.pt_BR]\nstale = \"{text} stale\"\nemergency = \"e\"\nstopped = \"s\"\nstarted = \"t\"\nacknowledgement = \"a {{within}}\"\nout_of_hours = \"o\"\nsurvey_score = \"n\"\nsurvey_score_button = \"Nota\"\nsurvey_comment = \"c\"\nsurvey_thanks = \"obrigado\"\n"
            )
        };
        let texts: ReplyTexts = toml::from_str(&pt("pt")).unwrap();
        let pt_br = vec!["pt_BR".to_owned(), "en_US".to_owned()];
        let en = vec!["en_US".to_owned()];
        assert_eq!(texts.for_language(Some("pt_BR"), &en).stale, "pt stale");
        assert_eq!(
            texts.for_language(Some("pt-PT"), &en).stale,
            "pt stale",
            "by language"
        );
        assert_eq!(
            texts.for_language(Some("en_GB"), &pt_br).stale,
            texts.stale,
            "the defaults are English"
        );
        assert_eq!(
            texts.for_language(None, &pt_br).stale,
            "pt stale",
            "the site's first fallback"
        );
        assert_eq!(texts.for_language(Some("de"), &en).stale, texts.stale);
        assert_eq!(texts.for_language(None, &[]).stale, texts.stale);
        // A language without all its texts is refused, naming the missing one.
        let short = pt("pt").replace("out_of_hours = \"o\"\n", "");
        let err = toml::from_str::<ReplyTexts>(&short)
            .unwrap_err()
            .to_string();
        assert!(err.contains("out_of_hours"), "{err}");
    }

    #[test]
    fn a_survey_step_needs_rating_buttons_and_only_a_survey_has_them() {
        let mut c = config("");
        c.templates.insert(
            "survey".into(),
            toml::from_str(
                "name = \"visit_survey\"\nlanguages = [\"en_US\"]\nbuttons = [\"good\", \"ok\", \"poor\"]",
            )
            .unwrap(),
        );
        c.plan.steps.push(
            toml::from_str(
                "name = \"survey_2h\"\nkind = \"survey\"\noffset = \"2h\"\ntemplate = \"survey\"",
            )
            .unwrap(),
        );
        let compiled = c.compile().unwrap();
        assert_eq!(compiled.steps[1].kind, StepKind::Survey);
        assert_eq!(compiled.survey, SurveyConfig::default());
        // The reminder's Confirm/Cancel template cannot be a survey's, nor the survey's a reminder's.
        c.plan.steps[1].template = "reminder".into();
        c.plan.steps[0].template = "survey".into();
        let errors = c.compile().unwrap_err();
        assert!(
            errors.iter().any(|e| e
                .contains("plan.steps.survey_2h: a survey step's template needs rating buttons")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("plan.steps.reminder_48h: rating buttons")),
            "{errors:?}"
        );
        // Scores are not buttons; an unknown button is a load error naming it.
        let err = toml::from_str::<TemplateConfig>(
            "name = \"x\"\nlanguages = [\"en\"]\nbuttons = [\"great\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown button `great`"), "{err}");
        let mut c = config("");
        c.templates.get_mut("reminder").unwrap().buttons = vec![Choice::Score(3)];
        c.survey.low_score = 11;
        c.survey.answer_within = "3d".into();
        c.reply_texts.survey_score_button = "A button label far too long".into();
        let errors = c.compile().unwrap_err();
        for want in [
            "templates.reminder.buttons: a 0-10 score",
            "survey.low_score",
            "survey.answer_within",
            "survey_score_button must be 1 to 20 characters",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "{want}: {errors:?}"
            );
        }
    }

    #[test]
    fn a_valid_config_compiles() {
        let c = config("").compile().unwrap();
        assert_eq!(c.steps[0].offset, SignedDuration::from_hours(48));
        assert_eq!(c.templates["reminder"].body.len(), 2);
    }

    #[test]
    fn a_template_that_renders_a_diagnosis_is_rejected_at_load_time() {
        let errors = config(r#", "diagnosis""#).compile().unwrap_err();
        assert!(errors[0].contains("can never be rendered"), "{errors:?}");
    }

    #[test]
    fn a_header_parameter_comes_from_the_allow_list_too() {
        let mut c = config("");
        c.templates.get_mut("reminder").unwrap().header = Some("location".into());
        assert_eq!(
            c.compile().unwrap().templates["reminder"].header,
            Some(TemplateField::Location)
        );
        c.templates.get_mut("reminder").unwrap().header = Some("reason".into());
        let errors = c.compile().unwrap_err();
        assert!(
            errors[0].starts_with("templates.reminder.header:") && errors[0].contains("can never"),
            "{errors:?}"
        );
        // A NAMED template must name its header parameter as well.
        let t = c.templates.get_mut("reminder").unwrap();
        t.header = Some("location".into());
        t.parameter_names = Some(vec!["name".into(), "date".into()]);
        let errors = c.compile().unwrap_err();
        assert!(errors[0].contains("header_parameter_name"), "{errors:?}");
    }

    #[test]
    fn location_change_step_needs_a_template_that_shows_the_location() {
        let mut c = config(", \"location\"");
        c.plan.steps.push(
            toml::from_str("name = \"moved\"\nkind = \"location_change\"\ntemplate = \"reminder\"")
                .unwrap(),
        );
        assert!(
            c.compile().is_ok(),
            "the reminder template shows the location"
        );
        c.templates.get_mut("reminder").unwrap().body = vec!["given_name".into()];
        let errors = c.compile().unwrap_err();
        assert!(
            errors.iter().any(|e| e.contains(
                "plan.steps.moved: a location_change step's template must show `location`"
            )),
            "{errors:?}"
        );
    }

    #[test]
    fn step_filters_and_no_show_steps_compile_and_are_checked() {
        let mut c = config("");
        c.plan.steps.push(toml::from_str(
            "name = \"missed\"\nkind = \"no_show\"\noffset = \"2h\"\ntemplate = \"reminder\"\nsites = [\"main\"]\nservice_types = [\" Lab Draw \"]",
        ).unwrap());
        let compiled = c.compile().unwrap();
        let step = &compiled.steps[1];
        assert_eq!(step.kind, StepKind::NoShow);
        assert_eq!(step.service_types, ["lab draw"]);
        assert!(step.applies_to("main", Some("LAB DRAW")));
        c.plan.steps[1].sites = vec!["elsewhere".into()];
        c.plan.steps[1].service_types = vec![" ".into()];
        let errors = c.compile().unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("unknown site `elsewhere`")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("empty type")),
            "{errors:?}"
        );
    }

    #[test]
    fn language_choice_follows_patient_then_fallback() {
        let c = config("").compile().unwrap();
        let t = &c.templates["reminder"];
        let fb = vec!["en_US".to_string()];
        assert_eq!(t.choose_language(Some("pt-BR"), &fb), "pt_BR");
        assert_eq!(t.choose_language(Some("pt"), &fb), "pt_BR");
        assert_eq!(t.choose_language(Some("fr"), &fb), "en_US");
        assert_eq!(t.choose_language(None, &fb), "en_US");
    }
}
