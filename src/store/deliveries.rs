//! The outbox: events, deliveries and their attempts, and the queue the workers claim from.
//!
//! Every delivery not yet finished (`PENDING` or `RETRYING`) has a row in `delivery_queue`,
//! written in the same transactions as the delivery: what the claims read and the leases,
//! retries and releases write, so that those writes are of a few narrow columns and not of the
//! delivery's whole row. Finishing a delivery deletes its queue row.
//!
//! A delivery is claimed by setting its queue row's lease (`lease_until`) and a fresh fencing
//! token (`lease_token`). Only the holder of the current token may record the attempt's
//! outcome, so a worker that lost its lease (it stalled, or was presumed dead) changes nothing.

use std::collections::{HashMap, HashSet};

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult,
    QueryFilter, QueryOrder, QuerySelect, Statement, Value,
};

use super::Page;
use super::entities::{delivery, delivery_attempt, delivery_queue};
use super::sql;
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

/// Records events in one statement; the id of each, by its build. A batch of changes holds at
/// most one change per build (see [`crate::events::writer`]), so the build names the event.
pub async fn insert_events(
    conn: &impl ConnectionTrait,
    events: &[NewEvent],
) -> Result<HashMap<i64, i64>> {
    if events.is_empty() {
        return Ok(HashMap::new());
    }
    let backend = conn.get_database_backend();
    let rows = sql::rows(events.iter().map(|event| {
        (
            event.org_id,
            event.kind,
            event.action,
            event.old_status,
            event.repository_id,
            event.build_id,
            event.task_id,
            event.timestamp,
        )
    }));
    #[derive(FromQueryResult)]
    struct Inserted {
        id: i64,
        build_id: i64,
    }
    let statement = Statement::from_sql_and_values(backend, insert_events_sql(backend), [rows]);
    Ok(Inserted::find_by_statement(statement)
        .all(conn)
        .await?
        .into_iter()
        .map(|row| (row.build_id, row.id))
        .collect())
}

/// [`insert_events`]' statement; its parameter is one row per event: organization, kind,
/// action, old status, repository, build, task and time.
fn insert_events_sql(backend: DbBackend) -> String {
    let (int, text) = (|n| sql::int_field("e", n), |n| sql::field("e", n));
    let sql = format!(
        "INSERT INTO events
            (org_id, kind, action, old_status, repository_id, build_id, task_id, timestamp)
        SELECT {}, {}, {}, {}, {}, {}, {}, {} FROM {}
        RETURNING id, build_id",
        int(0),
        text(1),
        text(2),
        text(3),
        int(4),
        int(5),
        int(6),
        int(7),
        sql::json_rows(backend, "e"),
    );
    sql::numbered(backend, &sql)
}

/// A delivery of no event and no build (a ping), ready to be queued; an event's deliveries are
/// queued by [`queue_events`].
pub struct NewDelivery {
    pub org_id: i64,
    pub endpoint_id: i64,
    pub event: String,
    pub action: String,
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
            org_id: Set(org_id),
            endpoint_id: Set(endpoint_id),
            event_id: Set(None),
            build_id: Set(None),
            event: Set(event),
            action: Set(action),
            body: Set(body),
            state: Set(DeliveryState::Pending.as_str().into()),
            attempts: Set(0),
            round_attempts: Set(0),
            next_attempt_at: Set(timestamp),
            created_at: Set(timestamp),
            last_status: Set(None),
            last_duration: Set(None),
            last_response: Set(None),
            updated_at: Set(timestamp),
            ..Default::default()
        }
    }
}

/// The key space of Herald's chain locks among PostgreSQL's advisory locks ("HERD").
const CHAIN_LOCK_CLASS: i32 = 0x4845_5244;

/// On PostgreSQL, locks the chains of these builds until the transaction ends, so that adding
/// a delivery to a chain and finishing one of the chain never run side by side: a new delivery
/// is held only behind an unfinished one, and finishing a delivery releases the next one held.
/// SQLite runs one writing transaction at a time, so it needs no lock.
pub async fn lock_chains(conn: &impl ConnectionTrait, builds: &[i64]) -> Result<()> {
    let backend = conn.get_database_backend();
    if backend != DbBackend::Postgres || builds.is_empty() {
        return Ok(());
    }
    // One key per build, taken in ascending order so that two lockers never deadlock.
    let keys: Vec<i64> = builds.iter().map(|id| id & 0x7fff_ffff).collect();
    let sql = format!(
        "SELECT count(pg_advisory_xact_lock({CHAIN_LOCK_CLASS}, CAST(k AS INTEGER))::text) AS locked
         FROM (SELECT DISTINCT k FROM unnest(CAST($1 AS BIGINT[])) AS v(k) ORDER BY k OFFSET 0)
           AS sorted"
    );
    let statement = Statement::from_sql_and_values(backend, sql, [sql::ids(backend, &keys)]);
    conn.query_all_raw(statement).await?;
    Ok(())
}

/// An event's deliveries, one per endpoint, ready to be queued.
pub struct EventDeliveries<'a> {
    pub org_id: i64,
    pub event_id: i64,
    pub build_id: i64,
    pub event: &'a str,
    pub action: &'a str,
    pub timestamp: i64,
    /// Each endpoint and the body it gets.
    pub bodies: Vec<(i64, String)>,
}

