//! Receivers of other systems: each endpoint's signature style, published event types, custom
//! headers (sealed, as one JSON list), named secret and the secret it replaced while a rotation
//! overlaps; an organization's named secrets; the events platforms publish; and builds by
//! organization, newest first, for test deliveries' samples.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261227_000001_receivers"
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum WebhookEndpoints {
    Table,
    SignatureStyle,
    PublishedEvents,
    Headers,
    SecretName,
    PreviousSecret,
    PreviousSecretUntil,
}

#[derive(DeriveIden, Clone, Copy)]
enum Builds {
    Table,
    OrgId,
    Id,
}

#[derive(DeriveIden, Clone, Copy)]
enum WebhookSecrets {
    Table,
    Id,
    OrgId,
    Name,
    Value,
    PreviousValue,
    PreviousUntil,
    UpdatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum PublishedEvents {
    Table,
    Id,
    Uid,
    OrgId,
    Type,
    Subject,
    Payload,
    Timestamp,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite alters one column a statement.
        for mut column in [
            string(WebhookEndpoints::SignatureStyle)
                .default("CIRRUS")
                .to_owned(),
            text(WebhookEndpoints::PublishedEvents)
                .default("[]")
                .to_owned(),
            text_null(WebhookEndpoints::Headers),
            string_null(WebhookEndpoints::SecretName),
            text_null(WebhookEndpoints::PreviousSecret),
            big_integer_null(WebhookEndpoints::PreviousSecretUntil),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(WebhookEndpoints::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(WebhookSecrets::Table)
                    .col(big_pk_auto(WebhookSecrets::Id))
                    .col(big_integer(WebhookSecrets::OrgId))
                    .col(string(WebhookSecrets::Name))
                    .col(text(WebhookSecrets::Value))
                    .col(text_null(WebhookSecrets::PreviousValue))
                    .col(big_integer_null(WebhookSecrets::PreviousUntil))
                    .col(big_integer(WebhookSecrets::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_secrets_by_name")
                    .table(WebhookSecrets::Table)
                    .col(WebhookSecrets::OrgId)
                    .col(WebhookSecrets::Name)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PublishedEvents::Table)
                    .col(big_pk_auto(PublishedEvents::Id))
                    .col(string(PublishedEvents::Uid))
                    .col(big_integer(PublishedEvents::OrgId))
                    .col(string(PublishedEvents::Type))
                    .col(string_null(PublishedEvents::Subject))
                    .col(text(PublishedEvents::Payload))
                    .col(big_integer(PublishedEvents::Timestamp))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("published_events_of_org")
                    .table(PublishedEvents::Table)
                    .col(PublishedEvents::OrgId)
                    .col(PublishedEvents::Type)
                    .col(PublishedEvents::Id)
                    .to_owned(),
            )
            .await?;
        // A test delivery's sample is the organization's newest build.
        manager
            .create_index(
                Index::create()
                    .name("builds_of_org")
                    .table(Builds::Table)
                    .col(Builds::OrgId)
                    .col(Builds::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("builds_of_org")
                    .table(Builds::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(PublishedEvents::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(WebhookSecrets::Table).to_owned())
            .await?;
        for column in [
            WebhookEndpoints::PreviousSecretUntil,
            WebhookEndpoints::PreviousSecret,
            WebhookEndpoints::SecretName,
            WebhookEndpoints::Headers,
            WebhookEndpoints::PublishedEvents,
            WebhookEndpoints::SignatureStyle,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(WebhookEndpoints::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
