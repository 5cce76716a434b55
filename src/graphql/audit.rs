//! The audit log as GraphQL: `OwnerInfo.auditEvents`, `AuditEventType`, and how a mutation
//! hands its audit event to the write that records it.

use async_graphql::{Context, ID, Object};
use sea_orm::DatabaseTransaction;

use super::rows;
use super::types::{Repository, UserInfo};
use crate::payload::audit::{Actor, AuditDraft};
use crate::store::entities::audit_event;
use crate::{Result, store};

/// The audit event of the mutation being resolved, by its organization `org_id`: the
/// mutation's name and input (secrets removed) and the request's actor.
pub(super) fn draft(ctx: &Context<'_>, org_id: i64) -> AuditDraft {
    let actor = actor(ctx);
    let field = ctx.field();
    // Arguments were resolved before the resolver ran; an error here is impossible, and the
    // event then records the name alone.
    let input = field
        .arguments()
        .ok()
        .and_then(|arguments| {
            arguments
                .into_iter()
                .find(|(name, _)| name.as_str() == "input")
                .and_then(|(_, value)| value.into_json().ok())
        })
        .unwrap_or_default();
    AuditDraft::new(org_id, actor, field.name(), input)
}

/// Who performs the request: its token's subject and its address.
pub(super) fn actor(ctx: &Context<'_>) -> Actor {
    ctx.data_opt::<Actor>().cloned().unwrap_or_else(|| Actor {
        username: "api".into(),
        ip: None,
    })
}

/// Ends a mutation's write: records its audit event (concerning `repository_id`, if any) in
/// `tx`, commits, and wakes the worker when a delivery is due (`due`, or one of the audit
/// event's). Hold the write's turn until this returns.
pub(super) async fn commit(
    ctx: &Context<'_>,
    tx: DatabaseTransaction,
    org_id: i64,
    repository_id: Option<i64>,
    due: bool,
) -> Result<()> {
    let outbox = &super::state(ctx)?.outbox;
    let draft = AuditDraft {
        repository_id,
        ..draft(ctx, org_id)
    };
    let users = outbox.users(&tx, vec![draft.actor_key()]).await?;
    let endpoints = store::endpoints::enabled_of(&tx, &[org_id]).await?;
    let audits_due = outbox
        .record_audits(&tx, vec![draft], &users, &endpoints)
        .await?;
    tx.commit().await?;
    outbox.learn_users(users);
    if due || audits_due {
        outbox.wake();
    }
    Ok(())
}

/// Something done for an organization: for now, always a GraphQL mutation.
pub struct AuditEventType(pub audit_event::Model);

#[Object(name = "AuditEventType")]
impl AuditEventType {
    /// The event's id, a UUID.
    async fn id(&self) -> ID {
        ID(self.0.uid.clone())
    }

    /// `graphql.mutation`: a mutation was performed for the organization.
    #[graphql(name = "type")]
    async fn kind(&self) -> &str {
        &self.0.kind
    }

    /// When it happened (ms since the epoch).
    async fn timestamp(&self) -> i64 {
        self.0.timestamp
    }

    /// A JSON object as a string: `mutationName` and the mutation's input, secrets removed.
    async fn data(&self) -> &str {
        &self.0.data
    }

    /// Who performed it: the subject of the token.
    async fn actor(&self) -> UserInfo {
        UserInfo {
            id: ID(self.0.actor_id.to_string()),
            username: self.0.actor_username.clone(),
        }
    }

    /// The address the request came from.
    #[graphql(name = "actorLocationIP")]
    async fn actor_location_ip(&self) -> Option<&str> {
        self.0.actor_ip.as_deref()
    }

    /// The repository the mutation concerned, if any (and if it still exists).
    async fn repository(&self, ctx: &Context<'_>) -> Result<Option<Repository>> {
        let Some(id) = self.0.repository_id else {
            return Ok(None);
        };
        match rows::repository(ctx, self.0.org_id, id).await {
            Ok(row) => Ok(Some(Repository(row))),
            Err(crate::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }
}
