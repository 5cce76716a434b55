//! Webhook settings (ADMIN): each organization's endpoints, and the selections an endpoint can
//! start from.

use async_graphql::{Context, ID, Object, SimpleObject};

use super::auth::require;
use super::db;
use super::deliveries::WebHookDelivery;
use crate::domain::{
    EventKind, PayloadFormat, Permission, SignatureStyle, WebHookCondition, mask_secret,
};
use crate::secrets::Vault;
use crate::store::entities::{organization, webhook_endpoint};
use crate::store::{self, Db, parse_id};
use crate::{Error, Result};

/// An organization's webhook endpoints.
pub struct WebHookSettings {
    owner_uid: i64,
    endpoints: Vec<webhook_endpoint::Model>,
}

impl WebHookSettings {
    pub(crate) async fn load(db: &Db, org: &organization::Model) -> Result<Self> {
        Ok(Self {
            owner_uid: org.id,
            endpoints: store::endpoints::list(&db.conn(), org.id).await?,
        })
    }
}

#[Object]
impl WebHookSettings {
    async fn owner_uid(&self) -> ID {
        ID(self.owner_uid.to_string())
    }

    async fn endpoints(&self) -> Vec<WebHookDeliveryEndpoint> {
        self.endpoints
            .iter()
            .cloned()
            .map(WebHookDeliveryEndpoint)
            .collect()
    }
}

/// One endpoint. Its secret is never shown, only whether one is set; URL credentials are masked.
pub struct WebHookDeliveryEndpoint(pub webhook_endpoint::Model);

#[Object]
impl WebHookDeliveryEndpoint {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    /// The URL, with any credentials replaced by `***`.
    #[graphql(name = "webhookURL")]
    async fn webhook_url(&self) -> Result<String> {
        store::endpoints::masked_url(&self.0)
    }

    /// The secret's mask (at most its last four characters); null when no secret is set.
    async fn masked_secret_token(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        let Some(sealed) = &self.0.secret else {
            return Ok(None);
        };
        Ok(Some(mask_secret(&vault(ctx)?.open(sealed)?)))
    }

    /// The organization's named secret that signs, when the endpoint uses one instead of its
    /// own.
    async fn secret_name(&self) -> Option<&str> {
        self.0.secret_name.as_deref()
    }

    /// While a rotation of the endpoint's own secret overlaps: when the replaced secret stops
    /// signing (ms since the epoch).
    async fn secret_overlap_ends_timestamp(&self) -> Option<i64> {
        self.0
            .previous_secret_until
            .filter(|until| *until > crate::now_ms())
    }

    /// How deliveries are signed.
    async fn signature_style(&self) -> SignatureStyle {
        self.0.signature_style
    }

    /// The published event types sent when `events` names `PUBLISHED`; empty means every type.
    async fn published_events(&self) -> Result<Vec<String>> {
        store::endpoints::published_events(&self.0)
    }

    /// The custom headers sent with every delivery, values masked.
    async fn headers(&self, ctx: &Context<'_>) -> Result<Vec<WebHookHeader>> {
        Ok(store::endpoints::headers(&self.0, vault(ctx)?)?
            .into_iter()
            .map(|header| WebHookHeader {
                masked_value: mask_secret(&header.value),
                name: header.name,
            })
            .collect())
    }

    /// The event types sent; empty means build and task events (audit events go only to
    /// endpoints that name them).
    async fn events(&self) -> Result<Vec<EventKind>> {
        store::endpoints::event_kinds(&self.0)
    }

    /// The stored selection; null means the default (what Cirrus CI sends).
    async fn payload_query(&self) -> Option<&str> {
        self.0.payload_query.as_deref()
    }

    async fn payload_format(&self) -> PayloadFormat {
        self.0.payload_format
    }

    async fn enabled(&self) -> bool {
        self.0.enabled
    }

    async fn insecure_ssl(&self) -> bool {
        self.0.insecure_ssl
    }

    /// Build and task statuses an event must reach to be sent (say `FAILED`, `ERRORED`);
    /// empty means every status. Test deliveries (`ping`) are always sent.
    async fn status_filter(&self) -> Result<Vec<String>> {
        store::endpoints::status_filter(&self.0)
    }

