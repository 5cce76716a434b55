//! The delivery log, redelivery, test pings and payload previews (ADMIN).

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::auth::require;
use super::{audit, db, state};
use crate::domain::status::parse_stored;
use crate::domain::{DeliveryState, PayloadFormat, Permission};
use crate::payload::Rendered;
use crate::payload::outbox::Change;
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
        &self.0.action
    }

    async fn state(&self) -> Result<DeliveryState> {
        parse_stored(&self.0.state, DeliveryState::parse)
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
    async fn next_attempt_timestamp(&self) -> Result<Option<i64>> {
        let state = parse_stored(&self.0.state, DeliveryState::parse)?;
        Ok((!state.is_final()).then_some(self.0.next_attempt_at))
    }

    async fn payload(&self) -> WebHookDeliveryPayload {
        WebHookDeliveryPayload {
            event: self.0.event.clone(),
            action: self.0.action.clone(),
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

#[derive(InputObject)]
pub struct RedeliverWebHookInput {
    pub delivery_id: ID,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct SendTestWebHookInput {
    pub endpoint_id: ID,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct DeliveryPayload {
    pub delivery: WebHookDelivery,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct PreviewWebHookPayloadInput {
    pub owner_uid: ID,
    /// The selection to try; Cirrus's default when absent.
    pub payload_query: Option<String>,
    pub payload_format: Option<PayloadFormat>,
    pub build_id: ID,
    pub task_id: Option<ID>,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct PreviewWebHookPayloadPayload {
    /// The `X-Cirrus-Event` value.
    pub event: String,
    /// The exact JSON text that would be sent.
    pub body: String,
    pub client_mutation_id: Option<String>,
}

#[derive(Default)]
pub struct DeliveryMutation;

#[Object]
impl DeliveryMutation {
    /// Sends a delivery again: the same id and the same bytes, in a new attempt (ADMIN).
    /// Refused while an attempt of the delivery is under way, and while its endpoint is
    /// disabled.
    async fn redeliver_web_hook(
        &self,
        ctx: &Context<'_>,
        input: RedeliverWebHookInput,
    ) -> Result<DeliveryPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let state = state(ctx)?;
        let (_turn, tx) = state.begin_api_write().await?;
        let row = store::deliveries::find(&tx, viewer.org_id, &input.delivery_id).await?;
        if row.body.is_empty() {
            return Err(Error::Invalid(
                "The delivery was never sent: its payload was refused when its event was recorded (its attempt log says why), so there is nothing to send again.".into(),
            ));
        }
        let endpoint = store::endpoints::find(&tx, viewer.org_id, row.endpoint_id).await?;
        if !endpoint.enabled {
            return Err(Error::Invalid(
                "The endpoint is disabled; enable it to redeliver its deliveries.".into(),
            ));
        }
        store::deliveries::redeliver(&tx, &row, crate::now_ms()).await?;
        store::deliveries::announce(&tx, state.outbox.announcer()).await?;
        let row = store::deliveries::find(&tx, viewer.org_id, &input.delivery_id).await?;
        audit::commit(ctx, tx, viewer.org_id, None, true).await?;
        Ok(DeliveryPayload {
            delivery: WebHookDelivery(row),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Queues a `ping` delivery to an enabled endpoint (ADMIN).
    async fn send_test_web_hook(
        &self,
        ctx: &Context<'_>,
        input: SendTestWebHookInput,
    ) -> Result<DeliveryPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let state = state(ctx)?;
        let id = parse_id("webhook endpoint", &input.endpoint_id)?;
        let (_turn, tx) = state.begin_api_write().await?;
        let endpoint = store::endpoints::find(&tx, viewer.org_id, id).await?;
        if !endpoint.enabled {
            return Err(Error::Invalid(
                "The endpoint is disabled; enable it to send a test delivery.".into(),
            ));
        }
        let row = state.outbox.queue_ping(&tx, &endpoint).await?;
        audit::commit(ctx, tx, viewer.org_id, None, true).await?;
        Ok(DeliveryPayload {
            delivery: WebHookDelivery(row),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Renders the body a selection would produce for the `created` event of a build or task,
    /// without saving anything (ADMIN).
    async fn preview_web_hook_payload(
        &self,
        ctx: &Context<'_>,
        input: PreviewWebHookPayloadInput,
    ) -> Result<PreviewWebHookPayloadPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let state = state(ctx)?;
        if parse_id("organization", &input.owner_uid)? != viewer.org_id {
            return Err(Error::not_found("organization", input.owner_uid.as_str()));
        }
        let build_id = parse_id("build", &input.build_id)?;
        let change = match &input.task_id {
            Some(task_id) => {
                let task =
                    store::ci::task(&state.db, viewer.org_id, parse_id("task", task_id)?).await?;
                if task.build_id != build_id {
                    return Err(Error::Invalid(format!(
                        "Task {} is not a task of build {build_id}.",
                        task.id
                    )));
                }
                Change::task_created(&task)
            }
            None => {
                Change::build_created(&store::ci::build(&state.db, viewer.org_id, build_id).await?)
            }
        };
        let query = input.payload_query.filter(|query| !query.trim().is_empty());
        let renderer = state.outbox.renderer();
        if let Some(query) = &query {
            renderer.check(query, &state.db).await?;
        }
        let format = input.payload_format.unwrap_or(PayloadFormat::Data);
        let db = store::Db::Pool(state.db.clone());
        let body = match renderer
            .render(db, &change, query.as_deref(), format)
            .await?
        {
            Rendered::Body(body) => body,
            Rendered::Refused(reason) => return Err(Error::Invalid(reason)),
        };
        Ok(PreviewWebHookPayloadPayload {
            event: change.kind.header_value().into(),
            body,
            client_mutation_id: input.client_mutation_id,
        })
    }
}
