//! API tokens: HS256 JWTs with `iss`, `sub`, `org`, `permission`, `iat`, `exp`,
//! and their revocation: an organization refuses the tokens issued before a time
//! (`revokeTokens`, `herald token revoke`), checked on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sea_orm::ConnectionTrait;
use serde::{Deserialize, Serialize};

use crate::domain::Permission;
use crate::store;
use crate::{Error, Result};

/// The issuer every Herald token names.
pub const ISSUER: &str = "herald";

/// Tokens longer than this are refused before they are decoded.
const MAX_TOKEN_LEN: usize = 4096;

/// A token's claims.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    /// The organization's uid.
    pub org: String,
    pub permission: Permission,
    pub iat: i64,
    pub exp: i64,
}

/// The keys that sign and check tokens, and what this process knows of revocations.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    revocations: Arc<Revocations>,
}

impl TokenKeys {
    /// Keys from the secret's UTF-8 bytes.
    pub fn new(secret: &str) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            revocations: Arc::default(),
        }
    }

    /// Checks a token as [`TokenKeys::verify`] does, and that its organization has not revoked
    /// it since: the check of every request.
    pub async fn authenticate(
        &self,
        token: &str,
        conn: &impl ConnectionTrait,
    ) -> Result<(Viewer, String)> {
        let (viewer, claims) = self.decode(token)?;
        let before = self.revocations.before(conn, viewer.org_id).await?;
        if is_revoked(claims.iat, before) {
            return Err(Error::Unauthenticated(
                "This token was revoked; issue a new one.".into(),
            ));
        }
        Ok((viewer, claims.sub))
    }

    /// Makes a revocation committed by this process take effect in it at once.
    pub fn revoked(&self, org_id: i64, before: i64) {
        self.revocations.learn(org_id, Some(before));
    }

    /// Signs a token for an organization, valid for `ttl_seconds`.
    pub fn issue(
        &self,
        org_uid: &str,
        subject: &str,
        permission: Permission,
        ttl_seconds: i64,
    ) -> Result<String> {
        let now = crate::now_ms() / 1000;
        let claims = Claims {
            iss: ISSUER.into(),
            sub: subject.into(),
            org: org_uid.into(),
            permission,
            iat: now,
            exp: now + ttl_seconds,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(Error::internal)
    }

    /// Checks a token's signature and claims and reads who it speaks for, and its subject.
    /// Revocation is not checked: see [`TokenKeys::authenticate`].
    pub fn verify(&self, token: &str) -> Result<(Viewer, String)> {
        let (viewer, claims) = self.decode(token)?;
        Ok((viewer, claims.sub))
    }

    fn decode(&self, token: &str) -> Result<(Viewer, Claims)> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Error::Unauthenticated("The token is too long.".into()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "iat"]);
        validation.validate_nbf = true;
        // Herald issues and checks its tokens on one clock: an expired token gets no grace
        // (jsonwebtoken's default allows 60 s).
        validation.leeway = 0;
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(|err| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match err.kind() {
                    ErrorKind::ExpiredSignature => "The token has expired.",
                    ErrorKind::ImmatureSignature => "The token is not valid yet.",
                    ErrorKind::InvalidIssuer => "The token was not issued by Herald.",
                    ErrorKind::InvalidSignature => "The token's signature is not valid.",
                    ErrorKind::InvalidAlgorithm => "The token must be signed with HS256.",
                    ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => {
                        "The token lacks a required claim (iss, exp, iat, org or permission)."
                    }
                    _ => "The token is malformed.",
                };
                Error::Unauthenticated(why.into())
            })?;
        let org_id =
            data.claims.org.parse::<i64>().map_err(|_| {
                Error::Unauthenticated("The token names no valid organization.".into())
            })?;
        let viewer = Viewer {
            org_id,
            permission: data.claims.permission,
        };
        Ok((viewer, data.claims))
    }
}

/// Whether a token issued at `iat` (seconds since the epoch) is refused by a revocation of the
/// tokens issued before `before` (ms since the epoch).
fn is_revoked(iat: i64, before: Option<i64>) -> bool {
    before.is_some_and(|before| iat.saturating_mul(1000) < before)
}

