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
    let mut mac = mac(secret.as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
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

/// The Standard Webhooks key of a secret.
pub fn standard_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|encoded| BASE64.decode(encoded).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// The `webhook-signature` value: `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn standard_signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = mac(&standard_key(secret));
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
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
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
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
    fn a_plain_secret_is_used_as_bytes_for_standard_webhooks() {
        assert_eq!(standard_key("plain-secret"), b"plain-secret");
        assert_eq!(standard_key("whsec_aGVsbG8="), b"hello");
    }
}
