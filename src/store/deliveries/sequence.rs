//! Each endpoint's sequence (`X-Herald-Sequence`): its deliveries numbered 1, 2, 3, … in the
//! order their transactions commit, with no gap and no repeat, so that a receiver that sees a
//! number skipped knows it missed a delivery and can fetch it ([`after`]).
//!
//! A transaction queues its deliveries unnumbered (sequence 0) and numbers them all as the last
//! thing before its commit ([`number`]): one statement takes each endpoint's counter in
//! `endpoint_sequences` and moves it on by the number of deliveries the transaction queued
//! for it. On PostgreSQL the counter's row stays locked until the commit, so a transaction of
//! another process numbering deliveries of the same endpoint waits, and then counts from where
//! this one ended: numbers follow commits. The counters are taken in the order of their
//! endpoints, all in one statement, so two transactions never deadlock over them; a rolled
//! back transaction gives its numbers back. SQLite has one writing transaction at a time.
//!
//! A delivery never sent (its payload was refused) has no number: a receiver could not tell it
//! from a missed one, and fetching it would find nothing to take.

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};

use crate::Result;
use crate::store::entities::delivery;
use crate::store::sql;

/// The sequence of a delivery its transaction has not numbered yet.
pub(super) const UNNUMBERED: i64 = 0;

/// Numbers the deliveries the current transaction queued (see the module's documentation).
/// Call it last before the commit: the counters it takes stay locked until then.
pub async fn number(conn: &impl ConnectionTrait) -> Result<()> {
    let backend = conn.get_database_backend();
    if backend == DbBackend::Postgres {
        conn.execute_raw(Statement::from_string(backend, number_pg_sql()))
            .await?;
        return Ok(());
    }
    #[derive(FromQueryResult)]
    struct Pending {
        id: i64,
        endpoint_id: i64,
    }
    let pending = Pending::find_by_statement(Statement::from_string(
        backend,
        "SELECT id, endpoint_id FROM deliveries WHERE sequence = 0 ORDER BY id",
    ))
    .all(conn)
    .await?;
    if pending.is_empty() {
        return Ok(());
    }
    let mut counts = std::collections::BTreeMap::<i64, i64>::new();
    for row in &pending {
        *counts.entry(row.endpoint_id).or_default() += 1;
    }
    #[derive(FromQueryResult)]
    struct Counter {
        endpoint_id: i64,
        last_sequence: i64,
    }
    let rows = sql::rows(counts.iter().map(|(endpoint_id, n)| CountRow {
        endpoint_id: *endpoint_id,
        n: *n,
    }));
    let statement = Statement::from_sql_and_values(backend, count_sql(backend), [rows]);
    // Each endpoint's next number: its new last, less what this transaction took.
    let mut next: std::collections::HashMap<i64, i64> = Counter::find_by_statement(statement)
        .all(conn)
        .await?
        .into_iter()
        .map(|c| (c.endpoint_id, c.last_sequence - counts[&c.endpoint_id] + 1))
        .collect();
    let numbered: Vec<NumberRow> = pending
        .iter()
        .map(|row| {
            let next = next.entry(row.endpoint_id).or_default();
            let sequence = *next;
            *next += 1;
            NumberRow {
                id: row.id,
                sequence,
            }
        })
        .collect();
    let statement =
        Statement::from_sql_and_values(backend, assign_sql(backend), [sql::rows(numbered)]);
    conn.execute_raw(statement).await?;
    Ok(())
}

/// A row of [`count_sql`]: how many deliveries a transaction queued for an endpoint.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(Default))]
struct CountRow {
    endpoint_id: i64,
    n: i64,
}

impl sql::Row for CountRow {}