/// Queues events' deliveries, due at once, each with a new public id. A delivery whose
/// (endpoint, build) chain has an unfinished delivery is held behind it: the queue's insert
/// checks each chain itself, in `delivery_queue_chain`. The statement does not see its own
/// rows, so it takes at most one event per build.
///
/// Returns whether a delivery queued is due now, not held; on PostgreSQL the same statement then
/// announces them in the name of `announcer` (see [`announce`]). A held delivery needs no
/// worker woken for it: the worker that finishes the one before it releases it.
pub async fn queue_events(
    conn: &impl ConnectionTrait,
    events: &[EventDeliveries<'_>],
    announcer: &str,
) -> Result<bool> {
    let rows: Vec<_> = events
        .iter()
        .flat_map(|event| {
            event.bodies.iter().map(|(endpoint_id, body)| {
                (
                    uuid::Uuid::now_v7().to_string(),
                    endpoint_id,
                    body,
                    event.org_id,
                    event.event_id,
                    event.build_id,
                    event.event,
                    event.action,
                    event.timestamp,
                )
            })
        })
        .collect();
    if rows.is_empty() {
        return Ok(false);
    }
    let backend = conn.get_database_backend();
    if backend == DbBackend::Postgres {
        // One statement inserts the deliveries and their queue rows, and announces the due.
        #[derive(FromQueryResult)]
        struct Due {
            due: i64,
        }
        let statement = Statement::from_sql_and_values(
            backend,
            queue_events_pg_sql(),
            [sql::rows(rows), announcer.into()],
        );
        let due = Due::find_by_statement(statement).one(conn).await?;
        return Ok(due.is_some_and(|row| row.due > 0));
    }
    #[derive(FromQueryResult)]
    struct Inserted {
        id: i64,
        endpoint_id: i64,
        build_id: Option<i64>,
        next_attempt_at: i64,
    }
    let statement = Statement::from_sql_and_values(
        backend,
        sql::numbered(backend, &insert_deliveries_sql(backend)),
        [sql::rows(rows)],
    );
    let inserted = Inserted::find_by_statement(statement).all(conn).await?;
    let rows = sql::rows(
        inserted
            .iter()
            .map(|row| (row.id, row.endpoint_id, row.build_id, row.next_attempt_at)),
    );
    #[derive(FromQueryResult)]
    struct Queued {
        held: bool,
    }
    let statement = Statement::from_sql_and_values(backend, enqueue_sql(backend), [rows]);
    let queued = Queued::find_by_statement(statement).all(conn).await?;
    Ok(queued.iter().any(|row| !row.held))
}

/// The insert of events' deliveries; its parameter is one row per delivery: public id,
/// endpoint, body, organization, event, build, the event's kind and action, and its time. It
/// returns what their queue rows need: id, endpoint, build and due time. Its placeholders are
/// `?`, numbered by the caller.
fn insert_deliveries_sql(backend: DbBackend) -> String {
    let (int, text) = (|n| sql::int_field("n", n), |n| sql::field("n", n));
    format!(
        "INSERT INTO deliveries
            (uid, org_id, endpoint_id, event_id, build_id, event, action, body, state, attempts,
             round_attempts, next_attempt_at, created_at, updated_at)
        SELECT {uid}, {org}, {endpoint}, {event_id}, {build}, {event}, {action}, {body},
            'PENDING', 0, 0, {at}, {at}, {at}
        FROM {rows}
        RETURNING id, endpoint_id, build_id, next_attempt_at",
        uid = text(0),
        endpoint = int(1),
        body = text(2),
        org = int(3),
        event_id = int(4),
        build = int(5),
        event = text(6),
        action = text(7),
        at = int(8),
        rows = sql::json_rows(backend, "n"),
    )
}

/// The queue rows of new deliveries; its parameter is one row per delivery: id, endpoint,
/// build and due time. Each is held when its chain has a row in the queue already. It returns
/// each one's `held`.
fn enqueue_sql(backend: DbBackend) -> String {
    let int = |n| sql::int_field("r", n);
    let from = sql::json_rows(backend, "r");
    let sql = enqueue_from(backend, &from, [&int(0), &int(1), &int(2), &int(3)]);
    sql::numbered(backend, &sql)
}

/// The insert of queue rows from `from`, whose expressions give each one's delivery, endpoint,
/// build and due time. Each is held when its chain has a row in the queue already: a scalar
/// subquery, not `EXISTS`, which PostgreSQL may run as a hashed subplan that reads the whole
/// queue. It returns each one's `held`.
fn enqueue_from(backend: DbBackend, from: &str, [id, endpoint, build, at]: [&str; 4]) -> String {
    // Without statistics, SQLite's planner may answer from another index.
    let index = sql::sqlite_hint(backend, "INDEXED BY delivery_queue_chain");
    format!(
        "INSERT INTO delivery_queue (delivery_id, endpoint_id, build_id, next_attempt_at, held)
        SELECT {id}, {endpoint}, {build}, {at},
            (SELECT p.delivery_id FROM delivery_queue p {index}
             WHERE p.endpoint_id = {endpoint} AND p.build_id = {build} LIMIT 1) IS NOT NULL
        FROM {from}
        RETURNING held"
    )
}

/// [`queue_events`]' statement on PostgreSQL: [`insert_deliveries_sql`] and [`enqueue_sql`] in
/// one, whose parameters are the deliveries' rows and the announcer; it returns how many are
/// `due`, announced if any. `NOTIFY` is sent at the commit, and only when some delivery is due.
fn queue_events_pg_sql() -> String {
    let backend = DbBackend::Postgres;
    let columns = [
        "inserted.id",
        "inserted.endpoint_id",
        "inserted.build_id",
        "inserted.next_attempt_at",
    ];
    let enqueue = enqueue_from(backend, "inserted", columns);
    let sql = format!(
        "WITH inserted AS ({}), queued AS ({enqueue})
        SELECT count(*) AS due,
            CASE WHEN count(*) > 0 THEN pg_notify('{CHANNEL}', ?)::text END AS announced
        FROM queued WHERE NOT held",
        insert_deliveries_sql(backend),
    );
    sql::numbered(backend, &sql)
}

/// Makes the next unfinished delivery of each chain whose delivery has just finished the chain's
/// head: releases it when it is held; the endpoints of the chains that have one, which a claim
/// may now take. Each chain is given as (endpoint, build, the delivery that finished).
async fn release_next(
    conn: &impl ConnectionTrait,
    finished: &[(i64, i64, i64)],
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

/// Releases the next unfinished delivery of each chain; its parameter is the chains, as
/// `[endpoint, build, finished delivery]` rows. The next is the first queued after the one
/// that finished: the queue's rows before it are gone, and reading from it does not step over
/// what the index of chains still holds of them. After a redelivery, the next may not be the
/// chain's head (a finished delivery sent again goes ahead of its chain's unfinished ones, and
/// one of those may have been in flight when it was): it is released all the same, and the
/// claims' chain check keeps it waiting. The next ids are found first, each in the index of
/// chains, and the update reads only them: PostgreSQL may plan an `UPDATE … WHERE id IN
/// (SELECT …)` as a scan of the whole table, so there the ids are an array computed once.
fn release_next_sql(backend: DbBackend) -> String {
    let next = format!(
        "SELECT (SELECT MIN(p.delivery_id) FROM delivery_queue p
                WHERE p.endpoint_id = {} AND p.build_id = {} AND p.delivery_id > {})
        FROM {}",
        sql::int_field("c", 0),
        sql::int_field("c", 1),
        sql::int_field("c", 2),
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
    let orphans: Vec<i64> = delivery_queue::Entity::find()
        .select_only()
        .column(delivery_queue::Column::DeliveryId)
        .filter(sea_orm::sea_query::Expr::cust(
            "NOT EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = delivery_queue.endpoint_id)",
        ))
        .into_tuple()
        .all(conn)
        .await?;
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
    pub event_id: i64,
    pub build_id: i64,
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
        row.event_id = Set(Some(event_id));
        row.build_id = Set(Some(build_id));
        row.state = Set(DeliveryState::Failed.as_str().into());
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
pub async fn insert_one(conn: &impl ConnectionTrait, new: NewDelivery) -> Result<delivery::Model> {
    insert_unchained(conn, vec![new])
        .await?
        .pop()
        .ok_or_else(|| Error::internal("a new delivery did not come back from its insert"))
}

/// Queues deliveries of no build (pings, audit events), due at once, in two statements for
/// all of them; their rows in the order given.
pub async fn insert_unchained(
    conn: &impl ConnectionTrait,
    new: Vec<NewDelivery>,
) -> Result<Vec<delivery::Model>> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let mut rows = delivery::Entity::insert_many(new.into_iter().map(NewDelivery::into_row))
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
/// (see [`crate::events::outbox::Outbox::announcer`]). SQLite has one process, whose worker
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

/// Ends these claims, each a delivery and its claim's token, where they are still current: the
/// deliveries are due again at once.
pub async fn give_back(conn: &impl ConnectionTrait, claims: &[(i64, String)]) -> Result<()> {
    if claims.is_empty() {
        return Ok(());
    }
    let backend = conn.get_database_backend();
    let rows = sql::rows(claims.iter().map(|(id, token)| (id, token)));
    let mut values = vec![rows];
    values.extend(sql::pg_ids(backend, claims.iter().map(|(id, _)| *id)));
    let (int, text) = (|n| sql::int_field("g", n), |n| sql::field("g", n));
    let sql = format!(
        "WITH v(v_id, v_token) AS (SELECT {}, {} FROM {})
        UPDATE delivery_queue SET lease_until = NULL, lease_token = NULL
        FROM v WHERE delivery_id = v_id AND lease_token = v_token {}",
        int(0),
        text(1),
        sql::json_rows(backend, "g"),
        sql::pg_by_ids(backend, "delivery_id"),
    );
    let statement = Statement::from_sql_and_values(backend, sql::numbered(backend, &sql), values);
    conn.execute_raw(statement).await?;
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

/// The most endpoints one claim visits; the next claim goes on after the last one it visited.
const MAX_ENDPOINTS: usize = 256;

/// What a claim may take.
pub struct ClaimRequest<F> {
    pub now: i64,
    pub lease_ms: i64,
    /// The most deliveries to take.
    pub limit: usize,
    /// Endpoints at the worker's per-endpoint cap: their deliveries are not read.
    pub busy: Vec<i64>,
    /// How many more deliveries of an endpoint the worker may take.
    pub room_of: F,
    /// The most deliveries of one endpoint a claim reads: the most the worker holds of one.
    pub per_endpoint: usize,
    /// Where the round of endpoints goes on: the claim visits the endpoints after this one
    /// first (see [`Leases::next_after`]); 0 starts from the first.
    pub after: i64,
}

/// Claims due deliveries for `lease_ms`, under one new fencing token.
///
/// Only the head of each (endpoint, build) chain is due: a delivery waits while an earlier one
/// of its chain is unfinished, so one endpoint sees one build's events in order. Deliveries
/// behind one are `held` and not read at all.
///
/// Claims are fair across endpoints: a claim visits the endpoints with unheld deliveries in a
/// round (through the `delivery_queue_endpoint_due` partial index, one step per endpoint,
/// however long its queue), up to [`MAX_ENDPOINTS`] of them after `after`, and reads of each
/// endpoint not `busy` its first due deliveries, up to `per_endpoint`, in due order. It then
/// takes each endpoint's first, then each one's second, and so on, within `room_of` each and
/// `limit` in all; one endpoint's backlog thus takes its share of the slots and no more, and a
/// delivery to another endpoint is taken by the next claim however long that backlog is. The
/// chosen queue rows are leased in one statement that checks again that each is queued, its
/// chain's head and free. On PostgreSQL, inside a transaction, concurrent claimers skip each
/// other's rows (`FOR UPDATE SKIP LOCKED`); on SQLite the claim runs outside one, so it takes
/// the write lock only for the lease itself.
///
/// On PostgreSQL it must run inside a transaction, which it configures for the claim: no sorts,
/// no table scans, and a commit that does not wait for the disk.
pub async fn claim<F: Fn(i64) -> usize>(
    conn: &impl ConnectionTrait,
    request: ClaimRequest<F>,
) -> Result<Leases> {
    let ClaimRequest {
        now,
        lease_ms,
        limit,
        busy,
        room_of,
        per_endpoint,
        after,
    } = request;
    let token = uuid::Uuid::new_v4().to_string();
    if conn.get_database_backend() == DbBackend::Postgres {
        // With statistics, PostgreSQL's planner may read every due delivery of an endpoint and
        // sort them when it expects few, though the claim needs only the first; without sorts,
        // it reads `delivery_queue_endpoint_due` in order and stops at the limit. The rest is
        // the worker's (see [`crate::store::WORKER_SETTINGS`]): a claim lost to a crash only
        // lets its lease expire. One round trip sets them all.
        let settings = format!("SET LOCAL enable_sort = off; {}", super::WORKER_SETTINGS);
        conn.execute_unprepared(&settings).await?;
    }
    let each = per_endpoint.min(limit).max(1);
    // The endpoints after `after`, then, when the round reached the last one, those from the
    // first up to `after`.
    let mut round = visit(conn, now, &busy, each, after, i64::MAX, MAX_ENDPOINTS).await?;
    if !round.cut && after > 0 {
        let left = MAX_ENDPOINTS - round.endpoints.len();
        let rest = visit(conn, now, &busy, each, 0, after, left).await?;
        round.endpoints.extend(rest.endpoints);
        round.cut = rest.cut;
    }
    // Where the next claim goes on: after the last endpoint visited when the round stopped
    // short of the others; from the first when it visited them all.
    let mut next_after = if round.cut {
        round.endpoints.last().map_or(0, |(id, _)| *id)
    } else {
        0
    };
    let mut more_due = round.cut;
    let mut chosen = Vec::with_capacity(limit);
    let mut taken: HashMap<i64, usize> = HashMap::new();
    for (endpoint, candidates) in &round.endpoints {
        // An endpoint skipped as busy, or read up to the bound, may have more due.
        if busy.contains(endpoint) || candidates.len() >= each {
            more_due = true;
        }
    }
    let deepest = round
        .endpoints
        .iter()
        .map(|(_, c)| c.len())
        .max()
        .unwrap_or(0);
    'ranks: for rank in 0..deepest {
        for (endpoint, candidates) in &round.endpoints {
            let Some(id) = candidates.get(rank) else {
                continue;
            };
            if chosen.len() == limit {
                more_due = true;
                if rank == 0 {
                    // Not every endpoint got its first: the next claim starts with those.
                    next_after = chosen_endpoint(&round.endpoints, chosen.last());
                }
                break 'ranks;
            }
            let count = taken.entry(*endpoint).or_default();
            if *count >= room_of(*endpoint) {
                more_due = true;
            } else {
                *count += 1;
                chosen.push(*id);
            }
        }
    }
    if chosen.is_empty() {
        return Ok(Leases {
            token,
            rows: Vec::new(),
            more_due,
            next_after,
        });
    }
    let backend = conn.get_database_backend();
    let lease_until = now + lease_ms;
    let mut values: Vec<Value> = vec![
        lease_until.into(),
        token.clone().into(),
        sql::ids(backend, &chosen),
        now.into(),
    ];
    let mut rows = if backend == DbBackend::Postgres {
        // One statement leases the queue rows and reads their deliveries.
        values.push(lease_until.into());
        let sql = format!(
            "WITH leased AS ({}) {}",
            lease_sql(backend),
            leased_sql(backend, "SELECT delivery_id FROM leased")
        );
        let statement =
            Statement::from_sql_and_values(backend, sql::numbered(backend, &sql), values);
        Leased::find_by_statement(statement).all(conn).await?
    } else {
        #[derive(FromQueryResult)]
        struct Lease {
            delivery_id: i64,
        }
        let statement = Statement::from_sql_and_values(backend, lease_sql(backend), values);
        let leased: Vec<i64> = Lease::find_by_statement(statement)
            .all(conn)
            .await?
            .into_iter()
            .map(|row| row.delivery_id)
            .collect();
        if leased.is_empty() {
            Vec::new()
        } else {
            let read = leased_sql(backend, "SELECT value FROM json_each(?)");
            let values = [lease_until.into(), sql::ids(backend, &leased)];
            let statement = Statement::from_sql_and_values(backend, read, values);
            Leased::find_by_statement(statement).all(conn).await?
        }
    };
    rows.sort_by_key(|row| row.id);
    Ok(Leases {
        token,
        rows,
        more_due,
        next_after,
    })
}

/// The endpoint of the delivery `last` among the candidates of `endpoints`; 0 when none.
fn chosen_endpoint(endpoints: &[(i64, Vec<i64>)], last: Option<&i64>) -> i64 {
    let Some(last) = last else { return 0 };
    endpoints
        .iter()
        .find(|(_, candidates)| candidates.contains(last))
        .map_or(0, |(id, _)| *id)
}

/// Endpoints a claim visited, in order, each with its candidates in due order (none when it is
/// busy, disabled, or has nothing due); and whether the visit stopped at its bound, before
/// the end of its range.
struct Round {
    endpoints: Vec<(i64, Vec<i64>)>,
    cut: bool,
}

/// Visits up to `bound` endpoints with unheld deliveries, those after `from` up to `until`,
/// reading of each up to `each` due, unleased chain heads of enabled endpoints not in `busy`.
async fn visit(
    conn: &impl ConnectionTrait,
    now: i64,
    busy: &[i64],
    each: usize,
    from: i64,
    until: i64,
    bound: usize,
) -> Result<Round> {
    if bound == 0 {
        return Ok(Round {
            endpoints: Vec::new(),
            cut: true,
        });
    }
    #[derive(FromQueryResult)]
    struct Visited {
        endpoint_id: i64,
        id: Option<i64>,
        next_attempt_at: Option<i64>,
    }
    let backend = conn.get_database_backend();
    let values: Vec<Value> = vec![
        from.into(),
        (bound as i64).into(),
        until.into(),
        sql::ids(backend, busy),
        now.into(),
        now.into(),
        (each as i64).into(),
        until.into(),
    ];
    let statement = Statement::from_sql_and_values(backend, visit_sql(backend), values);
    let rows = Visited::find_by_statement(statement).all(conn).await?;
    let mut endpoints: std::collections::BTreeMap<i64, Vec<(i64, i64)>> = Default::default();
    for row in rows {
        let candidates = endpoints.entry(row.endpoint_id).or_default();
        if let (Some(id), Some(at)) = (row.id, row.next_attempt_at) {
            candidates.push((at, id));
        }
    }
    let cut = endpoints.len() >= bound;
    Ok(Round {
        endpoints: endpoints
            .into_iter()
            .map(|(id, mut candidates)| {
                candidates.sort_unstable();
                (id, candidates.into_iter().map(|(_, id)| id).collect())
            })
            .collect(),
        cut,
    })
}

/// [`visit`]'s statement; its parameters are the endpoint to start after, the most endpoints,
/// the last endpoint to visit, the busy endpoints, now (twice), the most deliveries per
/// endpoint and the last endpoint again. It returns a row per candidate, and a row without
/// one for each endpoint visited that has none.
///
/// The endpoints are found one step at a time, each the next in `delivery_queue_endpoint_due`
/// after the one before (an index probe, not a read of the queue); each one's candidates are
/// the first of its due rows in the same index. PostgreSQL reads them with `LATERAL`, SQLite
/// with a correlated list. Each delivery read is checked to be its chain's head, as in
/// [`lease_sql`].
fn visit_sql(backend: DbBackend) -> String {
    let index = sql::sqlite_hint(backend, "INDEXED BY delivery_queue_endpoint_due");
    let next = |after: &str| {
        format!(
            "(SELECT MIN(dm.endpoint_id) FROM delivery_queue dm {index}
              WHERE dm.held = false AND dm.endpoint_id > {after})"
        )
    };
    let endpoints = format!(
        "WITH RECURSIVE visit(endpoint_id, n) AS (
            SELECT {}, 1
            UNION ALL
            SELECT {}, v.n + 1 FROM visit v
            WHERE v.endpoint_id IS NOT NULL AND v.n < CAST(? AS BIGINT) AND v.endpoint_id < ?
        )",
        next("CAST(? AS BIGINT)"),
        next("v.endpoint_id"),
    );
    // The conditions on the endpoint come first: PostgreSQL tests them once per endpoint,
    // before it reads (and locks) any of its rows.
    let candidates = format!(
        "FROM delivery_queue dr {index}
        WHERE NOT ({busy})
          AND EXISTS (SELECT 1 FROM webhook_endpoints w
                      WHERE w.id = e.endpoint_id AND w.enabled = true)
          AND dr.endpoint_id = e.endpoint_id AND dr.held = false AND dr.next_attempt_at <= ?
          AND (dr.lease_until IS NULL OR dr.lease_until < ?)
          AND {head}
        ORDER BY dr.next_attempt_at, dr.delivery_id
        LIMIT CAST(? AS BIGINT)",
        busy = sql::in_ids(backend, "e.endpoint_id"),
        head = chain_head("dr"),
    );
    let sql = match backend {
        DbBackend::Postgres => format!(
            "{endpoints}
            SELECT e.endpoint_id, c.id, c.next_attempt_at FROM visit e
            LEFT JOIN LATERAL (
                SELECT dr.delivery_id AS id, dr.next_attempt_at {candidates}
                FOR UPDATE OF dr SKIP LOCKED
            ) c ON true
            WHERE e.endpoint_id IS NOT NULL AND e.endpoint_id <= ?"
        ),
        _ => format!(
            "{endpoints}
            SELECT e.endpoint_id, q.delivery_id AS id, q.next_attempt_at FROM visit e
            LEFT JOIN delivery_queue q ON q.delivery_id IN (SELECT dr.delivery_id {candidates})
            WHERE e.endpoint_id IS NOT NULL AND e.endpoint_id <= ?"
        ),
    };
    sql::numbered(backend, &sql)
}

/// What a claim leased.
pub struct Leases {
    /// The claim's fencing token.
    pub token: String,
    /// The deliveries leased, by id.
    pub rows: Vec<Leased>,
    /// Whether more deliveries may be due than the claim read or could take: a claim when an
    /// endpoint's slot frees may find some. When not, only a change of the queue (new
    /// deliveries, outcomes written) or the poll can make any due.
    pub more_due: bool,
    /// Where the next claim's round of endpoints goes on (its `after`).
    pub next_after: i64,
}

/// A delivery a claim leased: what its attempt needs of it, and no more (a claim reads many,
/// and the others, such as the last response, can be large).
#[derive(Clone, Debug, FromQueryResult)]
pub struct Leased {
    pub id: i64,
    /// The public delivery id: `X-Cirrus-Delivery` and `webhook-id`.
    pub uid: String,
    pub endpoint_id: i64,
    pub build_id: Option<i64>,
    /// `build`, `task`, `audit_event` or `ping`.
    pub event: String,
    pub body: String,
    /// Attempts since the delivery was created or last redelivered; drives the schedule.
    pub round_attempts: i32,
    pub lease_until: Option<i64>,
    /// The event's time: `X-Cirrus-Timestamp`.
    pub created_at: i64,
}

/// The claim's lease of the chosen deliveries' queue rows, returning their ids; its parameters
/// are the lease's end, the token, the chosen ids and now. Its placeholders are `?`, numbered
/// by the caller.
fn lease_sql(backend: DbBackend) -> String {
    // The lease is taken only where the delivery is still queued, its chain's head and free, so
    // the claim is right even outside a transaction (SQLite's worker claims that way, without
    // holding the write lock while it reads). A row read unheld stays so until it leaves the
    // queue, so `held` is not tested again: that test would let PostgreSQL's planner read the
    // whole index of ready rows to intersect it with the ids. The rows are found by key.
    let by_key = sql::sqlite_hint(backend, "NOT INDEXED");
    format!(
        "UPDATE delivery_queue {by_key} SET lease_until = ?, lease_token = ?
        WHERE {} AND (lease_until IS NULL OR lease_until < ?) AND {}
        RETURNING delivery_id",
        sql::in_ids(backend, "delivery_id"),
        chain_head("delivery_queue")
    )
}

/// What the attempts of the leased deliveries need, read by key for the ids `leased` selects;
/// its first parameter is the lease's end, then any that `leased` takes.
fn leased_sql(backend: DbBackend, leased: &str) -> String {
    let chosen = match backend {
        DbBackend::Postgres => format!("id = ANY(ARRAY({leased}))"),
        _ => format!("id IN ({leased})"),
    };
    format!(
        "SELECT id, uid, endpoint_id, build_id, event, body, round_attempts,
            CAST(? AS BIGINT) AS lease_until, created_at
        FROM deliveries WHERE {chosen}"
    )
}

/// What one attempt came to, ready to be written.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub delivery_id: i64,
    /// The delivery's chain: its endpoint and build (none for a ping).
    pub endpoint_id: i64,
    pub build_id: Option<i64>,
    /// The fencing token of the claim the attempt was made under.
    pub token: String,
    pub state: DeliveryState,
    pub next_attempt_at: i64,
    pub timestamp: i64,
    pub status: Option<i32>,
    pub duration_ms: i64,
    pub error: Option<String>,
    pub response_headers: String,
    pub response_body: String,
}

