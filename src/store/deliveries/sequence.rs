//! Each endpoint's sequence (`X-Herald-Sequence`): its deliveries numbered 1, 2, 3, … in the
//! order their transactions commit, with no gap and no repeat, so that a receiver that sees a
//! number skipped knows it missed a delivery and can fetch it ([`after`]).
//!
//! A transaction numbers the deliveries it queues as it inserts them, from the endpoints'
//! counters in `endpoint_sequences`, which it takes at its first delivery ([`Numbers`]) and
//! writes back before its commit. On PostgreSQL taking them locks them until the commit, so a
//! transaction of another process queuing for the same endpoints waits, and then counts from
//! where this one ended: numbers follow commits. A transaction takes the counters once, late
//! (once the payloads are rendered), in the order of their endpoints, all in one statement, and
//! those of every enabled endpoint of the organizations concerned, which its later deliveries
//! (a write's audit event) share: two transactions never deadlock over them. A rolled back
//! transaction gives its numbers back. SQLite has one writing transaction at a time.
//!
//! A delivery never sent (its payload was refused) has no number: a receiver could not tell it
//! from a missed one, and fetching it would find nothing to take. A deleted endpoint's counter
//! stays (ids are never used again): deleting it would take its lock out of order.

use std::collections::BTreeMap;

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Statement,
};

use crate::store::entities::{delivery, webhook_endpoint};
use crate::store::sql;
use crate::{Error, Result};

/// The numbers a transaction gives its deliveries: the counters of the endpoints it may queue
/// for, taken at the first number it gives (see the module's documentation).
pub struct Numbers {
    /// The enabled endpoints of the organizations concerned, whose counters are taken.
    endpoints: Vec<i64>,
    /// Each endpoint's last number, once taken.
    last: Option<BTreeMap<i64, i64>>,
    /// Whether a number was given since the counters were taken.
    moved: bool,
}

impl Numbers {
    /// Numbers for deliveries to some of `endpoints`, which must be every enabled endpoint of
    /// the organizations the transaction queues deliveries for.
    pub fn of(endpoints: &[webhook_endpoint::Model]) -> Self {
        let mut endpoints: Vec<i64> = endpoints.iter().map(|endpoint| endpoint.id).collect();
        endpoints.sort_unstable();
        endpoints.dedup();
        Self {
            endpoints,
            last: None,
            moved: false,
        }
    }

    /// Whether deliveries to `endpoint` can be numbered.
    pub fn covers(&self, endpoint: i64) -> bool {
        self.endpoints.binary_search(&endpoint).is_ok()
    }

    /// Takes the counters, if not yet, in one statement: on PostgreSQL an upsert that leaves
    /// each as it is, creating it if new, else locking it and reading what the transaction that
    /// held it wrote.
    async fn take(&mut self, conn: &impl ConnectionTrait) -> Result<&mut BTreeMap<i64, i64>> {
        if self.last.is_none() {
            #[derive(FromQueryResult)]
            struct Counter {
                endpoint_id: i64,
                last_sequence: i64,
            }
            let backend = conn.get_database_backend();
            let statement = Statement::from_sql_and_values(
                backend,
                take_sql(backend),
                [sql::ids(backend, &self.endpoints)],
            );
            let mut last: BTreeMap<i64, i64> = self.endpoints.iter().map(|id| (*id, 0)).collect();
            for counter in Counter::find_by_statement(statement).all(conn).await? {
                last.insert(counter.endpoint_id, counter.last_sequence);
            }
            self.last = Some(last);
        }
        Ok(self.last.get_or_insert_default())
    }

    /// The next number of each of these endpoints' deliveries, in their order.
    pub async fn next(
        &mut self,
        conn: &impl ConnectionTrait,
        endpoints: &[i64],
    ) -> Result<Vec<i64>> {
        let last = self.take(conn).await?;
        let numbers = endpoints
            .iter()
            .map(|endpoint| {
                // An endpoint whose counter was not taken would count from a stale value.
                let last = last.get_mut(endpoint).ok_or_else(|| {
                    Error::internal("a delivery's endpoint is not among those numbered")
                })?;
                *last += 1;
                Ok(*last)
            })
            .collect::<Result<Vec<_>>>()?;
        self.moved |= !numbers.is_empty();
        Ok(numbers)
    }

    /// Writes the counters back, if a number was given; before the commit.
    pub async fn write(&mut self, conn: &impl ConnectionTrait) -> Result<()> {
        let Some(last) = self.last.as_ref().filter(|_| self.moved) else {
            return Ok(());
        };
        let rows = sql::rows(last.iter().map(|(endpoint_id, last_sequence)| CounterRow {
            endpoint_id: *endpoint_id,
            last_sequence: *last_sequence,
        }));
        let backend = conn.get_database_backend();
        let statement = Statement::from_sql_and_values(backend, write_sql(backend), [rows]);
        conn.execute_raw(statement).await?;
        self.moved = false;
        Ok(())
    }
}

/// Takes the counters of the listed endpoints (one parameter); returns those that exist.
fn take_sql(backend: DbBackend) -> String {
    let sql = match backend {
        DbBackend::Postgres => "INSERT INTO endpoint_sequences (endpoint_id, last_sequence)
            SELECT id, 0 FROM unnest(CAST(? AS BIGINT[])) AS ids(id) WHERE true ORDER BY id
            ON CONFLICT (endpoint_id)
              DO UPDATE SET last_sequence = endpoint_sequences.last_sequence
            RETURNING endpoint_id, last_sequence"
            .to_owned(),
        _ => "SELECT endpoint_id, last_sequence FROM endpoint_sequences
            WHERE endpoint_id IN (SELECT value FROM json_each(?))"
            .to_owned(),
    };
    sql::numbered(backend, &sql)
}

/// A row of [`write_sql`]: an endpoint's last number.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(Default))]
struct CounterRow {
    endpoint_id: i64,
    last_sequence: i64,
}

impl sql::Row for CounterRow {}

fn write_sql(backend: DbBackend) -> String {
    let int = |name| sql::int_field("c", name);
    sql::numbered(
        backend,
        &format!(
            "INSERT INTO endpoint_sequences (endpoint_id, last_sequence)
            SELECT {}, {} FROM {} WHERE true
            ON CONFLICT (endpoint_id) DO UPDATE SET last_sequence = excluded.last_sequence",
            int("endpoint_id"),
            int("last_sequence"),
            sql::json_rows(backend, "c")
        ),
    )
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
        .filter(delivery::Column::Sequence.gt(sequence.max(0)))
        .order_by_asc(delivery::Column::Sequence)
        .limit(first.min(MAX_PAGE))
        .all(conn)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_read_every_field_of_their_rows_by_name() {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            sql::assert_reads_fields_of::<CounterRow>(&write_sql(backend), "c");
        }
    }
}
