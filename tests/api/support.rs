//! The test harness: the real server on port 0 with a fresh database, a scriptable recording
//! receiver, and helpers to mint tokens and run GraphQL.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use herald::app::{App, AppState, Role};
use herald::config::Config;
use herald::domain::Permission;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use tokio::sync::Notify;
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

/// A `herald` child process, killed when dropped.
pub struct Herald {
    pub child: std::process::Child,
    args: Vec<String>,
    database_url: String,
}

impl Herald {
    /// Starts `herald ARGS…` on a database, with private targets allowed, a short lease and a
    /// delivery timeout of half of it.
    pub fn spawn(database_url: &str, args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self {
            child: Self::start(database_url, &args),
            args,
            database_url: database_url.to_owned(),
        }
    }

    fn start(database_url: &str, args: &[String]) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .env("HERALD_DATABASE_URL", database_url)
            .env("HERALD_ALLOW_PRIVATE_TARGETS", "true")
            .env("HERALD_LEASE", "1s")
            .env("HERALD_DELIVERY_TIMEOUT", "500ms")
            .env("HERALD_RETRY_SCHEDULE", "100ms,200ms,400ms,800ms")
            .env_remove("HERALD_JWT_SECRET")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting herald")
    }

    /// SIGKILLs the process, then starts it again with the same arguments.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.child = Self::start(&self.database_url, &self.args);
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a `herald` command to completion on a database and returns its trimmed stdout.
pub fn herald_output(database_url: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("HERALD_DATABASE_URL", database_url)
        .env_remove("HERALD_JWT_SECRET")
        .output()
        .expect("running herald");
    assert!(output.status.success(), "herald {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GraphQL client of a Herald at `base` (no harness behind it).
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(port: u16, token: &str) -> Self {
        Self {
            base: format!("http://127.0.0.1:{port}"),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// Waits until `/healthz` answers.
    pub async fn wait_healthy(&self) {
        for _ in 0..400 {
            if self
                .http
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("herald at {} did not become healthy", self.base);
    }

    /// Runs a request; `Err` with the response when it carried errors or failed.
    pub async fn try_gql(&self, query: &str, variables: Value) -> Result<Value, String> {
        let response = self
            .http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(json!({ "query": query, "variables": variables }).to_string())
            .send()
            .await
            .map_err(|err| err.to_string())?;
        let text = response.text().await.map_err(|err| err.to_string())?;
        let body: Value = serde_json::from_str(&text).map_err(|_| text.clone())?;
        match body.get("errors") {
            Some(_) => Err(body.to_string()),
            None => Ok(body["data"].clone()),
        }
    }

    /// The value of a counter or gauge in `/metrics`, without labels.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("a metrics body");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    /// Runs a request that must succeed.
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.try_gql(query, variables)
            .await
            .unwrap_or_else(|err| panic!("GraphQL failed: {err}"))
    }
}

/// The first error's `extensions.code` of a response.
pub fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {response:#}"))
}

/// A request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// The path and query the request was sent to.
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The task of a task event's delivery, as its id and status (see [`task_at`]).
    pub fn task(&self) -> (String, String) {
        let body = self.json();
        let task = &body["data"]["task"];
        task_at(
            task["id"].as_str().unwrap(),
            task["status"].as_str().unwrap(),
        )
    }
}

/// A task and a status, as [`Received::task`] gives them.
pub fn task_at(task: &str, status: &str) -> (String, String) {
    (task.to_owned(), status.to_owned())
}

/// An answer the receiver gives.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
    arrived: Notify,
}

/// A recording receiver on loopback whose answers a test can script.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// A receiver on a given address (another loopback address, a given port).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let state = Arc::new(ReceiverState::default());
        let router = axum::Router::new()
            .fallback(record)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests with these replies, in order; then the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Answers every unscripted request with this reply (200 until set).
    pub fn default_reply(&self, reply: Reply) {
        *self.state.default.lock().unwrap() = Some(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (at most 20 s) and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let notified = self.state.arrived.notified();
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "expected {n} deliveries, got {}: {:#?}",
                    received.len(),
                    received
                );
            }
        }
    }

    /// Asserts that no request beyond the first `n` arrives within `quiet`.
    pub async fn expect_no_more_than(&self, n: usize, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        let received = self.received();
        assert_eq!(
            received.len(),
            n,
            "unexpected extra deliveries: {received:#?}"
        );
    }
}

async fn record(
    State(state): State<Arc<ReceiverState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let reply = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .or_else(|| state.default.lock().unwrap().clone())
        .unwrap_or(Reply::status(200));
    tokio::time::sleep(reply.delay).await;
    state
        .received
        .lock()
        .unwrap()
        .push(Received { uri, headers, body });
    state.arrived.notify_waiters();
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), "received").into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// An organization with a repository, and tokens at every level.
pub struct World {
    pub org: String,
    pub admin: String,
    pub write: String,
    pub read: String,
    pub repository: String,
}

impl World {
    pub async fn new(app: &TestApp, name: &str) -> Self {
        let org = app.org(name).await;
        let admin = app.token(&org, Permission::Admin);
        let data = app
            .ok(
                &admin,
                "mutation($org: ID!) { createRepository(input: {ownerUid: $org, name: \"app\"}) { repository { id } } }",
                json!({ "org": org }),
            )
            .await;
        Self {
            write: app.token(&org, Permission::Write),
            read: app.token(&org, Permission::Read),
            repository: data["createRepository"]["repository"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
            org,
            admin,
        }
    }

    /// Adds an endpoint; `extra` holds more input fields.
    pub async fn endpoint(&self, app: &TestApp, url: &str, extra: Value) -> String {
        let mut input = json!({ "ownerUid": self.org, "webhookURL": url });
        input
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let data = app
            .ok(
                &self.admin,
                "mutation($input: CreateWebHookEndpointInput!) { createWebHookEndpoint(input: $input) { endpoint { id } } }",
                json!({ "input": input }),
            )
            .await;
        data["createWebHookEndpoint"]["endpoint"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn build(&self, app: &TestApp) -> String {
        let data = app
            .ok(
                &self.write,
                "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"main\", changeIdInRepo: \"abc123\", changeMessageTitle: \"Fix it\"}) { build { id } } }",
                json!({ "repo": self.repository }),
            )
            .await;
        data["createBuild"]["build"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn task(&self, app: &TestApp, build: &str, name: &str) -> String {
        let data = app
            .ok(
                &self.write,
                "mutation($build: ID!, $name: String!) { createTask(input: {buildId: $build, name: $name, labels: [\"linux\"]}) { task { id } } }",
                json!({ "build": build, "name": name }),
            )
            .await;
        data["createTask"]["task"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn task_status(&self, app: &TestApp, task: &str, status: &str) {
        app.ok(
            &self.write,
            "mutation($task: ID!, $status: TaskStatus!) { updateTaskStatus(input: {taskId: $task, status: $status}) { task { id } } }",
            json!({ "task": task, "status": status }),
        )
        .await;
    }

    pub async fn build_status(&self, app: &TestApp, build: &str, status: &str) {
        app.ok(
            &self.write,
            "mutation($build: ID!, $status: BuildStatus!) { updateBuildStatus(input: {buildId: $build, status: $status}) { build { id } } }",
            json!({ "build": build, "status": status }),
        )
        .await;
    }
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
