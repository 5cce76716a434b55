//! The outbox: events, deliveries and their attempts, and the queue the workers claim from.
//!
//! A delivery is claimed by setting a lease (`lease_until`) and a fresh fencing token
//! (`lease_token`). Only the holder of the current token may record the attempt's outcome, so a
//! worker that lost its lease (it stalled, or was presumed dead) changes nothing.

use std::collections::{HashMap, HashSet};

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult,
    QueryFilter, QueryOrder, QuerySelect, Statement, Value,
};

use super::Page;
use super::entities::{delivery, delivery_attempt};
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
/// most one change per build (see [`crate::payload::commit`]), so the build names the event.
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
            lease_until: Set(None),
            lease_token: Set(None),
            created_at: Set(timestamp),
            last_status: Set(None),
            last_duration: Set(None),
            last_response: Set(None),
            updated_at: Set(timestamp),
            // A delivery of no build is in no chain, so nothing holds it.
            held: Set(false),
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

/// Queues events' deliveries, due at once, each with a new public id, in one statement. A
/// delivery whose (endpoint, build) chain has an unfinished delivery is held behind it: the
/// insert checks each chain itself, in `deliveries_unfinished`. The statement does not see its
/// own rows, so it takes at most one event per build.
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
    let mut values = vec![sql::rows(rows)];
    if backend == DbBackend::Postgres {
        values.push(announcer.into());
    }
    let statement = Statement::from_sql_and_values(backend, queue_events_sql(backend), values);
    if backend == DbBackend::Postgres {
        #[derive(FromQueryResult)]
        struct Due {
            due: i64,
        }
        let due = Due::find_by_statement(statement).one(conn).await?;
        Ok(due.is_some_and(|row| row.due > 0))
    } else {
        #[derive(FromQueryResult)]
        struct Queued {
            held: bool,
        }
        let queued = Queued::find_by_statement(statement).all(conn).await?;
        Ok(queued.iter().any(|row| !row.held))
    }
}

/// [`queue_events`]' statement; its parameter is one row per delivery: public id, endpoint,
/// body, organization, event, build, the event's kind and action, and its time; on PostgreSQL
/// also the announcer. On SQLite it returns each delivery's `held`; on PostgreSQL, how many are
/// `due`, announced if any.
fn queue_events_sql(backend: DbBackend) -> String {
    let (int, text) = (|n| sql::int_field("n", n), |n| sql::field("n", n));
    // Without statistics, SQLite's planner may answer the state test from another index; the
    // index of unfinished chains reads only the chain's. The check is a scalar subquery, not
    // `EXISTS`, which PostgreSQL may run as a hashed subplan that reads every unfinished
    // delivery of the build through that index (its first column is the endpoint).
    let index = sql::sqlite_hint(backend, "INDEXED BY deliveries_unfinished");
    let sql = format!(
        "INSERT INTO deliveries
            (uid, org_id, endpoint_id, event_id, build_id, event, action, body, state, attempts,
             round_attempts, next_attempt_at, created_at, updated_at, held)
        SELECT {uid}, {org}, {endpoint}, {event_id}, {build}, {event}, {action}, {body},
            'PENDING', 0, 0, {at}, {at}, {at},
            (SELECT p.id FROM deliveries p {index}
             WHERE p.endpoint_id = {endpoint} AND p.build_id = {build}
               AND p.state IN ('PENDING', 'RETRYING')
             LIMIT 1) IS NOT NULL
        FROM {rows}
        RETURNING held",
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
    );
    let sql = match backend {
        // `NOTIFY` is sent at the commit, and only when some delivery is due.
        DbBackend::Postgres => format!(
            "WITH queued AS ({sql})
            SELECT count(*) AS due,
                CASE WHEN count(*) > 0 THEN pg_notify('{CHANNEL}', ?)::text END AS announced
            FROM queued WHERE NOT held"
        ),
        _ => sql,
    };
    sql::numbered(backend, &sql)
}

