//! WhatsApp Business Cloud API: message bodies, the transport port, the error taxonomy, and the
//! built-in simulator.
//!
//! Bodies are built as the exact JSON the Cloud API takes (`POST /{version}/{phone-number-id}/messages`);
//! a transport only moves them. Errors are classified from the response's `error.code` into what the
//! outbox must do next (retry, delay one recipient, give up on one message, halt a template, halt all).

use async_trait::async_trait;
use serde_json::{Value, json};

pub mod cloud;
pub mod pacing;
pub mod simulator;
pub mod webhook;

/// A body parameter: its text and, for `parameter_format: NAMED` templates, its name.
#[derive(Clone, Debug)]
pub struct BodyParameter {
    pub name: Option<String>,
    /// PHI: rendered from the allow-list only.
    pub text: String,
}

/// A template message to one recipient.
#[derive(Clone, Debug)]
pub struct TemplateMessage {
    /// Recipient, E.164 digits (the form WhatsApp uses for `wa_id`).
    pub to: String,
    pub template: String,
    pub language: String,
    pub body: Vec<BodyParameter>,
    /// The TEXT header's parameter, if the template's header has one.
    pub header: Option<BodyParameter>,
    /// Quick-reply payloads, by button index.
    pub quick_replies: Vec<String>,
    /// Echoed back on status webhooks: our job id, for reconciliation. Never PHI.
    pub callback: String,
}

impl TemplateMessage {
    /// The Cloud API request body.
    pub fn to_json(&self) -> Value {
        let text = |p: &BodyParameter| match &p.name {
            Some(n) => json!({"type": "text", "parameter_name": n, "text": p.text}),
            None => json!({"type": "text", "text": p.text}),
        };
        let mut components = Vec::new();
        if let Some(h) = &self.header {
            components.push(json!({"type": "header", "parameters": [text(h)]}));
        }
        if !self.body.is_empty() {
            let params: Vec<Value> = self.body.iter().map(text).collect();
            components.push(json!({"type": "body", "parameters": params}));
        }
        for (i, payload) in self.quick_replies.iter().enumerate() {
            components.push(json!({
                "type": "button",
                "sub_type": "quick_reply",
                "index": i.to_string(),
                "parameters": [{"type": "payload", "payload": payload}]
            }));
        }
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": self.to,
            "type": "template",
            "biz_opaque_callback_data": self.callback,
            "template": {
                "name": self.template,
                "language": {"code": self.language},
                "components": components
            }
        })
    }
}

/// A free-form text body (only inside the 24 h customer service window, i.e. as an answer).
pub fn text_message(to: &str, body: &str, context_wamid: Option<&str>) -> Value {
    let mut v = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"preview_url": false, "body": body}
    });
    if let Some(id) = context_wamid {
        v["context"] = json!({"message_id": id});
    }
    v
}

/// The Cloud API's limits on interactive messages (Meta's "Interactive list messages" and "reply
/// buttons" reference): the simulator refuses what breaks them as the Cloud API does, and the
/// builders below never produce it.
pub mod interactive_limits {
    /// Rows in a list message, over all its sections.
    pub const LIST_ROWS: usize = 10;
    /// Sections in a list message.
    pub const LIST_SECTIONS: usize = 10;
    /// A row's title, and a section's.
    pub const ROW_TITLE_CHARS: usize = 24;
    /// A row's description.
    pub const ROW_DESCRIPTION_CHARS: usize = 72;
    /// A row's id (our signed payload).
    pub const ROW_ID_CHARS: usize = 200;
    /// The button that opens the list.
    pub const LIST_BUTTON_CHARS: usize = 20;
    /// The body text.
    pub const BODY_CHARS: usize = 4096;
    /// Reply buttons in a reply-button message.
    pub const REPLY_BUTTONS: usize = 3;
    /// A reply button's title.
    pub const REPLY_BUTTON_TITLE_CHARS: usize = 20;
    /// A reply button's id.
    pub const REPLY_BUTTON_ID_CHARS: usize = 256;
}

/// One row of a list message: our signed id, and what the patient sees (no PHI beyond the
/// allow-list).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRow {
    pub id: String,
    pub title: String,
    pub description: Option<String>,
}

/// An interactive list message (a service message: only inside the 24 h customer service window),
/// answering the message `context_wamid`. One section; at most [`interactive_limits::LIST_ROWS`]
/// rows, which the caller keeps to.
pub fn list_message(
    to: &str,
    body: &str,
    button: &str,
    rows: &[ListRow],
    context_wamid: Option<&str>,
) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = json!({"id": r.id, "title": r.title});
            if let Some(d) = &r.description {
                v["description"] = json!(d);
            }
            v
        })
        .collect();
    let mut v = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "interactive",
        "interactive": {
            "type": "list",
            "body": {"text": body},
            "action": {"button": button, "sections": [{"rows": rows}]}
        }
    });
    if let Some(id) = context_wamid {
        v["context"] = json!({"message_id": id});
    }
    v
}