/// Records attempts, each only if its token still holds the delivery's lease, and releases the
/// next delivery of each chain whose delivery finished (delivered, or failed for good).
/// Returns the ids of the deliveries whose attempt was recorded (the others, lease lost to
/// another worker or delivery deleted, changed nothing) and the endpoints of the deliveries
/// it released. It must run inside a transaction: its statements change the queue and the
/// deliveries together.
pub async fn record_attempts(
    conn: &impl ConnectionTrait,
    records: &[&AttemptRecord],
) -> Result<Recorded> {
    // A delivery appears twice when its lease expired during an attempt and the same worker
    // claimed it again: at most one of its tokens is current. Each statement takes a delivery
    // once, so that its result names the record that was written.
    let mut recorded = Recorded::default();
    let mut rest: Vec<&AttemptRecord> = records.to_vec();
    while !rest.is_empty() {
        let mut seen = HashSet::new();
        let (layer, later): (Vec<&AttemptRecord>, Vec<&AttemptRecord>) = rest
            .into_iter()
            .partition(|record| seen.insert(record.delivery_id));
        let (ids, released) = record_distinct(conn, &layer).await?;
        recorded.ids.extend(ids);
        recorded.released.extend(released);
        rest = later;
    }
    Ok(recorded)
}

/// What [`record_attempts`] wrote.
#[derive(Debug, Default)]
pub struct Recorded {
    /// The deliveries whose attempt was recorded.
    pub ids: HashSet<i64>,
    /// The endpoints of deliveries released because the one before them in their chain
    /// finished: besides a retry due at once (after `Retry-After: 0`), the only deliveries
    /// outcomes make due.
    pub released: HashSet<i64>,
}

