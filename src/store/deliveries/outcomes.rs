//! Outcomes: each attempt recorded under its claim's token, and the release of the next
//! delivery of each chain whose delivery finished.

use std::collections::{HashMap, HashSet};

use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement, Value};

use super::events::lock_chains;
use super::queue::{ChainRow, LeaseRow, release_next};
use crate::Result;
use crate::domain::{BuildId, DeliveryId, DeliveryState, EndpointId};
use crate::store::sql;

/// What one attempt came to, ready to be written.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    pub delivery_id: DeliveryId,
    /// The delivery's chain: its endpoint and build (none for a ping).
    pub endpoint_id: EndpointId,
    pub build_id: Option<BuildId>,
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
        .filter_map(|record| record.build_id.map(BuildId::get))
        .collect();
    lock_chains(conn, &builds).await?;
    let backend = conn.get_database_backend();
    // Finished deliveries leave the queue; retried ones are due again at their next attempt.
    let rows = sql::rows(finishing.iter().map(|record| LeaseRow {
        id: record.delivery_id.get(),
        token: &record.token,
    }));
    let finished = write_queue(conn, dequeue_sql, rows, &finishing).await?;
    let rows = sql::rows(retrying.iter().map(|record| RetryRow {
        id: record.delivery_id.get(),
        token: &record.token,
        next_attempt_at: record.next_attempt_at,
    }));
    let retried = write_queue(conn, requeue_sql, rows, &retrying).await?;
    let recorded: Vec<&&AttemptRecord> = records
        .iter()
        .filter(|record| {
            finished.contains(&record.delivery_id.get())
                || retried.contains(&record.delivery_id.get())
        })
        .collect();
    if recorded.is_empty() {
        return Ok((HashSet::new(), HashSet::new()));
    }
    let outcomes = sql::rows(recorded.iter().map(|record| {
        OutcomeRow {
            id: record.delivery_id.get(),
            state: record.state.as_str(),
            next_attempt_at: record.next_attempt_at,
            status: record.status,
            duration: record.duration_ms,
            response: record
                .status
                .is_some()
                .then_some(record.response_body.as_str()),
            at: record.timestamp,
        }
    }));
    #[derive(FromQueryResult)]
    struct Numbered {
        id: i64,
        attempts: i32,
    }
    let mut values = vec![outcomes];
    values.extend(sql::pg_ids(
        backend,
        recorded.iter().map(|record| record.delivery_id.get()),
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
            let number = *numbers.get(&record.delivery_id.get())?;
            Some(AttemptRow {
                delivery_id: record.delivery_id.get(),
                number,
                timestamp: record.timestamp,
                status: record.status,
                duration: record.duration_ms,
                error: record.error.as_deref(),
                response_headers: &record.response_headers,
                response_body: &record.response_body,
            })
        })
        .collect();
    if !attempts.is_empty() {
        let statement =
            Statement::from_sql_and_values(backend, attempts_sql(backend), [sql::rows(attempts)]);
        conn.execute_raw(statement).await?;
    }
    let chains: Vec<ChainRow> = finishing
        .iter()
        .filter(|record| finished.contains(&record.delivery_id.get()))
        .filter_map(|record| {
            Some(ChainRow {
                endpoint_id: record.endpoint_id.get(),
                build_id: record.build_id?.get(),
                finished: record.delivery_id.get(),
            })
        })
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
        records.iter().map(|record| record.delivery_id.get()),
    ));
    let statement = Statement::from_sql_and_values(backend, statement(backend), values);
    Ok(Written::find_by_statement(statement)
        .all(conn)
        .await?
        .into_iter()
        .map(|row| row.delivery_id)
        .collect())
}

/// The delete of finished deliveries' queue rows, each only under its token; its parameter is
/// one [`LeaseRow`] per delivery, and on PostgreSQL the ids again. SQLite has no `DELETE …
/// USING`; it finds each row by key from the pair of id and token.
pub(super) fn dequeue_sql(backend: DbBackend) -> String {
    let (int, text) = sql::fields("f");
    let sql = match backend {
        DbBackend::Postgres => format!(
            "WITH v(v_id, v_token) AS (SELECT {}, {} FROM {})
            DELETE FROM delivery_queue USING v
            WHERE delivery_id = v_id AND lease_token = v_token {}
            RETURNING delivery_id",
            int("id"),
            text("token"),
            sql::json_rows(backend, "f"),
            sql::pg_by_ids(backend, "delivery_id"),
        ),
        _ => format!(
            "DELETE FROM delivery_queue
            WHERE (delivery_id, lease_token) IN (SELECT {}, {} FROM {})
            RETURNING delivery_id",
            int("id"),
            text("token"),
            sql::json_rows(backend, "f"),
        ),
    };
    sql::numbered(backend, &sql)
}

