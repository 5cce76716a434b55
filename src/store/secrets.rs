//! Named secrets: defined once per organization and used by any of its endpoints
//! (`secretName`), sealed at rest like every secret. A rotation keeps the value it replaced,
//! which signs too until its overlap ends.

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder,
};

use super::entities::{approval_hook, webhook_endpoint, webhook_secret};
use crate::secrets::Vault;
use crate::{Error, Result};

/// The named secrets one organization may have.
pub const MAX_SECRETS: usize = 100;

/// A secret's values in clear: the current one, and the one a rotation replaced with the time
/// it stops signing (ms since the epoch).
#[derive(Clone)]
pub struct Keys {
    pub current: String,
    pub previous: Option<(String, i64)>,
}

impl Keys {
    /// The values that sign at `now`: the current one first, then the replaced one while its
    /// overlap lasts.
    pub fn signing_at(&self, now: i64) -> (String, Option<String>) {
        let previous = self
            .previous
            .as_ref()
            .filter(|(_, until)| *until > now)
            .map(|(value, _)| value.clone());
        (self.current.clone(), previous)
    }
}

/// Opens a stored secret's values.
pub fn keys(row: &webhook_secret::Model, vault: &Vault) -> Result<Keys> {
    Ok(Keys {
        current: vault.open(&row.value)?,
        previous: match (&row.previous_value, row.previous_until) {
            (Some(sealed), Some(until)) => Some((vault.open(sealed)?, until)),
            _ => None,
        },
    })
}

/// The organization's named secrets, by name.
pub async fn list(conn: &impl ConnectionTrait, org_id: i64) -> Result<Vec<webhook_secret::Model>> {
    Ok(webhook_secret::Entity::find()
        .filter(webhook_secret::Column::OrgId.eq(org_id))
        .order_by_asc(webhook_secret::Column::Name)
        .all(conn)
        .await?)
}

/// The organization's secret named `name`, if it has one.
pub async fn find(
    conn: &impl ConnectionTrait,
    org_id: i64,
    name: &str,
) -> Result<Option<webhook_secret::Model>> {
    Ok(webhook_secret::Entity::find()
        .filter(webhook_secret::Column::OrgId.eq(org_id))
        .filter(webhook_secret::Column::Name.eq(name))
        .one(conn)
        .await?)
}

/// The organization's secret named `name`; an endpoint naming one that does not exist is
/// refused.
pub async fn require(
    conn: &impl ConnectionTrait,
    org_id: i64,
    name: &str,
) -> Result<webhook_secret::Model> {
    find(conn, org_id, name).await?.ok_or_else(|| {
        Error::Invalid(format!(
            "The organization has no webhook secret named {name:?}; set it with setWebHookSecret first."
        ))
    })
}

/// The named secrets of these organizations (the worker's lookup for the endpoints it sends
/// to).
pub async fn of_orgs(
    conn: &impl ConnectionTrait,
    org_ids: &[i64],
) -> Result<Vec<webhook_secret::Model>> {
    Ok(webhook_secret::Entity::find()
        .filter(webhook_secret::Column::OrgId.is_in(org_ids.iter().copied()))
        .all(conn)
        .await?)
}

/// Sets a named secret to `value`: a new one, or a new value that signs every later attempt at
/// once (a rotation with an overlap is [`rotate`]).
pub async fn set(
    conn: &impl ConnectionTrait,
    org_id: i64,
    name: &str,
    value: &str,
    vault: &Vault,
) -> Result<webhook_secret::Model> {
    let now = crate::now_ms();
    match find(conn, org_id, name).await? {
        Some(row) => {
            let mut row: webhook_secret::ActiveModel = row.into();
            row.value = Set(vault.seal(value)?);
            row.previous_value = Set(None);
            row.previous_until = Set(None);
            row.updated_at = Set(now);
            Ok(row.update(conn).await?)
        }
        None => {
            if list(conn, org_id).await?.len() >= MAX_SECRETS {
                return Err(Error::Invalid(format!(
                    "An organization may have at most {MAX_SECRETS} named webhook secrets."
                )));
            }
            let row = webhook_secret::ActiveModel {
                org_id: Set(org_id),
                name: Set(name.to_owned()),
                value: Set(vault.seal(value)?),
                previous_value: Set(None),
                previous_until: Set(None),
                updated_at: Set(now),
                ..Default::default()
            };
            Ok(webhook_secret::Entity::insert(row)
                .exec_with_returning(conn)
                .await?)
        }
    }
}

