//! Herald's database migrations, applied by `herald migrate` and on every start.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_init;
mod m20261122_000003_endpoint_credentials;
mod m20261210_000002_endpoint_status_filter;
mod m20261211_000001_delivery_held;
mod m20261212_000001_delivery_unfinished;
mod m20261213_000001_delivery_writes;
mod m20261214_000001_delivery_queue;
mod m20261216_000001_audit_events;
mod m20261220_000001_delivery_queue_endpoint_due;
mod m20261220_000001_token_revocation;
mod m20261227_000001_receivers;
mod m20261229_000001_approvals;
mod m20261231_000001_transitions_and_sequences;

/// Every migration, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            InOneTransaction::boxed(m20261122_000001_init::Migration),
            InOneTransaction::boxed(m20261122_000003_endpoint_credentials::Migration),
            InOneTransaction::boxed(m20261210_000002_endpoint_status_filter::Migration),
            InOneTransaction::boxed(m20261211_000001_delivery_held::Migration),
            InOneTransaction::boxed(m20261212_000001_delivery_unfinished::Migration),
            InOneTransaction::boxed(m20261213_000001_delivery_writes::Migration),
            InOneTransaction::boxed(m20261214_000001_delivery_queue::Migration),
            InOneTransaction::boxed(m20261216_000001_audit_events::Migration),
            InOneTransaction::boxed(m20261220_000001_delivery_queue_endpoint_due::Migration),
            InOneTransaction::boxed(m20261220_000001_token_revocation::Migration),
            InOneTransaction::boxed(m20261227_000001_receivers::Migration),
            InOneTransaction::boxed(m20261229_000001_approvals::Migration),
            InOneTransaction::boxed(m20261231_000001_transitions_and_sequences::Migration),
        ]
    }
}

/// A migration run in one transaction on every backend, SQLite too (where migrations run
/// without one by default): one stopped halfway, by a crash or a full disk, leaves the database
/// as it was, and the next start runs it again, instead of meeting the half it had done
/// ("duplicate column", "table already exists") and refusing to start.
struct InOneTransaction<M>(M);

impl<M: MigrationTrait + 'static> InOneTransaction<M> {
    fn boxed(migration: M) -> Box<dyn MigrationTrait> {
        Box::new(Self(migration))
    }
}

impl<M: MigrationName> MigrationName for InOneTransaction<M> {
    fn name(&self) -> &str {
        self.0.name()
    }
}

#[async_trait::async_trait]
impl<M: MigrationTrait> MigrationTrait for InOneTransaction<M> {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        self.0.up(manager).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        self.0.down(manager).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
