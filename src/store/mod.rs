//! Storage: sea-orm over SQLite or PostgreSQL, one code path.
//!
//! Every finder of an organization-owned row takes the organization id first, so a query can
//! never reach another organization's data. Storage errors are translated here, so callers only
//! use `?` (a unique violation becomes `Conflict` in the store, not in a resolver).

pub mod approvals;
pub mod audit;
pub mod branches;
pub mod ci;
pub mod deliveries;
pub mod endpoints;
pub mod entities;
mod nodelay;
pub mod orgs;
pub mod published;
pub mod secrets;
mod sql;
pub mod tls;
pub mod urls;
mod write;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use herald_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseExecutor,
    DatabaseTransaction, DbBackend, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

use crate::{Error, Result};

pub use write::{Turn, WorkerTurn, WriteTx, Writes};

/// Opens the database at `url`, creating an SQLite file if needed, and applies migrations.
pub async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    let sqlite = url.starts_with("sqlite:");
    let db = open(url, if sqlite { 8 } else { 16 }).await?;
    if sqlite {
        Migrator::up(&db, None)
            .await
            .context("applying database migrations")?;
    } else {
        migrate_in_turn(url).await?;
    }
    Ok(db)
}

/// The key of the PostgreSQL advisory lock under which a process applies migrations ("HERDMIGR").
const MIGRATION_LOCK: i64 = 0x4845_5244_4d49_4752;

/// Applies PostgreSQL's pending migrations while holding [`MIGRATION_LOCK`], on a connection of
/// its own, so that processes started together take turns: the first applies what is pending and
/// the others find nothing left, instead of applying the same migration at once and all but one
/// failing to start.
async fn migrate_in_turn(url: &str) -> anyhow::Result<()> {
    let session = open(url, 1).await?;
    session
        .execute_unprepared(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .await
        .context("waiting for another process's migrations")?;
    let migrated = Migrator::up(&session, None).await;
    let _ = session
        .execute_unprepared(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .await;
    let _ = session.close().await;
    migrated.context("applying database migrations")
}

/// The connection that writes, beside `db` (opened by [`connect`] on the same `url`).
///
/// On SQLite it is a pool of its own with one connection. The database takes one writer at a
/// time anyway, and a connection discards its whole page cache whenever another connection has
/// written since its last transaction: with every write of the process on one connection, its
/// cache stays warm, instead of each change and each claim reading its pages back from the
/// file. On PostgreSQL it is `db` itself.
pub async fn connect_writer(
    url: &str,
    db: &DatabaseConnection,
) -> anyhow::Result<DatabaseConnection> {
    match db.get_database_backend() {
        DbBackend::Sqlite => open(url, 1).await,
        _ => Ok(db.clone()),
    }
}

async fn open(url: &str, connections: u32) -> anyhow::Result<DatabaseConnection> {
    let sqlite = url.starts_with("sqlite:");
    let connect_url = tls::without_loopback_tls(url);
    // A server that takes only TLS connections, even on loopback, needs the URL to say so.
    let plain = match connect_url {
        std::borrow::Cow::Owned(_) => " without TLS (set sslmode in the URL to use it)",
        std::borrow::Cow::Borrowed(_) => "",
    };
    let mut options = ConnectOptions::new(connect_url.into_owned());
    options
        .max_connections(connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings a connection each time it leaves the pool. An SQLite connection is this
        // process's own and cannot be dropped by anyone, and each ping is one more crossing to
        // its thread per transaction and per statement outside one. PostgreSQL's connections
        // are still pinged: after a restart of the server, the dead ones are replaced before
        // a request gets one.
        .test_before_acquire(!sqlite)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            // WAL lets readers run beside the one writer; the busy timeout makes a second
            // writer wait instead of failing. Each connection runs on its own thread and hands
            // rows back through a channel: at the default 50 rows, a claim's or an outcome
            // batch's hundreds of rows stop the thread every 50 until the task catches up.
            // A statement that changes many rows inside a transaction keeps the pages it
            // changes in a statement journal, which past 64 KiB spills to a temporary file:
            // in memory it stays, for the time of the statement. The WAL is copied back into
            // the database every 4,000 pages (16 MiB) rather than 1,000, so that pages written
            // again and again, such as the queue's indexes, are copied fewer times.
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .row_buffer_size(2048)
                .pragma("temp_store", "memory")
                .pragma("wal_autocheckpoint", "4000")
        });
    if let Some(port) = nodelay::postgres_port(url) {
        options.map_sqlx_postgres_pool_opts(move |pool| {
            pool.after_connect(move |conn, _| {
                Box::pin(async move {
                    // A failed question leaves the connection usable: the option is then set
                    // by the database's port alone.
                    let local: Option<i32> =
                        sea_orm::sqlx::query_scalar("SELECT inet_client_port()")
                            .fetch_one(&mut *conn)
                            .await
                            .unwrap_or_default();
                    let local = local.and_then(|local| u16::try_from(local).ok());
                    nodelay::disable_nagle(local, port);
                    Ok(())
                })
            })
        });
    }
    Database::connect(options).await.with_context(|| {
        format!(
            "connecting to the database at {}{plain}",
            crate::config::redact_url(url)
        )
    })
}

/// Begins a transaction that will write. On SQLite it takes the write lock at once
/// (`BEGIN IMMEDIATE`), so two writers queue on the busy timeout instead of one failing when
/// it upgrades from reading to writing.
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction> {
    wait_for_disk(db, true).await?;
    begin_immediate(db).await
}

async fn begin_immediate(db: &DatabaseConnection) -> Result<DatabaseTransaction> {
    let options = match db.get_database_backend() {
        DbBackend::Sqlite => TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        },
        _ => TransactionOptions::default(),
    };
    Ok(db.begin_with_options(options).await?)
}