/// [`record_attempts`] for records of distinct deliveries; the ids recorded and the endpoints
/// of the deliveries released. Each attempt is recorded only where its token still holds the
/// delivery's queue row, which a finished delivery leaves and a retried one keeps, due again.
async fn record_distinct(
    conn: &impl ConnectionTrait,
    records: &[&AttemptRecord],
) -> Result<(HashSet<i64>, HashSet<i64>)> {
    let (finishing, retrying): (Vec<&AttemptRecord>, Vec<&AttemptRecord>) =
        records.iter().partition(|record| {
            matches!(
                record.state,
                DeliveryState::Delivered | DeliveryState::Failed
            )
        });
    let builds: Vec<i64> = finishing
        .iter()
        .filter_map(|record| record.build_id)
        .collect();
    lock_chains(conn, &builds).await?;
    let backend = conn.get_database_backend();
    // Finished deliveries leave the queue; retried ones are due again at their next attempt.
    let rows = sql::rows(
        finishing
            .iter()
            .map(|record| (record.delivery_id, &record.token)),
    );
    let finished = write_queue(conn, dequeue_sql, rows, &finishing).await?;
    let rows = sql::rows(
        retrying
            .iter()
            .map(|record| (record.delivery_id, &record.token, record.next_attempt_at)),
    );
    let retried = write_queue(conn, requeue_sql, rows, &retrying).await?;
    let recorded: Vec<&&AttemptRecord> = records
        .iter()
        .filter(|record| {
            finished.contains(&record.delivery_id) || retried.contains(&record.delivery_id)
        })
        .collect();
    if recorded.is_empty() {
        return Ok((HashSet::new(), HashSet::new()));
    }
    let outcomes = sql::rows(recorded.iter().map(|record| {
        (
            record.delivery_id,
            record.state.as_str(),
            record.next_attempt_at,
            record.status,
            record.duration_ms,
            record.status.is_some().then_some(&record.response_body),
            record.timestamp,
        )
    }));
    #[derive(FromQueryResult)]
    struct Numbered {
        id: i64,
        attempts: i32,
    }
    let mut values = vec![outcomes];
    values.extend(sql::pg_ids(
        backend,
        recorded.iter().map(|record| record.delivery_id),
    ));
    let statement = Statement::from_sql_and_values(backend, outcomes_sql(backend), values);
    let numbers: HashMap<i64, i32> = Numbered::find_by_statement(statement)
        .all(conn)
        .await?
        .into_iter()
        .map(|row| (row.id, row.attempts))
        .collect();
    let attempts: Vec<_> = recorded
        .iter()
        .filter_map(|record| {
            let number = *numbers.get(&record.delivery_id)?;
            Some((
                record.delivery_id,
                number,
                record.timestamp,
                record.status,
                record.duration_ms,
                &record.error,
                &record.response_headers,
                &record.response_body,
            ))
        })
        .collect();
    if !attempts.is_empty() {
        let statement =
            Statement::from_sql_and_values(backend, attempts_sql(backend), [sql::rows(attempts)]);
        conn.execute_raw(statement).await?;
    }
    let chains: Vec<(i64, i64, i64)> = finishing
        .iter()
        .filter(|record| finished.contains(&record.delivery_id))
        .filter_map(|record| Some((record.endpoint_id, record.build_id?, record.delivery_id)))
        .collect();
    let released = release_next(conn, &chains).await?;
    Ok((numbers.into_keys().collect(), released))
}

