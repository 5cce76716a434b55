//! Webhook settings' mutations (ADMIN): create, update, delete and save endpoints.

use std::collections::HashSet;

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::MaxEndpoints;
use super::audit;
use super::webhook_draft::{Checks, Draft, check, check_endpoint_count};
use crate::domain::headers::Header;
use crate::domain::{
    EventKind, PayloadFormat, Permission, SignatureStyle, WebHookCondition, mask_secret,
};
use crate::schema::auth::require;
use crate::schema::webhooks::{WebHookDeliveryEndpoint, WebHookSettings};
use crate::store::endpoints::{EndpointFields, fields_of};
use crate::store::{self, Db, Writes, parse_id};
use crate::{Error, Result};

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
    #[graphql(flatten)]
    pub receiver: ReceiverInput,
}

/// An endpoint's settings for receivers of other systems, the same in every endpoint input.
#[derive(InputObject)]
pub struct ReceiverInput {
    /// How deliveries are signed; `CIRRUS` when absent.
    pub signature_style: Option<SignatureStyle>,
    /// The organization's named secret that signs (instead of `secretToken`); empty means none.
    pub secret_name: Option<String>,
    /// With `PUBLISHED` among `events`, the published types sent (compared case-insensitively);
    /// empty means every type.
    pub published_events: Option<Vec<String>>,
    /// Headers sent with every delivery (at most 20); a value equal to the masked value keeps
    /// the stored one.
    pub headers: Option<Vec<WebHookHeaderInput>>,
    /// Build and task events are sent only when the change's transition is one of these
    /// (`BROKEN`, `FIXED`, …); empty means every event. With a `statusFilter`, both must
    /// hold.
    pub conditions: Option<Vec<WebHookCondition>>,
}

/// A custom header of an endpoint.
#[derive(InputObject)]
pub struct WebHookHeaderInput {
    pub name: String,
    /// Write-only: shown back masked.
    pub value: String,
}

