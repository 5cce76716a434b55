//! Published events: what platforms announce with `publishEvent`, kept with their payloads.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
};

use super::entities::published_event;
use crate::Result;

/// A published event ready to be recorded.
pub struct NewPublished {
    pub org_id: i64,
    pub kind: String,
    pub subject: Option<String>,
    /// The payload as JSON text.
    pub payload: String,
    pub timestamp: i64,
}

/// Records a published event with a new public id.
pub async fn insert(
    conn: &impl ConnectionTrait,
    new: NewPublished,
) -> Result<published_event::Model> {
    let NewPublished {
        org_id,
        kind,
        subject,
        payload,
        timestamp,
    } = new;
    let row = published_event::ActiveModel {
        uid: Set(uuid::Uuid::now_v7().to_string()),
        org_id: Set(org_id),
        kind: Set(kind),
        subject: Set(subject),
        payload: Set(payload),
        timestamp: Set(timestamp),
        ..Default::default()
    };
    Ok(published_event::Entity::insert(row)
        .exec_with_returning(conn)
        .await?)
}

/// The organization's newest published event of type `kind` (as published), if any.
pub async fn latest_of_type(
    conn: &impl ConnectionTrait,
    org_id: i64,
    kind: &str,
) -> Result<Option<published_event::Model>> {
    Ok(published_event::Entity::find()
        .filter(published_event::Column::OrgId.eq(org_id))
        .filter(published_event::Column::Kind.eq(kind))
        .order_by_desc(published_event::Column::Id)
        .one(conn)
        .await?)
}
