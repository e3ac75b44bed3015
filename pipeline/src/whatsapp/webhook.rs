//! Cloud API webhooks: tolerant parsing, `X-Hub-Signature-256` signing and verification, and builders
//! (used by the simulator) that produce the same JSON shapes Meta sends.
//!
//! Parsing walks `entry[].changes[].value` and takes only what we use; unknown fields and unknown
//! message types are kept as [`InboundContent::Other`], never an error.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// A delivery status update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusUpdate {
    pub wamid: String,
    pub status: String,
    pub timestamp: i64,
    /// WhatsApp id (digits) of the recipient: PHI.
    pub recipient_id: String,
    pub error_code: Option<i64>,
    /// Our `biz_opaque_callback_data`, echoed back.
    pub callback: Option<String>,
    /// How Meta prices the message (`pricing`), when the status carries it.
    pub pricing: Option<Pricing>,
}

/// The `pricing` object of a status webhook: what the message costs is decided by Meta per
/// message (category and type), and the report multiplies it by the site's rate table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pricing {
    /// `billable` (absent in newer payloads: then `type` decides).
    pub billable: bool,
    /// `utility`, `marketing`, `authentication`, `service`... (lower case, at most 32 chars).
    pub category: String,
    /// `regular`, `free_customer_service`, `free_entry_point` (empty when absent).
    pub kind: String,
}

impl Pricing {
    /// Reads a `pricing` object; `None` without a category.
    fn parse(v: &Value) -> Option<Pricing> {
        let cut = |s: &str| s.chars().take(32).collect::<String>().to_ascii_lowercase();
        let category = cut(v["category"].as_str()?);
        let kind = v["type"].as_str().map(cut).unwrap_or_default();
        let billable = v["billable"]
            .as_bool()
            .unwrap_or(kind.is_empty() || kind == "regular");
        Some(Pricing {
            billable,
            category,
            kind,
        })
    }

    fn to_json(&self) -> Value {
        let mut p =
            json!({"billable": self.billable, "pricing_model": "PMP", "category": self.category});
        if !self.kind.is_empty() {
            p["type"] = json!(self.kind);
        }
        p
    }
}

/// What a patient sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboundContent {
    /// A template quick-reply tap: our payload comes back.
    Button { payload: String },
    /// An interactive reply button or list row: our id comes back, with the title the patient
    /// saw (`list` tells a list row from a reply button).
    Interactive {
        id: String,
        list: bool,
        title: Option<String>,
    },
    /// Free text (PHI).
    Text { body: String },
    /// An image, document, audio, video or sticker: its Cloud API media id (fetched only when
    /// staff open it) and caption (PHI).
    Media {
        kind: String,
        media_id: Option<String>,
        caption: Option<String>,
    },
    /// Anything else (location, contacts, reaction, a type added later).
    Other { kind: String },
}

/// One inbound message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundMessage {
    pub id: String,
    /// Sender WhatsApp id (digits): PHI.
    pub from: String,
    pub timestamp: i64,
    /// The message being answered (`context.id`).
    pub context_id: Option<String>,
    pub content: InboundContent,
}

/// An account-level notification about a template or the business number: nothing a patient
/// wrote, but what operations must hear about before sends start failing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountEvent {
    /// `message_template_status_update`: APPROVED, PAUSED, DISABLED, REJECTED, FLAGGED, ...
    TemplateStatus {
        name: String,
        language: String,
        event: String,
        /// Meta's reason code (`NONE`, `INCORRECT_CATEGORY`, ...), if any.
        reason: Option<String>,
    },
    /// `template_category_update`: a completed change (`previous` set) or one announced for
    /// `effective_at` (`upcoming` set: the category it will become).
    TemplateCategory {
        name: String,
        language: String,
        previous: Option<String>,
        new: String,
        upcoming: Option<String>,
        effective_at: Option<i64>,
    },
    /// `phone_number_quality_update`: the number's (or portfolio's) messaging limit or quality.
    NumberQuality {
        display_phone_number: String,
        event: String,
        /// `max_daily_conversations_per_business`, else the older `current_limit` (`TIER_2K`...).
        limit: Option<String>,
    },
}

/// A parsed webhook delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Webhook {
    pub statuses: Vec<StatusUpdate>,
    pub messages: Vec<InboundMessage>,
    /// Template and business-number notifications (no patient data).
    pub account: Vec<AccountEvent>,
}

/// Codes and names from an account notification are short ASCII words: anything else is cut so a
/// malformed body cannot put an essay into an alert.
fn word(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    Some(s.chars().take(64).collect())
}

