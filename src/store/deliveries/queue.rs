//! The queue's other writes: deliveries of no build, deliveries never sent, releases of held
//! deliveries, claims given back, redeliveries and deletions; and the announcement of due ones.

use std::collections::{HashMap, HashSet};

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult,
    QueryFilter, QuerySelect, Statement,
};

use super::Numbers;
use crate::domain::{BuildId, DeliveryState, EndpointId, EventAction, OrgId};
use crate::store::entities::{delivery, delivery_attempt, delivery_queue};
use crate::store::sql;
use crate::{Error, Result};

/// A delivery of no event and no build (a ping), ready to be queued; an event's deliveries are
/// queued by [`queue_events`](super::queue_events).
pub struct NewDelivery {
    pub org_id: OrgId,
    pub endpoint_id: EndpointId,
    pub event: String,
    pub action: EventAction,
    pub body: String,
    pub timestamp: i64,
}

impl NewDelivery {
    fn into_row(self) -> delivery::ActiveModel {
        let NewDelivery {
            org_id,
            endpoint_id,
            event,
            action,
            body,
            timestamp,
        } = self;
        delivery::ActiveModel {
            uid: Set(uuid::Uuid::now_v7().to_string()),
            org_id: Set(org_id.get()),
            endpoint_id: Set(endpoint_id.get()),
            event_id: Set(None),
            build_id: Set(None),
            event: Set(event),
            action: Set(action),
            body: Set(body),
            state: Set(DeliveryState::Pending),
            attempts: Set(0),
            round_attempts: Set(0),
            next_attempt_at: Set(timestamp),
            created_at: Set(timestamp),
            last_status: Set(None),
            last_duration: Set(None),
            last_response: Set(None),
            updated_at: Set(timestamp),
            work_id: Set(None),
            sequence: Set(None),
            ..Default::default()
        }
    }
}

/// A row of [`release_next_sql`]: a chain whose delivery has just finished.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(Default))]
pub(super) struct ChainRow {
    pub endpoint_id: i64,
    pub build_id: i64,
    /// The delivery of the chain that finished.
    pub finished: i64,
}

impl sql::Row for ChainRow {}

/// Makes the next unfinished delivery of each chain whose delivery has just finished the chain's
/// head: releases it when it is held; the endpoints of the chains that have one, which a claim
/// may now take.
pub(super) async fn release_next(
    conn: &impl ConnectionTrait,
    finished: &[ChainRow],
) -> Result<HashSet<i64>> {
    if finished.is_empty() {
        return Ok(HashSet::new());
    }
    #[derive(FromQueryResult)]
    struct Released {
        endpoint_id: i64,
    }
    let backend = conn.get_database_backend();
    let statement =
        Statement::from_sql_and_values(backend, release_next_sql(backend), [sql::rows(finished)]);
    let released = Released::find_by_statement(statement).all(conn).await?;
    Ok(released.into_iter().map(|row| row.endpoint_id).collect())
}

/// Releases the next unfinished delivery of each chain; its parameter is the chains, one
/// [`ChainRow`] each. The next is the first queued after the one that finished: the queue's
/// rows before it are gone, and reading from it does not step over what the index of chains
/// still holds of them. After a redelivery, the next may not be the chain's head (a finished
/// delivery sent again goes ahead of its chain's unfinished ones, and one of those may have
/// been in flight when it was): it is released all the same, and the claims' chain check keeps
/// it waiting. The next ids are found first, each in the index of chains, and the update reads
/// only them: PostgreSQL may plan an `UPDATE … WHERE id IN (SELECT …)` as a scan of the whole
/// table, so there the ids are an array computed once.
pub(super) fn release_next_sql(backend: DbBackend) -> String {
    let next = format!(
        "SELECT (SELECT MIN(p.delivery_id) FROM delivery_queue p
                WHERE p.endpoint_id = {} AND p.build_id = {} AND p.delivery_id > {})
        FROM {}",
        sql::int_field("c", "endpoint_id"),
        sql::int_field("c", "build_id"),
        sql::int_field("c", "finished"),
        sql::json_rows(backend, "c")
    );
    let chosen = match backend {
        DbBackend::Postgres => format!("delivery_id = ANY(ARRAY({next}))"),
        _ => format!("delivery_id IN ({next})"),
    };
    sql::numbered(
        backend,
        &format!("UPDATE delivery_queue SET held = false WHERE {chosen} RETURNING endpoint_id"),
    )
}

