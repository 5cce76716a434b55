//! Checking an endpoint's settings before they are stored: the URL parses and may be delivered
//! to, the selection validates, the status filter names real statuses, and masked values keep
//! what is stored.

use sea_orm::DatabaseConnection;

use super::MaxEndpoints;
use crate::delivery::guard::TargetPolicy;
use crate::domain::endpoint::check_secret_name;
use crate::domain::headers::{self, Header};
use crate::domain::status::is_status_name;
use crate::domain::{
    EndpointUrl, EventKind, PayloadFormat, SignatureStyle, WebHookCondition, limits, mask_secret,
    published,
};
use crate::events::Renderer;
use crate::secrets::Vault;
use crate::store::endpoints::{EndpointFields, fields_of};
use crate::store::entities::webhook_endpoint;
use crate::{Error, Result};

/// What checking a draft reads.
pub(super) struct Checks<'a> {
    pub(super) pool: &'a DatabaseConnection,
    pub(super) vault: &'a Vault,
    pub(super) policy: &'a TargetPolicy,
    pub(super) renderer: &'a Renderer,
}

impl<'a> Checks<'a> {
    /// The handles of the request being resolved.
    pub(super) fn of(ctx: &'a async_graphql::Context<'_>) -> Result<Self> {
        Ok(Self {
            pool: super::pool(ctx)?,
            vault: super::handle::<Vault>(ctx)?,
            policy: super::handle::<TargetPolicy>(ctx)?,
            renderer: super::handle::<crate::events::Outbox>(ctx)?.renderer(),
        })
    }
}

/// An endpoint's settings as a client sent them, before they are checked.
pub(super) struct Draft {
    pub(super) url: String,
    pub(super) secret: Option<String>,
    pub(super) events: Vec<EventKind>,
    pub(super) payload_query: Option<String>,
    pub(super) payload_format: PayloadFormat,
    pub(super) enabled: bool,
    pub(super) insecure_ssl: bool,
    pub(super) status_filter: Vec<String>,
    pub(super) signature_style: SignatureStyle,
    pub(super) secret_name: Option<String>,
    pub(super) published_events: Vec<String>,
    /// Custom headers; a value equal to the mask of the stored value of the same name keeps
    /// that value.
    pub(super) headers: Vec<Header>,
    pub(super) conditions: Vec<WebHookCondition>,
}