/// On SQLite, whether the writes that follow on `db`'s connection wait for the disk at their
/// commit: `synchronous = FULL` (every connection's default, and [`begin_write`]'s) for what
/// the API acknowledges, such as changes that record events, which a crash or a power loss must
/// not take back; `NORMAL` for the delivery worker's claims and outcomes, where losing the last
/// ones only sends a delivery again. It is set before a transaction begins (SQLite refuses to
/// change it inside one), on the process's one writing connection, by the holder of the write
/// turn ([`Writes::turn`]), so that the other kind of write cannot
/// change it in between.
pub async fn wait_for_disk(db: &DatabaseConnection, durable: bool) -> Result<()> {
    if db.get_database_backend() == DbBackend::Sqlite {
        let level = if durable { "FULL" } else { "NORMAL" };
        db.execute_unprepared(&format!("PRAGMA synchronous = {level}"))
            .await?;
    }
    Ok(())
}

/// Begins the transaction of a batch of changes that record events. Its commit waits for the
/// disk (see [`wait_for_disk`]). On PostgreSQL its statements, each of which reads the rows it
/// names, do not scan tables (see [`WORKER_SETTINGS`]): the update of tasks' statuses read every
/// task of a new database each time.
pub async fn begin_change(db: &DatabaseConnection) -> Result<DatabaseTransaction> {
    let tx = begin_write(db).await?;
    if db.get_database_backend() == DbBackend::Postgres {
        use sea_orm::ConnectionTrait as _;
        tx.execute_unprepared("SET LOCAL enable_seqscan = off")
            .await?;
    }
    Ok(tx)
}

/// How the delivery worker's transactions run on PostgreSQL, set at their start (`SET LOCAL`
/// ends with the transaction).
///
/// Their commit does not wait for the WAL to reach the disk (`synchronous_commit = off`):
/// losing one to a crash only sends a delivery again (its lease expires), which at-least-once
/// allows, and the worker no longer queues behind the clients' commits. Changes that record
/// events keep waiting for the disk.
///
/// And they do not scan tables: each of their statements reads the rows it names, by key or
/// through an index, but a plan PostgreSQL settles while a table is nearly empty (a new
/// database, before autovacuum analyzes it) scans the table instead, and keeps scanning it as
/// it grows. In a `steady` run on a new database, the claim's read of the deliveries it leased
/// and the update of their outcomes both read the whole of `deliveries`, each time.
pub const WORKER_SETTINGS: &str =
    "SET LOCAL synchronous_commit = off; SET LOCAL enable_seqscan = off";

/// Begins a transaction of the delivery worker's outcomes, set up as [`WORKER_SETTINGS`] says
/// (a claim configures its own the same way, see [`crate::store::deliveries::claim`]).
pub async fn begin_worker_write(db: &DatabaseConnection) -> Result<DatabaseTransaction> {
    wait_for_disk(db, false).await?;
    let tx = begin_immediate(db).await?;
    if db.get_database_backend() == DbBackend::Postgres {
        use sea_orm::ConnectionTrait as _;
        tx.execute_unprepared(WORKER_SETTINGS).await?;
    }
    Ok(tx)
}

/// Where a query runs: the pool, or the transaction of the change being recorded (payloads are
/// rendered inside it, so they show the state at the event).
#[derive(Clone)]
pub enum Db {
    /// Any pooled connection.
    Pool(DatabaseConnection),
    /// The open transaction of a mutation.
    Tx(Arc<DatabaseTransaction>),
}

impl Db {
    /// An executor for sea-orm queries.
    pub fn conn(&self) -> DatabaseExecutor<'_> {
        match self {
            Db::Pool(pool) => pool.into(),
            Db::Tx(tx) => (&**tx).into(),
        }
    }
}

/// Parses an API id; an id that is not a number names nothing, so it is `NotFound`.
pub fn parse_id(what: &'static str, id: &str) -> Result<i64> {
    id.parse::<i64>().map_err(|_| Error::not_found(what, id))
}

/// A page request: rows after the cursor, at most `limit` of them plus one to tell whether
/// there is a next page.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub after: Option<i64>,
    pub limit: u64,
}

impl Page {
    /// The largest page a client may ask for.
    pub const MAX: i32 = 100;
    /// The page a client gets without asking for a size.
    pub const DEFAULT: i32 = 20;

    /// Reads `first` and `after` as GraphQL passes them.
    pub fn new(first: Option<i32>, after: Option<String>) -> Result<Self> {
        let first = first.unwrap_or(Self::DEFAULT);
        if !(0..=Self::MAX).contains(&first) {
            return Err(Error::Invalid(format!(
                "first must be between 0 and {}.",
                Self::MAX
            )));
        }
        let after = after
            .map(|cursor| {
                cursor
                    .parse::<i64>()
                    .map_err(|_| Error::Invalid(format!("The cursor {cursor:?} is not valid.")))
            })
            .transpose()?;
        Ok(Self {
            after,
            limit: first as u64,
        })
    }
}
