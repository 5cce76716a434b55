//! Users (the names an organization's tokens and CI engine act as) and the audit log.

use std::collections::HashMap;

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::Page;
use super::entities::{audit_event, user};
use crate::Result;

/// A user's key: its organization and name.
pub type UserKey = (i64, String);

/// The ids of these users, each created if it is new; one statement to create and one to read
/// for all of them.
pub async fn ensure_users(
    conn: &impl ConnectionTrait,
    keys: &[UserKey],
    now: i64,
) -> Result<HashMap<UserKey, i64>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    // In one order, so that two processes creating the same new users never deadlock.
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    let rows = keys.iter().map(|(org_id, username)| user::ActiveModel {
        org_id: Set(*org_id),
        username: Set(username.clone()),
        created_at: Set(now),
        ..Default::default()
    });
    user::Entity::insert_many(rows)
        .on_conflict(
            OnConflict::columns([user::Column::OrgId, user::Column::Username])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
    let mut wanted = Condition::any();
    let mut by_org: HashMap<i64, Vec<&str>> = HashMap::new();
    for (org_id, username) in &keys {
        by_org.entry(*org_id).or_default().push(username);
    }
    for (org_id, names) in by_org {
        wanted = wanted.add(
            Condition::all()
                .add(user::Column::OrgId.eq(org_id))
                .add(user::Column::Username.is_in(names)),
        );
    }
    Ok(user::Entity::find()
        .filter(wanted)
        .all(conn)
        .await?
        .into_iter()
        .map(|row| ((row.org_id, row.username), row.id))
        .collect())
}

/// An audit event ready to be recorded.
pub struct NewAuditEvent {
    pub org_id: i64,
    pub kind: &'static str,
    pub timestamp: i64,
    pub data: String,
    pub actor_id: i64,
    pub actor_username: String,
    pub actor_ip: Option<String>,
    pub repository_id: Option<i64>,
}

/// Records audit events in one statement, each with a new public id; the rows in the order
/// given.
pub async fn insert(
    conn: &impl ConnectionTrait,
    events: Vec<NewAuditEvent>,
) -> Result<Vec<audit_event::Model>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let rows = events.into_iter().map(|event| {
        let NewAuditEvent {
            org_id,
            kind,
            timestamp,
            data,
            actor_id,
            actor_username,
            actor_ip,
            repository_id,
        } = event;
        audit_event::ActiveModel {
            uid: Set(uuid::Uuid::now_v7().to_string()),
            org_id: Set(org_id),
            kind: Set(kind.to_owned()),
            timestamp: Set(timestamp),
            data: Set(data),
            actor_id: Set(actor_id),
            actor_username: Set(actor_username),
            actor_ip: Set(actor_ip),
            repository_id: Set(repository_id),
            ..Default::default()
        }
    });
    let mut inserted = audit_event::Entity::insert_many(rows)
        .exec_with_returning(conn)
        .await?;
    inserted.sort_by_key(|row| row.id);
    Ok(inserted)
}

/// An organization's audit events, newest first.
pub async fn list(
    conn: &impl ConnectionTrait,
    org_id: i64,
    page: Page,
) -> Result<Vec<audit_event::Model>> {
    let mut query = audit_event::Entity::find().filter(audit_event::Column::OrgId.eq(org_id));
    if let Some(after) = page.after {
        query = query.filter(audit_event::Column::Id.lt(after));
    }
    Ok(query
        .order_by_desc(audit_event::Column::Id)
        .limit(page.limit + 1)
        .all(conn)
        .await?)
}
