//! The application: state, the HTTP server and the worker, started and stopped together.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiSchema};
use crate::config::Config;
use crate::delivery::Worker;
use crate::delivery::client::Sender;
use crate::delivery::guard::{SystemLookup, TargetPolicy};
use crate::events::{Outbox, Writer};
use crate::http::Documents;
use crate::metrics::Metrics;
use crate::schema::{Limits, TokenKeys};
use crate::secrets::Vault;
use crate::store::{self, Writes};

/// The process's handles, built once; clones are cheap and share them. The HTTP layer, the
/// schema and the worker each take only the handles they use ([`AppState::http`],
/// [`AppState::worker`], [`api::Handles`]).
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    /// The writing connection (see [`store::connect_writer`]), its write turn and the worker's
    /// wake-up.
    pub writes: Writes,
    pub keys: TokenKeys,
    pub schema: ApiSchema,
    /// Parsed documents of the requests clients send, by their text.
    pub documents: Documents,
    pub outbox: Outbox,
    /// Writes the changes that record events, many in one transaction.
    pub changes: Writer,
    pub sender: Sender,
    pub metrics: Metrics,
    /// Seals and opens endpoint secrets at rest.
    pub vault: Vault,
    /// The REST hooks' handles.
    pub hooks: api::hooks::Hooks,
}

impl AppState {
    /// Connects to the database, applies migrations and loads the token key.
    pub async fn new(config: Config) -> anyhow::Result<Self> {
        config.check()?;
        // Certificate checks use ring; installing it twice (tests) is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let db = store::connect(&config.database.database_url).await?;
        let writes = Writes::new(store::connect_writer(&config.database.database_url, &db).await?);
        let vault = match &config.encryption_key {
            Some(key) => Vault::with_key(&key.0)?,
            None => Vault::default(),
        };
        store::endpoints::reconcile_sealing(&db, &vault).await?;
        store::secrets::erase_expired(&db, crate::now_ms())
            .await
            .map_err(|err| anyhow::anyhow!("erasing replaced secrets: {err}"))?;
        let keys = TokenKeys::new(&token_secret_with(&db, &vault).await?);
        let metrics = Metrics::default();
        let outbox = Outbox::new(writes.clone(), metrics.clone(), config.public_url.clone());
        let changes = Writer::start(outbox.clone());
        let limits = Limits {
            introspection: config.graphiql,
            ..Limits::API
        };
        let policy = TargetPolicy::from_config(&config);
        let max_endpoints = api::MaxEndpoints(config.max_endpoints as usize);
        let hooks = api::hooks::Hooks {
            pool: db.clone(),
            writes: writes.clone(),
            outbox: outbox.clone(),
            vault: vault.clone(),
            policy: policy.clone(),
            max_endpoints,
            writer: changes.clone(),
        };
        let sender = Sender::new(
            config.delivery_timeout,
            policy.clone(),
            Arc::new(SystemLookup),
        )
        .context("building the outbound HTTP client")?;
        let approvals = Arc::new(crate::delivery::approval::Approvals::new(
            sender.clone(),
            vault.clone(),
            db.clone(),
            writes.clone(),
            config.public_url.clone(),
        ));
        let schema = api::build_schema(
            limits,
            api::Handles {
                pool: db.clone(),
                writes: writes.clone(),
                writer: changes.clone(),
                outbox: outbox.clone(),
                vault: vault.clone(),
                policy: policy.clone(),
                keys: keys.clone(),
                max_endpoints,
                public_url: crate::schema::PublicUrl::new(config.public_url.as_deref()),
                approvals,
            },
        );
        Ok(Self {
            sender,
            schema,
            documents: Documents::default(),
            outbox,
            changes,
            config: Arc::new(config),
            db,
            writes,
            keys,
            metrics,
            vault,
            hooks,
        })
    }

    /// What the HTTP layer uses.
    pub fn http(&self) -> crate::http::Http {
        crate::http::Http {
            timeouts: crate::http::Timeouts::from_config(&self.config),
            graphiql: self.config.graphiql,
            db: self.db.clone(),
            keys: self.keys.clone(),
            schema: self.schema.clone(),
            documents: self.documents.clone(),
            metrics: self.metrics.clone(),
            hooks: self.hooks.clone(),
        }
    }

    /// What the delivery worker uses.
    pub fn worker(&self) -> crate::delivery::WorkerHandles {
        crate::delivery::WorkerHandles {
            settings: crate::delivery::WorkerSettings::from_config(&self.config),
            db: self.db.clone(),
            writes: self.writes.clone(),
            sender: self.sender.clone(),
            metrics: self.metrics.clone(),
            vault: self.vault.clone(),
        }
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
        crate::http::serve::ensure_open_files(&self.state.config)?;
        let worker = (self.role == Role::All).then(|| {
            let worker = tokio::spawn(Worker::new(self.state.worker()).run(shutdown.clone()));
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
        let router = crate::http::router(self.state.http());
        let limits = crate::http::serve::ConnectionLimits::from_config(&self.state.config);
        crate::http::serve::serve(self.listener, router, limits, shutdown)
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
