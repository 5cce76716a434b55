//! Deliveries waiting behind an earlier unfinished delivery of their (endpoint, build) chain are
//! marked `held`, and the claim reads only the rest through a partial index: a claim's cost
//! follows the number of deliveries it can take, not the size of the backlog behind them.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261211_000001_delivery_held"
    }
}

#[derive(DeriveIden)]
enum Deliveries {
    Table,
    Held,
}

/// The deliveries a claim may take, in due order. The same statement on SQLite and PostgreSQL.
const READY_INDEX: &str = "CREATE INDEX deliveries_ready ON deliveries (next_attempt_at, id) \
     WHERE state IN ('PENDING', 'RETRYING') AND held = false";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Deliveries::Table)
                    .add_column(
                        ColumnDef::new(Deliveries::Held)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(READY_INDEX)
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX deliveries_ready")
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Deliveries::Table)
                    .drop_column(Deliveries::Held)
                    .to_owned(),
            )
            .await
    }
}
