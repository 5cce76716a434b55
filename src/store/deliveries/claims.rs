//! Claims: a fair round of the endpoints with due deliveries, and the lease of those taken.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbBackend, FromQueryResult, Statement, Value};

use crate::Result;
use crate::store::sql;

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
        let settings = format!(
            "SET LOCAL enable_sort = off; {}",
            crate::store::WORKER_SETTINGS
        );
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
pub(super) fn visit_sql(backend: DbBackend) -> String {
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
    /// The work id of the build or task: `X-Herald-Work-Id`.
    pub work_id: Option<String>,
    /// Its place among its endpoint's deliveries: `X-Herald-Sequence`.
    pub sequence: Option<i64>,
}

/// The claim's lease of the chosen deliveries' queue rows, returning their ids; its parameters
/// are the lease's end, the token, the chosen ids and now. Its placeholders are `?`, numbered
/// by the caller.
pub(super) fn lease_sql(backend: DbBackend) -> String {
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
pub(super) fn leased_sql(backend: DbBackend, leased: &str) -> String {
    let chosen = match backend {
        DbBackend::Postgres => format!("id = ANY(ARRAY({leased}))"),
        _ => format!("id IN ({leased})"),
    };
    format!(
        "SELECT id, uid, endpoint_id, build_id, event, body, round_attempts,
            CAST(? AS BIGINT) AS lease_until, created_at, work_id, sequence
        FROM deliveries WHERE {chosen}"
    )
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
