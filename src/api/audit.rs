//! How a mutation hands its audit event to the write that records it.

use async_graphql::Context;

use crate::events::Outbox;
use crate::events::audit::{Actor, AuditDraft};
use crate::store::WriteTx;
use crate::store::deliveries::Numbers;
use crate::{Result, store};

/// The audit event of the mutation being resolved, by its organization `org_id`: the
/// mutation's name and input (secrets removed) and the request's actor.
pub(super) fn draft(ctx: &Context<'_>, org_id: i64) -> AuditDraft {
    AuditDraft::new(org_id, actor(ctx), ctx.field().name(), input(ctx))
}

/// The `input` argument of the mutation being resolved, as JSON (null without one).
pub(super) fn input(ctx: &Context<'_>) -> serde_json::Value {
    // Arguments were resolved before the resolver ran; an error here is impossible, and the
    // input is then null.
    ctx.field()
        .arguments()
        .ok()
        .and_then(|arguments| {
            arguments
                .into_iter()
                .find(|(name, _)| name.as_str() == "input")
                .and_then(|(_, value)| value.into_json().ok())
        })
        .unwrap_or_default()
}

/// Who performs the request: its token's subject and its address.
pub(super) fn actor(ctx: &Context<'_>) -> Actor {
    ctx.data_opt::<Actor>().cloned().unwrap_or_else(|| Actor {
        username: "api".into(),
        ip: None,
    })
}

/// Ends a mutation's write: records its audit event (concerning `repository_id`, if any) in
/// `tx` and commits, which wakes the worker if the write or the audit event queued a delivery.
pub(super) async fn commit(
    ctx: &Context<'_>,
    tx: WriteTx,
    org_id: i64,
    repository_id: Option<i64>,
) -> Result<()> {
    let draft = AuditDraft {
        repository_id,
        ..draft(ctx, org_id)
    };
    commit_draft(super::handle::<Outbox>(ctx)?, tx, draft, None).await
}

/// Ends a write made for a request other than a GraphQL mutation (a REST call): records the
/// audit event `draft` in `tx` and commits, as [`commit`] does. A write that queued deliveries
/// hands over the `numbers` it gave them: a transaction takes the endpoints' counters once,
/// so that it never locks one out of order (its audit event then goes to the endpoints those
/// numbers cover).
pub(super) async fn commit_draft(
    outbox: &Outbox,
    mut tx: WriteTx,
    draft: AuditDraft,
    numbers: Option<Numbers>,
) -> Result<()> {
    let org_id = draft.org_id;
    let users = outbox.users(&*tx, vec![draft.actor_key()]).await?;
    let mut endpoints = store::endpoints::enabled_of(&*tx, &[org_id]).await?;
    let mut numbers = numbers.unwrap_or_else(|| Numbers::of(&endpoints));
    endpoints.retain(|endpoint| numbers.covers(endpoint.id));
    if outbox
        .record_audits(&*tx, vec![draft], &users, &endpoints, &mut numbers)
        .await?
    {
        tx.queued_due();
    }
    numbers.write(&*tx).await?;
    tx.commit().await?;
    outbox.learn_users(users);
    Ok(())
}
