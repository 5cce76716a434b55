//! HTTP: the web console at `/`, `/graphql` (POST, and GraphiQL on GET), `/healthz`, `/readyz`,
//! `/metrics`.

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::GraphQLResponse;
use axum::Router;
use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use sea_orm::ConnectionTrait;

use crate::app::AppState;
use crate::graphql::{self, Viewer};
use crate::payload::audit::Actor;
use crate::store::Db;

/// The largest GraphQL request body accepted.
const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Every route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/graphql", get(graphiql).post(graphql_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::web::router())
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

/// A GraphQL error response with a code, for requests refused before execution.
fn refusal(status: StatusCode, code: &str, message: &str) -> Response {
    let mut error = async_graphql::ServerError::new(message, None);
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", code);
    let body = GraphQLResponse::from(async_graphql::Response::from_errors(vec![error]));
    (status, body).into_response()
}

// The body is read as bytes so that `DefaultBodyLimit` applies (413 past the limit) before any
// JSON is parsed.
async fn graphql_handler(
    State(state): State<AppState>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match serde_json::from_slice::<async_graphql::Request>(&body) {
        Ok(request) => request,
        Err(_) if body.first() == Some(&b'[') => {
            let message = "Batched requests are not accepted; send one operation per request.";
            return refusal(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", message);
        }
        Err(err) => {
            let message = format!("The request body is not a GraphQL request in JSON: {err}.");
            return refusal(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", &message);
        }
    };
    let mut request = request.data(Db::Pool(state.db.clone())).data(state.clone());
    let verified = match bearer(&headers) {
        Some(token) => Some(state.keys.authenticate(token, &state.db).await),
        None => None,
    };
    match verified {
        None => {}
        Some(Ok((viewer, subject))) => {
            // The peer's address, as the listener saw it: a proxy in front of Herald shows as
            // itself, since a forwarded-for header is the client's word.
            let ip = extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip().to_canonical().to_string());
            request = request
                .data::<Viewer>(viewer)
                .data(Actor::from_subject(&subject, ip));
            // Only a client with a valid token fills the cache of parsed documents.
            state.documents.prepare(&mut request);
        }
        Some(Err(err)) => return refusal(StatusCode::OK, err.code(), &err.to_string()),
    }
    GraphQLResponse::from(graphql::execute(&state.schema, request).await).into_response()
}

/// The bearer token of a request, if it sent one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

async fn graphiql(State(state): State<AppState>) -> Response {
    if !state.config.graphiql {
        return (StatusCode::NOT_FOUND, "GraphiQL is turned off.").into_response();
    }
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .title("Herald GraphiQL")
            .finish(),
    )
    .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.db.execute_unprepared("SELECT 1").await {
        Ok(_) => "ready".into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is unreachable",
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    if let Ok(depth) = crate::store::deliveries::queue_depth(&state.db).await {
        state.metrics.queue_depth.set(depth as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
