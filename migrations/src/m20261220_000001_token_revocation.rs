//! Token revocation: an organization refuses the API tokens issued before a time (ms since the
//! epoch, on a whole second, since a token's `iat` counts seconds); null refuses none.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261220_000001_token_revocation"
    }
}

#[derive(DeriveIden)]
enum Organizations {
    Table,
    TokensRevokedBefore,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Organizations::Table)
                    .add_column(
                        ColumnDef::new(Organizations::TokensRevokedBefore)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Organizations::Table)
                    .drop_column(Organizations::TokensRevokedBefore)
                    .to_owned(),
            )
            .await
    }
}
