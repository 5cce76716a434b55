//! REST hooks, as Kudu's web hooks API has them: `/api/hooks` to subscribe, list, read and
//! delete hooks, `/api/hooks/publish/{type}` to publish an event to them, and the OpenAPI 3.1
//! document of these routes at `/api/openapi.json`, generated from the handlers below.
//!
//! A token comes as `Authorization: Bearer <token>`, or as the password of HTTP Basic
//! authentication (what Kudu's clients send). Errors are `{"error": {"code", "message"}}` with
//! the HTTP status a REST client expects.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Http;
use super::rest::{ErrorBody, Failure, json_body};
use crate::api::hooks::{Caller, Hook};
use crate::events::audit::Actor;
use crate::{Error, Result};

/// The routes.
pub fn router() -> Router<Http> {
    Router::new()
        .route("/api/hooks", get(list).post(subscribe))
        .route("/api/hooks/{id}", get(get_one).delete(delete))
        .route("/api/hooks/publish/{type}", post(publish))
}

/// A subscription, as Kudu's clients send it.
#[derive(Deserialize, ToSchema)]
pub struct Subscription {
    /// Where to send the events: http or https.
    url: String,
    /// The event type (`PostDeployment`, …), matched case-insensitively; `build` and `task`
    /// subscribe to Herald's CI events.
    event: String,
    /// Skips the TLS certificate check of this hook (for tests).
    #[serde(default)]
    insecure_ssl: bool,
}

/// A hook.
#[derive(Serialize, ToSchema)]
pub struct HookSummary {
    id: i64,
    /// The URL, with any credentials as `***`.
    url: String,
    event: String,
}

/// A hook with what its latest delivery came to.
#[derive(Serialize, ToSchema)]
pub struct HookDetail {
    id: i64,
    url: String,
    event: String,
    /// When the latest delivery was last attempted, as Kudu shows it (`08/08/2013 13:24PM`,
    /// UTC); null before the first.
    last_datetime: Option<String>,
    /// `OK`, the HTTP status the receiver answered, `Failed` without an answer, or `Pending`.
    last_status: Option<String>,
    /// Why the latest attempt failed, in one sentence.
    last_reason: Option<String>,
    /// The body last sent, cut past 4 KiB with `…[truncated]`.
    last_context: Option<String>,
}

/// What a publication was queued for.
#[derive(Serialize, ToSchema)]
pub struct Published {
    /// The number of hooks the event was queued for.
    deliveries: usize,
}

/// The query of a publication.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PublishQuery {
    /// What the event is about: a hook's deliveries for one subject are sent in order.
    subject: Option<String>,
}

/// The caller of a request: its token (Bearer, or Basic's password) verified.
async fn caller(
    state: &Http,
    headers: &HeaderMap,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
) -> Result<Caller> {
    let token = token(headers).ok_or_else(|| {
        Error::Unauthenticated(
            "This request needs a token: send Authorization: Bearer <token>, or the token as the Basic password.".into(),
        )
    })?;
    let (viewer, subject) = state.keys.authenticate(&token, &state.db).await?;
    let ip = peer.map(|Extension(ConnectInfo(addr))| addr.ip().to_canonical().to_string());
    Ok(Caller {
        viewer,
        actor: Actor::from_subject(&subject, ip),
    })
}

/// The token of a request: `Bearer <token>`, or the password of `Basic <base64(user:token)>`.
fn token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

fn hook_id(id: &str) -> Result<i64> {
    id.parse().map_err(|_| Error::not_found("hook", id))
}

fn summary(hook: Hook) -> HookSummary {
    HookSummary {
        id: hook.id,
        url: hook.url,
        event: hook.event,
    }
}

/// Subscribes a URL to an event.
#[utoipa::path(post, path = "/api/hooks", request_body = Subscription,
    responses(
        (status = 201, description = "Subscribed (or already subscribed to this event)", body = HookSummary),
        (status = 400, description = "The URL or event is not valid", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "The URL is already a hook's address for another event", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("basic" = [])))]
