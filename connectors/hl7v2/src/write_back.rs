//! Patient answers back to the EHR's HL7 inbound interface, over MLLP: one SRM (schedule request)
//! per reply, from medrelay as the placer-side application to the filler.
//!
//! | reply | message | carries |
//! |---|---|---|
//! | confirm | `SRM^S03` (request appointment modification) | ARQ (placer and filler ids, start), PID-3, NTE with the action code |
//! | reschedule | `SRM^S03` | the same, action code for "patient asks for another time" |
//! | cancel | `SRM^S04` (request appointment cancellation) | the same |
//! | not_notified | `SRM^S03` | the same: staff must reach the patient another way |
//!
//! The action codes are configurable (like the CSV return file's). MSH-10 is `MRWB<reply id>`, the
//! same on every attempt, so the EHR can drop a repeat; a batch is done when every message got AA.
//! AE (the EHR refuses the content) is a permanent failure; AR, a timeout or a closed connection
//! are retried. No patient data in error strings: MSA codes and ERR-3 codes only.

use std::time::Duration;

use hl7_parser::message::Separators;
use medrelay_mapping::ports::{
    Confirmation, WriteBack, WriteBackBatch, WriteBackError, WriteReceipt,
};
use medrelay_mapping::reply::ReplyAction;

use tokio::net::TcpStream;

use crate::escape::escape;
use crate::mllp::exchange;

/// Where and how replies are sent.
#[derive(Clone, Debug)]
pub struct Hl7WriteBackConfig {
    /// `host:port` of the EHR's inbound MLLP interface.
    pub send_to: String,
    pub timeout: Duration,
    /// Our MSH-3 / MSH-4 and the EHR's MSH-5 / MSH-6.
    pub application: String,
    pub facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    /// HL7 version written in MSH-12.
    pub version: String,
    /// Codes in NTE-3 for confirm, cancel, reschedule, not_notified.
    pub action_codes: [String; 4],
    /// TLS to the EHR's interface (its CA, optionally our client certificate), when set.
    pub tls: Option<medrelay_listener::tls::ClientTls>,
}

impl Hl7WriteBackConfig {
    /// The defaults: v2.5.1, codes `CONFIRMED`, `CANCELLED`, `RESCHEDULE`, `NOT_NOTIFIED`.
    pub fn new(send_to: &str) -> Self {
        Hl7WriteBackConfig {
            send_to: send_to.to_owned(),
            timeout: Duration::from_secs(20),
            application: "MEDRELAY".into(),
            facility: String::new(),
            receiving_application: String::new(),
            receiving_facility: String::new(),
            version: "2.5.1".into(),
            action_codes: ["CONFIRMED", "CANCELLED", "RESCHEDULE", "NOT_NOTIFIED"]
                .map(String::from),
            tls: None,
        }
    }

    fn code(&self, action: ReplyAction) -> &str {
        &self.action_codes[match action {
            ReplyAction::Confirm => 0,
            ReplyAction::Cancel => 1,
            ReplyAction::Reschedule => 2,
            ReplyAction::NotNotified => 3,
        }]
    }
}

/// Builds the SRM for one reply (CR-separated segments).
// PHI: the patient id goes into PID-3, which is the point of the message.
#[allow(clippy::disallowed_methods)]
pub fn srm(c: &Confirmation, cfg: &Hl7WriteBackConfig) -> String {
    let sep = Separators::default();
    let e = |s: &str| escape(s, &sep);
    let trigger = if c.action == ReplyAction::Cancel {
        "S04"
    } else {
        "S03"
    };
    let zone = jiff::tz::TimeZone::get(&c.time_zone).unwrap_or(jiff::tz::TimeZone::UTC);
    let start = c.appointment_start.to_zoned(zone).strftime("%Y%m%d%H%M%z");
    let sent = c.replied_at.strftime("%Y%m%d%H%M%S%z");
    let mut m = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{sent}||SRM^{trigger}^SRM_S01|MRWB{}|P|{}\r",
        e(&cfg.application),
        e(&cfg.facility),
        e(&cfg.receiving_application),
        e(&cfg.receiving_facility),
        c.reply_id,
        e(&cfg.version),
    );
    // ARQ-1 placer id, ARQ-2 filler id, ARQ-11 requested start (TQ-like: ^^^start).
    m.push_str(&format!(
        "ARQ|{}|{}|||||||||^^^{start}\r",
        e(c.placer_id.as_deref().unwrap_or("")),
        e(&c.filler_id),
    ));
    m.push_str(&format!(
        "NTE|1|L|{}^{}\r",
        e(cfg.code(c.action)),
        e(&format!(
            "patient reply via WhatsApp (medrelay reply {})",
            c.reply_id
        ))
    ));
    if let Some(p) = &c.patient_id {
        m.push_str(&format!("PID|1||{}\r", e(p.expose())));
    }
    m.push_str("RGS|1\r");
    m
}

/// MSA-1 and ERR-3.1 of an ACK, read with the same parser as inbound messages; empty when the
/// answer is not a readable HL7 message.
fn ack_codes(reply: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(reply);
    let Ok(prepared) = crate::message::prepare(&text) else {
        return (String::new(), String::new());
    };
    let Ok(p) = crate::message::Parsed::parse(&prepared) else {
        return (String::new(), String::new());
    };
    let field = |seg: &str, n: usize| {
        p.segment(seg)
            .and_then(|s| p.value(s, n, 1, 1))
            .unwrap_or_default()
    };
    (field("MSA", 1), field("ERR", 3))
}

