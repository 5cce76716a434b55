//! The first schema: organizations, the CI records, webhook endpoints, and the outbox.
//!
//! Timestamps are `bigint` milliseconds since the epoch, as the GraphQL API exposes them.
//! JSON lists (labels, notifications, event filters, headers) are stored as text so that
//! one code path serves SQLite and PostgreSQL.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261122_000001_init"
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Settings {
    Table,
    Key,
    Value,
}

#[derive(DeriveIden, Clone, Copy)]
enum Organizations {
    Table,
    Id,
    Name,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Repositories {
    Table,
    Id,
    OrgId,
    Name,
    IsPrivate,
    DefaultBranch,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Builds {
    Table,
    Id,
    OrgId,
    RepositoryId,
    Branch,
    Tag,
    ChangeIdInRepo,
    ChangeMessageTitle,
    ChangeMessage,
    PullRequest,
    PullRequestDraft,
    ChangeTimestamp,
    CreatedAt,
    Status,
    StatusTimestamp,
    ExecutingTimestamp,
    FinalStatusTimestamp,
}

#[derive(DeriveIden, Clone, Copy)]
enum Tasks {
    Table,
    Id,
    OrgId,
    RepositoryId,
    BuildId,
    Name,
    NameAlias,
    LocalGroupId,
    Status,
    StatusTimestamp,
    CreationTimestamp,
    ExecutingTimestamp,
    FinalStatusTimestamp,
    Labels,
    AutomaticReRun,
    AutomaticallyReRunnable,
    ManualRerunCount,
    InstanceType,
    Notifications,
}

#[derive(DeriveIden, Clone, Copy)]
enum WebhookEndpoints {
    Table,
    Id,
    OrgId,
    Url,
    Secret,
    Events,
    PayloadQuery,
    PayloadFormat,
    Enabled,
    InsecureSsl,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Events {
    Table,
    Id,
    OrgId,
    Kind,
    Action,
    OldStatus,
    RepositoryId,
    BuildId,
    TaskId,
    Timestamp,
}

#[derive(DeriveIden, Clone, Copy)]
enum Deliveries {
    Table,
    Id,
    Uid,
    OrgId,
    EndpointId,
    EventId,
    BuildId,
    Event,
    Action,
    Body,
    State,
    Attempts,
    RoundAttempts,
    NextAttemptAt,
    LeaseUntil,
    LeaseToken,
    CreatedAt,
    LastStatus,
    LastDuration,
    LastResponse,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum DeliveryAttempts {
    Table,
    Id,
    DeliveryId,
    Number,
    Timestamp,
    Status,
    Duration,
    Error,
    ResponseHeaders,
    ResponseBody,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Settings::Table)
                    .col(string(Settings::Key).primary_key())
                    .col(text(Settings::Value))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Organizations::Table)
                    .col(big_pk_auto(Organizations::Id))
                    .col(string_uniq(Organizations::Name))
                    .col(big_integer(Organizations::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Repositories::Table)
                    .col(big_pk_auto(Repositories::Id))
                    .col(big_integer(Repositories::OrgId))
                    .col(string(Repositories::Name))
                    .col(boolean(Repositories::IsPrivate))
                    .col(string(Repositories::DefaultBranch))
                    .col(big_integer(Repositories::CreatedAt))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "repositories_org_name",
            Repositories::Table,
            &[Repositories::OrgId, Repositories::Name],
            true,
        )
        .await?;
        manager
            .create_table(
                Table::create()
                    .table(Builds::Table)
                    .col(big_pk_auto(Builds::Id))
                    .col(big_integer(Builds::OrgId))
                    .col(big_integer(Builds::RepositoryId))
                    .col(string(Builds::Branch))
                    .col(string_null(Builds::Tag))
                    .col(string(Builds::ChangeIdInRepo))
                    .col(text(Builds::ChangeMessageTitle))
                    .col(text(Builds::ChangeMessage))
                    .col(big_integer_null(Builds::PullRequest))
                    .col(boolean_null(Builds::PullRequestDraft))
                    .col(big_integer(Builds::ChangeTimestamp))
                    .col(big_integer(Builds::CreatedAt))
                    .col(string(Builds::Status))
                    .col(big_integer(Builds::StatusTimestamp))
                    .col(big_integer_null(Builds::ExecutingTimestamp))
                    .col(big_integer_null(Builds::FinalStatusTimestamp))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "builds_repository",
            Builds::Table,
            &[Builds::RepositoryId, Builds::Id],
            false,
        )
        .await?;
        manager
            .create_table(
                Table::create()
                    .table(Tasks::Table)
                    .col(big_pk_auto(Tasks::Id))
                    .col(big_integer(Tasks::OrgId))
                    .col(big_integer(Tasks::RepositoryId))
                    .col(big_integer(Tasks::BuildId))
                    .col(string(Tasks::Name))
                    .col(string_null(Tasks::NameAlias))
                    .col(big_integer(Tasks::LocalGroupId))
                    .col(string(Tasks::Status))
                    .col(big_integer(Tasks::StatusTimestamp))
                    .col(big_integer(Tasks::CreationTimestamp))
                    .col(big_integer_null(Tasks::ExecutingTimestamp))
                    .col(big_integer_null(Tasks::FinalStatusTimestamp))
                    .col(text(Tasks::Labels))
                    .col(boolean(Tasks::AutomaticReRun))
                    .col(boolean(Tasks::AutomaticallyReRunnable))
                    .col(big_integer(Tasks::ManualRerunCount))
                    .col(string(Tasks::InstanceType))
                    .col(text(Tasks::Notifications))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "tasks_build",
            Tasks::Table,
            &[Tasks::BuildId, Tasks::Id],
            false,
        )
        .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookEndpoints::Table)
                    .col(big_pk_auto(WebhookEndpoints::Id))
                    .col(big_integer(WebhookEndpoints::OrgId))
                    .col(text(WebhookEndpoints::Url))
                    .col(text_null(WebhookEndpoints::Secret))
                    .col(text(WebhookEndpoints::Events))
                    .col(text_null(WebhookEndpoints::PayloadQuery))
                    .col(string(WebhookEndpoints::PayloadFormat))
                    .col(boolean(WebhookEndpoints::Enabled))
                    .col(boolean(WebhookEndpoints::InsecureSsl))
                    .col(big_integer(WebhookEndpoints::CreatedAt))
                    .col(big_integer(WebhookEndpoints::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "webhook_endpoints_org_url",
            WebhookEndpoints::Table,
            &[WebhookEndpoints::OrgId, WebhookEndpoints::Url],
            true,
        )
        .await?;
        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .col(big_pk_auto(Events::Id))
                    .col(big_integer(Events::OrgId))
                    .col(string(Events::Kind))
                    .col(string(Events::Action))
                    .col(string_null(Events::OldStatus))
                    .col(big_integer(Events::RepositoryId))
                    .col(big_integer(Events::BuildId))
                    .col(big_integer_null(Events::TaskId))
                    .col(big_integer(Events::Timestamp))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Deliveries::Table)
                    .col(big_pk_auto(Deliveries::Id))
                    .col(string_uniq(Deliveries::Uid))
                    .col(big_integer(Deliveries::OrgId))
                    .col(big_integer(Deliveries::EndpointId))
                    .col(big_integer_null(Deliveries::EventId))
                    .col(big_integer_null(Deliveries::BuildId))
                    .col(string(Deliveries::Event))
                    .col(string(Deliveries::Action))
                    .col(text(Deliveries::Body))
                    .col(string(Deliveries::State))
                    .col(integer(Deliveries::Attempts))
                    .col(integer(Deliveries::RoundAttempts))
                    .col(big_integer(Deliveries::NextAttemptAt))
                    .col(big_integer_null(Deliveries::LeaseUntil))
                    .col(string_null(Deliveries::LeaseToken))
                    .col(big_integer(Deliveries::CreatedAt))
                    .col(integer_null(Deliveries::LastStatus))
                    .col(big_integer_null(Deliveries::LastDuration))
                    .col(text_null(Deliveries::LastResponse))
                    .col(big_integer(Deliveries::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // The claim query reads due deliveries by state and time, and checks each one's
        // (endpoint, build) chain for an earlier unfinished delivery.
        index(
            manager,
            "deliveries_due",
            Deliveries::Table,
            &[Deliveries::State, Deliveries::NextAttemptAt],
            false,
        )
        .await?;
        index(
            manager,
            "deliveries_chain",
            Deliveries::Table,
            &[Deliveries::EndpointId, Deliveries::BuildId, Deliveries::Id],
            false,
        )
        .await?;
        index(
            manager,
            "deliveries_org",
            Deliveries::Table,
            &[Deliveries::OrgId, Deliveries::Id],
            false,
        )
        .await?;
        manager
            .create_table(
                Table::create()
                    .table(DeliveryAttempts::Table)
                    .col(big_pk_auto(DeliveryAttempts::Id))
                    .col(big_integer(DeliveryAttempts::DeliveryId))
                    .col(integer(DeliveryAttempts::Number))
                    .col(big_integer(DeliveryAttempts::Timestamp))
                    .col(integer_null(DeliveryAttempts::Status))
                    .col(big_integer(DeliveryAttempts::Duration))
                    .col(text_null(DeliveryAttempts::Error))
                    .col(text(DeliveryAttempts::ResponseHeaders))
                    .col(text(DeliveryAttempts::ResponseBody))
                    .to_owned(),
            )
            .await?;
        index(
            manager,
            "delivery_attempts_delivery",
            DeliveryAttempts::Table,
            &[DeliveryAttempts::DeliveryId, DeliveryAttempts::Number],
            false,
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            DeliveryAttempts::Table.into_iden(),
            Deliveries::Table.into_iden(),
            Events::Table.into_iden(),
            WebhookEndpoints::Table.into_iden(),
            Tasks::Table.into_iden(),
            Builds::Table.into_iden(),
            Repositories::Table.into_iden(),
            Organizations::Table.into_iden(),
            Settings::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

async fn index<T: IntoIden + Copy + 'static, C: IntoIden + Copy + 'static>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    columns: &[C],
    unique: bool,
) -> Result<(), DbErr> {
    let mut statement = Index::create();
    statement.name(name).table(table);
    for column in columns {
        statement.col(*column);
    }
    if unique {
        statement.unique();
    }
    manager.create_index(statement.to_owned()).await
}
