//! The queue of unfinished deliveries moves to a narrow table of its own, `delivery_queue`: a
//! row per delivery not yet delivered or failed for good, with its chain (endpoint, build), when
//! it is due, whether it is held behind an earlier one of its chain, and its lease. Claims,
//! leases and releases write those few columns instead of a new version of the whole delivery
//! (body and last response included); finishing a delivery deletes its queue row, and the
//! delivery's own row, whose indexed columns never change, is written once per attempt. The
//! partial indexes of `deliveries` that served the queue go, and so do its columns `held`,
//! `lease_until` and `lease_token`.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261214_000001_delivery_queue"
    }
}

/// The queue's columns after its key, in the order both directions copy them.
const COLUMNS: &str = "endpoint_id, build_id, next_attempt_at, held, lease_until, lease_token";

/// The table. On SQLite its key is the rowid (`INTEGER PRIMARY KEY`), so that a row is found
/// by key without an index of its own. On PostgreSQL its pages keep free room, so that a lease,
/// which changes no indexed column, is written beside its row rather than added to every index.
fn create_table(backend: DbBackend) -> String {
    let (key, storage) = match backend {
        DbBackend::Postgres => ("BIGINT NOT NULL PRIMARY KEY", " WITH (fillfactor = 50)"),
        _ => ("INTEGER NOT NULL PRIMARY KEY", ""),
    };
    format!(
        "CREATE TABLE delivery_queue (
            delivery_id {key},
            endpoint_id BIGINT NOT NULL,
            build_id BIGINT,
            next_attempt_at BIGINT NOT NULL,
            held BOOLEAN NOT NULL DEFAULT false,
            lease_until BIGINT,
            lease_token TEXT
        ){storage}"
    )
}

/// The deliveries a claim may take, in due order; and each chain's unfinished deliveries, in
/// order, which the chain checks read.
const INDEXES: [&str; 2] = [
    "CREATE INDEX delivery_queue_ready ON delivery_queue (next_attempt_at, delivery_id) \
     WHERE held = false",
    "CREATE INDEX delivery_queue_chain ON delivery_queue (endpoint_id, build_id, delivery_id)",
];

/// The columns of `deliveries` the queue takes over.
const MOVED: [&str; 3] = ["held", "lease_until", "lease_token"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        db.execute_unprepared(&create_table(backend)).await?;
        db.execute_unprepared(&format!(
            "INSERT INTO delivery_queue (delivery_id, {COLUMNS})
            SELECT id, {COLUMNS} FROM deliveries WHERE state IN ('PENDING', 'RETRYING')"
        ))
        .await?;
        for index in INDEXES {
            db.execute_unprepared(index).await?;
        }
        db.execute_unprepared("DROP INDEX deliveries_ready").await?;
        db.execute_unprepared("DROP INDEX deliveries_unfinished")
            .await?;
        for column in MOVED {
            db.execute_unprepared(&format!("ALTER TABLE deliveries DROP COLUMN {column}"))
                .await?;
        }
        if backend == DbBackend::Postgres {
            db.execute_unprepared("ALTER TABLE deliveries SET (fillfactor = 50)")
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::Postgres {
            db.execute_unprepared("ALTER TABLE deliveries SET (fillfactor = 80)")
                .await?;
        }
        for column in [
            "held BOOLEAN NOT NULL DEFAULT false",
            "lease_until BIGINT",
            "lease_token VARCHAR",
        ] {
            db.execute_unprepared(&format!("ALTER TABLE deliveries ADD COLUMN {column}"))
                .await?;
        }
        db.execute_unprepared(
            "UPDATE deliveries SET held = q.held, lease_until = q.lease_until,
                lease_token = q.lease_token
            FROM delivery_queue q WHERE q.delivery_id = deliveries.id",
        )
        .await?;
        db.execute_unprepared(
            "CREATE INDEX deliveries_ready ON deliveries (next_attempt_at, id) \
             WHERE state IN ('PENDING', 'RETRYING') AND held = false",
        )
        .await?;
        db.execute_unprepared(
            "CREATE INDEX deliveries_unfinished ON deliveries (endpoint_id, build_id, id) \
             WHERE state IN ('PENDING', 'RETRYING')",
        )
        .await?;
        db.execute_unprepared("DROP TABLE delivery_queue").await?;
        Ok(())
    }
}
