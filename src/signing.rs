//! Signatures: Cirrus CI's `X-Cirrus-Signature` and Standard Webhooks' `webhook-signature`.
//!
//! Both are HMAC-SHA256. Cirrus signs the raw body with the secret's UTF-8 bytes and sends
//! lowercase hex. Standard Webhooks signs `"{id}.{timestamp}.{body}"` and sends `v1,<base64>`;
//! its key is the secret's bytes, or the decoded base64 of a `whsec_…` secret.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// The `X-Cirrus-Signature` of a body: lowercase hex HMAC-SHA256.
pub fn cirrus_signature(secret: &str, body: &[u8]) -> String {
    sign_cirrus(mac(secret.as_bytes()), body)
}

fn sign_cirrus(mut mac: HmacSha256, body: &[u8]) -> String {
    mac.update(body);
    let mut hex = [0; 64];
    hex::encode_to_slice(mac.finalize().into_bytes(), &mut hex).expect("32 bytes are 64 digits");
    String::from_utf8(hex.to_vec()).expect("hex digits are UTF-8")
}

/// Checks an `X-Cirrus-Signature` in constant time; hex in either case is accepted.
pub fn verify_cirrus(secret: &str, body: &[u8], signature: &str) -> bool {
    let Ok(expected) = hex::decode(signature.trim()) else {
        return false;
    };
    let mut mac = mac(secret.as_bytes());
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Refuses a secret that begins as a Standard Webhooks secret (`whsec_`) but does not go on
/// in base64: it would be signed with its own bytes, and a receiver's library, which decodes
/// what follows the prefix, would reject every delivery.
pub fn check_secret(secret: &str) -> crate::Result<()> {
    match secret.strip_prefix("whsec_") {
        Some(encoded) if BASE64.decode(encoded).map_or(true, |key| key.is_empty()) => {
            Err(crate::Error::Invalid(
                "A secret that begins with `whsec_` must go on in base64, as Standard Webhooks secrets do.".into(),
            ))
        }
        _ => Ok(()),
    }
}

/// The Standard Webhooks key of a secret.
pub fn standard_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|encoded| BASE64.decode(encoded).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// The `webhook-signature` value: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn standard_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    sign_standard(mac(&standard_key(secret)), id, timestamp, body)
}

fn sign_standard(mut mac: HmacSha256, id: &str, timestamp: i64, body: &[u8]) -> String {
    standard_content(&mut mac, id, timestamp, body);
    let mut signature = String::with_capacity(47);
    signature.push_str("v1,");
    BASE64.encode_string(mac.finalize().into_bytes(), &mut signature);
    signature
}

/// Feeds `mac` what Standard Webhooks signs, `"{id}.{timestamp}.{body}"`, piece by piece.
fn standard_content(mac: &mut HmacSha256, id: &str, timestamp: i64, body: &[u8]) {
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(itoa::Buffer::new().format(timestamp).as_bytes());
    mac.update(b".");
    mac.update(body);
}

/// Both signatures of one secret, with its keys set up once: each signature starts from a
/// copy of the keyed state instead of hashing the key again.
#[derive(Clone)]
pub struct Signer {
    cirrus: HmacSha256,
    standard: HmacSha256,
}

impl Signer {
    pub fn new(secret: &str) -> Self {
        Self {
            cirrus: mac(secret.as_bytes()),
            standard: mac(&standard_key(secret)),
        }
    }

    /// [`cirrus_signature`] of the secret.
    pub fn cirrus(&self, body: &[u8]) -> String {
        sign_cirrus(self.cirrus.clone(), body)
    }

    /// [`standard_signature`] of the secret.
    pub fn standard(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        sign_standard(self.standard.clone(), id, timestamp, body)
    }
}

/// Checks a `webhook-signature` header, which may list several space-separated signatures.
pub fn verify_standard(secret: &str, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    header.split_whitespace().any(|candidate| {
        let Some(encoded) = candidate.strip_prefix("v1,") else {
            return false;
        };
        let Ok(expected) = BASE64.decode(encoded) else {
            return false;
        };
        let mut mac = mac(&standard_key(secret));
        standard_content(&mut mac, id, timestamp, body);
        mac.verify_slice(&expected).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cirrus_signature_matches_a_known_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let signature = cirrus_signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            signature,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_cirrus(
            "Jefe",
            b"what do ya want for nothing?",
            &signature
        ));
        assert!(verify_cirrus(
            "Jefe",
            b"what do ya want for nothing?",
            &signature.to_uppercase()
        ));
        assert!(!verify_cirrus(
            "Jefe",
            b"what do ya want for nothing!",
            &signature
        ));
        assert!(!verify_cirrus("Jefe", b"x", "not hex"));
    }

    #[test]
    fn standard_signature_matches_the_specification_example() {
        // The example in the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let signature = standard_signature(secret, id, 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify_standard(
            secret,
            id,
            1614265330,
            body,
            &format!("v1,bogus {signature}")
        ));
        assert!(!verify_standard(secret, id, 1614265331, body, &signature));
    }

    #[test]
    fn a_signer_signs_as_the_functions_do_each_time() {
        let signer = Signer::new("Jefe");
        let body = b"what do ya want for nothing?";
        for _ in 0..2 {
            assert_eq!(
                signer.cirrus(body),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
            );
        }
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let signer = Signer::new(secret);
        let (id, body) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", br#"{"test": 2432232314}"#);
        for _ in 0..2 {
            assert_eq!(
                signer.standard(id, 1614265330, body),
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
            );
        }
        assert_ne!(
            signer.standard(id, 1614265331, body),
            standard_signature(secret, id, 1614265330, body)
        );
    }

    #[test]
    fn a_plain_secret_is_used_as_bytes_for_standard_webhooks() {
        assert_eq!(standard_key("plain-secret"), b"plain-secret");
        assert_eq!(standard_key("whsec_aGVsbG8="), b"hello");
    }
}