/// The HL7 write-back target of one connector.
pub struct Hl7WriteBack {
    cfg: Hl7WriteBackConfig,
    handle: tokio::runtime::Handle,
}

impl Hl7WriteBack {
    /// A target sending to `cfg.send_to`; `handle` runs the exchanges (write-back runs on a
    /// blocking thread) through the connector's one MLLP client, [`crate::mllp::exchange`].
    pub fn new(cfg: Hl7WriteBackConfig, handle: tokio::runtime::Handle) -> Self {
        Hl7WriteBack { cfg, handle }
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> WriteBackError {
        WriteBackError::Retryable(format!("HL7 interface {}: {e}", self.cfg.send_to))
    }

    async fn write(&self, batch: &WriteBackBatch) -> Result<WriteReceipt, WriteBackError> {
        let t = self.cfg.timeout;
        let stream = tokio::time::timeout(t, TcpStream::connect(&self.cfg.send_to))
            .await
            .map_err(|_| self.unavailable("connect timed out"))?
            .map_err(|e| self.unavailable(e))?;
        let _ = stream.set_nodelay(true);
        match &self.cfg.tls {
            None => self.send_all(stream, batch).await?,
            Some(tls) => {
                let host = host_of(&self.cfg.send_to);
                // A refused handshake (an unknown CA, a wrong name) is a configuration or
                // certificate problem the EHR side may fix: retried, and alerted as failing.
                let stream = tls
                    .connect(host, stream, t)
                    .await
                    .map_err(|e| self.unavailable(e))?;
                self.send_all(stream, batch).await?
            }
        }
        Ok(WriteReceipt {
            location: format!(
                "mllp://{} ({} SRM messages, batch {})",
                self.cfg.send_to,
                batch.items.len(),
                batch.batch_id
            ),
        })
    }

    /// Each SRM of the batch on `stream`, one at a time, each answered before the next.
    async fn send_all<S>(&self, mut stream: S, batch: &WriteBackBatch) -> Result<(), WriteBackError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let t = self.cfg.timeout;
        for item in &batch.items {
            let reply =
                tokio::time::timeout(t, exchange(&mut stream, srm(item, &self.cfg).as_bytes()))
                    .await
                    .map_err(|_| self.unavailable("no ACK in time"))?
                    .map_err(|e| self.unavailable(e))?;
            let (msa, err) = ack_codes(&reply);
            match msa.as_str() {
                "AA" | "CA" => {}
                "AE" | "CE" => {
                    return Err(WriteBackError::Permanent(format!(
                        "the EHR answered {msa} (ERR {err}) for reply {}",
                        item.reply_id
                    )));
                }
                _ => {
                    return Err(WriteBackError::Retryable(format!(
                        "the EHR answered {} (ERR {err}) for reply {}",
                        if msa.is_empty() {
                            "no MSA"
                        } else {
                            msa.as_str()
                        },
                        item.reply_id
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The host of `host:port` (`[::1]:2576` gives `::1`), the name a certificate is checked against.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

impl WriteBack for Hl7WriteBack {
    fn write_batch(&self, batch: &WriteBackBatch) -> Result<WriteReceipt, WriteBackError> {
        self.handle.block_on(self.write(batch))
    }
}

#[cfg(test)]
// PHI: tests build confirmations from literal values.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use medrelay_mapping::Phi;

    fn confirmation(action: ReplyAction) -> Confirmation {
        Confirmation {
            reply_id: 42,
            source: "clinica".into(),
            filler_id: "AG-30007".into(),
            placer_id: Some("PL-30007".into()),
            patient_id: Some(Phi::new("P-2007".into())),
            action,
            replied_at: "2026-12-08T17:10:00Z".parse().unwrap(),
            appointment_start: "2026-12-10T17:00:00Z".parse().unwrap(),
            time_zone: "America/Sao_Paulo".into(),
        }
    }

    #[test]
    fn srm_carries_ids_action_and_a_stable_control_id() {
        let cfg = Hl7WriteBackConfig::new("127.0.0.1:1");
        let m = srm(&confirmation(ReplyAction::Confirm), &cfg);
        let seg: Vec<&str> = m.split('\r').collect();
        assert!(
            seg[0].starts_with(
                "MSH|^~\\&|MEDRELAY||||20261208171000+0000||SRM^S03^SRM_S01|MRWB42|P|2.5.1"
            ),
            "{m}"
        );
        assert_eq!(seg[1], "ARQ|PL-30007|AG-30007|||||||||^^^202612101400-0300");
        assert!(seg[2].starts_with("NTE|1|L|CONFIRMED^"), "{m}");
        assert_eq!(seg[3], "PID|1||P-2007");
        assert!(srm(&confirmation(ReplyAction::Cancel), &cfg).contains("|SRM^S04^SRM_S01|"));
        assert_eq!(
            srm(&confirmation(ReplyAction::Confirm), &cfg),
            m,
            "same reply, same message"
        );
    }

    #[test]
    fn ack_codes_are_read_from_any_ack() {
        let (msa, err) = ack_codes(b"MSH|^~\\&|EHR||||20261208||ACK^S03|1|P|2.5.1\rMSA|AE|MRWB42\rERR||ARQ^1^2|101^Required^HL70357|E\r");
        assert_eq!((msa.as_str(), err.as_str()), ("AE", "101"));
        assert_eq!(ack_codes(b"garbage").0, "");
    }
}
