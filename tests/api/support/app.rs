//! The real server on port 0 with a fresh database (a file for SQLite, a database of its own on
//! the test PostgreSQL), and the requests a test sends it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald::app::{App, AppState, Role};
use herald::config::Config;
use herald::domain::Permission;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running Herald on a fresh database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub backend: Backend,
    pub state: AppState,
    pub database_url: String,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    http: reqwest::Client,
    _pg_database: Option<PgDatabase>,
    _dir: tempfile::TempDir,
}

impl TestApp {
    /// Starts Herald with test defaults (private targets allowed, fast retries); `None` when the
    /// backend is PostgreSQL and `HERALD_TEST_POSTGRES_URL` is not set.
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, |_| {}).await
    }

    /// Like [`TestApp::start`], with the configuration adjusted first.
    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Option<Self> {
        Self::start_role(backend, Role::All, adjust).await
    }

    /// Like [`TestApp::start_with`], running only what `role` says (API-only: no worker).
    pub async fn start_role(
        backend: Backend,
        role: Role,
        adjust: impl FnOnce(&mut Config),
    ) -> Option<Self> {
        Self::start_custom(backend, role, adjust, None).await
    }

    /// The most general start: a role, a configuration, and optionally a scripted resolver for
    /// the outbound client.
    pub async fn start_custom(
        backend: Backend,
        role: Role,
        adjust: impl FnOnce(&mut Config),
        lookup: Option<Arc<dyn herald::delivery::guard::Lookup>>,
    ) -> Option<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (database_url, pg_database) = match backend {
            Backend::Sqlite => (
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("herald.db").display()
                ),
                None,
            ),
            Backend::Postgres => {
                let database = PgDatabase::create().await?;
                (database.url.clone(), Some(database))
            }
        };
        let mut config = Config::defaults(database_url.clone());
        config.allow_private_targets = true;
        config.retry_schedule = herald::domain::RetrySchedule::parse("100ms,100ms").unwrap();
        config.delivery_timeout = Duration::from_secs(2);
        config.shutdown_grace = Duration::from_secs(2);
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding port 0");
        let mut state = AppState::new(config).await.expect("building Herald");
        if let Some(lookup) = lookup {
            let config = &state.config;
            state.sender = herald::delivery::client::Sender::new(
                config.delivery_timeout,
                herald::delivery::guard::TargetPolicy::from_config(config),
                lookup,
            )
            .unwrap();
        }
        let app = App::from_state(state, listener, role);
        let addr = app.local_addr().unwrap();
        let state = app.state().clone();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(app.run(shutdown.clone()));
        Some(Self {
            addr,
            backend,
            state,
            database_url,
            shutdown,
            server: Some(server),
            http: reqwest::Client::new(),
            _pg_database: pg_database,
            _dir: dir,
        })
    }

    /// Stops the server and its worker, as SIGTERM would.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the server task")
                .expect("the server stops cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Creates an organization, as `herald org create` does, and returns its uid.
    pub async fn org(&self, name: &str) -> String {
        herald::store::orgs::create(&self.state.db, name)
            .await
            .expect("creating an organization")
            .id
            .to_string()
    }

    /// A token for an organization, as `herald token issue` makes it.
    pub fn token(&self, org_uid: &str, permission: Permission) -> String {
        self.state
            .keys
            .issue(org_uid, "test", permission, 3600)
            .unwrap()
    }

    /// Runs a GraphQL request and returns the whole response.
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let body = json!({ "query": query, "variables": variables }).to_string();
        let mut request = self
            .http
            .post(self.url("/graphql"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the GraphQL request");
        let text = response.text().await.expect("a response body");
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    }

    /// Runs GraphQL requests at once, as that many concurrent clients would; the responses in
    /// the order of `requests`.
    pub async fn gql_at_once(&self, token: &str, requests: Vec<(&str, Value)>) -> Vec<Value> {
        let mut running = tokio::task::JoinSet::new();
        for (n, (query, variables)) in requests.into_iter().enumerate() {
            let request = self
                .http
                .post(self.url("/graphql"))
                .header("content-type", "application/json")
                .bearer_auth(token)
                .body(json!({ "query": query, "variables": variables }).to_string());
            running.spawn(async move {
                let response = request.send().await.expect("the GraphQL request");
                let text = response.text().await.expect("a response body");
                (
                    n,
                    serde_json::from_str::<Value>(&text).expect("a JSON response"),
                )
            });
        }
        let mut responses = running.join_all().await;
        responses.sort_by_key(|(n, _)| *n);
        responses
            .into_iter()
            .map(|(_, response)| response)
            .collect()
    }

    /// Runs a GraphQL request that must succeed and returns its `data`.
    pub async fn ok(&self, token: &str, query: &str, variables: Value) -> Value {
        let response = self.gql(Some(token), query, variables).await;
        assert!(
            response.get("errors").is_none(),
            "unexpected errors: {response:#}"
        );
        response["data"].clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A fresh PostgreSQL database for one test, dropped with it.
pub struct PgDatabase {
    pub url: String,
    base: String,
    name: String,
}

impl PgDatabase {
    /// Creates a database; `None` when `HERALD_TEST_POSTGRES_URL` is not set.
    pub async fn create() -> Option<Self> {
        let base = std::env::var("HERALD_TEST_POSTGRES_URL").ok()?;
        let name = format!("herald_test_{}", uuid::Uuid::new_v4().simple());
        let admin = Database::connect(&base)
            .await
            .expect("connecting to the test PostgreSQL");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .expect("creating a test database");
        admin.close().await.ok();
        let mut url = url::Url::parse(&base).expect("a PostgreSQL URL");
        url.set_path(&format!("/{name}"));
        Some(Self {
            url: url.to_string(),
            base,
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop the test database from a thread of its own: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(admin) = Database::connect(&base).await {
                    let _ = admin
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
