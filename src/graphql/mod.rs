//! The GraphQL API by area. Names follow Cirrus CI's public schema (CONTRACT §4).
//!
//! Resolvers read the request's [`Viewer`] (from the token) and [`Db`] (the pool, or the open
//! transaction when a payload is being rendered) from the context. This module never imports
//! axum: the HTTP layer and the payload renderer both call [`execute`].

pub mod auth;
mod ci;
mod deliveries;
mod types;
mod webhook_draft;
mod webhooks;

use async_graphql::{EmptySubscription, MergedObject, Schema, ServerError};

pub use auth::{Claims, TokenKeys, Viewer};
pub use types::{Build, OwnerInfo, Repository, Task};

use crate::Error;
use crate::store::Db;

/// Herald's schema.
pub type HeraldSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// Every query, by area.
#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(
    ci::CiQuery,
    webhooks::WebhookQuery,
    deliveries::DeliveryQuery,
);

/// Every mutation, by area.
#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(
    ci::CiMutation,
    webhooks::WebhookMutation,
    deliveries::DeliveryMutation,
);

/// Bounds checked before any resolver runs.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub depth: usize,
    pub complexity: usize,
    pub introspection: bool,
}

impl Limits {
    /// For requests from clients (GraphiQL's own introspection query fits).
    pub const API: Limits = Limits {
        depth: 20,
        complexity: 2_000,
        introspection: true,
    };
    /// For stored payload selections (CONTRACT §5: at most 15 levels).
    pub const PAYLOAD: Limits = Limits {
        depth: 15,
        complexity: 500,
        introspection: false,
    };
}

/// Builds the schema with the given limits.
pub fn build_schema(limits: Limits) -> HeraldSchema {
    let mut builder = Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        EmptySubscription,
    )
    .limit_depth(limits.depth)
    .limit_complexity(limits.complexity);
    if !limits.introspection {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// The SDL of the schema, as `herald schema` prints it and `schema.graphql` holds it.
pub fn sdl() -> String {
    build_schema(Limits::API).sdl()
}

/// Runs a request and gives every error its `extensions.code` (CONTRACT §3).
pub async fn execute(
    schema: &HeraldSchema,
    request: async_graphql::Request,
) -> async_graphql::Response {
    let mut response = schema.execute(request).await;
    for error in &mut response.errors {
        classify(error);
    }
    response
}

/// Errors from Herald carry their own code; anything else the engine refused before running a
/// resolver (syntax, validation, limits, input coercion) is the client's input.
fn classify(error: &mut ServerError) {
    let code = error
        .source::<Error>()
        .map(Error::code)
        .unwrap_or("BAD_USER_INPUT");
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", code);
}

/// The database handle of this request.
pub(crate) fn db<'a>(ctx: &'a async_graphql::Context<'_>) -> crate::Result<&'a Db> {
    ctx.data::<Db>()
        .map_err(|_| Error::internal("the request has no database handle"))
}

/// The application state, present for requests that came over HTTP (mutations need it).
pub(crate) fn state<'a>(
    ctx: &'a async_graphql::Context<'_>,
) -> crate::Result<&'a crate::app::AppState> {
    ctx.data::<crate::app::AppState>()
        .map_err(|_| Error::internal("the request has no application state"))
}