/// Makes the first unfinished delivery of each of these (endpoint, build) chains, whose earlier
/// delivery has just finished, the chain's head: releases it when it is held; the endpoints of
/// the chains that have one, which a claim may now take.
async fn release_next(
    conn: &impl ConnectionTrait,
    chains: &HashSet<(i64, i64)>,
) -> Result<HashSet<i64>> {
    if chains.is_empty() {
        return Ok(HashSet::new());
    }
    #[derive(FromQueryResult)]
    struct Released {
        endpoint_id: i64,
    }
    let backend = conn.get_database_backend();
    let rows = sql::rows(chains.iter().map(|(endpoint, build)| (endpoint, build)));
    let statement = Statement::from_sql_and_values(backend, release_next_sql(backend), [rows]);
    let released = Released::find_by_statement(statement).all(conn).await?;
    Ok(released.into_iter().map(|row| row.endpoint_id).collect())
}

/// Releases the first unfinished delivery of each chain; its parameter is the chains, as
/// `[endpoint, build]` rows. That delivery is the first held one, except after a redelivery:
/// a finished delivery sent again goes ahead of its chain's unfinished ones, which stay as they
/// were (the one after it not held, the rest held), and when it finishes, the next to go is
/// that one, not the first held. The next ids are found first, each in the index of
/// unfinished chains, and the update reads only them: PostgreSQL may plan an `UPDATE … WHERE
/// id IN (SELECT …)` as a scan of the whole table, so there the ids are an array computed once.
fn release_next_sql(backend: DbBackend) -> String {
    let next = format!(
        "SELECT (SELECT MIN(p.id) FROM deliveries p
                WHERE p.endpoint_id = {} AND p.build_id = {}
                  AND p.state IN ('PENDING', 'RETRYING'))
        FROM {}",
        sql::int_field("c", 0),
        sql::int_field("c", 1),
        sql::json_rows(backend, "c")
    );
    let chosen = match backend {
        DbBackend::Postgres => format!("id = ANY(ARRAY({next}))"),
        _ => format!("id IN ({next})"),
    };
    sql::numbered(
        backend,
        &format!("UPDATE deliveries SET held = false WHERE {chosen} RETURNING endpoint_id"),
    )
}

/// Releases every held delivery that no longer waits for anything: the first unfinished
/// delivery of its chain. Finishing a delivery releases the next one in the same transaction,
/// so this finds nothing unless a release was missed; the worker runs it now and then so that
/// no delivery can stay held forever.
pub async fn release_stranded(conn: &impl ConnectionTrait) -> Result<u64> {
    let backend = conn.get_database_backend();
    let sql = "UPDATE deliveries SET held = false
        WHERE held = true AND state IN ('PENDING', 'RETRYING')
          AND NOT EXISTS (
            SELECT 1 FROM deliveries p
            WHERE p.endpoint_id = deliveries.endpoint_id AND p.build_id = deliveries.build_id
              AND p.id < deliveries.id AND p.state IN ('PENDING', 'RETRYING'))";
    Ok(conn
        .execute_raw(Statement::from_string(backend, sql))
        .await?
        .rows_affected())
}

/// Queues one delivery, due at once, with a new public id.
pub async fn insert_one(conn: &impl ConnectionTrait, new: NewDelivery) -> Result<delivery::Model> {
    Ok(delivery::Entity::insert(new.into_row())
        .exec_with_returning(conn)
        .await?)
}

/// The PostgreSQL channel on which committed deliveries are announced to workers.
pub const CHANNEL: &str = "herald_deliveries";

/// Announces, on PostgreSQL, that deliveries are due once the current transaction commits
/// (`NOTIFY` is transactional: a rolled-back change wakes nobody), in the name of `announcer`
/// (see [`crate::payload::outbox::Outbox::announcer`]). SQLite has one process, whose worker
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
        UPDATE deliveries SET lease_until = NULL, lease_token = NULL
        FROM v WHERE id = v_id AND lease_token = v_token {}",
        int(0),
        text(1),
        sql::json_rows(backend, "g"),
        sql::pg_by_ids(backend, "id"),
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

