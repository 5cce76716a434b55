//! HTTP: the web console at `/`, `/graphql` (POST, and GraphiQL on GET), `/healthz`, `/readyz`,
//! `/metrics`; every request within the request timeout, and a GraphQL body within the body
//! timeout (the connection limits are in [`crate::http::serve`]).

mod decisions;
mod documents;
mod hooks;
mod openapi;
mod rest;
pub use documents::Documents;
pub mod serve;
pub mod web;

use async_graphql_axum::GraphQLResponse;
use axum::Router;
use axum::body::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sea_orm::ConnectionTrait;
use tracing::Instrument as _;

use crate::api::ApiSchema;
use crate::config::Config;
use crate::domain::retry::format_duration;
use crate::events::audit::Actor;
use crate::metrics::Metrics;
use crate::schema::rows::Budget;
use crate::schema::{self, Limits, TokenKeys, Viewer};
use crate::store::Db;

/// The largest GraphQL request body accepted: room for a published payload of the largest
/// size a delivery carries, with its query.
pub(crate) const MAX_REQUEST_BYTES: usize = 384 * 1024;

/// What the routes use.
#[derive(Clone)]
pub struct Http {
    pub timeouts: Timeouts,
    /// Whether `GET /graphql` serves GraphiQL.
    pub graphiql: bool,
    pub db: sea_orm::DatabaseConnection,
    pub keys: TokenKeys,
    pub schema: ApiSchema,
    pub documents: Documents,
    pub metrics: Metrics,
    /// The REST hooks' handles.
    pub hooks: crate::api::hooks::Hooks,
}

/// How long a request may take.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// For a GraphQL request's body to arrive.
    pub body: std::time::Duration,
    /// For the whole request.
    pub request: std::time::Duration,
}

impl Timeouts {
    /// The timeouts `config` sets.
    pub fn from_config(config: &Config) -> Self {
        Self {
            body: config.http_body_timeout,
            request: config.http_request_timeout,
        }
    }
}

/// Every route.
pub fn router(state: Http) -> Router {
    let mut router = Router::new()
        .route("/graphql", get(graphiql).post(graphql_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(hooks::router())
        .merge(decisions::router())
        .merge(openapi::router())
        .merge(web::router());
    // GraphiQL's files are served only when GraphiQL is.
    if state.graphiql {
        router = router.merge(web::graphiql_assets());
    }
    router
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ))
        .layer(axum::middleware::from_fn(request_span))
        .with_state(state)
}

/// Runs each request in a span of its own, so that what it logs (and what the writer of
/// changes logs for it) carries its method and path.
async fn request_span(request: Request, next: Next) -> Response {
    // A one-time approval link's token is a credential: the path is logged without it.
    let path = request.uri().path();
    let path = match path.strip_prefix("/api/approvals/") {
        Some(rest) => format!(
            "/api/approvals/***{}",
            rest.find('/').map_or("", |at| &rest[at..])
        ),
        None => path.to_owned(),
    };
    let span = tracing::info_span!("request", method = %request.method(), path = %path);
    next.run(request).instrument(span).await
}

/// Stops a request still running after the request timeout and answers 503 in one sentence
/// (a GraphQL error on `/graphql`). The change a stopped mutation handed to the change writer
/// may still commit, so the sentence says to check before repeating it.
async fn request_timeout(State(state): State<Http>, request: Request, next: Next) -> Response {
    let limit = state.timeouts.request;
    let graphql = request.uri().path() == "/graphql";
    let rest = request.uri().path().starts_with("/api/");
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let message = format!(
                "The request did not finish within {} and was stopped; a change it made may have been recorded, so check before making it again.",
                format_duration(limit)
            );
            if graphql {
                refusal(StatusCode::SERVICE_UNAVAILABLE, "INTERNAL", &message)
            } else if rest {
                let body =
                    serde_json::json!({ "error": { "code": "UNAVAILABLE", "message": message } });
                (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
            }
        }
    }
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
// JSON is parsed, and within the body timeout (408 past it).
async fn graphql_handler(State(state): State<Http>, request: Request) -> Response {
    let headers = request.headers().clone();
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .cloned();
    let limit = state.timeouts.body;
    let body = match tokio::time::timeout(limit, Bytes::from_request(request, &state)).await {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) => return rejection.into_response(),
        Err(_) => {
            let message = format!(
                "The request body did not arrive within {}.",
                format_duration(limit)
            );
            return refusal(StatusCode::REQUEST_TIMEOUT, "BAD_USER_INPUT", &message);
        }
    };
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
    let mut request = request
        .data(Db::Pool(state.db.clone()))
        .data(Arc::new(Budget::new(Limits::API.rows)));
    let verified = match bearer(&headers) {
        Some(token) => Some(state.keys.authenticate(token, &state.db).await),
        None => None,
    };
    match verified {
        None => {
            // The schema is for token holders: an anonymous request may not introspect it, and
            // the engine is told so too in case a spelling escapes the check.
            if asks_for_the_schema(&mut request) {
                let message = "Introspection needs a token: send Authorization: Bearer <token>.";
                return refusal(StatusCode::OK, "UNAUTHENTICATED", message);
            }
            request = request.disable_introspection();
        }
        Some(Ok((viewer, subject))) => {
            // The peer's address, as the listener saw it: a proxy in front of Herald shows as
            // itself, since a forwarded-for header is the client's word.
            let ip = peer.map(|ConnectInfo(addr)| addr.ip().to_canonical().to_string());
            request = request
                .data::<Viewer>(viewer)
                .data(Actor::from_subject(&subject, ip));
            // Only a client with a valid token fills the cache of parsed documents.
            state.documents.prepare(&mut request);
        }
        Some(Err(err)) => return refusal(StatusCode::OK, err.code(), &err.to_string()),
    }
    GraphQLResponse::from(schema::execute(&state.schema, request).await).into_response()
}

/// The bearer token of a request, if it sent one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether a request selects `__schema` or `__type` anywhere (they are valid only on the root
/// query, but a fragment can carry them there). A request that does not parse is left to the
/// engine, which reports the syntax error.
fn asks_for_the_schema(request: &mut async_graphql::Request) -> bool {
    use async_graphql::parser::types::{Selection, SelectionSet};
    fn walk(set: &SelectionSet) -> bool {
        set.items.iter().any(|item| match &item.node {
            Selection::Field(field) => {
                matches!(field.node.name.node.as_str(), "__schema" | "__type")
                    || walk(&field.node.selection_set.node)
            }
            Selection::InlineFragment(fragment) => walk(&fragment.node.selection_set.node),
            Selection::FragmentSpread(_) => false,
        })
    }
    let Ok(doc) = request.parsed_query() else {
        return false;
    };
    doc.operations
        .iter()
        .any(|(_, operation)| walk(&operation.node.selection_set.node))
        || doc
            .fragments
            .values()
            .any(|fragment| walk(&fragment.node.selection_set.node))
}

async fn graphiql(State(state): State<Http>) -> Response {
    if !state.graphiql {
        return (StatusCode::NOT_FOUND, "GraphiQL is turned off.").into_response();
    }
    web::graphiql_page()
}

async fn readyz(State(state): State<Http>) -> Response {
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

async fn metrics(State(state): State<Http>) -> Response {
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
