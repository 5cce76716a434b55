//! An index of each endpoint's unheld deliveries in due order, `delivery_queue_endpoint_due`:
//! claims visit the endpoints with deliveries in a round and read each one's first due
//! deliveries, so that one endpoint's backlog does not hide another's deliveries behind it.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261220_000001_delivery_queue_endpoint_due"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX delivery_queue_endpoint_due \
                 ON delivery_queue (endpoint_id, next_attempt_at, delivery_id) WHERE held = false",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX delivery_queue_endpoint_due")
            .await?;
        Ok(())
    }
}