/// How many due deliveries a claim reads for each row it may take, so that rows of endpoints
/// already at their cap do not leave the free slots empty. Each one read costs its chain's and
/// its endpoint's checks (and on PostgreSQL a row lock): reading four per slot cost a drain 6 %
/// more instructions than two, and past two, endpoints at their cap are what `look_past_busy`
/// is for.
const CANDIDATES_PER_SLOT: usize = 2;

/// The most candidates one claim reads.
const MAX_CANDIDATES: usize = 2048;

/// What a claim may take.
pub struct ClaimRequest<F> {
    pub now: i64,
    pub lease_ms: i64,
    /// The most deliveries to take.
    pub limit: usize,
    /// Endpoints at the worker's per-endpoint cap.
    pub busy: Vec<i64>,
    /// How many more deliveries of an endpoint the worker may take.
    pub room_of: F,
    /// Whether the claim may look past the due deliveries of `busy` endpoints, reading the whole
    /// queue of them to find another endpoint's (the worker allows it a few times a second).
    pub look_past_busy: bool,
}

/// Claims due deliveries for `lease_ms`, under one new fencing token.
///
/// Only the head of each (endpoint, build) chain is due: a delivery waits while an earlier one
/// of its chain is unfinished, so one endpoint sees one build's events in order. Deliveries
/// behind one are `held` and not read at all: the due ones are read in due order through the
/// `deliveries_ready` partial index, a few per free slot, the worker's per-endpoint cap is
/// applied to them, and the chosen ones are leased in one statement that checks again that
/// each is due and free. When all it read belong to endpoints at their cap, a claim allowed to
/// `look_past_busy` reads on, skipping them. On PostgreSQL, inside a transaction, concurrent
/// claimers skip each other's rows (`FOR UPDATE SKIP LOCKED`); on SQLite the claim runs
/// outside one, so it takes the write lock only for the lease itself.
///
/// On PostgreSQL it must run inside a transaction, which it configures for the claim: no sorts,
/// and a commit that does not wait for the disk.
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
        look_past_busy,
    } = request;
    let token = uuid::Uuid::new_v4().to_string();
    if conn.get_database_backend() == DbBackend::Postgres {
        // With statistics, PostgreSQL's planner reads every due delivery and sorts them when it
        // expects few, though the claim needs only the first; in a backlog of ready chains that
        // is thousands of rows per claim. Without sorts, it reads `deliveries_ready` in order
        // and stops at the limit. A claim lost to a crash only lets its lease expire, so its
        // commit need not wait for the disk (see [`crate::store::begin_worker_write`]). One
        // round trip sets both; `SET LOCAL` ends with the claim's transaction.
        conn.execute_unprepared("SET LOCAL enable_sort = off; SET LOCAL synchronous_commit = off")
            .await?;
    }
    let wanted = (limit * CANDIDATES_PER_SLOT).min(MAX_CANDIDATES);
    let first = candidates(conn, now, &[], wanted).await?;
    let full = first.len() == wanted;
    let mut taken: HashMap<i64, usize> = HashMap::new();
    let mut chosen = Vec::with_capacity(limit);
    let mut passed_over = false;
    let mut pick = |candidates: Vec<Candidate>, chosen: &mut Vec<i64>| {
        for candidate in candidates {
            if chosen.len() == limit {
                break;
            }
            let count = taken.entry(candidate.endpoint_id).or_default();
            if *count >= room_of(candidate.endpoint_id) {
                passed_over = true;
            } else if !chosen.contains(&candidate.id) {
                *count += 1;
                chosen.push(candidate.id);
            }
        }
    };
    pick(first, &mut chosen);
    if chosen.len() < limit && full && look_past_busy && !busy.is_empty() {
        let more = candidates(conn, now, &busy, wanted).await?;
        pick(more, &mut chosen);
    }
    // What was read may not be all that is due: the read stopped at its limit, or passed over
    // deliveries of endpoints without room, or the claim took as many as it could.
    let more_due = full || passed_over || chosen.len() == limit;
    if chosen.is_empty() {
        return Ok(Leases {
            token,
            rows: Vec::new(),
            more_due,
        });
    }
    let backend = conn.get_database_backend();
    let values: Vec<Value> = vec![
        (now + lease_ms).into(),
        token.clone().into(),
        sql::ids(backend, &chosen),
        now.into(),
    ];
    let statement = Statement::from_sql_and_values(backend, lease_sql(backend), values);
    let mut rows = Leased::find_by_statement(statement).all(conn).await?;
    rows.sort_by_key(|row| row.id);
    Ok(Leases {
        token,
        rows,
        more_due,
    })
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
    /// `build`, `task` or `ping`.
    pub event: String,
    pub body: String,
    /// Attempts since the delivery was created or last redelivered; drives the schedule.
    pub round_attempts: i32,
    pub lease_until: Option<i64>,
    /// The event's time: `X-Cirrus-Timestamp`.
    pub created_at: i64,
}

