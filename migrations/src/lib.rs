//! Herald's database migrations, applied by `herald migrate` and on every start.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_init;
mod m20261122_000003_endpoint_credentials;
mod m20261210_000002_endpoint_status_filter;
mod m20261211_000001_delivery_held;
mod m20261212_000001_delivery_unfinished;
mod m20261213_000001_delivery_writes;
mod m20261214_000001_delivery_queue;

/// Every migration, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_init::Migration),
            Box::new(m20261122_000003_endpoint_credentials::Migration),
            Box::new(m20261210_000002_endpoint_status_filter::Migration),
            Box::new(m20261211_000001_delivery_held::Migration),
            Box::new(m20261212_000001_delivery_unfinished::Migration),
            Box::new(m20261213_000001_delivery_writes::Migration),
            Box::new(m20261214_000001_delivery_queue::Migration),
        ]
    }
}