/// Writes the queue rows of `records` with `statement` (see [`dequeue_sql`] and
/// [`requeue_sql`]), whose parameter is `rows`, one per record; the ids of the rows written,
/// those whose claim was current.
async fn write_queue(
    conn: &impl ConnectionTrait,
    statement: fn(DbBackend) -> String,
    rows: Value,
    records: &[&AttemptRecord],
) -> Result<HashSet<i64>> {
    if records.is_empty() {
        return Ok(HashSet::new());
    }
    #[derive(FromQueryResult)]
    struct Written {
        delivery_id: i64,
    }
    let backend = conn.get_database_backend();
    let mut values = vec![rows];
    values.extend(sql::pg_ids(
        backend,
        records.iter().map(|record| record.delivery_id),
    ));
    let statement = Statement::from_sql_and_values(backend, statement(backend), values);
    Ok(Written::find_by_statement(statement)
        .all(conn)
        .await?
        .into_iter()
        .map(|row| row.delivery_id)
        .collect())
}

/// The delete of finished deliveries' queue rows, each only under its token; its parameter is one row per delivery, its id and token, and on
/// PostgreSQL the ids again. SQLite has no `DELETE … USING`; it finds each row by key from the
/// pair of id and token.
fn dequeue_sql(backend: DbBackend) -> String {
    let (int, text) = (|n| sql::int_field("f", n), |n| sql::field("f", n));
    let sql = match backend {
        DbBackend::Postgres => format!(
            "WITH v(v_id, v_token) AS (SELECT {}, {} FROM {})
            DELETE FROM delivery_queue USING v
            WHERE delivery_id = v_id AND lease_token = v_token {}
            RETURNING delivery_id",
            int(0),
            text(1),
            sql::json_rows(backend, "f"),
            sql::pg_by_ids(backend, "delivery_id"),
        ),
        _ => format!(
            "DELETE FROM delivery_queue
            WHERE (delivery_id, lease_token) IN (SELECT {}, {} FROM {})
            RETURNING delivery_id",
            int(0),
            text(1),
            sql::json_rows(backend, "f"),
        ),
    };
    sql::numbered(backend, &sql)
}