    /// The transitions (`Build.transition`, `Task.transition`) a build or task event must have
    /// to be sent; empty means every event. Audit, published and test events are not
    /// filtered.
    async fn conditions(&self) -> Result<Vec<WebHookCondition>> {
        store::endpoints::conditions(&self.0)
    }

    /// The newest delivery to this endpoint.
    async fn last_delivery(&self, ctx: &Context<'_>) -> Result<Option<WebHookDelivery>> {
        let row = store::deliveries::last_of_endpoint(&db(ctx)?.conn(), self.0.id).await?;
        Ok(row.map(WebHookDelivery))
    }
}

fn vault<'a>(ctx: &'a Context<'_>) -> Result<&'a Vault> {
    ctx.data::<Vault>()
        .map_err(|_| Error::internal("the request has no vault"))
}

/// A custom header of an endpoint; its value is write-only.
#[derive(SimpleObject)]
pub struct WebHookHeader {
    pub name: String,
    /// At most the value's last four characters.
    pub masked_value: String,
}

/// A named secret: defined once, used by any of the organization's endpoints (`secretName`).
pub struct WebHookSecret(pub crate::store::entities::webhook_secret::Model);

#[Object]
impl WebHookSecret {
    async fn name(&self) -> &str {
        &self.0.name
    }

    /// At most the value's last four characters.
    async fn masked_value(&self, ctx: &Context<'_>) -> Result<String> {
        Ok(mask_secret(&vault(ctx)?.open(&self.0.value)?))
    }

    /// When the value was last set or rotated (ms since the epoch).
    async fn updated_timestamp(&self) -> i64 {
        self.0.updated_at
    }

    /// While a rotation overlaps: when the replaced value stops signing (ms since the epoch).
    async fn overlap_ends_timestamp(&self) -> Option<i64> {
        self.0
            .previous_until
            .filter(|until| *until > crate::now_ms())
    }

    /// The ids of the endpoints that sign with it.
    async fn used_by(&self, ctx: &Context<'_>) -> Result<Vec<ID>> {
        let ids = store::secrets::used_by(&db(ctx)?.conn(), self.0.org_id, &self.0.name).await?;
        Ok(ids.into_iter().map(|id| ID(id.to_string())).collect())
    }

    /// The ids of the approval hooks that sign with it.
    async fn used_by_approval_hooks(&self, ctx: &Context<'_>) -> Result<Vec<ID>> {
        let ids =
            store::secrets::used_by_hooks(&db(ctx)?.conn(), self.0.org_id, &self.0.name).await?;
        Ok(ids.into_iter().map(|id| ID(id.to_string())).collect())
    }
}

#[derive(Default)]
pub struct WebhookQuery;

#[Object]
impl WebhookQuery {
    /// One endpoint of the token's organization (ADMIN).
    async fn webhook_endpoint(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<Option<WebHookDeliveryEndpoint>> {
        let viewer = require(ctx, Permission::Admin)?;
        let id = parse_id("webhook endpoint", &id)?;
        Ok(Some(WebHookDeliveryEndpoint(
            store::endpoints::find(&db(ctx)?.conn(), viewer.org_id, id).await?,
        )))
    }

    /// Selections an endpoint can start from or store as its `payloadQuery`: `DEFAULT` (what
    /// an endpoint without one sends, as Cirrus CI sends today) and `CIRRUS_DOCUMENTED` (the
    /// selection Cirrus CI's documentation gives, field for field).
    async fn webhook_payload_selections(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Vec<WebHookPayloadSelection>> {
        require(ctx, Permission::Read)?;
        Ok(vec![
            WebHookPayloadSelection {
                name: "DEFAULT",
                description: "What Cirrus CI sends today; used when an endpoint has no selection.",
                query: super::selections::DEFAULT_SELECTION,
            },
            WebHookPayloadSelection {
                name: "CIRRUS_DOCUMENTED",
                description: "The default selection of Cirrus CI's documentation, field for field.",
                query: super::selections::CIRRUS_DOCUMENTED_SELECTION,
            },
        ])
    }
}

/// A named payload selection.
#[derive(SimpleObject)]
pub struct WebHookPayloadSelection {
    pub name: &'static str,
    pub description: &'static str,
    pub query: &'static str,
}
