//! The delivery log (ADMIN): deliveries, their bodies and every attempt; and each endpoint's
//! events in the order of their sequence numbers (`webhookEvents`), for receivers catching up.

use async_graphql::{Context, ID, Object, SimpleObject};

use super::auth::require;
use super::db;
use crate::domain::{DeliveryState, EventKind, Permission};
use crate::store::entities::{delivery, delivery_attempt};
use crate::store::{self, parse_id};
use crate::{Error, Result};

/// One event on its way to one endpoint: the exact body, and every attempt to send it.
pub struct WebHookDelivery(pub delivery::Model);

/// What was sent.
#[derive(SimpleObject)]
pub struct WebHookDeliveryPayload {
    /// The `X-Cirrus-Event` value.
    event: String,
    action: String,
    /// The exact body sent, as text.
    data: String,
}

/// The last answer.
#[derive(SimpleObject)]
pub struct WebHookDeliveryResponse {
    status: i32,
    /// Milliseconds.
    duration: i64,
    /// The response body as text (at most 64 KiB).
    data: String,
}

#[Object]
impl WebHookDelivery {
    /// The delivery id: `X-Cirrus-Delivery` and `webhook-id`, the same on every attempt.
    async fn id(&self) -> ID {
        ID(self.0.uid.clone())
    }

    async fn endpoint_id(&self) -> ID {
        ID(self.0.endpoint_id.to_string())
    }

    /// `build`, `task`, `audit_event` or `ping`.
    async fn event(&self) -> &str {
        &self.0.event
    }

    async fn action(&self) -> &str {
        self.0.action.as_str()
    }

    async fn state(&self) -> DeliveryState {
        self.0.state
    }

    /// Attempts made so far.
    async fn attempts(&self) -> i32 {
        self.0.attempts
    }

    /// The event's time (ms since the epoch): `X-Cirrus-Timestamp`.
    async fn timestamp(&self) -> i64 {
        self.0.created_at
    }

    /// Its place among the endpoint's deliveries (`X-Herald-Sequence`, see `webhookEvents`);
    /// null for a delivery never sent.
    async fn sequence(&self) -> Option<i64> {
        self.0.sequence.filter(|sequence| *sequence > 0)
    }

    /// When the next attempt is due; null once the delivery is finished.
    async fn next_attempt_timestamp(&self) -> Option<i64> {
        (!self.0.state.is_final()).then_some(self.0.next_attempt_at)
    }

    async fn payload(&self) -> WebHookDeliveryPayload {
        WebHookDeliveryPayload {
            event: self.0.event.clone(),
            action: self.0.action.as_str().to_owned(),
            data: self.0.body.clone(),
        }
    }

    /// The last answer; null before any came.
    async fn response(&self) -> Option<WebHookDeliveryResponse> {
        Some(WebHookDeliveryResponse {
            status: self.0.last_status?,
            duration: self.0.last_duration.unwrap_or_default(),
            data: self.0.last_response.clone().unwrap_or_default(),
        })
    }

    /// Every attempt, first to last.
    async fn attempt_log(&self, ctx: &Context<'_>) -> Result<Vec<WebHookDeliveryAttempt>> {
        let rows = store::deliveries::attempts(&db(ctx)?.conn(), self.0.id).await?;
        super::rows::charge(ctx, rows.len())?;
        Ok(rows.into_iter().map(WebHookDeliveryAttempt).collect())
    }
}

/// One try at sending a delivery.
pub struct WebHookDeliveryAttempt(delivery_attempt::Model);

#[Object]
impl WebHookDeliveryAttempt {
    async fn number(&self) -> i32 {
        self.0.number
    }

    async fn timestamp(&self) -> i64 {
        self.0.timestamp
    }

    /// The HTTP status; null when no answer came.
    async fn status(&self) -> Option<i32> {
        self.0.status
    }

    /// Milliseconds.
    async fn duration(&self) -> i64 {
        self.0.duration
    }

    /// Why the attempt failed, in one sentence; null on success.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }

    /// The response headers as a JSON object.
    async fn response_headers(&self) -> &str {
        &self.0.response_headers
    }

    /// The response body (at most 64 KiB).
    async fn response_data(&self) -> &str {
        &self.0.response_body
    }
}

