//! Approval hooks: an organization's services asked before a build or task is recorded, the log
//! of every call (with the hash of the one-time token that lets a hook decide a build it held),
//! and the work id a hook's answer gives, kept on the build or task and on each of their
//! deliveries (`X-Herald-Work-Id`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261229_000001_approvals"
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum ApprovalHooks {
    Table,
    Id,
    OrgId,
    Url,
    Credentials,
    Secret,
    SecretName,
    SignatureStyle,
    Points,
    TimeoutMs,
    WhenUnavailable,
    Enabled,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum ApprovalCalls {
    Table,
    Id,
    Uid,
    OrgId,
    HookId,
    Point,
    Timestamp,
    Request,
    Status,
    Response,
    DurationMs,
    Decision,
    Reason,
    Error,
    WorkId,
    DecideToken,
    BuildId,
    DecidedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Builds {
    Table,
    WorkId,
}

#[derive(DeriveIden, Clone, Copy)]
enum Tasks {
    Table,
    WorkId,
}

#[derive(DeriveIden, Clone, Copy)]
enum Deliveries {
    Table,
    WorkId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApprovalHooks::Table)
                    .col(big_pk_auto(ApprovalHooks::Id))
                    .col(big_integer(ApprovalHooks::OrgId))
                    .col(text(ApprovalHooks::Url))
                    .col(text_null(ApprovalHooks::Credentials))
                    .col(text_null(ApprovalHooks::Secret))
                    .col(string_null(ApprovalHooks::SecretName))
                    .col(string(ApprovalHooks::SignatureStyle))
                    .col(text(ApprovalHooks::Points))
                    .col(big_integer(ApprovalHooks::TimeoutMs))
                    .col(string(ApprovalHooks::WhenUnavailable))
                    .col(boolean(ApprovalHooks::Enabled))
                    .col(big_integer(ApprovalHooks::CreatedAt))
                    .col(big_integer(ApprovalHooks::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("approval_hooks_of_org")
                    .table(ApprovalHooks::Table)
                    .col(ApprovalHooks::OrgId)
                    .col(ApprovalHooks::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ApprovalCalls::Table)
                    .col(big_pk_auto(ApprovalCalls::Id))
                    .col(string(ApprovalCalls::Uid))
                    .col(big_integer(ApprovalCalls::OrgId))
                    .col(big_integer(ApprovalCalls::HookId))
                    .col(string(ApprovalCalls::Point))
                    .col(big_integer(ApprovalCalls::Timestamp))
                    .col(text(ApprovalCalls::Request))
                    .col(integer_null(ApprovalCalls::Status))
                    .col(text(ApprovalCalls::Response))
                    .col(big_integer(ApprovalCalls::DurationMs))
                    .col(string(ApprovalCalls::Decision))
                    .col(text_null(ApprovalCalls::Reason))
                    .col(text_null(ApprovalCalls::Error))
                    .col(string_null(ApprovalCalls::WorkId))
                    .col(string_null(ApprovalCalls::DecideToken))
                    .col(big_integer_null(ApprovalCalls::BuildId))
                    .col(big_integer_null(ApprovalCalls::DecidedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("approval_calls_of_org")
                    .table(ApprovalCalls::Table)
                    .col(ApprovalCalls::OrgId)
                    .col(ApprovalCalls::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("approval_calls_by_token")
                    .table(ApprovalCalls::Table)
                    .col(ApprovalCalls::DecideToken)
                    .to_owned(),
            )
            .await?;
        // SQLite alters one column a statement.
        manager
            .alter_table(
                Table::alter()
                    .table(Builds::Table)
                    .add_column(string_null(Builds::WorkId))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .add_column(string_null(Tasks::WorkId))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Deliveries::Table)
                    .add_column(string_null(Deliveries::WorkId))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Deliveries::Table)
                    .drop_column(Deliveries::WorkId)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Tasks::Table)
                    .drop_column(Tasks::WorkId)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Builds::Table)
                    .drop_column(Builds::WorkId)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(ApprovalCalls::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ApprovalHooks::Table).to_owned())
            .await
    }
}
