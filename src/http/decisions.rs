//! A held build's one-time links: `POST /api/approvals/{token}/approve` and `…/reject`, which
//! the approval hook that held it was given in its call (`decide`). The token is the
//! credential; each works once, within seven days, while the build waits.

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Http;
use super::rest::{ErrorBody, Failure, json_body};

pub fn router() -> Router<Http> {
    Router::new()
        .route("/api/approvals/{token}/approve", post(approve))
        .route("/api/approvals/{token}/reject", post(reject))
}

/// Why, when rejecting (optional; the body may be empty).
#[derive(Deserialize, ToSchema, Default)]
pub struct Decision {
    reason: Option<String>,
}

/// The build as the decision left it.
#[derive(Serialize, ToSchema)]
pub struct Decided {
    id: String,
    /// `TRIGGERED` or `ABORTED`.
    status: String,
}

/// Approves the held build: it moves to `TRIGGERED`.
#[utoipa::path(post, path = "/api/approvals/{token}/approve",
    params(("token" = String, Path, description = "The one-time token of the call that held the build")),
    responses((status = 200, body = Decided),
        (status = 400, description = "The build no longer waits for approval", body = ErrorBody),
        (status = 404, description = "Unknown, used or expired token", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(super) async fn approve(
    State(state): State<Http>,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    Path(token): Path<String>,
) -> Result<Json<Decided>, Failure> {
    decide(&state, peer, &token, true, None).await
}

/// Rejects the held build: it moves to `ABORTED`.
#[utoipa::path(post, path = "/api/approvals/{token}/reject",
    params(("token" = String, Path, description = "The one-time token of the call that held the build")),
    request_body(content = Decision, description = "Optional: why"),
    responses((status = 200, body = Decided),
        (status = 400, description = "The build no longer waits for approval", body = ErrorBody),
        (status = 404, description = "Unknown, used or expired token", body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(super) async fn reject(
    State(state): State<Http>,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    Path(token): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Decided>, Failure> {
    let decision: Decision = match &body {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Decision::default(),
        _ => json_body(body)?,
    };
    decide(&state, peer, &token, false, decision.reason).await
}

async fn decide(
    state: &Http,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    token: &str,
    approve: bool,
    reason: Option<String>,
) -> Result<Json<Decided>, Failure> {
    let ip = peer.map(|Extension(ConnectInfo(addr))| addr.ip().to_canonical().to_string());
    let build = state
        .hooks
        .decide_by_link(token, approve, reason, ip)
        .await?;
    Ok(Json(Decided {
        id: build.id.to_string(),
        status: build.status.as_str().to_owned(),
    }))
}