/// The account event in one `changes[]` item, if it is one we act on.
fn account_event(field: &str, value: &Value) -> Option<AccountEvent> {
    let name = || word(&value["message_template_name"]);
    let language = || word(&value["message_template_language"]).unwrap_or_default();
    match field {
        "message_template_status_update" => Some(AccountEvent::TemplateStatus {
            name: name()?,
            language: language(),
            event: word(&value["event"])?,
            reason: word(&value["reason"]),
        }),
        "template_category_update" => Some(AccountEvent::TemplateCategory {
            name: name()?,
            language: language(),
            previous: word(&value["previous_category"]),
            new: word(&value["new_category"])?,
            upcoming: word(&value["correct_category"]),
            effective_at: num(&value["category_update_timestamp"]),
        }),
        "phone_number_quality_update" => Some(AccountEvent::NumberQuality {
            display_phone_number: word(&value["display_phone_number"]).unwrap_or_default(),
            event: word(&value["event"])?,
            limit: word(&value["max_daily_conversations_per_business"])
                .or_else(|| word(&value["current_limit"])),
        }),
        _ => None,
    }
}

/// Why a webhook body could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook body is not JSON")]
    NotJson,
    #[error("webhook body is not a WhatsApp Business Account notification")]
    NotWhatsApp,
}

fn num(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

fn string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// Parses a webhook body.
pub fn parse(body: &[u8]) -> Result<Webhook, WebhookError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| WebhookError::NotJson)?;
    if v.get("object").and_then(Value::as_str) != Some("whatsapp_business_account") {
        return Err(WebhookError::NotWhatsApp);
    }
    let mut out = Webhook::default();
    let empty = Vec::new();
    for entry in v["entry"].as_array().unwrap_or(&empty) {
        for change in entry["changes"].as_array().unwrap_or(&empty) {
            let value = &change["value"];
            if let Some(event) = change["field"]
                .as_str()
                .and_then(|f| account_event(f, value))
            {
                out.account.push(event);
                continue;
            }
            for s in value["statuses"].as_array().unwrap_or(&empty) {
                let (Some(wamid), Some(status)) = (string(&s["id"]), string(&s["status"])) else {
                    continue;
                };
                out.statuses.push(StatusUpdate {
                    wamid,
                    status,
                    timestamp: num(&s["timestamp"]).unwrap_or(0),
                    recipient_id: string(&s["recipient_id"]).unwrap_or_default(),
                    error_code: s["errors"]
                        .as_array()
                        .and_then(|e| e.first())
                        .and_then(|e| num(&e["code"])),
                    callback: string(&s["biz_opaque_callback_data"]),
                    pricing: Pricing::parse(&s["pricing"]),
                });
            }
            for m in value["messages"].as_array().unwrap_or(&empty) {
                let (Some(id), Some(from)) = (string(&m["id"]), string(&m["from"])) else {
                    continue;
                };
                let kind = m["type"].as_str().unwrap_or("unknown");
                let content = match kind {
                    "button" => string(&m["button"]["payload"])
                        .map(|payload| InboundContent::Button { payload }),
                    "interactive" => {
                        let i = &m["interactive"];
                        let (reply, list) = if i["list_reply"].is_object() {
                            (&i["list_reply"], true)
                        } else {
                            (&i["button_reply"], false)
                        };
                        string(&reply["id"]).map(|id| InboundContent::Interactive {
                            id,
                            list,
                            title: string(&reply["title"]),
                        })
                    }
                    "text" => string(&m["text"]["body"]).map(|body| InboundContent::Text { body }),
                    "image" | "document" | "audio" | "video" | "sticker" => {
                        Some(InboundContent::Media {
                            kind: kind.into(),
                            media_id: string(&m[kind]["id"]),
                            caption: string(&m[kind]["caption"]),
                        })
                    }
                    _ => None,
                }
                .unwrap_or_else(|| InboundContent::Other {
                    kind: kind.chars().take(32).collect(),
                });
                out.messages.push(InboundMessage {
                    id,
                    from,
                    timestamp: num(&m["timestamp"]).unwrap_or(0),
                    context_id: string(&m["context"]["id"]),
                    content,
                });
            }
        }
    }
    Ok(out)
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length")
}

/// The `X-Hub-Signature-256` header value for a raw body.
pub fn sign(app_secret: &[u8], body: &[u8]) -> String {
    let mut m = mac(app_secret);
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// Checks an `X-Hub-Signature-256` header against the raw body, in constant time.
pub fn verify(app_secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut m = mac(app_secret);
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

/// Identity of the business number in webhook metadata.
#[derive(Clone, Debug)]
pub struct BusinessNumber {
    pub waba_id: String,
    pub phone_number_id: String,
    pub display_phone_number: String,
}

fn envelope(business: &BusinessNumber, value: Value) -> Value {
    json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": business.waba_id,
            "changes": [{"value": value, "field": "messages"}]
        }]
    })
}

