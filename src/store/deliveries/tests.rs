use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use super::claims::{lease_sql, leased_sql, visit_sql};
use super::events::{enqueue_sql, insert_deliveries_sql};
use super::outcomes::{dequeue_sql, outcomes_sql, requeue_sql};
use super::queue::release_next_sql;
use crate::store::sql;

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

/// SQLite has no statistics to plan by. No statement of the claim, the chain checks or the
/// outcome writes may read or sort the whole queue; their lists are one parameter each, so one
/// plan serves every length.
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
