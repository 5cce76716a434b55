//! Secrets at rest: endpoint signing secrets and URL credentials, sealed with XChaCha20-Poly1305
//! when `HERALD_ENCRYPTION_KEY` is set.
//!
//! A sealed value is `enc:v1:<base64(nonce ‖ ciphertext)>`; anything else is a value stored
//! before encryption was turned on, read as it is. A check value in the settings table tells,
//! at start, whether the key given is the key the secrets were sealed with.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::{Error, Result};

/// The prefix of a sealed value.
pub const PREFIX: &str = "enc:v1:";

/// Seals and opens stored secrets; without a key it stores them as they are.
#[derive(Clone, Default)]
pub struct Vault(Option<Arc<XChaCha20Poly1305>>);

impl Vault {
    /// A vault with the key given as 32 bytes in base64 or 64 hexadecimal digits.
    pub fn with_key(text: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .filter(|bytes| bytes.len() == 32)
            .or_else(|| BASE64.decode(text).ok().filter(|bytes| bytes.len() == 32));
        let Some(bytes) = bytes else {
            anyhow::bail!(
                "HERALD_ENCRYPTION_KEY must be 32 bytes, as 64 hexadecimal digits or in base64 (for example: openssl rand -base64 32)"
            );
        };
        let key: [u8; 32] = bytes.try_into().expect("checked to be 32 bytes");
        Ok(Self(Some(Arc::new(XChaCha20Poly1305::new(&Key::from(
            key,
        ))))))
    }

    /// Whether values are sealed.
    pub fn is_sealing(&self) -> bool {
        self.0.is_some()
    }

    /// The value as it is to be stored. A value that begins as a sealed one does is refused,
    /// with or without a key: stored in clear, it would be read as sealed.
    pub fn seal(&self, plain: &str) -> Result<String> {
        if plain.starts_with(PREFIX) {
            return Err(Error::Invalid(format!(
                "A webhook secret or URL credentials may not begin with `{PREFIX}`, which marks a sealed value."
            )));
        }
        let Some(cipher) = &self.0 else {
            return Ok(plain.to_owned());
        };
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(&XNonce::from(nonce), plain.as_bytes())
            .map_err(|_| Error::internal("sealing a secret failed"))?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", BASE64.encode(bytes)))
    }

    /// The stored value in clear.
    pub fn open(&self, stored: &str) -> Result<String> {
        let Some(encoded) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let cipher = self.0.as_ref().ok_or_else(|| {
            Error::internal("a sealed secret was read without HERALD_ENCRYPTION_KEY")
        })?;
        let bytes = BASE64
            .decode(encoded)
            .map_err(|_| Error::internal("a sealed secret is not valid base64"))?;
        if bytes.len() < 24 {
            return Err(Error::internal("a sealed secret is truncated"));
        }
        let (nonce, sealed) = bytes.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().expect("split at 24 bytes");
        let plain = cipher.decrypt(&XNonce::from(nonce), sealed).map_err(|_| {
            Error::internal("a sealed secret could not be opened with HERALD_ENCRYPTION_KEY")
        })?;
        String::from_utf8(plain).map_err(|_| Error::internal("a sealed secret is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn sealed_values_open_with_the_same_key_only() {
        let vault = Vault::with_key(KEY).unwrap();
        let sealed = vault.seal("whsec_secret").unwrap();
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("secret"));
        assert_ne!(
            sealed,
            vault.seal("whsec_secret").unwrap(),
            "each seal has its own nonce"
        );
        assert_eq!(vault.open(&sealed).unwrap(), "whsec_secret");
        let other = Vault::with_key(&BASE64.encode([7u8; 32])).unwrap();
        assert!(other.open(&sealed).is_err());
        assert!(Vault::default().open(&sealed).is_err());
        assert_eq!(
            vault.open("stored before encryption").unwrap(),
            "stored before encryption"
        );
    }

    #[test]
    fn keys_must_be_32_bytes() {
        assert!(Vault::with_key("short").is_err());
        assert!(Vault::with_key(&BASE64.encode([1u8; 16])).is_err());
        assert!(Vault::with_key(&BASE64.encode([1u8; 32])).is_ok());
    }
}
