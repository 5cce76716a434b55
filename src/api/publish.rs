//! `publishEvent` (WRITE): any event type a platform wants to announce, recorded and queued in
//! one transaction like a CI event.

use async_graphql::{Context, ID, InputObject, Json, Object, SimpleObject};

use super::audit;
use crate::domain::Permission;
use crate::events::Outbox;
use crate::events::audit::AuditDraft;
use crate::events::published::{Publication, publish};
use crate::schema::auth::require;
use crate::store::deliveries::Numbers;
use crate::store::entities::published_event;
use crate::store::{self, Writes, parse_id};
use crate::{Error, Result};

#[derive(InputObject)]
pub struct PublishEventInput {
    pub owner_uid: ID,
    /// The event's type, sent as `X-Cirrus-Event`: a letter, then up to 63 letters, digits,
    /// `_`, `.` or `-`; `build`, `task`, `ping` and `audit_event` are Herald's own.
    #[graphql(name = "type")]
    pub kind: String,
    /// What the event is about: an endpoint's deliveries for one subject are sent in order.
    pub subject: Option<String>,
    /// A JSON object of at most 256 KiB: the body of FLAT and RAW endpoints, the `data` of DATA
    /// ones.
    pub payload: Json<serde_json::Value>,
    pub client_mutation_id: Option<String>,
}

/// A published event.
#[derive(SimpleObject)]
pub struct PublishedEvent {
    pub id: ID,
    #[graphql(name = "type")]
    pub kind: String,
    pub subject: Option<String>,
    /// When it was recorded (ms since the epoch).
    pub timestamp: i64,
}

#[derive(SimpleObject)]
pub struct PublishEventPayload {
    pub event: PublishedEvent,
    /// How many deliveries were queued: one per enabled endpoint subscribed to the type.
    pub deliveries: i32,
    pub client_mutation_id: Option<String>,
}

#[derive(Default)]
pub struct PublishMutation;

#[Object]
impl PublishMutation {
    /// Publishes an event to every enabled endpoint of the organization that names `PUBLISHED`
    /// and, when it lists `publishedEvents`, this type (WRITE).
    async fn publish_event(
        &self,
        ctx: &Context<'_>,
        input: PublishEventInput,
    ) -> Result<PublishEventPayload> {
        let viewer = require(ctx, Permission::Write)?;
        if parse_id("organization", &input.owner_uid)? != viewer.org_id {
            return Err(Error::not_found("organization", input.owner_uid.as_str()));
        }
        let publication = Publication {
            org_id: viewer.org_id,
            kind: input.kind,
            subject: input.subject,
            payload: input.payload.0,
        };
        let draft = audit::draft(ctx, viewer.org_id);
        let (event, deliveries) = record(
            super::handle::<Writes>(ctx)?,
            super::handle::<Outbox>(ctx)?,
            publication,
            draft,
        )
        .await?;
        Ok(PublishEventPayload {
            event: PublishedEvent {
                id: ID(event.uid),
                kind: event.kind,
                subject: event.subject,
                timestamp: event.timestamp,
            },
            deliveries: deliveries as i32,
            client_mutation_id: input.client_mutation_id,
        })
    }
}

/// Checks `publication`, records it with its deliveries and the audit event `draft` in one
/// transaction, and returns the event and how many deliveries were queued: the one path of
/// `publishEvent` and of the REST hooks' publish.
pub(super) async fn record(
    writes: &Writes,
    outbox: &Outbox,
    publication: Publication,
    draft: AuditDraft,
) -> Result<(published_event::Model, usize)> {
    let payload = publication.check()?;
    let org_id = publication.org_id;
    let mut tx = writes.begin().await?;
    let endpoints = store::endpoints::enabled_of(&*tx, &[org_id]).await?;
    let mut numbers = Numbers::of(&endpoints);
    let (event, deliveries, due) = publish(
        &*tx,
        writes.announcer(),
        publication,
        payload,
        &endpoints,
        &mut numbers,
    )
    .await?;
    if due {
        tx.queued_due();
    }
    audit::commit_draft(outbox, tx, draft, Some(numbers)).await?;
    Ok((event, deliveries))
}