/// An event as one endpoint got it: its place in the endpoint's sequence and the exact body
/// sent.
pub struct WebHookEvent(delivery::Model);

#[Object]
impl WebHookEvent {
    /// `X-Herald-Sequence`: 1 for the endpoint's first event, and one more for each later one,
    /// in the order they were recorded.
    async fn sequence(&self) -> i64 {
        self.0.sequence.unwrap_or_default()
    }

    /// The delivery id: `X-Cirrus-Delivery` and `webhook-id`.
    async fn delivery_id(&self) -> ID {
        ID(self.0.uid.clone())
    }

    /// The `X-Cirrus-Event` value: `build`, `task`, `audit_event`, `ping` or a published type.
    async fn event(&self) -> &str {
        &self.0.event
    }

    async fn action(&self) -> &str {
        self.0.action.as_str()
    }

    /// The event's time (ms since the epoch): `X-Cirrus-Timestamp`.
    async fn timestamp(&self) -> i64 {
        self.0.created_at
    }

    /// Where its delivery stands.
    async fn state(&self) -> DeliveryState {
        self.0.state
    }

    /// The exact body every attempt sends, as text.
    async fn body(&self) -> &str {
        &self.0.body
    }
}

/// How many events `webhookEvents` returns when `first` is not given.
const EVENTS_PAGE: i32 = 100;

/// The most bytes of bodies one `webhookEvents` page holds (it holds at least one event).
const EVENTS_BYTES: usize = 4 << 20;

#[derive(Default)]
pub struct DeliveryQuery;

#[Object]
impl DeliveryQuery {
    /// One delivery of the token's organization (ADMIN).
    async fn webhook_delivery(&self, ctx: &Context<'_>, id: ID) -> Result<Option<WebHookDelivery>> {
        let viewer = require(ctx, Permission::Admin)?;
        Ok(Some(WebHookDelivery(
            store::deliveries::find(&db(ctx)?.conn(), viewer.org_id, &id).await?,
        )))
    }

    /// The events queued for one of the organization's endpoints after its sequence number
    /// `afterSequence` (0, the default, from the first), in order, at most `first` (100 by
    /// default, 500 at most) and 4 MiB of bodies (at least one event), each with the exact body
    /// sent. A receiver that sees a number skipped in `X-Herald-Sequence`, or restarts, fetches
    /// what it missed here, page after page until one comes back empty; events removed by the
    /// delivery log's retention are gone. READ; ADMIN for an endpoint that gets audit events
    /// or a page that holds one.
    async fn webhook_events(
        &self,
        ctx: &Context<'_>,
        endpoint_id: ID,
        after_sequence: Option<i64>,
        first: Option<i32>,
    ) -> Result<Vec<WebHookEvent>> {
        let viewer = require(ctx, Permission::Read)?;
        let after = after_sequence.unwrap_or(0);
        if after < 0 {
            return Err(Error::Invalid("afterSequence must be 0 or more.".into()));
        }
        let first = first.unwrap_or(EVENTS_PAGE);
        let max = store::deliveries::MAX_PAGE;
        if first < 1 || first as u64 > max {
            return Err(Error::Invalid(format!(
                "first must be between 1 and {max}."
            )));
        }
        let id = parse_id("webhook endpoint", &endpoint_id)?;
        let conn = db(ctx)?.conn();
        let endpoint = store::endpoints::find(&conn, viewer.org_id, id).await?;
        let mut rows = store::deliveries::after(&conn, id, after, first as u64).await?;
        // Audit events (who changed what) are for admins, whatever the endpoint gets now.
        if EventKind::AuditEvent.is_in(&store::endpoints::event_kinds(&endpoint)?)
            || rows.iter().any(|row| row.event == "audit_event")
        {
            require(ctx, Permission::Admin)?;
        }
        // At most EVENTS_BYTES of bodies (and always the first event), each KiB counted as a
        // row read: a page is fetched again from where it ended.
        let mut bytes = 0;
        let kept = rows
            .iter()
            .take_while(|row| {
                bytes += row.body.len();
                bytes <= EVENTS_BYTES
            })
            .count();
        rows.truncate(kept.max(1));
        let read: usize = rows.iter().map(|row| row.body.len() / 1024).sum();
        super::rows::charge(ctx, rows.len() + read)?;
        Ok(rows.into_iter().map(WebHookEvent).collect())
    }
}
