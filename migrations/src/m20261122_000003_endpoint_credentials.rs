//! URL credentials move out of the endpoint's URL into a column of their own, so that they can be
//! sealed at rest while the URL stays readable (and unique per organization).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261122_000003_endpoint_credentials"
    }
}

#[derive(DeriveIden)]
enum WebhookEndpoints {
    Table,
    Credentials,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(WebhookEndpoints::Table)
                    .add_column(text_null(WebhookEndpoints::Credentials))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(WebhookEndpoints::Table)
                    .drop_column(WebhookEndpoints::Credentials)
                    .to_owned(),
            )
            .await
    }
}
