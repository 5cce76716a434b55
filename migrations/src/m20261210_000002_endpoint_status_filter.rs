//! Endpoints may ask for only some statuses (say, a Slack channel that wants FAILED and
//! ERRORED): a JSON array of status names, empty meaning every status.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261210_000002_endpoint_status_filter"
    }
}

#[derive(DeriveIden)]
enum WebhookEndpoints {
    Table,
    StatusFilter,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(WebhookEndpoints::Table)
                    .add_column(
                        ColumnDef::new(WebhookEndpoints::StatusFilter)
                            .text()
                            .not_null()
                            .default("[]"),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(WebhookEndpoints::Table)
                    .drop_column(WebhookEndpoints::StatusFilter)
                    .to_owned(),
            )
            .await
    }
}
