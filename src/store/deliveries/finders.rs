//! Reads of deliveries and their attempts, for the API.

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::domain::DeliveryState;
use crate::store::Page;
use crate::store::entities::{delivery, delivery_attempt};
use crate::{Error, Result};

/// The organization's delivery with this public id.
pub async fn find(conn: &impl ConnectionTrait, org_id: i64, uid: &str) -> Result<delivery::Model> {
    delivery::Entity::find()
        .filter(delivery::Column::OrgId.eq(org_id))
        .filter(delivery::Column::Uid.eq(uid))
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found("webhook delivery", uid))
}

/// The organization's deliveries, newest first, optionally of one endpoint and one state.
pub async fn list(
    conn: &impl ConnectionTrait,
    org_id: i64,
    endpoint_id: Option<i64>,
    state: Option<DeliveryState>,
    page: Page,
) -> Result<Vec<delivery::Model>> {
    let mut query = delivery::Entity::find().filter(delivery::Column::OrgId.eq(org_id));
    if let Some(endpoint_id) = endpoint_id {
        query = query.filter(delivery::Column::EndpointId.eq(endpoint_id));
    }
    if let Some(state) = state {
        query = query.filter(delivery::Column::State.eq(state.as_str()));
    }
    if let Some(after) = page.after {
        query = query.filter(delivery::Column::Id.lt(after));
    }
    Ok(query
        .order_by_desc(delivery::Column::Id)
        .limit(page.limit + 1)
        .all(conn)
        .await?)
}

/// An endpoint's newest delivery.
pub async fn last_of_endpoint(
    conn: &impl ConnectionTrait,
    endpoint_id: i64,
) -> Result<Option<delivery::Model>> {
    Ok(delivery::Entity::find()
        .filter(delivery::Column::EndpointId.eq(endpoint_id))
        .order_by_desc(delivery::Column::Id)
        .one(conn)
        .await?)
}

/// Every attempt of a delivery, first to last.
pub async fn attempts(
    conn: &impl ConnectionTrait,
    delivery_id: i64,
) -> Result<Vec<delivery_attempt::Model>> {
    Ok(delivery_attempt::Entity::find()
        .filter(delivery_attempt::Column::DeliveryId.eq(delivery_id))
        .order_by_asc(delivery_attempt::Column::Number)
        .all(conn)
        .await?)
}