/// The update of retried deliveries' queue rows, each only under its token: due again at its
/// next attempt, and no longer claimed; its parameter is one row per delivery: id, token and
/// next attempt, and on PostgreSQL the ids again.
fn requeue_sql(backend: DbBackend) -> String {
    let (int, text) = (|n| sql::int_field("r", n), |n| sql::field("r", n));
    let sql = format!(
        "WITH v(v_id, v_token, v_next) AS (SELECT {}, {}, {} FROM {})
        UPDATE delivery_queue SET next_attempt_at = v_next, lease_until = NULL, lease_token = NULL
        FROM v WHERE delivery_id = v_id AND lease_token = v_token {}
        RETURNING delivery_id",
        int(0),
        text(1),
        int(2),
        sql::json_rows(backend, "r"),
        sql::pg_by_ids(backend, "delivery_id"),
    );
    sql::numbered(backend, &sql)
}

/// The update of the attempted deliveries whose claim was current, each by primary key; its
/// parameter is one row per delivery: id, state, next attempt, status, duration, response and
/// time, and on PostgreSQL the deliveries' ids again.
fn outcomes_sql(backend: DbBackend) -> String {
    let (int, text) = (|n| sql::int_field("o", n), |n| sql::field("o", n));
    let sql = format!(
        "WITH v(v_id, v_state, v_next, v_status, v_duration, v_response, v_at) AS (
            SELECT {}, {}, {}, {}, {}, {}, {} FROM {})
        UPDATE deliveries SET state = v_state, attempts = attempts + 1,
            round_attempts = round_attempts + 1, next_attempt_at = v_next,
            last_status = v_status, last_duration = v_duration, last_response = v_response,
            updated_at = v_at
        FROM v WHERE id = v_id {}
        RETURNING id, attempts",
        int(0),
        text(1),
        int(2),
        int(3),
        int(4),
        text(5),
        int(6),
        sql::json_rows(backend, "o"),
        sql::pg_by_ids(backend, "id"),
    );
    sql::numbered(backend, &sql)
}

