//! Organizations and the key material for API tokens.

use rand::RngCore;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, SqlErr};

use super::entities::{organization, setting};
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

/// The HS256 key for API tokens stored in the database, generated on first use. Processes
/// starting at once agree on one key: the first insert wins and everyone reads it back.
pub async fn jwt_key(conn: &impl ConnectionTrait) -> Result<String> {
    if let Some(row) = setting::Entity::find_by_id(JWT_KEY).one(conn).await? {
        return Ok(row.value);
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let row = setting::ActiveModel {
        key: Set(JWT_KEY.into()),
        value: Set(hex::encode(bytes)),
    };
    setting::Entity::insert(row)
        .on_conflict_do_nothing_on([setting::Column::Key])
        .exec(conn)
        .await?;
    setting::Entity::find_by_id(JWT_KEY)
        .one(conn)
        .await?
        .map(|row| row.value)
        .ok_or_else(|| Error::internal("the token key vanished after it was written"))
}