/// Checks a draft against the stored endpoint it replaces (if any): the URL parses and may be
/// delivered to, the selection validates, and masked values keep what is stored.
pub(super) async fn check(
    checks: &Checks<'_>,
    draft: Draft,
    current: Option<&webhook_endpoint::Model>,
) -> Result<EndpointFields> {
    let Draft {
        url,
        secret,
        events,
        payload_query,
        payload_format,
        enabled,
        insecure_ssl,
        status_filter,
        signature_style,
        secret_name,
        published_events,
        headers,
        mut conditions,
    } = draft;
    let stored = current
        .map(|row| fields_of(row, checks.vault))
        .transpose()?;
    let masked = current
        .map(crate::store::endpoints::masked_url)
        .transpose()?;
    let url = match &stored {
        Some(stored) if Some(url.trim()) == masked.as_deref() => stored.url.clone(),
        _ => EndpointUrl::parse(&url)?,
    };
    crate::delivery::guard::check_url(&url, checks.policy)?;
    let secret = given_secret(secret, stored.as_ref().and_then(|s| s.secret.as_deref()))?;
    // A secret kept as stored keeps the one a rotation replaced, while its overlap lasts.
    let previous_secret = match &stored {
        Some(stored) if stored.secret.is_some() && stored.secret == secret => {
            stored.previous_secret.clone()
        }
        _ => None,
    };
    let secret_name = secret_name.filter(|name| !name.trim().is_empty());
    if let Some(name) = &secret_name {
        check_secret_name(name)?;
        if secret.is_some() {
            return Err(Error::Invalid(
                "An endpoint takes a secretToken or a secretName, not both.".into(),
            ));
        }
    }
    if matches!(
        signature_style,
        SignatureStyle::Gitlab | SignatureStyle::Codeup
    ) && let Some(secret) = &secret
        && secret.chars().any(|c| !(' '..='~').contains(&c))
    {
        return Err(Error::Invalid(
            "A GITLAB or CODEUP endpoint sends its secret as a header, so the secret must be visible ASCII characters or spaces.".into(),
        ));
    }
    let published_events = published::check_types(published_events)?;
    let stored_headers = stored.as_ref().map(|s| s.headers.as_slice()).unwrap_or(&[]);
    let headers: Vec<Header> = headers
        .into_iter()
        .map(|header| {
            let name = header.name.trim().to_owned();
            let kept = stored_headers.iter().find(|old| {
                old.name.eq_ignore_ascii_case(&name) && mask_secret(&old.value) == header.value
            });
            let value = kept.map_or(header.value, |old| old.value.clone());
            Header { name, value }
        })
        .collect();
    headers::check_all(&headers)?;
    if url.credentials().is_some()
        && headers
            .iter()
            .any(|header| header.name.eq_ignore_ascii_case("authorization"))
    {
        return Err(Error::Invalid(
            "An endpoint with credentials in its URL sends them as its Authorization header, so it cannot have an Authorization header of its own.".into(),
        ));
    }
    let payload_query = payload_query.filter(|query| !query.trim().is_empty());
    if let Some(query) = &payload_query {
        checks.renderer.check(query, checks.pool).await?;
    }
    let mut unique = Vec::new();
    for kind in events {
        if !unique.contains(&kind) {
            unique.push(kind);
        }
    }
    limits::count(
        "statuses in the status filter",
        status_filter.len(),
        limits::MAX_STATUS_FILTER,
    )?;
    let mut statuses: Vec<String> = Vec::new();
    for name in status_filter {
        let name = name.trim().to_ascii_uppercase();
        if !is_status_name(&name) {
            return Err(Error::Invalid(format!(
                "The status filter names {name:?}, which is not a build or task status."
            )));
        }
        if !statuses.contains(&name) {
            statuses.push(name);
        }
    }
    if !conditions.is_empty()
        && !statuses.is_empty()
        && !crate::domain::transition::can_meet(&conditions, &statuses)
    {
        return Err(Error::Invalid(
            "The conditions and the status filter exclude each other: no build or task reaching one of those statuses can have one of those transitions.".into(),
        ));
    }
    Ok(EndpointFields {
        url,
        secret,
        events: unique,
        payload_query,
        payload_format,
        enabled,
        insecure_ssl,
        status_filter: statuses,
        signature_style,
        published_events,
        headers,
        secret_name,
        previous_secret,
        conditions: {
            conditions.sort_by_key(|condition| condition.as_str());
            conditions.dedup();
            conditions
        },
    })
}

/// The secret a draft gives, against the one stored (if any): its mask keeps the stored one,
/// an empty one removes it, and a new one is checked.
pub(super) fn given_secret(given: Option<String>, stored: Option<&str>) -> Result<Option<String>> {
    match (given, stored) {
        (Some(given), Some(stored)) if mask_secret(stored) == given => Ok(Some(stored.to_owned())),
        (Some(given), _) if given.is_empty() => Ok(None),
        (Some(given), _) => {
            check_secret("secret token", &given)?;
            Ok(Some(given))
        }
        (None, _) => Ok(None),
    }
}

/// Checks a new secret's value (an endpoint's `secretToken`, a named secret, a rotation's new
/// value), named `field` in the error.
pub(super) fn check_secret(field: &str, secret: &str) -> Result<()> {
    limits::text(field, secret, true, limits::MAX_SECRET)?;
    crate::signing::check_secret(secret)
}

/// Checks that an organization may have `endpoints` endpoints (`HERALD_MAX_ENDPOINTS`).
pub(super) fn check_endpoint_count(max: MaxEndpoints, endpoints: usize) -> Result<()> {
    let MaxEndpoints(max) = max;
    if endpoints > max {
        return Err(Error::Invalid(format!(
            "An organization may have at most {max} webhook endpoints."
        )));
    }
    Ok(())
}
