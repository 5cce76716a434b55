//! Webhook settings: each organization's endpoints (ADMIN).

use std::collections::HashSet;

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::auth::require;
use super::deliveries::WebHookDelivery;
use super::webhook_draft::{Draft, check, check_endpoint_count};
use super::{audit, db, state};
use crate::domain::{EventKind, PayloadFormat, Permission, mask_secret};
use crate::store::endpoints::{EndpointFields, fields_of};
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
        Ok(Some(mask_secret(&state(ctx)?.vault.open(sealed)?)))
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

    async fn payload_format(&self) -> Result<PayloadFormat> {
        crate::domain::status::parse_stored(&self.0.payload_format, PayloadFormat::parse)
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

    /// The newest delivery to this endpoint.
    async fn last_delivery(&self, ctx: &Context<'_>) -> Result<Option<WebHookDelivery>> {
        let row = store::deliveries::last_of_endpoint(&db(ctx)?.conn(), self.0.id).await?;
        Ok(row.map(WebHookDelivery))
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
                query: crate::payload::DEFAULT_SELECTION,
            },
            WebHookPayloadSelection {
                name: "CIRRUS_DOCUMENTED",
                description: "The default selection of Cirrus CI's documentation, field for field.",
                query: crate::payload::CIRRUS_DOCUMENTED_SELECTION,
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

/// An endpoint in the whole-list `saveWebHookSettings`.
#[derive(InputObject)]
pub struct WebHookDeliveryEndpointInput {
    #[graphql(name = "webhookURL")]
    pub webhook_url: String,
    /// The signing secret; the masked value keeps the stored one, empty means none.
    pub secret_token: Option<String>,
    pub events: Option<Vec<EventKind>>,
    pub payload_query: Option<String>,
    pub payload_format: Option<PayloadFormat>,
    pub enabled: Option<bool>,
    pub insecure_ssl: Option<bool>,
    /// Only events reaching these build or task statuses; empty or absent means every status.
    pub status_filter: Option<Vec<String>>,
}

#[derive(InputObject)]
pub struct SaveWebHookSettingsInput {
    pub owner_uid: ID,
    pub delivery_endpoints: Vec<WebHookDeliveryEndpointInput>,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct SaveWebHookSettingsPayload {
    pub settings: WebHookSettings,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct CreateWebHookEndpointInput {
    pub owner_uid: ID,
    #[graphql(name = "webhookURL")]
    pub webhook_url: String,
    pub secret_token: Option<String>,
    pub events: Option<Vec<EventKind>>,
    pub payload_query: Option<String>,
    pub payload_format: Option<PayloadFormat>,
    pub enabled: Option<bool>,
    pub insecure_ssl: Option<bool>,
    /// Only events reaching these build or task statuses; empty means every status.
    pub status_filter: Option<Vec<String>>,
    pub client_mutation_id: Option<String>,
}

/// Changes to an endpoint; absent fields keep their values.
#[derive(InputObject)]
pub struct UpdateWebHookEndpointInput {
    pub id: ID,
    #[graphql(name = "webhookURL")]
    pub webhook_url: Option<String>,
    /// A new secret; the masked value keeps the stored one, empty removes it.
    pub secret_token: Option<String>,
    pub events: Option<Vec<EventKind>>,
    /// A new selection; empty returns to Cirrus's default.
    pub payload_query: Option<String>,
    pub payload_format: Option<PayloadFormat>,
    pub enabled: Option<bool>,
    pub insecure_ssl: Option<bool>,
    /// Only events reaching these build or task statuses; empty means every status.
    pub status_filter: Option<Vec<String>>,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct EndpointPayload {
    pub endpoint: WebHookDeliveryEndpoint,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct DeleteWebHookEndpointInput {
    pub id: ID,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct DeleteWebHookEndpointPayload {
    pub deleted_id: ID,
    pub client_mutation_id: Option<String>,
}

/// Which fields an `updateWebHookEndpoint` input gives.
struct Given {
    url: bool,
    secret: bool,
    events: bool,
    payload_query: bool,
    payload_format: bool,
    enabled: bool,
    insecure_ssl: bool,
    status_filter: bool,
}

impl Given {
    /// The endpoint as stored now (`locked`), with the fields the input gives taken from
    /// `checked`.
    fn apply(&self, checked: EndpointFields, locked: EndpointFields) -> EndpointFields {
        fn pick<T>(given: bool, checked: T, locked: T) -> T {
            if given { checked } else { locked }
        }
        let EndpointFields {
            url,
            secret,
            events,
            payload_query,
            payload_format,
            enabled,
            insecure_ssl,
            status_filter,
        } = checked;
        EndpointFields {
            url: pick(self.url, url, locked.url),
            secret: pick(self.secret, secret, locked.secret),
            events: pick(self.events, events, locked.events),
            payload_query: pick(self.payload_query, payload_query, locked.payload_query),
            payload_format: pick(self.payload_format, payload_format, locked.payload_format),
            enabled: pick(self.enabled, enabled, locked.enabled),
            insecure_ssl: pick(self.insecure_ssl, insecure_ssl, locked.insecure_ssl),
            status_filter: pick(self.status_filter, status_filter, locked.status_filter),
        }
    }
}

fn owner_of(viewer_org: i64, uid: &ID) -> Result<i64> {
    match parse_id("organization", uid)? {
        id if id == viewer_org => Ok(id),
        _ => Err(Error::not_found("organization", uid.as_str())),
    }
}

#[derive(Default)]
pub struct WebhookMutation;

#[Object]
impl WebhookMutation {
    /// Adds an endpoint (ADMIN); `CONFLICT` when the organization already has its URL.
    async fn create_web_hook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: CreateWebHookEndpointInput,
    ) -> Result<EndpointPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let state = state(ctx)?;
        let org_id = owner_of(viewer.org_id, &input.owner_uid)?;
        let draft = Draft {
            url: input.webhook_url,
            secret: input.secret_token,
            events: input.events.unwrap_or_default(),
            payload_query: input.payload_query,
            payload_format: input.payload_format.unwrap_or(PayloadFormat::Data),
            enabled: input.enabled.unwrap_or(true),
            insecure_ssl: input.insecure_ssl.unwrap_or(false),
            status_filter: input.status_filter.unwrap_or_default(),
        };
        let fields = check(state, draft, None).await?;
        let (_turn, tx) = state.begin_api_write().await?;
        // Counted in the write's turn (and, on PostgreSQL, under the organization's lock), so
        // that endpoints created at once cannot pass the bound together.
        store::endpoints::lock_organization(&tx, org_id).await?;
        let existing = store::endpoints::list(&tx, org_id).await?.len();
        check_endpoint_count(state, existing + 1)?;
        let endpoint = store::endpoints::create(&tx, org_id, fields, &state.vault).await?;
        audit::commit(ctx, tx, org_id, None, false).await?;
        Ok(EndpointPayload {
            endpoint: WebHookDeliveryEndpoint(endpoint),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Changes an endpoint (ADMIN); absent fields keep their values.
    async fn update_web_hook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: UpdateWebHookEndpointInput,
    ) -> Result<EndpointPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let state = state(ctx)?;
        let id = parse_id("webhook endpoint", &input.id)?;
        // The input is checked against the endpoint as read now, outside the write; the write
        // then reads it again, locked, and changes only the fields the input gives. A change
        // made in between (the worker turning the endpoint off after a 410) is kept.
        let current = store::endpoints::find(&state.db, viewer.org_id, id).await?;
        let stored = fields_of(&current, &state.vault)?;
        let masked = store::endpoints::masked_url(&current)?;
        let given = Given {
            url: input.webhook_url.is_some(),
            secret: input.secret_token.is_some(),
            events: input.events.is_some(),
            payload_query: input.payload_query.is_some(),
            payload_format: input.payload_format.is_some(),
            enabled: input.enabled.is_some(),
            insecure_ssl: input.insecure_ssl.is_some(),
            status_filter: input.status_filter.is_some(),
        };
        let draft = Draft {
            url: input.webhook_url.unwrap_or(masked),
            secret: match input.secret_token {
                Some(secret) => Some(secret),
                None => stored.secret.as_deref().map(mask_secret),
            },
            events: input.events.unwrap_or(stored.events),
            payload_query: match input.payload_query {
                Some(query) => Some(query),
                None => stored.payload_query,
            },
            payload_format: input.payload_format.unwrap_or(stored.payload_format),
            enabled: input.enabled.unwrap_or(stored.enabled),
            insecure_ssl: input.insecure_ssl.unwrap_or(stored.insecure_ssl),
            status_filter: input.status_filter.unwrap_or(stored.status_filter),
        };
        let checked = check(state, draft, Some(&current)).await?;
        let (_turn, tx) = state.begin_api_write().await?;
        let locked = store::endpoints::find_for_update(&tx, viewer.org_id, id).await?;
        let fields = given.apply(checked, fields_of(&locked, &state.vault)?);
        let endpoint = store::endpoints::update(&tx, locked, fields, &state.vault).await?;
        audit::commit(ctx, tx, viewer.org_id, None, false).await?;
        Ok(EndpointPayload {
            endpoint: WebHookDeliveryEndpoint(endpoint),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Deletes an endpoint and its delivery log (ADMIN).
    async fn delete_web_hook_endpoint(
        &self,
        ctx: &Context<'_>,
        input: DeleteWebHookEndpointInput,
    ) -> Result<DeleteWebHookEndpointPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let state = state(ctx)?;
        let id = parse_id("webhook endpoint", &input.id)?;
        let (_turn, tx) = state.begin_api_write().await?;
        let endpoint = store::endpoints::find(&tx, viewer.org_id, id).await?;
        store::endpoints::delete(&tx, &endpoint).await?;
        audit::commit(ctx, tx, viewer.org_id, None, false).await?;
        Ok(DeleteWebHookEndpointPayload {
            deleted_id: input.id,
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Replaces the whole list of endpoints, keyed by URL (ADMIN). An endpoint whose URL stays
    /// keeps its id and delivery log; fields omitted for it take their defaults.
    async fn save_web_hook_settings(
        &self,
        ctx: &Context<'_>,
        input: SaveWebHookSettingsInput,
    ) -> Result<SaveWebHookSettingsPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let state = state(ctx)?;
        let org_id = owner_of(viewer.org_id, &input.owner_uid)?;
        let existing = store::endpoints::list(&state.db, org_id).await?;
        let mut checked = Vec::new();
        let mut seen = HashSet::new();
        for item in input.delivery_endpoints {
            let typed = item.webhook_url.trim();
            let current = existing.iter().find(|row| {
                store::endpoints::masked_url(row).is_ok_and(|masked| masked == typed)
                    || fields_of(row, &state.vault)
                        .is_ok_and(|stored| stored.url.as_stored() == typed)
            });
            let draft = Draft {
                url: item.webhook_url,
                secret: item.secret_token,
                events: item.events.unwrap_or_default(),
                payload_query: item.payload_query,
                payload_format: item.payload_format.unwrap_or(PayloadFormat::Data),
                enabled: item.enabled.unwrap_or(true),
                insecure_ssl: item.insecure_ssl.unwrap_or(false),
                status_filter: item.status_filter.unwrap_or_default(),
            };
            let fields = check(state, draft, current).await?;
            if !seen.insert(fields.url.as_stored().to_owned()) {
                return Err(Error::Invalid(format!(
                    "The URL {} is listed twice.",
                    fields.url.masked()
                )));
            }
            checked.push((current.cloned(), fields));
        }
        check_endpoint_count(state, checked.len())?;
        let (_turn, tx) = state.begin_api_write().await?;
        for row in &existing {
            if !checked
                .iter()
                .any(|(current, _)| current.as_ref().map(|c| c.id) == Some(row.id))
            {
                store::endpoints::delete(&tx, row).await?;
            }
        }
        for (current, fields) in checked {
            match current {
                Some(current) => {
                    store::endpoints::update(&tx, current, fields, &state.vault).await?
                }
                None => store::endpoints::create(&tx, org_id, fields, &state.vault).await?,
            };
        }
        audit::commit(ctx, tx, org_id, None, false).await?;
        let org = store::orgs::find(&state.db, org_id)
            .await?
            .ok_or_else(|| Error::not_found("organization", org_id))?;
        let settings = WebHookSettings::load(&Db::Pool(state.db.clone()), &org).await?;
        Ok(SaveWebHookSettingsPayload {
            settings,
            client_mutation_id: input.client_mutation_id,
        })
    }
}