/// Replaces a named secret's value with `value`; the value it replaces signs too until
/// `until`.
pub async fn rotate(
    conn: &impl ConnectionTrait,
    row: webhook_secret::Model,
    value: &str,
    until: i64,
    vault: &Vault,
) -> Result<webhook_secret::Model> {
    let replaced = vault.seal(&vault.open(&row.value)?)?;
    let mut row: webhook_secret::ActiveModel = row.into();
    row.value = Set(vault.seal(value)?);
    row.previous_value = Set(Some(replaced));
    row.previous_until = Set(Some(until));
    row.updated_at = Set(crate::now_ms());
    Ok(row.update(conn).await?)
}

/// The ids of the organization's endpoints that sign with the secret named `name`.
pub async fn used_by(conn: &impl ConnectionTrait, org_id: i64, name: &str) -> Result<Vec<i64>> {
    Ok(webhook_endpoint::Entity::find()
        .filter(webhook_endpoint::Column::OrgId.eq(org_id))
        .filter(webhook_endpoint::Column::SecretName.eq(name))
        .order_by_asc(webhook_endpoint::Column::Id)
        .all(conn)
        .await?
        .into_iter()
        .map(|row| row.id)
        .collect())
}

/// The ids of the organization's approval hooks that sign with the secret named `name`.
pub async fn used_by_hooks(
    conn: &impl ConnectionTrait,
    org_id: i64,
    name: &str,
) -> Result<Vec<i64>> {
    Ok(approval_hook::Entity::find()
        .filter(approval_hook::Column::OrgId.eq(org_id))
        .filter(approval_hook::Column::SecretName.eq(name))
        .order_by_asc(approval_hook::Column::Id)
        .all(conn)
        .await?
        .into_iter()
        .map(|row| row.id)
        .collect())
}

/// Deletes a named secret; refused while an endpoint or an approval hook signs with it.
pub async fn delete(conn: &impl ConnectionTrait, org_id: i64, name: &str) -> Result<()> {
    let Some(row) = find(conn, org_id, name).await? else {
        return Err(Error::not_found("webhook secret", name));
    };
    let users = used_by(conn, org_id, name).await?;
    if !users.is_empty() {
        let ids: Vec<String> = users.iter().map(i64::to_string).collect();
        let (noun, them) = match ids.len() {
            1 => ("endpoint", "that endpoint"),
            _ => ("endpoints", "those endpoints"),
        };
        return Err(Error::Conflict(format!(
            "The webhook secret {name:?} is used by {noun} {}; change {them} first.",
            ids.join(", ")
        )));
    }
    let hooks = used_by_hooks(conn, org_id, name).await?;
    if !hooks.is_empty() {
        let ids: Vec<String> = hooks.iter().map(i64::to_string).collect();
        return Err(Error::Conflict(format!(
            "The webhook secret {name:?} is used by approval hook {}; change it first.",
            ids.join(", ")
        )));
    }
    webhook_secret::Entity::delete_by_id(row.id)
        .exec(conn)
        .await?;
    Ok(())
}

/// Seals every named secret stored in clear (the first start with an encryption key).
pub async fn seal_all(conn: &impl ConnectionTrait, vault: &Vault) -> Result<()> {
    for row in webhook_secret::Entity::find().all(conn).await? {
        let keys = keys(&row, vault)?;
        let mut row: webhook_secret::ActiveModel = row.into();
        row.value = Set(vault.seal(&keys.current)?);
        row.previous_value = Set(keys
            .previous
            .as_ref()
            .map(|(value, _)| vault.seal(value))
            .transpose()?);
        row.update(conn).await?;
    }
    Ok(())
}

/// Erases the secrets rotations replaced whose overlap has ended, of endpoints and of named
/// secrets: a replaced secret is kept no longer than it signs. Run at start and with each
/// rotation.
pub async fn erase_expired(conn: &impl ConnectionTrait, now: i64) -> Result<()> {
    webhook_endpoint::Entity::update_many()
        .col_expr(
            webhook_endpoint::Column::PreviousSecret,
            Option::<String>::None.into(),
        )
        .col_expr(
            webhook_endpoint::Column::PreviousSecretUntil,
            Option::<i64>::None.into(),
        )
        .filter(webhook_endpoint::Column::PreviousSecretUntil.lte(now))
        .exec(conn)
        .await?;
    webhook_secret::Entity::update_many()
        .col_expr(
            webhook_secret::Column::PreviousValue,
            Option::<String>::None.into(),
        )
        .col_expr(
            webhook_secret::Column::PreviousUntil,
            Option::<i64>::None.into(),
        )
        .filter(webhook_secret::Column::PreviousUntil.lte(now))
        .exec(conn)
        .await?;
    Ok(())
}