/// The headers of an input, as the draft takes them.
fn headers_of(input: Option<Vec<WebHookHeaderInput>>) -> Vec<Header> {
    input
        .unwrap_or_default()
        .into_iter()
        .map(|header| Header {
            name: header.name,
            value: header.value,
        })
        .collect()
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
    #[graphql(flatten)]
    pub receiver: ReceiverInput,
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
    #[graphql(flatten)]
    pub receiver: ReceiverInput,
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
    signature_style: bool,
    published_events: bool,
    headers: bool,
    conditions: bool,
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
            signature_style,
            published_events,
            headers,
            secret_name,
            previous_secret,
            conditions,
        } = checked;
        EndpointFields {
            url: pick(self.url, url, locked.url),
            secret: pick(self.secret, secret, locked.secret),
            secret_name: pick(self.secret, secret_name, locked.secret_name),
            previous_secret: pick(self.secret, previous_secret, locked.previous_secret),
            signature_style: pick(
                self.signature_style,
                signature_style,
                locked.signature_style,
            ),
            published_events: pick(
                self.published_events,
                published_events,
                locked.published_events,
            ),
            headers: pick(self.headers, headers, locked.headers),
            events: pick(self.events, events, locked.events),
            payload_query: pick(self.payload_query, payload_query, locked.payload_query),
            payload_format: pick(self.payload_format, payload_format, locked.payload_format),
            enabled: pick(self.enabled, enabled, locked.enabled),
            insecure_ssl: pick(self.insecure_ssl, insecure_ssl, locked.insecure_ssl),
            status_filter: pick(self.status_filter, status_filter, locked.status_filter),
            conditions: pick(self.conditions, conditions, locked.conditions),
        }
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
        let checks = Checks::of(ctx)?;
        let writes = super::handle::<Writes>(ctx)?;
        let org_id = super::owner_of(viewer.org_id, &input.owner_uid)?;
        let draft = Draft {
            url: input.webhook_url,
            secret: input.secret_token,
            events: input.events.unwrap_or_default(),
            payload_query: input.payload_query,
            payload_format: input.payload_format.unwrap_or(PayloadFormat::Data),
            enabled: input.enabled.unwrap_or(true),
            insecure_ssl: input.insecure_ssl.unwrap_or(false),
            status_filter: input.status_filter.unwrap_or_default(),
            signature_style: input
                .receiver
                .signature_style
                .unwrap_or(SignatureStyle::Cirrus),
            secret_name: input.receiver.secret_name,
            published_events: input.receiver.published_events.unwrap_or_default(),
            headers: headers_of(input.receiver.headers),
            conditions: input.receiver.conditions.unwrap_or_default(),
        };
        let fields = check(&checks, draft, None).await?;
        let tx = writes.begin().await?;
        // Counted in the write's turn (and, on PostgreSQL, under the organization's lock), so
        // that endpoints created at once cannot pass the bound together.
        store::orgs::lock_organization(&*tx, org_id).await?;
        let existing = store::endpoints::list(&*tx, org_id).await?.len();
        check_endpoint_count(*super::handle::<MaxEndpoints>(ctx)?, existing + 1)?;
        let endpoint = store::endpoints::create(&*tx, org_id, fields, checks.vault).await?;
        audit::commit(ctx, tx, org_id, None).await?;
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
        let checks = Checks::of(ctx)?;
        let writes = super::handle::<Writes>(ctx)?;
        let id = parse_id("webhook endpoint", &input.id)?;
        // The input is checked against the endpoint as read now, outside the write; the write
        // then reads it again, locked, and changes only the fields the input gives. A change
        // made in between (the worker turning the endpoint off after a 410) is kept.
        let current = store::endpoints::find(checks.pool, viewer.org_id, id).await?;
        let stored = fields_of(&current, checks.vault)?;
        let masked = store::endpoints::masked_url(&current)?;
        let names_secret = input
            .receiver
            .secret_name
            .as_ref()
            .is_some_and(|n| !n.trim().is_empty());
        let gives_secret = input.secret_token.as_ref().is_some_and(|s| !s.is_empty());
        let given = Given {
            url: input.webhook_url.is_some(),
            secret: input.secret_token.is_some() || input.receiver.secret_name.is_some(),
            events: input.events.is_some(),
            payload_query: input.payload_query.is_some(),
            payload_format: input.payload_format.is_some(),
            enabled: input.enabled.is_some(),
            insecure_ssl: input.insecure_ssl.is_some(),
            status_filter: input.status_filter.is_some(),
            signature_style: input.receiver.signature_style.is_some(),
            published_events: input.receiver.published_events.is_some(),
            headers: input.receiver.headers.is_some(),
            conditions: input.receiver.conditions.is_some(),
        };
        let stored_headers = stored
            .headers
            .iter()
            .map(|header| Header {
                name: header.name.clone(),
                value: mask_secret(&header.value),
            })
            .collect();
        let draft = Draft {
            url: input.webhook_url.unwrap_or(masked),
            // Naming a secret drops the endpoint's own, and a new own secret drops the name.
            secret: match input.secret_token {
                Some(secret) => Some(secret),
                None if names_secret => None,
                None => stored.secret.as_deref().map(mask_secret),
            },
            secret_name: match input.receiver.secret_name {
                Some(name) => Some(name),
                None if gives_secret => None,
                None => stored.secret_name,
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
            signature_style: input
                .receiver
                .signature_style
                .unwrap_or(stored.signature_style),
            published_events: input
                .receiver
                .published_events
                .unwrap_or(stored.published_events),
            headers: match input.receiver.headers {
                Some(headers) => headers_of(Some(headers)),
                None => stored_headers,
            },
            conditions: input.receiver.conditions.unwrap_or(stored.conditions),
        };
        let checked = check(&checks, draft, Some(&current)).await?;
        let tx = writes.begin().await?;
        let locked = store::endpoints::find_for_update(&tx, viewer.org_id, id).await?;
        let fields = given.apply(checked, fields_of(&locked, checks.vault)?);
        let endpoint = store::endpoints::update(&*tx, locked, fields, checks.vault).await?;
        audit::commit(ctx, tx, viewer.org_id, None).await?;
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
        let writes = super::handle::<Writes>(ctx)?;
        let id = parse_id("webhook endpoint", &input.id)?;
        let tx = writes.begin().await?;
        let endpoint = store::endpoints::find(&*tx, viewer.org_id, id).await?;
        store::endpoints::delete(&*tx, &endpoint).await?;
        audit::commit(ctx, tx, viewer.org_id, None).await?;
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
        let checks = Checks::of(ctx)?;
        let writes = super::handle::<Writes>(ctx)?;
        let org_id = super::owner_of(viewer.org_id, &input.owner_uid)?;
        let existing = store::endpoints::list(checks.pool, org_id).await?;
        let mut checked = Vec::new();
        let mut seen = HashSet::new();
        for item in input.delivery_endpoints {
            let typed = item.webhook_url.trim();
            let current = existing.iter().find(|row| {
                store::endpoints::masked_url(row).is_ok_and(|masked| masked == typed)
                    || fields_of(row, checks.vault)
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
                signature_style: item
                    .receiver
                    .signature_style
                    .unwrap_or(SignatureStyle::Cirrus),
                secret_name: item.receiver.secret_name,
                published_events: item.receiver.published_events.unwrap_or_default(),
                headers: headers_of(item.receiver.headers),
                conditions: item.receiver.conditions.unwrap_or_default(),
            };
            let fields = check(&checks, draft, current).await?;
            if !seen.insert(fields.url.as_stored().to_owned()) {
                return Err(Error::Invalid(format!(
                    "The URL {} is listed twice.",
                    fields.url.masked()
                )));
            }
            checked.push((current.cloned(), fields));
        }
        check_endpoint_count(*super::handle::<MaxEndpoints>(ctx)?, checked.len())?;
        let tx = writes.begin().await?;
        for row in &existing {
            if !checked
                .iter()
                .any(|(current, _)| current.as_ref().map(|c| c.id) == Some(row.id))
            {
                store::endpoints::delete(&*tx, row).await?;
            }
        }
        for (current, fields) in checked {
            match current {
                Some(current) => {
                    store::endpoints::update(&*tx, current, fields, checks.vault).await?
                }
                None => store::endpoints::create(&*tx, org_id, fields, checks.vault).await?,
            };
        }
        audit::commit(ctx, tx, org_id, None).await?;
        let org = store::orgs::find(checks.pool, org_id)
            .await?
            .ok_or_else(|| Error::not_found("organization", org_id))?;
        let settings = WebHookSettings::load(&Db::Pool(checks.pool.clone()), &org).await?;
        Ok(SaveWebHookSettingsPayload {
            settings,
            client_mutation_id: input.client_mutation_id,
        })
    }
}
