//! The write side of the GraphQL API: every mutation, and the full schema (the read side's
//! `Query` with these mutations) that `/graphql` serves.
//!
//! A resolver takes the handles it needs from the schema's data ([`handle`]), never the whole
//! application: the pool, the process's [`Writes`] (each API write is one
//! [`crate::store::WriteTx`], which holds its write turn and wakes the worker at commit when it
//! queued a delivery), the writer of changes, the outbox, the vault, the target policy, the
//! token keys and the endpoint cap.

mod approvals;
mod audit;
mod ci;
mod deliveries;
pub mod hooks;
mod publish;
mod secrets;
mod tokens;
mod webhook_draft;
mod webhooks;

use async_graphql::{EmptySubscription, MergedObject, Schema};
use sea_orm::DatabaseConnection;

use crate::delivery::guard::TargetPolicy;
use crate::events::{Outbox, Writer};
use crate::schema::{Limits, PublicUrl, QueryRoot, TokenKeys};
use crate::secrets::Vault;
use crate::store::Writes;
use crate::{Error, Result};

/// Herald's schema: queries and mutations.
pub type ApiSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// Every mutation, by area.
#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(
    ci::CiMutation,
    webhooks::WebhookMutation,
    deliveries::DeliveryMutation,
    tokens::TokenMutation,
    secrets::SecretMutation,
    publish::PublishMutation,
    approvals::ApprovalMutation,
);

/// The most webhook endpoints one organization may have (`HERALD_MAX_ENDPOINTS`).
#[derive(Clone, Copy, Debug)]
pub struct MaxEndpoints(pub usize);

/// The handles mutations use.
pub struct Handles {
    /// Reads outside a write.
    pub pool: DatabaseConnection,
    pub writes: Writes,
    pub writer: Writer,
    pub outbox: Outbox,
    pub vault: Vault,
    pub policy: TargetPolicy,
    pub keys: TokenKeys,
    pub max_endpoints: MaxEndpoints,
    pub public_url: PublicUrl,
    pub approvals: std::sync::Arc<crate::delivery::approval::Approvals>,
}

/// The full schema with the given limits, its mutations using `handles`.
pub fn build_schema(limits: Limits, handles: Handles) -> ApiSchema {
    let Handles {
        pool,
        writes,
        writer,
        outbox,
        vault,
        policy,
        keys,
        max_endpoints,
        public_url,
        approvals,
    } = handles;
    builder(limits)
        .data(pool)
        .data(writes)
        .data(writer)
        .data(outbox)
        .data(vault)
        .data(policy)
        .data(keys)
        .data(max_endpoints)
        .data(public_url)
        .data(approvals)
        .finish()
}

/// The SDL of the full schema, as `herald schema` prints it and `schema.graphql` holds it.
pub fn sdl() -> String {
    builder(Limits::API).finish().sdl()
}

/// The full schema with `limits`, before its handles.
fn builder(
    limits: Limits,
) -> async_graphql::SchemaBuilder<QueryRoot, MutationRoot, EmptySubscription> {
    limits.apply(Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        EmptySubscription,
    ))
}

/// A handle from the schema's data.
pub(crate) fn handle<'a, T: std::any::Any + Send + Sync>(
    ctx: &'a async_graphql::Context<'_>,
) -> Result<&'a T> {
    ctx.data::<T>().map_err(|_| {
        Error::internal(format!(
            "the schema has no {} handle",
            std::any::type_name::<T>()
        ))
    })
}

/// The pool, for reads outside a write.
pub(crate) fn pool<'a>(ctx: &'a async_graphql::Context<'_>) -> Result<&'a DatabaseConnection> {
    handle::<DatabaseConnection>(ctx)
}

/// The organization a mutation's `ownerUid` names, when it is the token's own; any other is
/// not found, exactly as one that does not exist.
pub(crate) fn owner_of(viewer_org: i64, uid: &async_graphql::ID) -> Result<i64> {
    match crate::store::parse_id("organization", uid)? {
        id if id == viewer_org => Ok(id),
        _ => Err(Error::not_found("organization", uid.as_str())),
    }
}
