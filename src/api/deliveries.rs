//! Redelivery, test pings and payload previews (ADMIN).

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::audit;
use super::webhooks::WebHookHeaderInput;
use crate::domain::headers::Header;
use crate::domain::{PayloadFormat, Permission, SignatureStyle};
use crate::events::{Change, Outbox, Rendered};
use crate::schema::auth::require;
use crate::schema::deliveries::WebHookDelivery;
use crate::schema::webhooks::WebHookHeader;
use crate::store::{self, Writes, parse_id};
use crate::{Error, Result};

#[derive(InputObject)]
pub struct RedeliverWebHookInput {
    pub delivery_id: ID,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct SendTestWebHookInput {
    pub endpoint_id: ID,
    /// What to send: `build` or `task` (the organization's newest build, or its newest task,
    /// as created), a published type (its newest payload, or `{}`), rendered through the
    /// endpoint's own selection, format and style; a `ping` when absent.
    pub event: Option<String>,
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
    /// The style whose headers `headers` shows; `CIRRUS` when absent.
    pub signature_style: Option<SignatureStyle>,
    /// Whether the endpoint has a secret (its own or a named one), so that signatures are sent.
    pub with_secret: Option<bool>,
    /// Custom headers to show among the headers.
    pub headers: Option<Vec<WebHookHeaderInput>>,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct PreviewWebHookPayloadPayload {
    /// The `X-Cirrus-Event` value.
    pub event: String,
    /// The exact JSON text that would be sent.
    pub body: String,
    /// The request's headers, in the order sent; secrets, tokens and signatures masked, and
    /// the delivery's id and times as examples.
    pub headers: Vec<WebHookHeader>,
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
        let writes = super::handle::<Writes>(ctx)?;
        let mut tx = writes.begin().await?;
        let row = store::deliveries::find(&*tx, viewer.org_id, &input.delivery_id).await?;
        if row.body.is_empty() {
            return Err(Error::Invalid(
                "The delivery was never sent: its payload was refused when its event was recorded (its attempt log says why), so there is nothing to send again.".into(),
            ));
        }
        let endpoint = store::endpoints::find(&*tx, viewer.org_id, row.endpoint_id).await?;
        if !endpoint.enabled {
            return Err(Error::Invalid(
                "The endpoint is disabled; enable it to redeliver its deliveries.".into(),
            ));
        }
        store::deliveries::redeliver(&*tx, &row, crate::now_ms()).await?;
        store::deliveries::announce(&*tx, writes.announcer()).await?;
        tx.queued_due();
        let row = store::deliveries::find(&*tx, viewer.org_id, &input.delivery_id).await?;
        audit::commit(ctx, tx, viewer.org_id, None).await?;
        Ok(DeliveryPayload {
            delivery: WebHookDelivery(row),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Queues a test delivery to an enabled endpoint (ADMIN): a `ping`, or a sample of the
    /// `event` kind as the endpoint would send it.
    async fn send_test_web_hook(
        &self,
        ctx: &Context<'_>,
        input: SendTestWebHookInput,
    ) -> Result<DeliveryPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let outbox = super::handle::<Outbox>(ctx)?;
        let pool = super::pool(ctx)?;
        let id = parse_id("webhook endpoint", &input.endpoint_id)?;
        let endpoint = store::endpoints::find(pool, viewer.org_id, id).await?;
        let test = outbox
            .test_delivery(
                store::Db::Pool(pool.clone()),
                &endpoint,
                input.event.as_deref(),
            )
            .await?;
        let writes = super::handle::<Writes>(ctx)?;
        let mut tx = writes.begin().await?;
        let endpoint = store::endpoints::find(&*tx, viewer.org_id, id).await?;
        let new = store::deliveries::NewDelivery {
            org_id: viewer.org_id.into(),
            endpoint_id: id.into(),
            event: test.event,
            action: test.action,
            body: test.body,
            timestamp: crate::now_ms(),
        };
        let enabled = store::endpoints::enabled_of(&*tx, &[viewer.org_id]).await?;
        if !enabled.iter().any(|row| row.id == endpoint.id) {
            return Err(Error::Invalid(
                "The endpoint is disabled; enable it to send a test delivery.".into(),
            ));
        }
        let mut numbers = store::deliveries::Numbers::of(&enabled);
        let row = store::deliveries::insert_one(&*tx, new, &mut numbers).await?;
        store::deliveries::announce(&*tx, writes.announcer()).await?;
        tx.queued_due();
        let draft = audit::draft(ctx, viewer.org_id);
        audit::commit_draft(outbox, tx, draft, Some(numbers)).await?;
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
        let outbox = super::handle::<Outbox>(ctx)?;
        let pool = super::pool(ctx)?;
        if parse_id("organization", &input.owner_uid)? != viewer.org_id {
            return Err(Error::not_found("organization", input.owner_uid.as_str()));
        }
        let build_id = parse_id("build", &input.build_id)?;
        let change = match &input.task_id {
            Some(task_id) => {
                let task = store::ci::task(pool, viewer.org_id, parse_id("task", task_id)?).await?;
                if task.build_id != build_id {
                    return Err(Error::Invalid(format!(
                        "Task {} is not a task of build {build_id}.",
                        task.id
                    )));
                }
                Change::task_created(&task)
            }
            None => Change::build_created(&store::ci::build(pool, viewer.org_id, build_id).await?),
        };
        let query = input.payload_query.filter(|query| !query.trim().is_empty());
        let renderer = outbox.renderer();
        if let Some(query) = &query {
            renderer.check(query, pool).await?;
        }
        let format = input.payload_format.unwrap_or(PayloadFormat::Data);
        let db = store::Db::Pool(pool.clone());
        let body = match renderer
            .render(db, &change, query.as_deref(), format)
            .await?
        {
            Rendered::Body(body) => body,
            Rendered::Refused(reason) => return Err(Error::Invalid(reason)),
        };
        let event = change.kind.header_value();
        let custom: Vec<Header> = input
            .headers
            .unwrap_or_default()
            .into_iter()
            .map(|header| Header {
                name: header.name,
                value: header.value,
            })
            .collect();
        let headers = crate::delivery::client::preview_headers(
            input.signature_style.unwrap_or(SignatureStyle::Cirrus),
            input.with_secret.unwrap_or(false),
            &custom,
            event,
            &body,
        )
        .into_iter()
        .map(|(name, masked_value)| WebHookHeader { name, masked_value })
        .collect();
        Ok(PreviewWebHookPayloadPayload {
            event: event.into(),
            body,
            headers,
            client_mutation_id: input.client_mutation_id,
        })
    }
}
