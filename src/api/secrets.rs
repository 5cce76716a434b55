//! Named secrets and rotations (ADMIN): a secret defined once and used by many endpoints, and
//! replacing a secret with an overlap during which the replaced one signs too.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::audit;
use super::webhook_draft::check_secret;
use crate::domain::endpoint::check_secret_name;
use crate::domain::{Permission, SignatureStyle};
use crate::schema::auth::require;
use crate::schema::webhooks::{WebHookDeliveryEndpoint, WebHookSecret};
use crate::secrets::Vault;
use crate::store::{self, Writes, parse_id};
use crate::{Error, Result};

/// The longest overlap a rotation may have: 30 days.
pub const MAX_OVERLAP_SECONDS: i64 = 30 * 24 * 3600;
/// A rotation's overlap when none is given: one day.
pub const DEFAULT_OVERLAP_SECONDS: i64 = 24 * 3600;

#[derive(InputObject)]
pub struct SetWebHookSecretInput {
    pub owner_uid: ID,
    pub name: String,
    /// Write-only: shown back masked. Every later attempt of every endpoint using the secret
    /// signs with it.
    pub value: String,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct WebHookSecretPayload {
    pub secret: WebHookSecret,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct DeleteWebHookSecretInput {
    pub owner_uid: ID,
    pub name: String,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct DeleteWebHookSecretPayload {
    pub deleted_name: String,
    pub client_mutation_id: Option<String>,
}

/// A rotation of an endpoint's own secret (`endpointId`) or of a named secret (`ownerUid` and
/// `name`).
#[derive(InputObject)]
pub struct RotateWebHookSecretInput {
    pub endpoint_id: Option<ID>,
    pub owner_uid: Option<ID>,
    pub name: Option<String>,
    /// Write-only: shown back masked.
    pub new_value: String,
    /// How long the replaced secret signs too (0 to 2,592,000; one day when absent).
    pub overlap_seconds: Option<i64>,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct RotateWebHookSecretPayload {
    /// The endpoint whose own secret was rotated.
    pub endpoint: Option<WebHookDeliveryEndpoint>,
    /// The named secret that was rotated.
    pub secret: Option<WebHookSecret>,
    /// When the replaced secret stops signing (ms since the epoch).
    pub overlap_ends_timestamp: i64,
    pub client_mutation_id: Option<String>,
}

#[derive(Default)]
pub struct SecretMutation;

#[Object]
impl SecretMutation {
    /// Defines a named secret, or gives one a new value that signs every later attempt of
    /// every endpoint using it at once (ADMIN).
    async fn set_web_hook_secret(
        &self,
        ctx: &Context<'_>,
        input: SetWebHookSecretInput,
    ) -> Result<WebHookSecretPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let org_id = super::owner_of(viewer.org_id, &input.owner_uid)?;
        check_secret_name(&input.name)?;
        check_named_value("secret value", &input.value)?;
        let vault = super::handle::<Vault>(ctx)?;
        let tx = super::handle::<Writes>(ctx)?.begin().await?;
        store::orgs::lock_organization(&*tx, org_id).await?;
        let row = store::secrets::set(&*tx, org_id, &input.name, &input.value, vault).await?;
        audit::commit(ctx, tx, org_id, None).await?;
        Ok(WebHookSecretPayload {
            secret: WebHookSecret(row),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Deletes a named secret (ADMIN); `CONFLICT` while an endpoint uses it.
    async fn delete_web_hook_secret(
        &self,
        ctx: &Context<'_>,
        input: DeleteWebHookSecretInput,
    ) -> Result<DeleteWebHookSecretPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let org_id = super::owner_of(viewer.org_id, &input.owner_uid)?;
        let tx = super::handle::<Writes>(ctx)?.begin().await?;
        store::orgs::lock_organization(&*tx, org_id).await?;
        store::secrets::delete(&*tx, org_id, &input.name).await?;
        audit::commit(ctx, tx, org_id, None).await?;
        Ok(DeleteWebHookSecretPayload {
            deleted_name: input.name,
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Replaces a secret, an endpoint's own or a named one, with `newValue` (ADMIN). For
    /// `overlapSeconds` the replaced secret signs too: `webhook-signature` carries both
    /// signatures, and the style's own header (which holds one) keeps the replaced secret's
    /// until the overlap ends.
    async fn rotate_web_hook_secret(
        &self,
        ctx: &Context<'_>,
        input: RotateWebHookSecretInput,
    ) -> Result<RotateWebHookSecretPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let vault = super::handle::<Vault>(ctx)?;
        let overlap = input.overlap_seconds.unwrap_or(DEFAULT_OVERLAP_SECONDS);
        if !(0..=MAX_OVERLAP_SECONDS).contains(&overlap) {
            return Err(Error::Invalid(format!(
                "The overlap must be between 0 and {MAX_OVERLAP_SECONDS} seconds (30 days)."
            )));
        }
        let now = crate::now_ms();
        let until = now + overlap * 1000;
        match (&input.endpoint_id, &input.owner_uid, &input.name) {
            (Some(endpoint_id), None, None) => {
                let id = parse_id("webhook endpoint", endpoint_id)?;
                let tx = super::handle::<Writes>(ctx)?.begin().await?;
                store::secrets::erase_expired(&*tx, now).await?;
                let row = store::endpoints::find_for_update(&tx, viewer.org_id, id).await?;
                let mut fields = store::endpoints::fields_of(&row, vault)?;
                if let Some(name) = &fields.secret_name {
                    return Err(Error::Invalid(format!(
                        "The endpoint signs with the named secret {name:?}; rotate that secret instead."
                    )));
                }
                let Some(old) = fields.secret.take() else {
                    return Err(Error::Invalid(
                        "The endpoint has no secret to rotate; set its secretToken instead.".into(),
                    ));
                };
                check_new_value(&input.new_value, fields.signature_style)?;
                fields.secret = Some(input.new_value.clone());
                fields.previous_secret = Some((old, until));
                let row = store::endpoints::update(&*tx, row, fields, vault).await?;
                audit::commit(ctx, tx, viewer.org_id, None).await?;
                Ok(RotateWebHookSecretPayload {
                    endpoint: Some(WebHookDeliveryEndpoint(row)),
                    secret: None,
                    overlap_ends_timestamp: until,
                    client_mutation_id: input.client_mutation_id,
                })
            }
            (None, Some(owner_uid), Some(name)) => {
                let org_id = super::owner_of(viewer.org_id, owner_uid)?;
                check_named_value("new value", &input.new_value)?;
                let tx = super::handle::<Writes>(ctx)?.begin().await?;
                store::orgs::lock_organization(&*tx, org_id).await?;
                store::secrets::erase_expired(&*tx, now).await?;
                let row = store::secrets::find(&*tx, org_id, name)
                    .await?
                    .ok_or_else(|| Error::not_found("webhook secret", name))?;
                let row = store::secrets::rotate(&*tx, row, &input.new_value, until, vault).await?;
                audit::commit(ctx, tx, org_id, None).await?;
                Ok(RotateWebHookSecretPayload {
                    endpoint: None,
                    secret: Some(WebHookSecret(row)),
                    overlap_ends_timestamp: until,
                    client_mutation_id: input.client_mutation_id,
                })
            }
            _ => Err(Error::Invalid(
                "Give either endpointId, or ownerUid and name, to say which secret to rotate."
                    .into(),
            )),
        }
    }
}

/// Checks a named secret's value: any style may send it, GITLAB and CODEUP as a header, so it
/// must be visible ASCII characters or spaces.
fn check_named_value(field: &str, value: &str) -> Result<()> {
    check_secret(field, value)?;
    if value.chars().any(|c| !(' '..='~').contains(&c)) {
        return Err(Error::Invalid(format!(
            "The {field} must be visible ASCII characters or spaces, since GITLAB and CODEUP endpoints send it as a header."
        )));
    }
    Ok(())
}

/// Checks an endpoint's new secret for its style.
fn check_new_value(value: &str, style: SignatureStyle) -> Result<()> {
    match style {
        SignatureStyle::Gitlab | SignatureStyle::Codeup => check_named_value("new value", value),
        _ => check_secret("new value", value),
    }
}