/// What WhatsApp said when it accepted a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub wamid: String,
}

/// Why a send failed, classified for the outbox. Carries codes, never PHI.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later with backoff (130429 throughput, 131057 upgrade, 5xx, timeouts).
    #[error("temporary failure (code {code:?}): {detail}")]
    Retry { code: Option<i64>, detail: String },
    /// Too many messages to this recipient (131056): delay this recipient only.
    #[error("pair rate limit for this recipient (code {code})")]
    RecipientBusy { code: i64 },
    /// This message can never be delivered (131026, 131050, 131047...).
    #[error("permanent failure (code {code}): {detail}")]
    Permanent { code: i64, detail: String },
    /// The template is wrong (132000 parameter count, 132001 missing): stop it and alert.
    #[error("template problem (code {code}): {detail}")]
    HaltTemplate { code: i64, detail: String },
    /// The account cannot send (368 blocked, 131048 spam limit, 190 token expired): stop everything.
    #[error("account problem (code {code}): {detail}")]
    HaltAll { code: i64, detail: String },
}

/// What a Cloud API error code means, in a few words (codes only: never the error's details).
pub fn describe_error_code(c: i64) -> &'static str {
    match c {
        130429 => "throughput limit reached",
        131057 => "throughput upgrade in progress",
        131056 => "pair rate limit",
        131026 => "message undeliverable to this number",
        131050 => "user stopped marketing messages",
        131047 => "re-engagement window closed",
        131049 => "Meta chose not to deliver",
        132000 => "number of parameters does not match the template",
        132001 => "template does not exist in this name and language",
        368 => "account temporarily blocked for policy violations",
        131048 => "spam rate limit hit",
        190 => "access token expired or invalid",
        _ => "unclassified error",
    }
}

/// Classifies a Cloud API error response (`http_status`, `error.code`).
pub fn classify(http_status: u16, code: Option<i64>) -> SendError {
    match code {
        Some(c @ (130429 | 131057)) => SendError::Retry {
            code: Some(c),
            detail: describe_error_code(c).into(),
        },
        Some(131056) => SendError::RecipientBusy { code: 131056 },
        Some(c @ (131026 | 131050 | 131047 | 131049)) => SendError::Permanent {
            code: c,
            detail: describe_error_code(c).into(),
        },
        Some(c @ (132000 | 132001)) => SendError::HaltTemplate {
            code: c,
            detail: describe_error_code(c).into(),
        },
        Some(c @ (368 | 131048 | 190)) => SendError::HaltAll {
            code: c,
            detail: describe_error_code(c).into(),
        },
        _ if http_status >= 500 || http_status == 429 => SendError::Retry {
            code,
            detail: format!("HTTP {http_status}"),
        },
        Some(c) => SendError::Permanent {
            code: c,
            detail: describe_error_code(c).into(),
        },
        None => SendError::Retry {
            code: None,
            detail: format!("HTTP {http_status} without an error code"),
        },
    }
}

