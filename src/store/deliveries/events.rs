//! Events, and the queueing of their deliveries in the chains of their builds.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement};

use super::Numbers;
use super::queue::CHANNEL;
use crate::Result;
use crate::domain::{BuildId, EventAction, OrgId, RepositoryId, TaskId};
use crate::store::sql;

/// An event as recorded in the same transaction as the change it describes.
pub struct NewEvent {
    pub org_id: OrgId,
    pub kind: &'static str,
    pub action: EventAction,
    pub old_status: Option<&'static str>,
    pub repository_id: RepositoryId,
    pub build_id: BuildId,
    pub task_id: Option<TaskId>,
    pub timestamp: i64,
}

/// Records events in one statement; the id of each, by its build. A batch of changes holds at
/// most one change per build (see `crate::events::writer`), so the build names the event.
pub async fn insert_events(
    conn: &impl ConnectionTrait,
    events: &[NewEvent],
) -> Result<HashMap<i64, i64>> {
    if events.is_empty() {
        return Ok(HashMap::new());
    }
    let backend = conn.get_database_backend();
    let rows = sql::rows(events.iter().map(|event| EventRow {
        org_id: event.org_id.get(),
        kind: event.kind,
        action: event.action.as_str(),
        old_status: event.old_status,
        repository_id: event.repository_id.get(),
        build_id: event.build_id.get(),
        task_id: event.task_id.map(TaskId::get),
        timestamp: event.timestamp,
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

/// A row of [`insert_events_sql`]: an event.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(Default))]
struct EventRow {
    org_id: i64,
    kind: &'static str,
    action: &'static str,
    old_status: Option<&'static str>,
    repository_id: i64,
    build_id: i64,
    task_id: Option<i64>,
    timestamp: i64,
}

impl sql::Row for EventRow {}

/// [`insert_events`]' statement; its parameter is one [`EventRow`] per event.
fn insert_events_sql(backend: DbBackend) -> String {
    let (int, text) = sql::fields("e");
    let sql = format!(
        "INSERT INTO events
            (org_id, kind, action, old_status, repository_id, build_id, task_id, timestamp)
        SELECT {}, {}, {}, {}, {}, {}, {}, {} FROM {}
        RETURNING id, build_id",
        int("org_id"),
        text("kind"),
        text("action"),
        text("old_status"),
        int("repository_id"),
        int("build_id"),
        int("task_id"),
        int("timestamp"),
        sql::json_rows(backend, "e"),
    );
    sql::numbered(backend, &sql)
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
    pub org_id: OrgId,
    /// The build or task event recorded (none for a published event, kept apart).
    pub event_id: Option<i64>,
    /// The chain the deliveries are ordered in: the build's id, or a subject's (negative)
    /// chain (see [`crate::domain::published::subject_chain`]).
    pub chain: i64,
    pub event: &'a str,
    pub action: EventAction,
    pub timestamp: i64,
    /// The work id of the build or task (`X-Herald-Work-Id`).
    pub work_id: Option<&'a str>,
    /// Each endpoint and the body it gets.
    pub bodies: Vec<(i64, String)>,
}

/// Queues events' deliveries, due at once, each with a new public id and numbered in its
/// endpoint's sequence by `numbers`. A delivery whose
/// (endpoint, build) chain has an unfinished delivery is held behind it: the queue's insert
/// checks each chain itself, in `delivery_queue_chain`. The statement does not see its own
/// rows, so it takes at most one event per build.
///
/// Returns whether a delivery queued is due now, not held; on PostgreSQL the same statement then
/// announces them in the name of `announcer` (see [`announce`](super::announce)). A held
/// delivery needs no worker woken for it: the worker that finishes the one before it releases
/// it.
pub async fn queue_events(
    conn: &impl ConnectionTrait,
    events: &[EventDeliveries<'_>],
    numbers: &mut Numbers,
    announcer: &str,
) -> Result<bool> {
    let endpoints: Vec<i64> = events
        .iter()
        .flat_map(|event| event.bodies.iter().map(|(endpoint_id, _)| *endpoint_id))
        .collect();
    let sequences = numbers.next(conn, &endpoints).await?;
    let rows: Vec<_> = events
        .iter()
        .flat_map(|event| {
            event
                .bodies
                .iter()
                .map(move |(endpoint_id, body)| (event, endpoint_id, body))
        })
        .zip(sequences)
        .map(|((event, endpoint_id, body), sequence)| DeliveryRow {
            sequence,
            uid: uuid::Uuid::now_v7().to_string(),
            endpoint_id: *endpoint_id,
            body,
            org_id: event.org_id.get(),
            event_id: event.event_id,
            build_id: event.chain,
            event: event.event,
            action: event.action.as_str(),
            at: event.timestamp,
            work_id: event.work_id,
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
    let rows = sql::rows(inserted.iter().map(|row| QueueRow {
        id: row.id,
        endpoint_id: row.endpoint_id,
        build_id: row.build_id,
        next_attempt_at: row.next_attempt_at,
    }));
    #[derive(FromQueryResult)]
    struct Queued {
        held: bool,
    }
    let statement = Statement::from_sql_and_values(backend, enqueue_sql(backend), [rows]);
    let queued = Queued::find_by_statement(statement).all(conn).await?;
    Ok(queued.iter().any(|row| !row.held))
}

/// A row of [`insert_deliveries_sql`]: a delivery of an event to one endpoint, with its new
/// public id.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(Default))]
struct DeliveryRow<'a> {
    uid: String,
    endpoint_id: i64,
    body: &'a str,
    org_id: i64,
    event_id: Option<i64>,
    /// The chain (see [`EventDeliveries::chain`]).
    build_id: i64,
    /// The event's kind and action.
    event: &'a str,
    action: &'a str,
    /// The event's time: the delivery's creation and first due time.
    at: i64,
    work_id: Option<&'a str>,
    /// Its place in its endpoint's sequence.
    sequence: i64,
}

impl sql::Row for DeliveryRow<'_> {}

/// The insert of events' deliveries; its parameter is one [`DeliveryRow`] per delivery. It
/// returns what their queue rows need: id, endpoint, build and due time. Its placeholders are
/// `?`, numbered by the caller.
pub(super) fn insert_deliveries_sql(backend: DbBackend) -> String {
    let (int, text) = sql::fields("n");
    format!(
        "INSERT INTO deliveries
            (uid, org_id, endpoint_id, event_id, build_id, event, action, body, state, attempts,
             round_attempts, next_attempt_at, created_at, updated_at, work_id, sequence)
        SELECT {uid}, {org}, {endpoint}, {event_id}, {build}, {event}, {action}, {body},
            'PENDING', 0, 0, {at}, {at}, {at}, {work_id}, {sequence}
        FROM {rows}
        RETURNING id, endpoint_id, build_id, next_attempt_at",
        uid = text("uid"),
        endpoint = int("endpoint_id"),
        body = text("body"),
        org = int("org_id"),
        event_id = int("event_id"),
        build = int("build_id"),
        event = text("event"),
        action = text("action"),
        at = int("at"),
        work_id = text("work_id"),
        sequence = int("sequence"),
        rows = sql::json_rows(backend, "n"),
    )
}

/// A row of [`enqueue_sql`]: a new delivery's queue row.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(Default))]
struct QueueRow {
    id: i64,
    endpoint_id: i64,
    build_id: Option<i64>,
    next_attempt_at: i64,
}

impl sql::Row for QueueRow {}

/// The queue rows of new deliveries; its parameter is one [`QueueRow`] per delivery. Each is
/// held when its chain has a row in the queue already. It returns each one's `held`.
pub(super) fn enqueue_sql(backend: DbBackend) -> String {
    let int = |name| sql::int_field("r", name);
    let from = sql::json_rows(backend, "r");
    let columns = [
        int("id"),
        int("endpoint_id"),
        int("build_id"),
        int("next_attempt_at"),
    ];
    let sql = enqueue_from(backend, &from, columns.each_ref().map(String::as_str));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_read_every_field_of_their_rows_by_name() {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            sql::assert_reads_fields_of::<EventRow>(&insert_events_sql(backend), "e");
            sql::assert_reads_fields_of::<DeliveryRow>(&insert_deliveries_sql(backend), "n");
            sql::assert_reads_fields_of::<QueueRow>(&enqueue_sql(backend), "r");
        }
        sql::assert_reads_fields_of::<DeliveryRow>(&queue_events_pg_sql(), "n");
    }
}
