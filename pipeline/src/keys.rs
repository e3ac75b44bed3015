//! Keys derived from the one installation secret.
//!
//! The secret (`MEDRELAY_SECRET`, or the key file `medrelay init` writes) never appears in config or
//! logs. From it we derive one key per use, so that a contact hash cannot be turned into a valid button
//! signature and vice versa, and an audit seal is of no use anywhere else.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The per-use keys.
#[derive(Clone)]
pub struct Keys {
    /// HMAC states already keyed (cloned per hash: bulk imports hash two values per row).
    contact: Hmac<Sha256>,
    button: Vec<u8>,
    /// Seals what a browser carries through a sign-in at the identity provider.
    sign_in: Vec<u8>,
    content: Hmac<Sha256>,
    /// Chains and seals the audit trail (records, head, checkpoints).
    audit: Hmac<Sha256>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<secret>)")
    }
}

fn derive(secret: &[u8], label: &str) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
    m.update(label.as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length")
}

/// Keyed hash, hex, truncated to 128 bits (enough for correlation, not reversible without the key).
fn keyed(keyed_mac: &Hmac<Sha256>, data: &[u8]) -> String {
    let mut m = keyed_mac.clone();
    m.update(data);
    hex::encode(&m.finalize().into_bytes()[..16])
}

impl Keys {
    /// Derives the keys from the installation secret.
    pub fn from_secret(secret: &[u8]) -> Self {
        Keys {
            contact: mac(&derive(secret, "medrelay/contact-hash/v1")),
            button: derive(secret, "medrelay/button-payload/v1"),
            sign_in: derive(secret, "medrelay/oidc-pending/v1"),
            content: mac(&derive(secret, "medrelay/content-hash/v1")),
            audit: mac(&derive(secret, "medrelay/audit-chain/v1")),
        }
    }

    /// The keyed hash of a contact (E.164 number or WhatsApp id, `+` and non-digits ignored): the only
    /// form in which a patient may appear in logs, metrics, consent and audit records.
    pub fn contact_hash(&self, phone: &str) -> String {
        let digits: Vec<u8> = phone.bytes().filter(u8::is_ascii_digit).collect();
        format!("c_{}", keyed(&self.contact, &digits))
    }

    /// Key for signing quick-reply payloads.
    pub fn button_key(&self) -> &[u8] {
        &self.button
    }

    /// Key for sealing a pending OpenID Connect sign-in (the console's cookie).
    pub fn sign_in_key(&self) -> &[u8] {
        &self.sign_in
    }

    /// Keyed hash of an appointment's content, to tell a real change from a repeat.
    pub fn content_hash(&self, data: &[u8]) -> String {
        keyed(&self.content, data)
    }

    /// The audit trail's HMAC-SHA256 (hex, full length) over `parts`, each followed by a unit
    /// separator. Someone who can write the database but does not hold the secret cannot compute it,
    /// so cannot rewrite a record, the head or a checkpoint and make it verify.
    pub fn audit_mac(&self, parts: &[&str]) -> String {
        hex::encode(self.audit_state(parts).finalize().into_bytes())
    }

    /// Whether `stored` (hex) is the audit MAC of `parts`, compared in constant time.
    pub fn audit_mac_matches(&self, parts: &[&str], stored: &str) -> bool {
        hex::decode(stored).is_ok_and(|tag| self.audit_state(parts).verify_slice(&tag).is_ok())
    }

    fn audit_state(&self, parts: &[&str]) -> Hmac<Sha256> {
        let mut m = self.audit.clone();
        for part in parts {
            m.update(part.as_bytes());
            m.update(&[0x1f]);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_hash_ignores_formatting_and_hides_the_number() {
        let k = Keys::from_secret(b"s");
        let h = k.contact_hash("+55 11 98765-4321");
        assert_eq!(h, k.contact_hash("5511987654321"));
        assert!(!h.contains("98765"));
        assert_ne!(h, Keys::from_secret(b"t").contact_hash("5511987654321"));
        assert!(!format!("{k:?}").contains('s'.to_string().repeat(2).as_str()));
    }

    #[test]
    fn audit_mac_needs_the_secret_and_separates_parts() {
        let k = Keys::from_secret(b"s");
        let tag = k.audit_mac(&["record", "1", "genesis"]);
        assert_eq!(tag.len(), 64);
        assert!(k.audit_mac_matches(&["record", "1", "genesis"], &tag));
        assert!(!k.audit_mac_matches(&["record", "1genesis"], &tag));
        assert!(!Keys::from_secret(b"t").audit_mac_matches(&["record", "1", "genesis"], &tag));
        assert!(!k.audit_mac_matches(&["record", "1", "genesis"], "not hex"));
    }
}