/// Classifies a Cloud API error response body. Meta asks to branch on `code` and
/// `error_data.details`: a #100 "Invalid parameter" whose details name a template parameter
/// ("Parameter name is missing or empty") is a template problem that every send would repeat, so it
/// halts the template like 132000 rather than failing one message. The details are Meta's text about
/// the request's shape; they are not kept (they could echo a value).
pub fn classify_response(http_status: u16, body: Option<&Value>) -> SendError {
    let code = body.and_then(|v| v["error"]["code"].as_i64());
    let details = body
        .and_then(|v| v["error"]["error_data"]["details"].as_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if code == Some(100) && details.contains("parameter") {
        return SendError::HaltTemplate {
            code: 100,
            detail:
                "invalid template parameter (e.g. a NAMED template sent without parameter names)"
                    .into(),
        };
    }
    classify(http_status, code)
}

/// A patient's media file, fetched for a person to see. PHI: never logged, never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct MediaFile {
    /// As WhatsApp reports it (`image/jpeg`, `application/pdf`...).
    pub mime_type: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for MediaFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaFile")
            .field("mime_type", &self.mime_type)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// The largest media file fetched (WhatsApp's own limit is 100 MB, for documents).
pub const MEDIA_MAX_BYTES: usize = 100 * 1024 * 1024;

/// Moves a Cloud API request body to WhatsApp (or to the simulator).
#[async_trait]
pub trait WhatsAppTransport: Send + Sync {
    /// Sends one message body; returns the WhatsApp message id once accepted.
    async fn send(&self, body: &Value) -> Result<Accepted, SendError>;

    /// Fetches the media a patient sent, by its Cloud API media id (`GET /{version}/{media-id}`
    /// for its short-lived URL, then the file). Only when a person opens it; the caller audits.
    async fn fetch_media(&self, media_id: &str) -> Result<MediaFile, SendError> {
        let _ = media_id;
        Err(SendError::Permanent {
            code: 0,
            detail: "this transport cannot fetch media".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_body_has_the_cloud_api_shape() {
        let m = TemplateMessage {
            to: "5511987654321".into(),
            template: "appt_reminder".into(),
            language: "pt_BR".into(),
            body: vec![BodyParameter {
                name: None,
                text: "Ana".into(),
            }],
            header: None,
            quick_replies: vec!["v1.1.confirm.0.ab".into()],
            callback: "job:1".into(),
        };
        let v = m.to_json();
        assert_eq!(v["messaging_product"], "whatsapp");
        assert_eq!(v["template"]["language"]["code"], "pt_BR");
        assert_eq!(v["template"]["components"][0]["type"], "body");
        assert_eq!(v["template"]["components"][1]["index"], "0");
        assert_eq!(v["template"]["components"][1]["sub_type"], "quick_reply");
        assert_eq!(v["biz_opaque_callback_data"], "job:1");
    }

    #[test]
    fn a_list_message_has_the_cloud_api_shape() {
        let rows = [ListRow {
            id: "v1.1.nps9.0.ab".into(),
            title: "9".into(),
            description: Some("Extremely likely".into()),
        }];
        let v = list_message("5511", "How likely...", "Choose", &rows, Some("wamid.X"));
        assert_eq!(v["type"], "interactive");
        assert_eq!(v["interactive"]["type"], "list");
        assert_eq!(v["interactive"]["action"]["button"], "Choose");
        let row = &v["interactive"]["action"]["sections"][0]["rows"][0];
        assert_eq!(row["id"], "v1.1.nps9.0.ab");
        assert_eq!(row["description"], "Extremely likely");
        assert_eq!(v["context"]["message_id"], "wamid.X");
    }

    #[test]
    fn header_parameters_come_first_and_carry_their_name() {
        let m = TemplateMessage {
            to: "5511987654321".into(),
            template: "appt_reminder".into(),
            language: "pt_BR".into(),
            body: vec![BodyParameter {
                name: Some("date".into()),
                text: "08/03".into(),
            }],
            header: Some(BodyParameter {
                name: Some("clinic".into()),
                text: "Clinica Centro".into(),
            }),
            quick_replies: vec![],
            callback: "job:2".into(),
        };
        let v = m.to_json();
        let c = &v["template"]["components"];
        assert_eq!(c[0]["type"], "header");
        assert_eq!(c[0]["parameters"][0]["parameter_name"], "clinic");
        assert_eq!(c[0]["parameters"][0]["text"], "Clinica Centro");
        assert_eq!(c[1]["type"], "body");
        assert_eq!(c.as_array().unwrap().len(), 2);
    }

    #[test]
    fn error_codes_map_to_the_documented_treatment() {
        assert!(matches!(
            classify(429, Some(130429)),
            SendError::Retry { .. }
        ));
        assert!(matches!(
            classify(400, Some(131057)),
            SendError::Retry { .. }
        ));
        assert!(matches!(
            classify(400, Some(131056)),
            SendError::RecipientBusy { .. }
        ));
        for c in [131026, 131050, 131047] {
            assert!(matches!(
                classify(400, Some(c)),
                SendError::Permanent { .. }
            ));
        }
        for c in [132000, 132001] {
            assert!(matches!(
                classify(400, Some(c)),
                SendError::HaltTemplate { .. }
            ));
        }
        for c in [368, 131048, 190] {
            assert!(matches!(classify(400, Some(c)), SendError::HaltAll { .. }));
        }
        assert!(matches!(classify(503, None), SendError::Retry { .. }));
        let named = json!({"error": {"code": 100, "error_data": {"details": "Parameter name is missing or empty"}}});
        assert!(matches!(
            classify_response(400, Some(&named)),
            SendError::HaltTemplate { code: 100, .. }
        ));
        let other = json!({"error": {"code": 100, "error_data": {"details": "to is required"}}});
        assert!(matches!(
            classify_response(400, Some(&other)),
            SendError::Permanent { code: 100, .. }
        ));
        assert!(matches!(classify(500, Some(1)), SendError::Retry { .. }));
    }
}
