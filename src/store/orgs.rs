//! Organizations and the key material for API tokens.

use rand::RngCore;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter,
    QuerySelect, SqlErr,
};

use super::entities::{organization, setting};
use crate::secrets::Vault;
use crate::{Error, Result};

/// The settings key of the generated HS256 token key.
const JWT_KEY: &str = "jwt_secret";

/// Creates an organization; names are unique.
pub async fn create(conn: &impl ConnectionTrait, name: &str) -> Result<organization::Model> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(Error::Invalid(
            "An organization name must have between 1 and 200 characters.".into(),
        ));
    }
    let row = organization::ActiveModel {
        name: Set(name.to_owned()),
        created_at: Set(crate::now_ms()),
        ..Default::default()
    };
    organization::Entity::insert(row)
        .exec_with_returning(conn)
        .await
        .map_err(|err| match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => {
                Error::Conflict(format!("An organization named {name:?} already exists."))
            }
            _ => err.into(),
        })
}

/// The organization with this id.
pub async fn find(conn: &impl ConnectionTrait, id: i64) -> Result<Option<organization::Model>> {
    Ok(organization::Entity::find_by_id(id).one(conn).await?)
}

/// The organization with this name.
pub async fn find_by_name(
    conn: &impl ConnectionTrait,
    name: &str,
) -> Result<Option<organization::Model>> {
    Ok(organization::Entity::find()
        .filter(organization::Column::Name.eq(name))
        .one(conn)
        .await?)
}

/// Refuses the organization's API tokens issued before `before` (ms since the epoch, on a whole
/// second) and returns the time from which its tokens are accepted. Revocation only moves
/// forward: an earlier time than the stored one (another process's clock) keeps the stored one.
/// `None` when the organization does not exist. Call it inside the write's transaction.
pub async fn revoke_tokens(
    conn: &impl ConnectionTrait,
    org_id: i64,
    before: i64,
) -> Result<Option<i64>> {
    let Some(org) = find(conn, org_id).await? else {
        return Ok(None);
    };
    let before = org
        .tokens_revoked_before
        .map_or(before, |kept| kept.max(before));
    organization::Entity::update_many()
        .col_expr(organization::Column::TokensRevokedBefore, before.into())
        .filter(organization::Column::Id.eq(org_id))
        .exec(conn)
        .await?;
    Ok(Some(before))
}

/// The time before which the organization's tokens are refused (ms since the epoch), if any:
/// one read by primary key. An organization that does not exist has revoked nothing (its
/// tokens reach nothing anyway).
pub async fn tokens_revoked_before(
    conn: &impl ConnectionTrait,
    org_id: i64,
) -> Result<Option<i64>> {
    #[derive(FromQueryResult)]
    struct Revoked {
        tokens_revoked_before: Option<i64>,
    }
    let found = organization::Entity::find_by_id(org_id)
        .select_only()
        .column(organization::Column::TokensRevokedBefore)
        .into_model::<Revoked>()
        .one(conn)
        .await?;
    Ok(found.and_then(|row| row.tokens_revoked_before))
}

/// The HS256 key for API tokens stored in the database, generated on first use and sealed
/// when `vault` has a key. Processes starting at once agree on one key: the first insert wins
/// and everyone reads it back. The stored key may be clear (stored before a key was
/// configured) or sealed; a sealed one needs the key it was sealed with, and the error says so.
pub async fn jwt_key(conn: &impl ConnectionTrait, vault: &Vault) -> anyhow::Result<String> {
    if let Some(row) = setting::Entity::find_by_id(JWT_KEY).one(conn).await? {
        return open_jwt_key(&row.value, vault);
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let row = setting::ActiveModel {
        key: Set(JWT_KEY.into()),
        value: Set(vault
            .seal(&hex::encode(bytes))
            .map_err(|err| anyhow::anyhow!("sealing the token key: {err}"))?),
    };
    setting::Entity::insert(row)
        .on_conflict_do_nothing_on([setting::Column::Key])
        .exec_without_returning(conn)
        .await?;
    match setting::Entity::find_by_id(JWT_KEY).one(conn).await? {
        Some(row) => open_jwt_key(&row.value, vault),
        None => anyhow::bail!("the token key vanished after it was written"),
    }
}

/// Seals a token key stored in clear, when `vault` has a key; a sealed one is left as it is,
/// once it is known to open with that key.
/// The update names the clear value it replaces, so two processes sealing at once write once.
/// Whether a clear key was found.
pub async fn seal_jwt_key(conn: &impl ConnectionTrait, vault: &Vault) -> anyhow::Result<bool> {
    let Some(row) = setting::Entity::find_by_id(JWT_KEY).one(conn).await? else {
        return Ok(false);
    };
    if !vault.is_sealing() {
        return Ok(false);
    }
    if row.value.starts_with(crate::secrets::PREFIX) {
        // Sealed already (`herald token issue` with a key on a new database): it must open
        // with this key, or the start that would record this key for every secret stops.
        open_jwt_key(&row.value, vault)?;
        return Ok(false);
    }
    let sealed = vault
        .seal(&row.value)
        .map_err(|err| anyhow::anyhow!("sealing the token key: {err}"))?;
    setting::Entity::update_many()
        .col_expr(setting::Column::Value, sealed.into())
        .filter(setting::Column::Key.eq(JWT_KEY))
        .filter(setting::Column::Value.eq(row.value))
        .exec(conn)
        .await?;
    Ok(true)
}

fn open_jwt_key(stored: &str, vault: &Vault) -> anyhow::Result<String> {
    if !stored.starts_with(crate::secrets::PREFIX) {
        return Ok(stored.to_owned());
    }
    if !vault.is_sealing() {
        anyhow::bail!(
            "the token key stored in the database is encrypted; set HERALD_ENCRYPTION_KEY to the key it was encrypted with"
        );
    }
    vault.open(stored).map_err(|_| {
        anyhow::anyhow!(
            "HERALD_ENCRYPTION_KEY is not the key the stored token key was encrypted with"
        )
    })
}

/// On PostgreSQL, locks the organization's row until the transaction ends, so that two
/// transactions that check and change what it has (counting its endpoints before adding one, a
/// named secret's users before deleting it) take turns. SQLite writes one transaction at a
/// time.
pub async fn lock_organization(conn: &impl ConnectionTrait, org_id: i64) -> Result<()> {
    if conn.get_database_backend() == sea_orm::DbBackend::Postgres {
        organization::Entity::find_by_id(org_id)
            .lock_exclusive()
            .one(conn)
            .await?;
    }
    Ok(())
}