/// The time a revocation made at `now_ms` refuses tokens before: the next whole second. A
/// token's `iat` counts whole seconds, so a token issued in the same second as the revocation,
/// before or after it, is refused too; the first token accepted is one issued from that time.
pub fn revocation_time(now_ms: i64) -> i64 {
    (now_ms.div_euclid(1000) + 1) * 1000
}

/// How long a revocation read from the database is trusted: a revocation committed by another
/// process (`herald token revoke`, another server on the same PostgreSQL) takes effect here
/// within this long; one committed by this process, at once.
pub const REVOCATION_STALENESS: Duration = Duration::from_secs(1);

/// The most organizations whose revocations are kept; past it the cache starts over.
const REVOCATIONS_KEPT: usize = 10_000;

/// Each organization's revocation as last read, so that a request costs one read by primary
/// key at most once per [`REVOCATION_STALENESS`] per organization. Revocations only move
/// forward, so a value read before a newer one was learnt never replaces it.
#[derive(Default)]
struct Revocations(Mutex<HashMap<i64, (Option<i64>, Instant)>>);

impl Revocations {
    async fn before(&self, conn: &impl ConnectionTrait, org_id: i64) -> Result<Option<i64>> {
        let cached = self.lock().get(&org_id).copied();
        if let Some((before, read_at)) = cached
            && read_at.elapsed() < REVOCATION_STALENESS
        {
            return Ok(before);
        }
        let read = store::orgs::tokens_revoked_before(conn, org_id).await?;
        Ok(self.learn(org_id, read))
    }

    /// Keeps the later of what is known and `before`, and returns it.
    fn learn(&self, org_id: i64, before: Option<i64>) -> Option<i64> {
        let mut known = self.lock();
        if known.len() >= REVOCATIONS_KEPT && !known.contains_key(&org_id) {
            known.clear();
        }
        let entry = known.entry(org_id).or_insert((None, Instant::now()));
        // `None` orders before every time: nothing revoked.
        entry.0 = entry.0.max(before);
        entry.1 = Instant::now();
        entry.0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, (Option<i64>, Instant)>> {
        // A panic while holding the lock leaves whole entries: still usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Who a request speaks for: one organization, at one permission level.
#[derive(Clone, Copy, Debug)]
pub struct Viewer {
    pub org_id: i64,
    pub permission: Permission,
}

impl Viewer {
    /// The viewer, if its permission reaches `needed`.
    pub fn require(&self, needed: Permission) -> Result<&Self> {
        if self.permission >= needed {
            Ok(self)
        } else {
            Err(Error::Forbidden(needed.as_str()))
        }
    }
}

/// The request's viewer at `needed` permission or more; `UNAUTHENTICATED` without a token.
pub(crate) fn require<'a>(
    ctx: &'a async_graphql::Context<'_>,
    needed: Permission,
) -> Result<&'a Viewer> {
    ctx.data_opt::<Viewer>()
        .ok_or_else(|| {
            Error::Unauthenticated(
                "This request needs a token: send Authorization: Bearer <token>.".into(),
            )
        })?
        .require(needed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_refuses_tokens_of_its_own_second() {
        let now_ms = 1_700_000_000_250;
        let before = revocation_time(now_ms);
        assert_eq!(before, 1_700_000_001_000);
        assert!(is_revoked(1_699_999_999, Some(before)));
        assert!(is_revoked(1_700_000_000, Some(before)), "the same second");
        assert!(!is_revoked(1_700_000_001, Some(before)));
        assert!(!is_revoked(1_700_000_000, None));
        assert_eq!(revocation_time(1_700_000_000_000), 1_700_000_001_000);
    }

    #[test]
    fn a_revocation_learnt_is_never_undone_by_an_older_read() {
        let revocations = Revocations::default();
        assert_eq!(revocations.learn(1, Some(2_000)), Some(2_000));
        assert_eq!(revocations.learn(1, None), Some(2_000));
        assert_eq!(revocations.learn(1, Some(1_000)), Some(2_000));
        assert_eq!(revocations.learn(1, Some(3_000)), Some(3_000));
        assert_eq!(revocations.learn(2, None), None);
    }
}
