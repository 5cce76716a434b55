//! Verification code as each system's own receivers write it, independent of Herald's
//! `signing` module: a receiver someone else wrote.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::support::Received;

fn hex_hmac(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Foundries.io's example receiver: the header must start with `sha256:`, and the rest must
/// equal the hex digest of the body.
pub fn jobserv(received: &Received, secret: &str) -> bool {
    let Some(signature) = received.header("x-jobserv-sig") else {
        return false;
    };
    let Some(digest) = signature.strip_prefix("sha256:") else {
        return false;
    };
    digest == hex_hmac(secret, &received.body)
}

/// The GitHub webhook receiver everyone copies: `sha256=` and the hex digest.
pub fn github(received: &Received, secret: &str) -> bool {
    let expected = format!("sha256={}", hex_hmac(secret, &received.body));
    received.header("x-hub-signature-256") == Some(expected.as_str())
}

/// Cirrus CI's receivers: the hex digest itself.
pub fn cirrus(received: &Received, secret: &str) -> bool {
    received.header("x-cirrus-signature") == Some(hex_hmac(secret, &received.body).as_str())
}

/// GitLab's (and Codeup's) receivers compare the token header with the secret they hold.
pub fn token(received: &Received, header: &str, secret: &str) -> bool {
    received.header(header) == Some(secret)
}

/// A Standard Webhooks receiver: any of the space-separated `v1,` signatures of
/// `{id}.{timestamp}.{body}` matches, keyed by the secret's bytes.
pub fn standard(received: &Received, secret: &str) -> bool {
    let (Some(id), Some(timestamp), Some(signatures)) = (
        received.header("webhook-id"),
        received.header("webhook-timestamp"),
        received.header("webhook-signature"),
    ) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&received.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    signatures.split(' ').any(|candidate| candidate == expected)
}