fn metadata(business: &BusinessNumber) -> Value {
    json!({"display_phone_number": business.display_phone_number, "phone_number_id": business.phone_number_id})
}

/// A status webhook as Meta sends it.
pub fn status_webhook(business: &BusinessNumber, update: &StatusUpdate) -> Value {
    let mut s = json!({
        "id": update.wamid,
        "status": update.status,
        "timestamp": update.timestamp.to_string(),
        "recipient_id": update.recipient_id,
    });
    if let Some(p) = update
        .pricing
        .as_ref()
        .filter(|_| update.status != "failed")
    {
        s["conversation"] = json!({"id": format!("conv-{}", update.recipient_id.len()), "origin": {"type": p.category}});
        s["pricing"] = p.to_json();
    }
    if let Some(c) = update.error_code {
        s["errors"] = json!([{"code": c, "title": "Message failed", "message": "Message failed", "error_data": {"details": "Simulated failure"}}]);
    }
    if let Some(cb) = &update.callback {
        s["biz_opaque_callback_data"] = json!(cb);
    }
    envelope(
        business,
        json!({"messaging_product": "whatsapp", "metadata": metadata(business), "statuses": [s]}),
    )
}

/// An inbound message webhook as Meta sends it (`contacts` + `messages`).
pub fn message_webhook(business: &BusinessNumber, message: &InboundMessage) -> Value {
    let mut m = json!({
        "from": message.from,
        "id": message.id,
        "timestamp": message.timestamp.to_string(),
    });
    if let Some(ctx) = &message.context_id {
        m["context"] = json!({"from": business.display_phone_number, "id": ctx});
    }
    match &message.content {
        InboundContent::Button { payload } => {
            m["type"] = json!("button");
            m["button"] =
                json!({"payload": payload, "text": payload.split('.').nth(2).unwrap_or("")});
        }
        InboundContent::Interactive { id, list, title } => {
            let title = title.as_deref().unwrap_or("Reply");
            m["type"] = json!("interactive");
            m["interactive"] = if *list {
                json!({"type": "list_reply", "list_reply": {"id": id, "title": title}})
            } else {
                json!({"type": "button_reply", "button_reply": {"id": id, "title": title}})
            };
        }
        InboundContent::Text { body } => {
            m["type"] = json!("text");
            m["text"] = json!({"body": body});
        }
        InboundContent::Media {
            kind,
            media_id,
            caption,
        } => {
            m["type"] = json!(kind);
            m[kind.as_str()] = json!({"id": media_id, "mime_type": "image/jpeg"});
            if let Some(c) = caption {
                m[kind.as_str()]["caption"] = json!(c);
            }
        }
        InboundContent::Other { kind } => {
            m["type"] = json!(kind);
        }
    }
    envelope(
        business,
        json!({
            "messaging_product": "whatsapp",
            "metadata": metadata(business),
            "contacts": [{"profile": {"name": "Simulated patient"}, "wa_id": message.from}],
            "messages": [m]
        }),
    )
}

