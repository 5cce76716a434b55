//! Who did what: the users an organization's tokens and CI engine act as, who initiated each
//! build, and the audit log of every mutation an organization performs.
//!
//! A user is a name within its organization (a token's `sub`, or the name a CI engine gives
//! when it records a build) with a numeric id, which is what Cirrus's receivers read as
//! `user.id` and `actor.id`. A build keeps its initializer's id and name, so that a payload
//! reads them from the build's own row.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261216_000001_audit_events"
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Users {
    Table,
    Id,
    OrgId,
    Username,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Builds {
    Table,
    InitializerId,
    Initializer,
}

#[derive(DeriveIden, Clone, Copy)]
enum AuditEvents {
    Table,
    Id,
    Uid,
    OrgId,
    Type,
    Timestamp,
    Data,
    ActorId,
    ActorUsername,
    ActorIp,
    RepositoryId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(big_pk_auto(Users::Id))
                    .col(big_integer(Users::OrgId))
                    .col(string(Users::Username))
                    .col(big_integer(Users::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("users_by_name")
                    .table(Users::Table)
                    .col(Users::OrgId)
                    .col(Users::Username)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // SQLite alters one column a statement.
        for mut column in [
            big_integer_null(Builds::InitializerId),
            string_null(Builds::Initializer),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Builds::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .col(big_pk_auto(AuditEvents::Id))
                    .col(string(AuditEvents::Uid))
                    .col(big_integer(AuditEvents::OrgId))
                    .col(string(AuditEvents::Type))
                    .col(big_integer(AuditEvents::Timestamp))
                    .col(text(AuditEvents::Data))
                    .col(big_integer(AuditEvents::ActorId))
                    .col(string(AuditEvents::ActorUsername))
                    .col(string_null(AuditEvents::ActorIp))
                    .col(big_integer_null(AuditEvents::RepositoryId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("audit_events_of_org")
                    .table(AuditEvents::Table)
                    .col(AuditEvents::OrgId)
                    .col(AuditEvents::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AuditEvents::Table).to_owned())
            .await?;
        for column in [Builds::Initializer, Builds::InitializerId] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Builds::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(Users::Table).to_owned())
            .await
    }
}
