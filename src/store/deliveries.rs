//! The outbox: events, deliveries and their attempts, and the queue the workers claim from.
//!
//! A delivery is claimed by setting a lease (`lease_until`) and a fresh fencing token
//! (`lease_token`). Only the holder of the current token may record the attempt's outcome, so a
//! worker that lost its lease (it stalled, or was presumed dead) changes nothing.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult,
    QueryFilter, QueryOrder, QuerySelect, Statement, Value,
};

use super::Page;
use super::entities::{delivery, delivery_attempt, event};
use crate::domain::DeliveryState;
use crate::{Error, Result};

/// An event as recorded in the same transaction as the change it describes.
pub struct NewEvent {
    pub org_id: i64,
    pub kind: &'static str,
    pub action: &'static str,
    pub old_status: Option<&'static str>,
    pub repository_id: i64,
    pub build_id: i64,
    pub task_id: Option<i64>,
    pub timestamp: i64,
}

/// Records an event.
pub async fn insert_event(conn: &impl ConnectionTrait, new: NewEvent) -> Result<event::Model> {
    let NewEvent {
        org_id,
        kind,
        action,
        old_status,
        repository_id,
        build_id,
        task_id,
        timestamp,
    } = new;
    let row = event::ActiveModel {
        org_id: Set(org_id),
        kind: Set(kind.into()),
        action: Set(action.into()),
        old_status: Set(old_status.map(Into::into)),
        repository_id: Set(repository_id),
        build_id: Set(build_id),
        task_id: Set(task_id),
        timestamp: Set(timestamp),
        ..Default::default()
    };
    Ok(event::Entity::insert(row).exec_with_returning(conn).await?)
}

/// A delivery ready to be queued.
pub struct NewDelivery {
    pub org_id: i64,
    pub endpoint_id: i64,
    pub event_id: Option<i64>,
    pub build_id: Option<i64>,
    pub event: String,
    pub action: String,
    pub body: String,
    pub timestamp: i64,
}

/// Queues deliveries, due at once, each with a new public id.
pub async fn insert(
    conn: &impl ConnectionTrait,
    new: Vec<NewDelivery>,
) -> Result<Vec<delivery::Model>> {
    let mut rows = Vec::with_capacity(new.len());
    for NewDelivery {
        org_id,
        endpoint_id,
        event_id,
        build_id,
        event,
        action,
        body,
        timestamp,
    } in new
    {
        let row = delivery::ActiveModel {
            uid: Set(uuid::Uuid::now_v7().to_string()),
            org_id: Set(org_id),
            endpoint_id: Set(endpoint_id),
            event_id: Set(event_id),
            build_id: Set(build_id),
            event: Set(event),
            action: Set(action),
            body: Set(body),
            state: Set(DeliveryState::Pending.as_str().into()),
            attempts: Set(0),
            round_attempts: Set(0),
            next_attempt_at: Set(timestamp),
            lease_until: Set(None),
            lease_token: Set(None),
            created_at: Set(timestamp),
            last_status: Set(None),
            last_duration: Set(None),
            last_response: Set(None),
            updated_at: Set(timestamp),
            ..Default::default()
        };
        rows.push(
            delivery::Entity::insert(row)
                .exec_with_returning(conn)
                .await?,
        );
    }
    Ok(rows)
}

/// The PostgreSQL channel on which committed deliveries are announced to workers.
pub const CHANNEL: &str = "herald_deliveries";

/// Announces, on PostgreSQL, that deliveries are due once the current transaction commits
/// (`NOTIFY` is transactional: a rolled-back change wakes nobody). SQLite has one process, whose
/// worker the outbox wakes directly.
pub async fn announce(conn: &impl ConnectionTrait) -> Result<()> {
    if conn.get_database_backend() == DbBackend::Postgres {
        conn.execute_unprepared(&format!("NOTIFY {CHANNEL}"))
            .await?;
    }
    Ok(())
}

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

/// Queues a delivery again, with the same id and body, for an attempt now and a fresh retry
/// schedule. A delivery still in flight is left to its current attempt.
pub async fn redeliver(conn: &impl ConnectionTrait, row: &delivery::Model, now: i64) -> Result<()> {
    delivery::Entity::update_many()
        .col_expr(
            delivery::Column::State,
            DeliveryState::Pending.as_str().into(),
        )
        .col_expr(delivery::Column::RoundAttempts, 0.into())
        .col_expr(delivery::Column::NextAttemptAt, now.into())
        .col_expr(delivery::Column::UpdatedAt, now.into())
        .filter(delivery::Column::Id.eq(row.id))
        .exec(conn)
        .await?;
    Ok(())
}

/// How many deliveries wait for an attempt.
pub async fn queue_depth(conn: &impl ConnectionTrait) -> Result<u64> {
    #[derive(FromQueryResult)]
    struct Count {
        n: i64,
    }
    let statement = Statement::from_string(
        conn.get_database_backend(),
        "SELECT COUNT(*) AS n FROM deliveries WHERE state IN ('PENDING', 'RETRYING')",
    );
    let count = Count::find_by_statement(statement).one(conn).await?;
    Ok(count.map(|c| c.n.max(0) as u64).unwrap_or(0))
}

