//! Cheaper writes of deliveries, which are written several times each (queued, leased, recorded,
//! released): the `deliveries_due` index is dropped, since every query that reads deliveries by
//! state reads the partial indexes `deliveries_ready` and `deliveries_unfinished` instead; and on
//! PostgreSQL the table's pages keep a fifth free, so that a lease, which changes no indexed
//! column, is written beside its row (a HOT update) instead of adding an entry to every index.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261213_000001_delivery_writes"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX deliveries_due").await?;
        if db.get_database_backend() == sea_orm::DbBackend::Postgres {
            db.execute_unprepared("ALTER TABLE deliveries SET (fillfactor = 80)")
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == sea_orm::DbBackend::Postgres {
            db.execute_unprepared("ALTER TABLE deliveries RESET (fillfactor)")
                .await?;
        }
        db.execute_unprepared("CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at)")
            .await?;
        Ok(())
    }
}
