//! The delivery log (ADMIN): deliveries, their bodies and every attempt.

use async_graphql::{Context, ID, Object, SimpleObject};

use super::auth::require;
use super::db;
use crate::Result;
use crate::domain::{DeliveryState, Permission};
use crate::store;
use crate::store::entities::{delivery, delivery_attempt};

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
}