/// The attempts recorded; its parameter is one row per attempt: delivery, number, time,
/// status, duration, error, response headers and response body.
fn attempts_sql(backend: DbBackend) -> String {
    let (int, text) = (|n| sql::int_field("a", n), |n| sql::field("a", n));
    let sql = format!(
        "INSERT INTO delivery_attempts
            (delivery_id, number, \"timestamp\", status, duration, error, response_headers,
             response_body)
        SELECT {}, {}, {}, {}, {}, {}, {}, {} FROM {}",
        int(0),
        int(1),
        int(2),
        int(3),
        int(4),
        text(5),
        text(6),
        text(7),
        sql::json_rows(backend, "a"),
    );
    sql::numbered(backend, &sql)
}

/// The condition that the queue row `row` is the head of its (endpoint, build) chain: no
/// earlier delivery of the chain is in the queue. It is a scalar subquery rather than `NOT
/// EXISTS`, which PostgreSQL's planner turns into an anti-join over the whole queue once it has
/// statistics; this way each row is checked on its own, in `delivery_queue_chain`.
fn chain_head(row: &str) -> String {
    format!(
        "(SELECT p.delivery_id FROM delivery_queue p
          WHERE p.endpoint_id = {row}.endpoint_id AND p.build_id = {row}.build_id
            AND p.delivery_id < {row}.delivery_id
          LIMIT 1) IS NULL"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How SQLite plans `sql`, one line per step, with every parameter bound to 0.
    async fn plan(conn: &impl ConnectionTrait, sql: &str) -> String {
        let values = vec![Value::from(0i64); sql.matches('?').count()];
        let statement = Statement::from_sql_and_values(
            DbBackend::Sqlite,
            format!("EXPLAIN QUERY PLAN {sql}"),
            values,
        );
        let rows = conn.query_all_raw(statement).await.unwrap();
        let lines: Vec<String> = rows
            .iter()
            .map(|row| row.try_get::<String>("", "detail").unwrap())
            .collect();
        lines.join("\n")
    }

    /// SQLite has no statistics to plan by, and with long lists of ids it used to read every
    /// queued delivery through an index of their state. No statement of the claim, the chain
    /// checks or the outcome writes may read or sort the whole queue; their lists are one
    /// parameter each, so one plan serves every length.
    #[tokio::test]
    async fn sqlite_reads_only_the_deliveries_a_statement_names() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("plans.db").display()
        );
        let db = crate::store::connect(&url).await.unwrap();
        let sqlite = DbBackend::Sqlite;
        let statements = [
            ("endpoints and their candidates", visit_sql(sqlite)),
            ("lease", lease_sql(sqlite)),
            (
                "leased deliveries",
                leased_sql(sqlite, "SELECT value FROM json_each(?)"),
            ),
            ("events' deliveries", insert_deliveries_sql(sqlite)),
            ("events' queue rows", enqueue_sql(sqlite)),
            ("release of the next held", release_next_sql(sqlite)),
            ("finished", dequeue_sql(sqlite)),
            ("retried", requeue_sql(sqlite)),
            ("outcomes", outcomes_sql(sqlite)),
        ];
        for (name, sql) in statements {
            let plan = plan(&db, &sql).await;
            let reads_queue = plan.lines().any(|line| {
                line.contains("TEMP B-TREE")
                    || [
                        "SCAN d",
                        "SCAN p",
                        "SCAN q",
                        "SCAN deliveries",
                        "SCAN delivery_queue",
                    ]
                    .iter()
                    .any(|scan| {
                        line.trim_start_matches(['|', '-', '`', ' '])
                            .starts_with(scan)
                    })
            });
            assert!(!reads_queue, "{name} reads the whole queue:\n{plan}");
        }
        // A list is read once, first: read again for each delivery found, a batch of n
        // outcomes would cost n² reads of its rows.
        let plan = plan(&db, &outcomes_sql(sqlite)).await;
        assert!(plan.starts_with("SCAN o"), "outcomes:\n{plan}");
    }

    /// On PostgreSQL, with statistics of a queue where one endpoint has a backlog of thousands
    /// and another a few deliveries, a claim's visit of the endpoints reads each one's rows in
    /// `delivery_queue_endpoint_due` (never the whole queue, nor every due row in due order):
    /// run when `HERALD_TEST_POSTGRES_URL` names a server, on a database of its own.
    #[tokio::test]
    async fn postgres_visits_each_endpoints_queue_through_its_index() {
        let Ok(server) = std::env::var("HERALD_TEST_POSTGRES_URL") else {
            return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
        };
        let admin = sea_orm::Database::connect(&server).await.unwrap();
        let name = format!("herald_plan_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let mut url = url::Url::parse(&server).unwrap();
        url.set_path(&format!("/{name}"));
        let db = crate::store::connect(url.as_str()).await.unwrap();
        // Endpoint 1's backlog of 5,000 chains, endpoint 2's three, and a few held rows.
        db.execute_unprepared(
            "INSERT INTO delivery_queue (delivery_id, endpoint_id, build_id, next_attempt_at, held)
             SELECT g, CASE WHEN g % 2000 = 0 THEN 2 ELSE 1 END, g, g, g % 7 = 0
             FROM generate_series(1, 6000) AS g;
             ANALYZE delivery_queue",
        )
        .await
        .unwrap();
        let pg = DbBackend::Postgres;
        let values: Vec<Value> = vec![
            0i64.into(),
            256i64.into(),
            i64::MAX.into(),
            sql::ids(pg, &[]),
            10_000i64.into(),
            10_000i64.into(),
            16i64.into(),
            i64::MAX.into(),
        ];
        let statement =
            Statement::from_sql_and_values(pg, format!("EXPLAIN {}", visit_sql(pg)), values);
        let tx = sea_orm::TransactionTrait::begin(&db).await.unwrap();
        tx.execute_unprepared("SET LOCAL enable_sort = off; SET LOCAL enable_seqscan = off")
            .await
            .unwrap();
        let rows = tx.query_all_raw(statement).await.unwrap();
        tx.rollback().await.unwrap();
        let plan: Vec<String> = rows
            .iter()
            .map(|row| row.try_get::<String>("", "QUERY PLAN").unwrap())
            .collect();
        let plan = plan.join("\n");
        db.close().await.ok();
        admin
            .execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await
            .unwrap();
        assert!(
            !plan.contains("Seq Scan") && !plan.contains("delivery_queue_ready"),
            "the visit reads the whole queue:\n{plan}"
        );
        assert!(
            plan.contains("delivery_queue_endpoint_due"),
            "the visit does not read each endpoint's queue by its index:\n{plan}"
        );
    }
}