/// Claims up to `limit` due deliveries for `lease_ms`, under one new fencing token.
///
/// Only the head of each (endpoint, build) chain is due: a delivery waits while an earlier one
/// of its chain is unfinished, so one endpoint sees one build's events in order. Endpoints in
/// `busy` are skipped (the worker's per-endpoint cap). On PostgreSQL concurrent claimers skip
/// each other's rows (`FOR UPDATE SKIP LOCKED`); on SQLite the caller's `BEGIN IMMEDIATE`
/// transaction serializes them.
pub async fn claim(
    conn: &impl ConnectionTrait,
    now: i64,
    lease_ms: i64,
    limit: u64,
    busy: &[i64],
) -> Result<(String, Vec<delivery::Model>)> {
    let backend = conn.get_database_backend();
    let token = uuid::Uuid::new_v4().to_string();
    let busy_filter = if busy.is_empty() {
        String::new()
    } else {
        let ids: Vec<String> = busy.iter().map(i64::to_string).collect();
        format!("AND d.endpoint_id NOT IN ({})", ids.join(","))
    };
    let lock = if backend == DbBackend::Postgres {
        "FOR UPDATE SKIP LOCKED"
    } else {
        ""
    };
    let sql = format!(
        "UPDATE deliveries SET lease_until = ?, lease_token = ? WHERE id IN (
            SELECT d.id FROM deliveries d
            WHERE d.state IN ('PENDING', 'RETRYING') AND d.next_attempt_at <= ?
              AND (d.lease_until IS NULL OR d.lease_until < ?)
              {busy_filter}
              AND EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = d.endpoint_id AND e.enabled = ?)
              AND NOT EXISTS (
                SELECT 1 FROM deliveries p
                WHERE p.endpoint_id = d.endpoint_id AND p.build_id = d.build_id
                  AND p.id < d.id AND p.state IN ('PENDING', 'RETRYING'))
            ORDER BY d.next_attempt_at, d.id
            LIMIT ? {lock})
        RETURNING *"
    );
    let values: Vec<Value> = vec![
        (now + lease_ms).into(),
        token.clone().into(),
        now.into(),
        now.into(),
        true.into(),
        (limit as i64).into(),
    ];
    let statement = Statement::from_sql_and_values(backend, numbered(backend, &sql), values);
    let mut rows = delivery::Entity::find()
        .from_raw_sql(statement)
        .all(conn)
        .await?;
    rows.sort_by_key(|row| row.id);
    Ok((token, rows))
}

/// What one attempt came to, ready to be written.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub state: DeliveryState,
    pub next_attempt_at: i64,
    pub timestamp: i64,
    pub status: Option<i32>,
    pub duration_ms: i64,
    pub error: Option<String>,
    pub response_headers: String,
    pub response_body: String,
}

/// Records an attempt if `token` still holds the delivery's lease; `false` (and nothing
/// written) when the lease was lost to another worker or the delivery was deleted.
pub async fn record_attempt(
    conn: &impl ConnectionTrait,
    delivery_id: i64,
    token: &str,
    record: AttemptRecord,
) -> Result<bool> {
    let AttemptRecord {
        state,
        next_attempt_at,
        timestamp,
        status,
        duration_ms,
        error,
        response_headers,
        response_body,
    } = record;
    let backend = conn.get_database_backend();
    let sql = "UPDATE deliveries SET state = ?, attempts = attempts + 1, round_attempts = round_attempts + 1,
            next_attempt_at = ?, lease_until = NULL, lease_token = NULL, last_status = ?,
            last_duration = ?, last_response = ?, updated_at = ?
        WHERE id = ? AND lease_token = ?
        RETURNING attempts";
    let values: Vec<Value> = vec![
        state.as_str().into(),
        next_attempt_at.into(),
        status.into(),
        duration_ms.into(),
        (status.is_some().then(|| response_body.clone())).into(),
        timestamp.into(),
        delivery_id.into(),
        token.into(),
    ];
    let statement = Statement::from_sql_and_values(backend, numbered(backend, sql), values);
    let Some(row) = conn.query_one_raw(statement).await? else {
        return Ok(false);
    };
    let number: i32 = row.try_get("", "attempts")?;
    let attempt = delivery_attempt::ActiveModel {
        delivery_id: Set(delivery_id),
        number: Set(number),
        timestamp: Set(timestamp),
        status: Set(status),
        duration: Set(duration_ms),
        error: Set(error),
        response_headers: Set(response_headers),
        response_body: Set(response_body),
        ..Default::default()
    };
    delivery_attempt::Entity::insert(attempt).exec(conn).await?;
    Ok(true)
}

/// Gives a claimed delivery back untried (the worker is shutting down).
pub async fn release(conn: &impl ConnectionTrait, delivery_id: i64, token: &str) -> Result<()> {
    delivery::Entity::update_many()
        .col_expr(delivery::Column::LeaseUntil, Option::<i64>::None.into())
        .col_expr(delivery::Column::LeaseToken, Option::<String>::None.into())
        .filter(delivery::Column::Id.eq(delivery_id))
        .filter(delivery::Column::LeaseToken.eq(token))
        .exec(conn)
        .await?;
    Ok(())
}

/// Rewrites `?` placeholders as `$1, $2, …` for PostgreSQL.
fn numbered(backend: DbBackend, sql: &str) -> String {
    if backend != DbBackend::Postgres {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}
