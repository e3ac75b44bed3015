//! WhatsApp Cloud API webhook bodies: parsing, then what the inbound side does with each message
//! (quick-reply payload verification, text keywords), and the body signature.
//!
//! Properties: no panic; account notification fields are bounded (64 chars); a payload nobody
//! signed is never accepted; a body signed with the app secret verifies, and the same signature
//! under another secret does not.

#![no_main]

use libfuzzer_sys::fuzz_target;
use medrelay_mapping::reply::{ButtonPayload, classify_text};
use medrelay_pipeline::whatsapp::webhook::{AccountEvent, InboundContent, parse, sign, verify};

const APP_SECRET: &[u8] = b"fuzz-app-secret";
const BUTTON_KEY: &[u8] = b"fuzz-button-key-that-nobody-knows";

fuzz_target!(|data: &[u8]| {
    let now = jiff::Timestamp::from_second(1_796_000_000).expect("a valid instant");
    if let Ok(webhook) = parse(data) {
        // Account notifications reach alerts: every code and name in them is cut to 64 chars.
        for e in &webhook.account {
            let words: Vec<&String> = match e {
                AccountEvent::TemplateStatus {
                    name,
                    language,
                    event,
                    reason,
                } => [name, language, event].into_iter().chain(reason).collect(),
                AccountEvent::TemplateCategory {
                    name,
                    language,
                    previous,
                    new,
                    upcoming,
                    ..
                } => [name, language, new]
                    .into_iter()
                    .chain(previous)
                    .chain(upcoming)
                    .collect(),
                AccountEvent::NumberQuality {
                    display_phone_number,
                    event,
                    limit,
                } => [display_phone_number, event]
                    .into_iter()
                    .chain(limit)
                    .collect(),
            };
            assert!(words.iter().all(|w| w.chars().count() <= 64), "{e:?}");
        }
        for m in &webhook.messages {
            match &m.content {
                InboundContent::Button { payload }
                | InboundContent::Interactive { id: payload, .. } => {
                    // The fuzzer does not know the key: a payload it made up never verifies.
                    assert!(ButtonPayload::verify(payload, BUTTON_KEY, now).is_err());
                }
                InboundContent::Text { body } => {
                    let _ = classify_text(body);
                }
                InboundContent::Media { kind, .. } => assert!(
                    matches!(
                        kind.as_str(),
                        "image" | "document" | "audio" | "video" | "sticker"
                    ),
                    "{kind}"
                ),
                InboundContent::Other { .. } => {}
            }
        }
    }
    let signature = sign(APP_SECRET, data);
    assert!(verify(APP_SECRET, data, Some(&signature)));
    assert!(!verify(b"another-secret", data, Some(&signature)));
    assert!(!verify(APP_SECRET, data, None));
});