/// Moves each endpoint's counter on by its count, in the order of the endpoints; returns the
/// new last numbers.
fn count_sql(backend: DbBackend) -> String {
    let int = |name| sql::int_field("c", name);
    sql::numbered(
        backend,
        &format!(
            "INSERT INTO endpoint_sequences (endpoint_id, last_sequence)
            SELECT {}, {} FROM {} WHERE true ORDER BY 1
            ON CONFLICT (endpoint_id) DO UPDATE
              SET last_sequence = endpoint_sequences.last_sequence + excluded.last_sequence
            RETURNING endpoint_id, last_sequence",
            int("endpoint_id"),
            int("n"),
            sql::json_rows(backend, "c")
        ),
    )
}

/// A row of [`assign_sql`]: a delivery's number.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(Default))]
struct NumberRow {
    id: i64,
    sequence: i64,
}

impl sql::Row for NumberRow {}

fn assign_sql(backend: DbBackend) -> String {
    let int = |name| sql::int_field("a", name);
    sql::numbered(
        backend,
        &format!(
            "WITH v(v_id, v_sequence) AS (SELECT {}, {} FROM {})
            UPDATE deliveries SET sequence = v_sequence FROM v WHERE id = v_id",
            int("id"),
            int("sequence"),
            sql::json_rows(backend, "a")
        ),
    )
}

/// [`number`] on PostgreSQL, in one statement: the unnumbered deliveries (only the current
/// transaction's can be seen: every committed one is numbered), their counts by endpoint, the
/// counters moved on in the order of the endpoints, and each delivery's number.
fn number_pg_sql() -> &'static str {
    "WITH pending AS (
        SELECT id, endpoint_id,
            row_number() OVER (PARTITION BY endpoint_id ORDER BY id) AS k
        FROM deliveries WHERE sequence = 0),
    counts AS (SELECT endpoint_id, count(*) AS n FROM pending GROUP BY endpoint_id),
    counted AS (
        INSERT INTO endpoint_sequences (endpoint_id, last_sequence)
        SELECT endpoint_id, n FROM counts ORDER BY endpoint_id
        ON CONFLICT (endpoint_id) DO UPDATE
          SET last_sequence = endpoint_sequences.last_sequence + excluded.last_sequence
        RETURNING endpoint_id, last_sequence)
    UPDATE deliveries SET sequence = counted.last_sequence - counts.n + pending.k
    FROM pending
      JOIN counts ON counts.endpoint_id = pending.endpoint_id
      JOIN counted ON counted.endpoint_id = pending.endpoint_id
    WHERE deliveries.id = pending.id"
}

/// At most this many events per [`after`] read.
pub const MAX_PAGE: u64 = 500;

/// The endpoint's numbered deliveries after `sequence`, in order, at most `first` (up to
/// [`MAX_PAGE`]). Deliveries removed by retention are gone from it.
pub async fn after(
    conn: &impl ConnectionTrait,
    endpoint_id: i64,
    sequence: i64,
    first: u64,
) -> Result<Vec<delivery::Model>> {
    Ok(delivery::Entity::find()
        .filter(delivery::Column::EndpointId.eq(endpoint_id))
        .filter(delivery::Column::Sequence.gt(sequence.max(UNNUMBERED)))
        .order_by_asc(delivery::Column::Sequence)
        .limit(first.min(MAX_PAGE))
        .all(conn)
        .await?)
}

/// Forgets an endpoint's counter, with the endpoint.
pub async fn forget(conn: &impl ConnectionTrait, endpoint_id: i64) -> Result<()> {
    let backend = conn.get_database_backend();
    let statement = Statement::from_sql_and_values(
        backend,
        sql::numbered(
            backend,
            "DELETE FROM endpoint_sequences WHERE endpoint_id = ?",
        ),
        [endpoint_id.into()],
    );
    conn.execute_raw(statement).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_read_every_field_of_their_rows_by_name() {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            sql::assert_reads_fields_of::<CountRow>(&count_sql(backend), "c");
            sql::assert_reads_fields_of::<NumberRow>(&assign_sql(backend), "a");
        }
    }
}