/// A row of [`requeue_sql`]: a retried delivery, the token of its claim, and its next attempt.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(Default))]
struct RetryRow<'a> {
    id: i64,
    token: &'a str,
    next_attempt_at: i64,
}

impl sql::Row for RetryRow<'_> {}

/// The update of retried deliveries' queue rows, each only under its token: due again at its
/// next attempt, and no longer claimed; its parameter is one [`RetryRow`] per delivery, and on
/// PostgreSQL the ids again.
pub(super) fn requeue_sql(backend: DbBackend) -> String {
    let (int, text) = sql::fields("r");
    let sql = format!(
        "WITH v(v_id, v_token, v_next) AS (SELECT {}, {}, {} FROM {})
        UPDATE delivery_queue SET next_attempt_at = v_next, lease_until = NULL, lease_token = NULL
        FROM v WHERE delivery_id = v_id AND lease_token = v_token {}
        RETURNING delivery_id",
        int("id"),
        text("token"),
        int("next_attempt_at"),
        sql::json_rows(backend, "r"),
        sql::pg_by_ids(backend, "delivery_id"),
    );
    sql::numbered(backend, &sql)
}

/// A row of [`outcomes_sql`]: what an attempt changes of its delivery.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(Default))]
struct OutcomeRow<'a> {
    id: i64,
    state: &'a str,
    next_attempt_at: i64,
    status: Option<i32>,
    duration: i64,
    /// The response's body, when there was a response.
    response: Option<&'a str>,
    at: i64,
}

impl sql::Row for OutcomeRow<'_> {}

/// The update of the attempted deliveries whose claim was current, each by primary key; its
/// parameter is one [`OutcomeRow`] per delivery, and on PostgreSQL the deliveries' ids again.
pub(super) fn outcomes_sql(backend: DbBackend) -> String {
    let (int, text) = sql::fields("o");
    let sql = format!(
        "WITH v(v_id, v_state, v_next, v_status, v_duration, v_response, v_at) AS (
            SELECT {}, {}, {}, {}, {}, {}, {} FROM {})
        UPDATE deliveries SET state = v_state, attempts = attempts + 1,
            round_attempts = round_attempts + 1, next_attempt_at = v_next,
            last_status = v_status, last_duration = v_duration, last_response = v_response,
            updated_at = v_at
        FROM v WHERE id = v_id {}
        RETURNING id, attempts",
        int("id"),
        text("state"),
        int("next_attempt_at"),
        int("status"),
        int("duration"),
        text("response"),
        int("at"),
        sql::json_rows(backend, "o"),
        sql::pg_by_ids(backend, "id"),
    );
    sql::numbered(backend, &sql)
}

/// A row of [`attempts_sql`]: an attempt.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(Default))]
struct AttemptRow<'a> {
    delivery_id: i64,
    number: i32,
    timestamp: i64,
    status: Option<i32>,
    duration: i64,
    error: Option<&'a str>,
    response_headers: &'a str,
    response_body: &'a str,
}

impl sql::Row for AttemptRow<'_> {}

/// The attempts recorded; its parameter is one [`AttemptRow`] per attempt.
fn attempts_sql(backend: DbBackend) -> String {
    let (int, text) = sql::fields("a");
    let sql = format!(
        "INSERT INTO delivery_attempts
            (delivery_id, number, \"timestamp\", status, duration, error, response_headers,
             response_body)
        SELECT {}, {}, {}, {}, {}, {}, {}, {} FROM {}",
        int("delivery_id"),
        int("number"),
        int("timestamp"),
        int("status"),
        int("duration"),
        text("error"),
        text("response_headers"),
        text("response_body"),
        sql::json_rows(backend, "a"),
    );
    sql::numbered(backend, &sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_read_every_field_of_their_rows_by_name() {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            sql::assert_reads_fields_of::<LeaseRow>(&dequeue_sql(backend), "f");
            sql::assert_reads_fields_of::<RetryRow>(&requeue_sql(backend), "r");
            sql::assert_reads_fields_of::<OutcomeRow>(&outcomes_sql(backend), "o");
            sql::assert_reads_fields_of::<AttemptRow>(&attempts_sql(backend), "a");
        }
    }
}
