//! The KPI report (`medrelay report`): the numbers clinics judge a reminder system by, for the
//! appointments that start in a period, grouped by site, practitioner or service type. Every figure
//! is defined in README.md ("The KPI report") and reconciles with `medrelay status`: they count the
//! same rows.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;

use super::on_db;
use super::{Store, StoreResult, secs};
use crate::costs::RateTable;

/// What the report groups appointments by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportGroup {
    /// One row for everything.
    All,
    Site,
    Practitioner,
    /// The EHR's appointment type: it can reveal a condition, so only staff with the database see it.
    ServiceType,
    /// The first template an appointment got (usually its booking confirmation): each
    /// appointment, with all its messages, counts under one template, so the groups add up.
    Template,
}

impl ReportGroup {
    fn column(self) -> &'static str {
        match self {
            ReportGroup::All => "'all'",
            ReportGroup::Site => "a.site",
            ReportGroup::Practitioner => "COALESCE(a.practitioner, '(none)')",
            ReportGroup::ServiceType => "COALESCE(a.service_type, '(none)')",
            ReportGroup::Template => {
                "COALESCE((SELECT ft.template FROM outbox ft JOIN messages fm ON fm.job_id = ft.id \
                 WHERE ft.appointment_id = a.id ORDER BY fm.sent_at, fm.id LIMIT 1), '(none)')"
            }
        }
    }
}

/// One row of the report.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct KpiRow {
    pub group: String,
    /// Appointments starting in the period.
    pub appointments: i64,
    /// Of them, appointments that got at least one message accepted by WhatsApp.
    pub messaged: i64,
    /// Messages accepted by WhatsApp for them, and by their latest status.
    pub messages_sent: i64,
    pub messages_delivered: i64,
    pub messages_read: i64,
    pub messages_failed: i64,
    /// Appointments the patient confirmed / cancelled / asked to reschedule through WhatsApp.
    pub confirmed: i64,
    pub cancelled_via_whatsapp: i64,
    pub reschedule_requests: i64,
    /// confirmed / messaged.
    pub confirmation_rate: Option<f64>,
    /// Distinct messaged patients (contacts) who opted out (STOP) before the period ended, and
    /// the rate among the messaged patients.
    pub opt_outs: i64,
    pub opt_out_rate: Option<f64>,
    /// Appointments that got a reminder, and how many of them were no-shows; the same for those
    /// that got no message at all (no consent, no phone, too late).
    pub reminded: i64,
    pub no_show_reminded: i64,
    pub not_messaged: i64,
    pub no_show_not_messaged: i64,
    pub no_show_rate_reminded: Option<f64>,
    pub no_show_rate_not_messaged: Option<f64>,
    /// Seconds from a message to the patient's tap on it: median and 90th percentile.
    pub reply_seconds_median: Option<f64>,
    pub reply_seconds_p90: Option<f64>,
    /// Messages by Meta's pricing category (from the status webhooks; `unpriced` until a status
    /// said), and how many of them Meta bills.
    pub messages_by_category: BTreeMap<String, i64>,
    pub billable_messages: i64,
    /// With a rate table: the billable messages' cost, in all and by category, billable messages
    /// the table has no price for (not counted as free), and cost per confirmed appointment.
    pub cost: Option<f64>,
    pub cost_by_category: BTreeMap<String, f64>,
    pub unpriced_billable: i64,
    pub cost_per_confirmed: Option<f64>,
    /// Staff inbox conversations about these appointments, and seconds from the patient's first
    /// message in one to the first staff answer (median and 90th percentile; unanswered ones are
    /// not counted).
    pub inbox_conversations: i64,
    pub staff_reply_seconds_median: Option<f64>,
    pub staff_reply_seconds_p90: Option<f64>,
    /// Post-visit surveys accepted by WhatsApp, how many were rated, by rating, and the rate.
    pub surveys_sent: i64,
    pub surveys_answered: i64,
    pub survey_good: i64,
    pub survey_ok: i64,
    pub survey_poor: i64,
    pub survey_response_rate: Option<f64>,
    /// Surveys with a 0-10 score, and the Net Promoter Score over them: the percentage of 9-10
    /// minus the percentage of 0-6 (-100 to 100).
    pub nps_responses: i64,
    pub nps: Option<f64>,
    /// Surveys with a low rating or score, which opened an inbox conversation for follow-up.
    pub survey_low: i64,
}