/// Releases every held delivery that no longer waits for anything: the first unfinished
/// delivery of its chain. Finishing a delivery releases the next one in the same transaction,
/// so this finds nothing unless a release was missed; the worker runs it now and then so that
/// no delivery can stay held forever.
pub async fn release_stranded(conn: &impl ConnectionTrait) -> Result<u64> {
    let backend = conn.get_database_backend();
    let sql = "UPDATE delivery_queue SET held = false
        WHERE held = true
          AND NOT EXISTS (
            SELECT 1 FROM delivery_queue p
            WHERE p.endpoint_id = delivery_queue.endpoint_id
              AND p.build_id = delivery_queue.build_id
              AND p.delivery_id < delivery_queue.delivery_id)";
    Ok(conn
        .execute_raw(Statement::from_string(backend, sql))
        .await?
        .rows_affected())
}

/// Deletes the unfinished deliveries of endpoints that no longer exist, with their queue rows
/// and attempts, and returns how many. Deleting an endpoint deletes its deliveries, but on
/// PostgreSQL an event recorded while the deletion runs may queue some the deletion did not
/// see: no claim takes them (their endpoint is gone), so they would stay queued forever. The
/// worker runs it now and then. It must run inside a transaction.
pub async fn remove_orphans(conn: &impl ConnectionTrait) -> Result<u64> {
    #[derive(FromQueryResult)]
    struct Orphan {
        delivery_id: i64,
    }
    let orphans: Vec<i64> = delivery_queue::Entity::find()
        .select_only()
        .column(delivery_queue::Column::DeliveryId)
        .filter(sea_orm::sea_query::Expr::cust(
            "NOT EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = delivery_queue.endpoint_id)",
        ))
        .into_model::<Orphan>()
        .all(conn)
        .await?
        .into_iter()
        .map(|row| row.delivery_id)
        .collect();
    delete(conn, &orphans).await?;
    Ok(orphans.len() as u64)
}

/// Deletes these deliveries with their queue rows and attempts: the queue rows first, in the
/// order the worker's outcomes lock them.
pub async fn delete(conn: &impl ConnectionTrait, ids: &[i64]) -> Result<()> {
    for chunk in ids.chunks(500) {
        delivery_queue::Entity::delete_many()
            .filter(delivery_queue::Column::DeliveryId.is_in(chunk.iter().copied()))
            .exec(conn)
            .await?;
        delivery_attempt::Entity::delete_many()
            .filter(delivery_attempt::Column::DeliveryId.is_in(chunk.iter().copied()))
            .exec(conn)
            .await?;
        delivery::Entity::delete_many()
            .filter(delivery::Column::Id.is_in(chunk.iter().copied()))
            .exec(conn)
            .await?;
    }
    Ok(())
}

/// A delivery of an event that cannot be sent (its payload was refused), to be recorded as
/// failed with the reason.
pub struct FailedDelivery {
    /// Its body is not kept: nothing of it is ever sent.
    pub delivery: NewDelivery,
    /// The build or task event (none for a published event).
    pub event_id: Option<i64>,
    /// The chain it would have been in.
    pub build_id: Option<BuildId>,
    pub reason: String,
}

