//! The application: state, the HTTP server and the worker, started and stopped together.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::Worker;
use crate::delivery::client::Sender;
use crate::delivery::guard::SystemLookup;
use crate::graphql::{self, HeraldSchema, Limits, TokenKeys};
use crate::metrics::Metrics;
use crate::payload::commit::Changes;
use crate::payload::outbox::Outbox;
use crate::secrets::Vault;
use crate::store;

/// Everything a request or the worker needs; clones are cheap and share the same handles.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    /// Where changes and the worker's claims and outcomes are written (see
    /// [`store::connect_writer`]).
    pub writer: DatabaseConnection,
    pub keys: TokenKeys,
    pub schema: HeraldSchema,
    /// Parsed documents of the requests clients send, by their text.
    pub documents: graphql::Documents,
    pub outbox: Outbox,
    /// Writes the changes that record events, many in one transaction.
    pub changes: Changes,
    pub sender: Sender,
    pub metrics: Metrics,
    /// Seals and opens endpoint secrets at rest.
    pub vault: Vault,
    /// Woken by the outbox when deliveries are committed.
    pub wake: Arc<Notify>,
}

impl AppState {
    /// Begins a write of the API on the process's writing connection, in its turn beside the
    /// delivery worker's writes ([`Outbox::turn`]) and waiting for the disk at its commit (see
    /// [`store::wait_for_disk`]). Hold the turn until the transaction ends.
    pub async fn begin_api_write(
        &self,
    ) -> crate::Result<(crate::payload::outbox::Turn, sea_orm::DatabaseTransaction)> {
        let turn = self.outbox.turn().await;
        let tx = store::begin_write(&self.writer).await?;
        Ok((turn, tx))
    }

    /// Connects to the database, applies migrations and loads the token key.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        config.check()?;
        // Certificate checks use ring; installing it twice (tests) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let db = store::connect(&config.database.database_url).await?;
        let writer = store::connect_writer(&config.database.database_url, &db).await?;
        let vault = match &config.encryption_key {
            Some(key) => Vault::with_key(&key.0)?,
            None => Vault::default(),
        };
        store::endpoints::reconcile_sealing(&db, &vault).await?;
        let keys = TokenKeys::new(&token_secret_with(&db, &vault).await?);
        let metrics = Metrics::default();
        let wake = Arc::new(Notify::new());
        let outbox = Outbox::new(
            wake.clone(),
            metrics.clone(),
            config.public_url.clone(),
            db.get_database_backend() == sea_orm::DbBackend::Sqlite,
        );
        let changes = Changes::start(writer.clone(), outbox.clone());
        let limits = Limits {
            introspection: config.graphiql,
            ..Limits::API
        };
        Ok(Self {
            sender: Sender::new(
                config.delivery_timeout,
                config.target_policy(),
                Arc::new(SystemLookup),
            )
            .context("building the outbound HTTP client")?,
            schema: graphql::build_schema(limits),
            documents: graphql::Documents::default(),
            outbox,
            changes,
            config: Arc::new(config),
            db,
            writer,
            keys,
            metrics,
            vault,
            wake,
        })
    }
}

/// The HS256 key for API tokens: `HERALD_JWT_SECRET` when set (nothing is stored then), or the
/// key kept in the database, sealed with `HERALD_ENCRYPTION_KEY` when that is set (see
/// [`token_secret_with`]). For commands that start no server: `herald token issue`, the bench.
pub async fn token_secret(db: &DatabaseConnection) -> anyhow::Result<String> {
    let vault = match std::env::var("HERALD_ENCRYPTION_KEY") {
        Ok(key) if !key.trim().is_empty() => Vault::with_key(&key)?,
        _ => Vault::default(),
    };
    token_secret_with(db, &vault).await
}

/// [`token_secret`] with the database's key sealed with `vault`'s key, if it has one (see
/// [`store::orgs::jwt_key`]).
pub async fn token_secret_with(db: &DatabaseConnection, vault: &Vault) -> anyhow::Result<String> {
    match std::env::var("HERALD_JWT_SECRET") {
        Ok(secret) if !secret.is_empty() => Ok(secret),
        _ => store::orgs::jwt_key(db, vault)
            .await
            .context("loading the token key"),
    }
}

/// What runs in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// API, console and worker.
    All,
    /// API and console only (`serve --no-worker`).
    ApiOnly,
}

/// A built application, bound to its listener, ready to run.
pub struct App {
    state: AppState,
    listener: TcpListener,
    role: Role,
}

impl App {
    /// Builds the application on a listener the caller bound (tests bind port 0).
    pub async fn build(config: Config, listener: TcpListener, role: Role) -> anyhow::Result<Self> {
        Ok(Self::from_state(
            AppState::new(config).await?,
            listener,
            role,
        ))
    }

    /// The application around state the caller prepared (tests swap the resolver).
    pub fn from_state(state: AppState, listener: TcpListener, role: Role) -> Self {
        Self {
            state,
            listener,
            role,
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The application's state (tests mint tokens with its keys).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown`, then finishes in-flight requests and attempts.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        crate::serve::ensure_open_files(&self.state.config)?;
        let worker = (self.role == Role::All).then(|| {
            let worker = tokio::spawn(Worker::new(self.state.clone()).run(shutdown.clone()));
            // A worker that ends before the shutdown (it panicked) stops the server with it:
            // the process exits with the error, to be restarted, rather than go on accepting
            // events that no one delivers.
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let ended = worker.await;
                stop.cancel();
                ended
            })
        });
        let router = crate::http::router(self.state.clone());
        let limits = crate::serve::ConnectionLimits::from_config(&self.state.config);
        crate::serve::serve(self.listener, router, limits, shutdown)
            .await
            .context("serving HTTP")?;
        if let Some(worker) = worker {
            worker
                .await
                .context("joining the delivery worker")?
                .context("the delivery worker stopped unexpectedly")?;
        }
        Ok(())
    }
}

/// Cancels `token` on SIGTERM or Ctrl-C.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = terminate => {}
        }
        tracing::info!("shutting down");
        token.cancel();
    });
}