/// The claim's lease of the chosen deliveries; its parameters are the lease's end, the token,
/// the chosen ids and now.
fn lease_sql(backend: DbBackend) -> String {
    // The lease is taken only where the delivery is still due and free, so the claim is right
    // even outside a transaction (SQLite's worker claims that way, without holding the write
    // lock while it reads). The rows are found by primary key: without statistics, SQLite's
    // planner may prefer an index for the state test once the list is long (it took the former
    // `deliveries_due`), and read every queued delivery.
    let by_key = sql::sqlite_hint(backend, "NOT INDEXED");
    let sql = format!(
        "UPDATE deliveries {by_key} SET lease_until = ?, lease_token = ?
        WHERE {} AND state IN ('PENDING', 'RETRYING') AND held = false
          AND (lease_until IS NULL OR lease_until < ?)
          AND {}
        RETURNING id, uid, endpoint_id, build_id, event, body, round_attempts, lease_until,
            created_at",
        sql::in_ids(backend, "id"),
        chain_head("deliveries")
    );
    sql::numbered(backend, &sql)
}

#[derive(FromQueryResult)]
struct Candidate {
    id: i64,
    endpoint_id: i64,
}

/// Up to `limit` due, unheld, unleased chain heads of enabled endpoints not in `skip`, in due
/// order.
async fn candidates(
    conn: &impl ConnectionTrait,
    now: i64,
    skip: &[i64],
    limit: usize,
) -> Result<Vec<Candidate>> {
    let backend = conn.get_database_backend();
    let skipping = !skip.is_empty();
    let mut values: Vec<Value> = vec![now.into(), now.into()];
    if skipping {
        values.push(sql::ids(backend, skip));
    }
    values.push((limit as i64).into());
    let statement =
        Statement::from_sql_and_values(backend, candidates_sql(backend, skipping), values);
    Ok(Candidate::find_by_statement(statement).all(conn).await?)
}