/// Records deliveries that are never sent, as `FAILED` with one attempt whose error is the
/// reason, so that the delivery log shows why. They are in no queue and hold back no chain.
pub async fn insert_failed(conn: &impl ConnectionTrait, failed: Vec<FailedDelivery>) -> Result<()> {
    if failed.is_empty() {
        return Ok(());
    }
    let mut reasons = HashMap::new();
    let rows = failed.into_iter().map(|failed| {
        let FailedDelivery {
            delivery,
            event_id,
            build_id,
            reason,
        } = failed;
        let uid = uuid::Uuid::now_v7().to_string();
        reasons.insert(uid.clone(), reason);
        let mut row = delivery.into_row();
        row.uid = Set(uid);
        row.event_id = Set(event_id);
        row.build_id = Set(build_id.map(BuildId::get));
        row.state = Set(DeliveryState::Failed);
        row.sequence = Set(None);
        row.attempts = Set(1);
        row.round_attempts = Set(1);
        row
    });
    let inserted = delivery::Entity::insert_many(rows)
        .exec_with_returning(conn)
        .await?;
    let attempts = inserted.iter().map(|row| delivery_attempt::ActiveModel {
        delivery_id: Set(row.id),
        number: Set(1),
        timestamp: Set(row.created_at),
        status: Set(None),
        duration: Set(0),
        error: Set(reasons.remove(&row.uid)),
        response_headers: Set("{}".into()),
        response_body: Set(String::new()),
        ..Default::default()
    });
    delivery_attempt::Entity::insert_many(attempts)
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

/// Queues one delivery, due at once, with a new public id. It has no build, so it is in no
/// chain and nothing holds it.
pub async fn insert_one(
    conn: &impl ConnectionTrait,
    new: NewDelivery,
    numbers: &mut Numbers,
) -> Result<delivery::Model> {
    insert_unchained(conn, vec![new], numbers)
        .await?
        .pop()
        .ok_or_else(|| Error::internal("a new delivery did not come back from its insert"))
}

/// Queues deliveries of no build (pings, audit events), due at once, each numbered in its
/// endpoint's sequence, in two statements for all of them; their rows in the order given.
pub async fn insert_unchained(
    conn: &impl ConnectionTrait,
    new: Vec<NewDelivery>,
    numbers: &mut Numbers,
) -> Result<Vec<delivery::Model>> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let endpoints: Vec<i64> = new
        .iter()
        .map(|delivery| delivery.endpoint_id.get())
        .collect();
    let sequences = numbers.next(conn, &endpoints).await?;
    let rows = new.into_iter().zip(sequences).map(|(delivery, sequence)| {
        let mut row = delivery.into_row();
        row.sequence = Set(Some(sequence));
        row
    });
    let mut rows = delivery::Entity::insert_many(rows)
        .exec_with_returning(conn)
        .await?;
    rows.sort_by_key(|row| row.id);
    delivery_queue::Entity::insert_many(rows.iter().map(|row| unheld(row, row.next_attempt_at)))
        .exec_without_returning(conn)
        .await?;
    Ok(rows)
}

/// The queue row of `row`, due at `at`, neither held nor leased.
fn unheld(row: &delivery::Model, at: i64) -> delivery_queue::ActiveModel {
    delivery_queue::ActiveModel {
        delivery_id: Set(row.id),
        endpoint_id: Set(row.endpoint_id),
        build_id: Set(row.build_id),
        next_attempt_at: Set(at),
        held: Set(false),
        lease_until: Set(None),
        lease_token: Set(None),
    }
}

/// The PostgreSQL channel on which committed deliveries are announced to workers.
pub const CHANNEL: &str = "herald_deliveries";

/// Announces, on PostgreSQL, that deliveries are due once the current transaction commits
/// (`NOTIFY` is transactional: a rolled-back change wakes nobody), in the name of `announcer`
/// (see [`crate::store::Writes::announcer`]). SQLite has one process, whose worker
/// the outbox wakes directly.
pub async fn announce(conn: &impl ConnectionTrait, announcer: &str) -> Result<()> {
    if conn.get_database_backend() == DbBackend::Postgres {
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_notify($1, $2)::text AS announced",
            [CHANNEL.into(), announcer.into()],
        );
        conn.query_all_raw(statement).await?;
    }
    Ok(())
}

