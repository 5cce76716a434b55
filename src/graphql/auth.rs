//! API tokens: HS256 JWTs with `iss`, `sub`, `org`, `permission`, `iat`, `exp` (CONTRACT §3).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::Permission;
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

/// The keys that sign and check tokens.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenKeys {
    /// Keys from the secret's UTF-8 bytes.
    pub fn new(secret: &str) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
        }
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

    /// Checks a token and reads who it speaks for, and its subject.
    pub fn verify(&self, token: &str) -> Result<(Viewer, String)> {
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
        Ok((viewer, data.claims.sub))
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