/// An account notification as Meta sends it (`field` names the kind; no `metadata`).
pub fn account_webhook(business: &BusinessNumber, event: &AccountEvent) -> Value {
    let (field, value) = match event {
        AccountEvent::TemplateStatus {
            name,
            language,
            event,
            reason,
        } => (
            "message_template_status_update",
            json!({"event": event, "message_template_id": 1_000_000 + name.len(),
                   "message_template_name": name, "message_template_language": language,
                   "reason": reason, "message_template_category": "UTILITY"}),
        ),
        AccountEvent::TemplateCategory {
            name,
            language,
            previous,
            new,
            upcoming,
            effective_at,
        } => {
            let mut v = json!({"message_template_id": 1_000_000 + name.len(),
                "message_template_name": name, "message_template_language": language,
                "new_category": new});
            if let Some(p) = previous {
                v["previous_category"] = json!(p);
            }
            if let Some(c) = upcoming {
                v["correct_category"] = json!(c);
            }
            if let Some(t) = effective_at {
                v["category_update_timestamp"] = json!(t);
            }
            ("template_category_update", v)
        }
        AccountEvent::NumberQuality {
            display_phone_number,
            event,
            limit,
        } => (
            "phone_number_quality_update",
            json!({"display_phone_number": display_phone_number, "event": event,
                   "max_daily_conversations_per_business": limit}),
        ),
    };
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": business.waba_id, "time": 1_751_247_548, "changes": [{"value": value, "field": field}]}]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_round_trip_and_rejections() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let sig = sign(b"secret", body);
        assert!(verify(b"secret", body, Some(&sig)));
        assert!(!verify(b"other", body, Some(&sig)));
        assert!(!verify(b"secret", b"{}", Some(&sig)));
        assert!(!verify(b"secret", body, None));
        assert!(!verify(b"secret", body, Some("sha256=zz")));
        assert!(!verify(b"secret", body, Some(&sig[7..])));
    }

    #[test]
    fn builders_round_trip_through_the_parser() {
        let b = BusinessNumber {
            waba_id: "1".into(),
            phone_number_id: "2".into(),
            display_phone_number: "3".into(),
        };
        let st = StatusUpdate {
            wamid: "wamid.A".into(),
            status: "failed".into(),
            timestamp: 10,
            recipient_id: "5511".into(),
            error_code: Some(131026),
            callback: Some("job:7".into()),
            pricing: None,
        };
        let parsed = parse(status_webhook(&b, &st).to_string().as_bytes()).unwrap();
        assert_eq!(parsed.statuses, vec![st.clone()]);
        let priced = StatusUpdate {
            status: "delivered".into(),
            error_code: None,
            pricing: Some(Pricing {
                billable: false,
                category: "utility".into(),
                kind: "free_customer_service".into(),
            }),
            ..st
        };
        let parsed = parse(status_webhook(&b, &priced).to_string().as_bytes()).unwrap();
        assert_eq!(parsed.statuses, vec![priced]);
        let msg = InboundMessage {
            id: "wamid.B".into(),
            from: "5511".into(),
            timestamp: 11,
            context_id: Some("wamid.A".into()),
            content: InboundContent::Button {
                payload: "v1.7.confirm.1.ab".into(),
            },
        };
        let parsed = parse(message_webhook(&b, &msg).to_string().as_bytes()).unwrap();
        assert_eq!(parsed.messages, vec![msg]);
    }

    #[test]
    fn account_webhooks_from_pywa_and_our_builders_parse() {
        let fixture = |name: &str| -> Value {
            let path = format!(
                "{}/tests/fixtures/whatsapp/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
        };
        let v = fixture("template_category_update.json");
        let parsed = parse(v["marketing"].to_string().as_bytes()).unwrap();
        assert_eq!(
            parsed.account,
            vec![AccountEvent::TemplateCategory {
                name: "my_message_template".into(),
                language: "he".into(),
                previous: None,
                new: "MARKETING".into(),
                upcoming: None,
                effective_at: None,
            }]
        );
        assert!(parsed.statuses.is_empty() && parsed.messages.is_empty());
        let v = fixture("template_status_update.json");
        let parsed = parse(v["approved"].to_string().as_bytes()).unwrap();
        assert_eq!(
            parsed.account,
            vec![AccountEvent::TemplateStatus {
                name: "my_message_template".into(),
                language: "pt-BR".into(),
                event: "APPROVED".into(),
                reason: None,
            }]
        );
        let b = BusinessNumber {
            waba_id: "1".into(),
            phone_number_id: "2".into(),
            display_phone_number: "15550783881".into(),
        };
        for event in [
            AccountEvent::TemplateStatus {
                name: "appointment_reminder".into(),
                language: "en_US".into(),
                event: "PAUSED".into(),
                reason: Some("NONE".into()),
            },
            AccountEvent::TemplateCategory {
                name: "appointment_reminder".into(),
                language: "en_US".into(),
                previous: None,
                new: "UTILITY".into(),
                upcoming: Some("MARKETING".into()),
                effective_at: Some(1_746_169_200),
            },
            AccountEvent::NumberQuality {
                display_phone_number: "15550783881".into(),
                event: "DOWNGRADE".into(),
                limit: Some("TIER_250".into()),
            },
        ] {
            let parsed = parse(account_webhook(&b, &event).to_string().as_bytes()).unwrap();
            assert_eq!(parsed.account, vec![event]);
        }
    }

    #[test]
    fn unknown_types_and_fields_are_ignored_not_errors() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"new_field":1,"messages":[{"id":"w","from":"1","timestamp":"2","type":"hologram","hologram":{}}]}}]}]}"#;
        let parsed = parse(body).unwrap();
        assert_eq!(
            parsed.messages[0].content,
            InboundContent::Other {
                kind: "hologram".into()
            }
        );
        assert_eq!(parse(b"not json"), Err(WebhookError::NotJson));
        assert_eq!(parse(b"{}"), Err(WebhookError::NotWhatsApp));
    }
}