/// A row of [`give_back`]'s statement and of the delete of finished deliveries' queue rows: a
/// delivery and the token of its claim.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(Default))]
pub(super) struct LeaseRow<'a> {
    pub id: i64,
    pub token: &'a str,
}

impl sql::Row for LeaseRow<'_> {}

/// Ends these claims, each a delivery and its claim's token, where they are still current: the
/// deliveries are due again at once.
pub async fn give_back(conn: &impl ConnectionTrait, claims: &[(i64, String)]) -> Result<()> {
    if claims.is_empty() {
        return Ok(());
    }
    let backend = conn.get_database_backend();
    let rows = sql::rows(claims.iter().map(|(id, token)| LeaseRow { id: *id, token }));
    let mut values = vec![rows];
    values.extend(sql::pg_ids(backend, claims.iter().map(|(id, _)| *id)));
    let sql = give_back_sql(backend);
    let statement = Statement::from_sql_and_values(backend, sql, values);
    conn.execute_raw(statement).await?;
    Ok(())
}

/// [`give_back`]'s statement; its parameter is one [`LeaseRow`] per claim, and on PostgreSQL
/// the ids again.
fn give_back_sql(backend: DbBackend) -> String {
    let (int, text) = sql::fields("g");
    let sql = format!(
        "WITH v(v_id, v_token) AS (SELECT {}, {} FROM {})
        UPDATE delivery_queue SET lease_until = NULL, lease_token = NULL
        FROM v WHERE delivery_id = v_id AND lease_token = v_token {}",
        int("id"),
        text("token"),
        sql::json_rows(backend, "g"),
        sql::pg_by_ids(backend, "delivery_id"),
    );
    sql::numbered(backend, &sql)
}

/// Queues a delivery again, with the same id and body, for an attempt now and a fresh retry
/// schedule. A delivery still queued keeps its place in its chain; a finished one goes ahead of
/// its chain's unfinished ones. A delivery claimed for an attempt is refused: that attempt's
/// outcome, decided on the schedule it was claimed under, would stand for the redelivery. It
/// must run inside a transaction.
pub async fn redeliver(conn: &impl ConnectionTrait, row: &delivery::Model, now: i64) -> Result<()> {
    // The queue row first, as the worker's outcomes and an endpoint's deletion take them: two
    // transactions that lock the same two rows in opposite orders could deadlock. On
    // PostgreSQL it stays locked, so that no claim takes it before the redelivery is queued.
    let mut queued = delivery_queue::Entity::find_by_id(row.id);
    if conn.get_database_backend() == DbBackend::Postgres {
        queued = queued.lock_exclusive();
    }
    if let Some(queued) = queued.one(conn).await?
        && queued.lease_until.is_some_and(|until| until > now)
    {
        return Err(Error::Conflict(
            "The delivery has an attempt under way; redeliver it once that attempt ends.".into(),
        ));
    }
    // A queue row left by a claim whose lease ran out loses that lease and its fencing token:
    // the expired attempt's outcome, decided on the old schedule, must not land on the
    // redelivery.
    delivery_queue::Entity::insert(unheld(row, now))
        .on_conflict(
            sea_orm::sea_query::OnConflict::column(delivery_queue::Column::DeliveryId)
                .update_columns([
                    delivery_queue::Column::NextAttemptAt,
                    delivery_queue::Column::LeaseUntil,
                    delivery_queue::Column::LeaseToken,
                ])
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await?;
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
        "SELECT COUNT(*) AS n FROM delivery_queue",
    );
    let count = Count::find_by_statement(statement).one(conn).await?;
    Ok(count.map(|c| c.n.max(0) as u64).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_read_every_field_of_their_rows_by_name() {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            sql::assert_reads_fields_of::<ChainRow>(&release_next_sql(backend), "c");
            sql::assert_reads_fields_of::<LeaseRow>(&give_back_sql(backend), "g");
        }
    }
}
