//! The unfinished deliveries of each (endpoint, build) chain, in order: what the chain checks
//! read (is an earlier delivery of the chain unfinished, which one is next) without reading the
//! finished deliveries before them, and, on PostgreSQL, without the planner reading every
//! queued delivery to answer them.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261212_000001_delivery_unfinished"
    }
}

/// The same statement on SQLite and PostgreSQL.
const UNFINISHED_INDEX: &str = "CREATE INDEX deliveries_unfinished \
     ON deliveries (endpoint_id, build_id, id) WHERE state IN ('PENDING', 'RETRYING')";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(UNFINISHED_INDEX)
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX deliveries_unfinished")
            .await?;
        Ok(())
    }
}
