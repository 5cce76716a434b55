//! The test harness: the real server on port 0 with a fresh database, a scriptable recording
//! receiver, and helpers to mint tokens and run GraphQL.
//!
//! `tests/console` includes this module too, by its path.

mod app;
mod process;
mod receiver;
mod world;

use serde_json::Value;

pub use app::{Backend, PgDatabase, TestApp};
pub use process::{Client, Herald, free_port, herald_output};
pub use receiver::{Received, Receiver, Reply, task_at};
pub use world::World;

/// The first error's `extensions.code` of a response.
pub fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {response:#}"))
}

/// Declares tests that run once on SQLite and once on PostgreSQL (when configured).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::support::TestApp::start($crate::support::Backend::Sqlite).await.unwrap();
                    super::$name(app).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    match $crate::support::TestApp::start($crate::support::Backend::Postgres).await {
                        Some(app) => super::$name(app).await,
                        None => eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set"),
                    }
                }
            )+
        }
    };
}