pub(super) async fn subscribe(
    State(state): State<Http>,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Response, Failure> {
    let caller = caller(&state, &headers, peer).await?;
    let subscription: Subscription = json_body(body)?;
    let (hook, _) = state
        .hooks
        .subscribe(
            &caller,
            subscription.url,
            subscription.event,
            subscription.insecure_ssl,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(summary(hook))).into_response())
}

/// Lists the organization's hooks.
#[utoipa::path(get, path = "/api/hooks",
    responses((status = 200, body = [HookSummary]), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("basic" = [])))]
pub(super) async fn list(
    State(state): State<Http>,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
) -> std::result::Result<Json<Vec<HookSummary>>, Failure> {
    let caller = caller(&state, &headers, peer).await?;
    let hooks = state.hooks.list(&caller).await?;
    Ok(Json(hooks.into_iter().map(summary).collect()))
}

/// One hook, with its latest delivery.
#[utoipa::path(get, path = "/api/hooks/{id}", params(("id" = i64, Path, description = "The hook's id")),
    responses((status = 200, body = HookDetail), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("basic" = [])))]
pub(super) async fn get_one(
    State(state): State<Http>,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> std::result::Result<Json<HookDetail>, Failure> {
    let caller = caller(&state, &headers, peer).await?;
    let hook = state.hooks.get(&caller, hook_id(&id)?).await?;
    let last = hook.last.as_ref();
    Ok(Json(HookDetail {
        last_datetime: last.map(|last| kudu_datetime(last.at)),
        last_status: last.map(|last| last.status.clone()),
        last_reason: last.and_then(|last| last.reason.clone()),
        last_context: last.map(|last| last.context.clone()),
        id: hook.id,
        url: hook.url,
        event: hook.event,
    }))
}

/// Deletes a hook and its delivery log.
#[utoipa::path(delete, path = "/api/hooks/{id}", params(("id" = i64, Path, description = "The hook's id")),
    responses((status = 200, description = "Deleted"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("basic" = [])))]
pub(super) async fn delete(
    State(state): State<Http>,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> std::result::Result<StatusCode, Failure> {
    let caller = caller(&state, &headers, peer).await?;
    state.hooks.delete(&caller, hook_id(&id)?).await?;
    Ok(StatusCode::OK)
}

/// Publishes a JSON object to every hook of the event type.
#[utoipa::path(post, path = "/api/hooks/publish/{type}",
    params(("type" = String, Path, description = "The event type, matched case-insensitively"), PublishQuery),
    request_body(content = Object, description = "The event's payload: a JSON object of at most 256 KiB, sent to each hook unchanged"),
    responses((status = 200, body = Published), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []), ("basic" = [])))]
pub(super) async fn publish(
    State(state): State<Http>,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    Query(query): Query<PublishQuery>,
    body: std::result::Result<Bytes, BytesRejection>,
) -> std::result::Result<Json<Published>, Failure> {
    let caller = caller(&state, &headers, peer).await?;
    let payload: serde_json::Value = json_body(body)?;
    let deliveries = state
        .hooks
        .publish(&caller, kind, query.subject, payload)
        .await?;
    Ok(Json(Published { deliveries }))
}

/// A time as Kudu's hooks API shows it: `08/08/2013 13:24PM` (UTC).
fn kudu_datetime(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%m/%d/%Y %H:%M%p")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_shown_as_kudu_shows_them() {
        // 2013-08-08T13:24:00Z
        assert_eq!(kudu_datetime(1_375_968_240_000), "08/08/2013 13:24PM");
    }

    #[test]
    fn basic_authentication_carries_the_token_as_its_password() {
        let mut headers = HeaderMap::new();
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:tok.en");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(token(&headers).as_deref(), Some("tok.en"));
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(token(&headers).as_deref(), Some("abc"));
    }
}