fn rate(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// The `q`-quantile of sorted values (nearest rank).
fn quantile(sorted: &[i64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1] as f64)
}

impl Store {
    /// Runs one of the report's queries (its `$1` / `$2` are the period's bounds).
    async fn period_rows(
        &self,
        sql: String,
        from: i64,
        until: i64,
    ) -> StoreResult<Vec<super::StoredRow>> {
        Ok(on_db!(self, |db| sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(from)
            .bind(until)
            .fetch_all(db)
            .await
            .map(|v| v
                .into_iter()
                .map(super::StoredRow::from)
                .collect::<Vec<_>>()))?)
    }

    /// The report for appointments starting in `[from, until)`, costed with `rates` when given.
    pub async fn kpi_report(
        &self,
        from: Timestamp,
        until: Timestamp,
        by: ReportGroup,
        rates: Option<&RateTable>,
    ) -> StoreResult<Vec<KpiRow>> {
        let g = by.column();
        let (from_s, until_s) = (secs(from), secs(until));
        let mut rows: BTreeMap<String, KpiRow> = BTreeMap::new();
        // The only formatted parts are this constant condition and the group column, one of the
        // constants of `ReportGroup::column`; every value is bound.
        let period = "a.start_at >= $1 AND a.start_at < $2";
        // Appointments, messaged, reminded, no-shows.
        let sql = format!(
            "SELECT {g} AS grp, COUNT(*) AS n, \
             COUNT(CASE WHEN EXISTS (SELECT 1 FROM outbox o JOIN messages m ON m.job_id = o.id WHERE o.appointment_id = a.id) THEN 1 END) AS messaged, \
             COUNT(CASE WHEN EXISTS (SELECT 1 FROM outbox o JOIN messages m ON m.job_id = o.id WHERE o.appointment_id = a.id AND o.kind = 'reminder') THEN 1 END) AS reminded, \
             COUNT(CASE WHEN a.status = 'noshow' AND EXISTS (SELECT 1 FROM outbox o JOIN messages m ON m.job_id = o.id WHERE o.appointment_id = a.id AND o.kind = 'reminder') THEN 1 END) AS ns_reminded, \
             COUNT(CASE WHEN a.status = 'noshow' AND NOT EXISTS (SELECT 1 FROM outbox o JOIN messages m ON m.job_id = o.id WHERE o.appointment_id = a.id) THEN 1 END) AS ns_not \
             FROM appointments a WHERE {period} GROUP BY grp"
        );
        for r in self.period_rows(sql, from_s, until_s).await? {
            let row = rows.entry(r.get("grp")).or_default();
            row.appointments = r.get("n");
            row.messaged = r.get("messaged");
            row.reminded = r.get("reminded");
            row.no_show_reminded = r.get("ns_reminded");
            row.not_messaged = row.appointments - row.messaged;
            row.no_show_not_messaged = r.get("ns_not");
        }
        // Messages by latest status.
        let sql = format!(
            "SELECT {g} AS grp, COUNT(*) AS sent, COUNT(CASE WHEN m.status IN ('delivered', 'read') THEN 1 END) AS delivered, \
             COUNT(CASE WHEN m.status = 'read' THEN 1 END) AS read, COUNT(CASE WHEN m.status = 'failed' THEN 1 END) AS failed \
             FROM messages m JOIN outbox o ON o.id = m.job_id JOIN appointments a ON a.id = o.appointment_id \
             WHERE {period} GROUP BY grp"
        );
        for r in self.period_rows(sql, from_s, until_s).await? {
            let row = rows.entry(r.get("grp")).or_default();
            row.messages_sent = r.get("sent");
            row.messages_delivered = r.get("delivered");
            row.messages_read = r.get("read");
            row.messages_failed = r.get("failed");
        }
        // Patient answers: appointments with an accepted tap, by action.
        let sql = format!(
            "SELECT {g} AS grp, r.action AS action, COUNT(DISTINCT a.id) AS n \
             FROM replies r JOIN appointments a ON a.id = r.appointment_id \
             WHERE {period} AND r.outcome = 'accepted' AND r.action IN ('confirm', 'cancel', 'reschedule') \
             GROUP BY grp, r.action"
        );
        for r in self.period_rows(sql, from_s, until_s).await? {
            let row = rows.entry(r.get("grp")).or_default();
            let n: i64 = r.get("n");
            match r.get::<&str, _>("action") {
                "confirm" => row.confirmed = n,
                "cancel" => row.cancelled_via_whatsapp = n,
                _ => row.reschedule_requests = n,
            }
        }
        // Opt-outs: messaged patients (by contact) who sent STOP before the period ended.
        let sql = format!(
            "SELECT {g} AS grp, COUNT(DISTINCT a.contact_hash) AS contacts, \
             COUNT(DISTINCT CASE WHEN EXISTS (SELECT 1 FROM replies r WHERE r.contact_hash = a.contact_hash \
               AND r.action = 'stop' AND r.received_at < $2) THEN a.contact_hash END) AS stopped \
             FROM appointments a WHERE {period} AND a.contact_hash IS NOT NULL \
             AND EXISTS (SELECT 1 FROM outbox o JOIN messages m ON m.job_id = o.id WHERE o.appointment_id = a.id) \
             GROUP BY grp"
        );
        for r in self.period_rows(sql, from_s, until_s).await? {
            let row = rows.entry(r.get("grp")).or_default();
            let contacts: i64 = r.get("contacts");
            row.opt_outs = r.get("stopped");
            row.opt_out_rate = rate(row.opt_outs, contacts);
        }
        // Reply times: from the message a tap answers to the tap.
        let sql = format!(
            "SELECT {g} AS grp, r.received_at - m.sent_at AS secs \
             FROM replies r JOIN messages m ON m.job_id = r.job_id JOIN appointments a ON a.id = r.appointment_id \
             WHERE {period} AND r.kind = 'button' AND r.outcome = 'accepted' \
             ORDER BY grp, secs"
        );
        let mut waits: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for r in self.period_rows(sql, from_s, until_s).await? {
            waits
                .entry(r.get("grp"))
                .or_default()
                .push(r.get::<i64, _>("secs").max(0));
        }
        // Pricing: messages by Meta's category and the recipient's calling code.
        let sql = format!(
            "SELECT {g} AS grp, COALESCE(m.pricing_category, 'unpriced') AS category, m.calling_code AS cc, \
             COUNT(*) AS n, COUNT(CASE WHEN m.billable = 1 THEN 1 END) AS billable \
             FROM messages m JOIN outbox o ON o.id = m.job_id JOIN appointments a ON a.id = o.appointment_id \
             WHERE {period} GROUP BY grp, category, cc"
        );
        for r in self.period_rows(sql, from_s, until_s).await? {
            let row = rows.entry(r.get("grp")).or_default();
            let category: String = r.get("category");
            let (n, billable): (i64, i64) = (r.get("n"), r.get("billable"));
            *row.messages_by_category
                .entry(category.clone())
                .or_default() += n;
            row.billable_messages += billable;
            if let Some(rates) = rates {
                let cc = r
                    .get::<Option<i64>, _>("cc")
                    .and_then(|c| u16::try_from(c).ok());
                match rates.price(cc, &category) {
                    Some(p) => {
                        let cost = p * billable as f64;
                        *row.cost.get_or_insert(0.0) += cost;
                        *row.cost_by_category.entry(category).or_default() += cost;
                    }
                    None => row.unpriced_billable += billable,
                }
            }
        }
        // The staff inbox: conversations about these appointments and the first answer's wait.
        let sql = format!(
            "SELECT {g} AS grp, \
             (SELECT MIN(o.at) FROM conversation_messages o WHERE o.conversation_id = c.id AND o.direction = 'out') \
             - (SELECT MIN(i.at) FROM conversation_messages i WHERE i.conversation_id = c.id AND i.direction = 'in') AS secs \
             FROM conversations c JOIN appointments a ON a.id = c.appointment_id WHERE {period}"
        );
        let mut staff_waits: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for r in self.period_rows(sql, from_s, until_s).await? {
            let grp: String = r.get("grp");
            rows.entry(grp.clone()).or_default().inbox_conversations += 1;
            if let Some(secs) = r.get::<Option<i64>, _>("secs") {
                staff_waits.entry(grp).or_default().push(secs.max(0));
            }
        }
        // Post-visit surveys: sent, and their answers.
        let sql = format!(
            "SELECT {g} AS grp, COUNT(*) AS n FROM messages m JOIN outbox o ON o.id = m.job_id \
             JOIN appointments a ON a.id = o.appointment_id WHERE {period} AND o.kind = 'survey' GROUP BY grp"
        );
        for r in self.period_rows(sql, from_s, until_s).await? {
            rows.entry(r.get("grp")).or_default().surveys_sent = r.get("n");
        }
        let sql = format!(
            "SELECT {g} AS grp, s.rating AS rating, s.score AS score, s.low AS low \
             FROM survey_responses s JOIN appointments a ON a.id = s.appointment_id WHERE {period}"
        );
        let mut promoters: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for r in self.period_rows(sql, from_s, until_s).await? {
            let grp: String = r.get("grp");
            let row = rows.entry(grp.clone()).or_default();
            row.surveys_answered += 1;
            match r.get::<&str, _>("rating") {
                "good" => row.survey_good += 1,
                "poor" => row.survey_poor += 1,
                _ => row.survey_ok += 1,
            }
            row.survey_low += r.get::<i64, _>("low");
            if let Some(score) = r.get::<Option<i64>, _>("score") {
                row.nps_responses += 1;
                let p = promoters.entry(grp).or_default();
                if score >= 9 {
                    p.0 += 1;
                } else if score <= 6 {
                    p.1 += 1;
                }
            }
        }
        for (grp, row) in rows.iter_mut() {
            row.group = grp.clone();
            row.survey_response_rate = rate(row.surveys_answered, row.surveys_sent);
            if let Some((pro, det)) = promoters.get(grp)
                && row.nps_responses > 0
            {
                row.nps = Some(100.0 * (pro - det) as f64 / row.nps_responses as f64);
            }
            if let Some(w) = staff_waits.get_mut(grp) {
                w.sort_unstable();
                row.staff_reply_seconds_median = quantile(w, 0.5);
                row.staff_reply_seconds_p90 = quantile(w, 0.9);
            }
            if rates.is_some() {
                let cost = *row.cost.get_or_insert(0.0);
                row.cost_per_confirmed = (row.confirmed > 0).then(|| cost / row.confirmed as f64);
            }
            row.confirmation_rate = rate(row.confirmed, row.messaged);
            row.no_show_rate_reminded = rate(row.no_show_reminded, row.reminded);
            row.no_show_rate_not_messaged = rate(row.no_show_not_messaged, row.not_messaged);
            if let Some(w) = waits.get_mut(grp) {
                w.sort_unstable();
                row.reply_seconds_median = quantile(w, 0.5);
                row.reply_seconds_p90 = quantile(w, 0.9);
            }
        }
        Ok(rows.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_rank_quantiles() {
        let v = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!(super::quantile(&v, 0.5), Some(5.0));
        assert_eq!(super::quantile(&v, 0.9), Some(9.0));
        assert_eq!(super::quantile(&[7], 0.9), Some(7.0));
        assert_eq!(super::quantile(&[], 0.5), None);
    }
}