/// [`candidates`]' statement; its parameters are now (twice), the endpoints to skip (when
/// `skipping`) and the limit.
fn candidates_sql(backend: DbBackend, skipping: bool) -> String {
    let skip_filter = if skipping {
        format!("AND NOT ({})", sql::in_ids(backend, "d.endpoint_id"))
    } else {
        String::new()
    };
    // SQLite's planner, without statistics, may pick another index and sort every queued
    // delivery; the partial index reads them in due order and stops at the limit. The limit is
    // cast: SQLite plans a bare `LIMIT ?` from the value bound, so binding another one would
    // make it parse and plan the statement again at every claim.
    let index = sql::sqlite_hint(backend, "INDEXED BY deliveries_ready");
    let lock = if backend == DbBackend::Postgres {
        "FOR UPDATE OF d SKIP LOCKED"
    } else {
        ""
    };
    let sql = format!(
        "SELECT d.id, d.endpoint_id FROM deliveries d {index}
        WHERE d.state IN ('PENDING', 'RETRYING') AND d.held = false AND d.next_attempt_at <= ?
          AND (d.lease_until IS NULL OR d.lease_until < ?)
          {skip_filter}
          AND EXISTS (SELECT 1 FROM webhook_endpoints e WHERE e.id = d.endpoint_id AND e.enabled = true)
          AND {head}
        ORDER BY d.next_attempt_at, d.id
        LIMIT CAST(? AS BIGINT) {lock}",
        head = chain_head("d")
    );
    sql::numbered(backend, &sql)
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
/// it released.
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
/// of the deliveries released.
async fn record_distinct(
    conn: &impl ConnectionTrait,
    records: &[&AttemptRecord],
) -> Result<(HashSet<i64>, HashSet<i64>)> {
    let finishing = |record: &&AttemptRecord| {
        matches!(
            record.state,
            DeliveryState::Delivered | DeliveryState::Failed
        )
    };
    let builds: Vec<i64> = records
        .iter()
        .filter(|record| finishing(record))
        .filter_map(|record| record.build_id)
        .collect();
    lock_chains(conn, &builds).await?;
    let backend = conn.get_database_backend();
    let outcomes = sql::rows(records.iter().map(|record| {
        (
            record.delivery_id,
            &record.token,
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
        records.iter().map(|record| record.delivery_id),
    ));
    let statement = Statement::from_sql_and_values(backend, outcomes_sql(backend), values);
    let numbers: HashMap<i64, i32> = Numbered::find_by_statement(statement)
        .all(conn)
        .await?
        .into_iter()
        .map(|row| (row.id, row.attempts))
        .collect();
    let attempts: Vec<_> = records
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
    let finished: HashSet<(i64, i64)> = records
        .iter()
        .filter(|record| finishing(record) && numbers.contains_key(&record.delivery_id))
        .filter_map(|record| Some((record.endpoint_id, record.build_id?)))
        .collect();
    let released = release_next(conn, &finished).await?;
    Ok((numbers.into_keys().collect(), released))
}

/// The update of the attempted deliveries, each by primary key and only under its token; its
/// parameter is one row per delivery: id, token, state, next attempt, status, duration,
/// response and time, and on PostgreSQL the deliveries' ids again.
fn outcomes_sql(backend: DbBackend) -> String {
    let (int, text) = (|n| sql::int_field("o", n), |n| sql::field("o", n));
    let sql = format!(
        "WITH v(v_id, v_token, v_state, v_next, v_status, v_duration, v_response, v_at) AS (
            SELECT {}, {}, {}, {}, {}, {}, {}, {} FROM {})
        UPDATE deliveries SET state = v_state, attempts = attempts + 1,
            round_attempts = round_attempts + 1, next_attempt_at = v_next, lease_until = NULL,
            lease_token = NULL, last_status = v_status, last_duration = v_duration,
            last_response = v_response, updated_at = v_at
        FROM v WHERE id = v_id AND lease_token = v_token {}
        RETURNING id, attempts",
        int(0),
        text(1),
        text(2),
        int(3),
        int(4),
        int(5),
        text(6),
        int(7),
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

/// The condition that the delivery `row` names is the head of its (endpoint, build) chain: no
/// earlier delivery of the chain is unfinished. It is a scalar subquery rather than `NOT
/// EXISTS`, which PostgreSQL's planner turns into an anti-join over every unfinished delivery
/// once it has statistics; this way each candidate is checked on its own, in
/// `deliveries_unfinished`.
fn chain_head(row: &str) -> String {
    format!(
        "(SELECT p.id FROM deliveries p
          WHERE p.endpoint_id = {row}.endpoint_id AND p.build_id = {row}.build_id
            AND p.id < {row}.id AND p.state IN ('PENDING', 'RETRYING')
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
            ("candidates", candidates_sql(sqlite, false)),
            (
                "candidates past busy endpoints",
                candidates_sql(sqlite, true),
            ),
            ("lease", lease_sql(sqlite)),
            ("events' deliveries", queue_events_sql(sqlite)),
            ("release of the next held", release_next_sql(sqlite)),
            ("outcomes", outcomes_sql(sqlite)),
        ];
        for (name, sql) in statements {
            let plan = plan(&db, &sql).await;
            let reads_queue = plan.lines().any(|line| {
                line.contains("TEMP B-TREE")
                    || ["SCAN d", "SCAN p", "SCAN deliveries"].iter().any(|scan| {
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
}
