//! The scenarios: a fresh Herald per scenario (or fresh endpoints on the server of `--url`),
//! load through GraphQL, arrivals at the receiver.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::cpu;
use super::receiver::Receiver;
use super::report::Figures;
use super::{BenchArgs, DELIVERY_DEADLINE};
use crate::domain::{EndpointUrl, EventKind, PayloadFormat, Permission};
use crate::schema::TokenKeys;
use crate::store;

/// The selection every bench endpoint uses: small, and enough to key arrivals.
const SELECTION: &str = "task(id: $taskId) { id status }";

/// The secret every bench endpoint signs with.
const BENCH_SECRET: &str = "bench-secret";

/// Where the bench's deliveries go, and so where their arrivals are read.
pub enum Sink {
    /// The built-in receiver, which records each arrival as it comes.
    Builtin(Receiver),
    /// A receiver of the user's (`--receiver-url`): arrivals are read from Herald's delivery log.
    External(url::Url),
}

impl Sink {
    /// The URL of a scenario's `index`th endpoint.
    fn endpoint_url(&self, index: usize) -> String {
        match self {
            Sink::Builtin(receiver) => receiver.url(&format!("/herald-bench/endpoint/{index}")),
            Sink::External(url) => {
                let mut url = url.clone();
                url.query_pairs_mut()
                    .append_pair("herald-bench-endpoint", &index.to_string());
                url.to_string()
            }
        }
    }

    /// The URL of the `ceiling` scenario's plain POSTs.
    fn ceiling_url(&self) -> String {
        match self {
            Sink::Builtin(receiver) => receiver.url("/ceiling"),
            Sink::External(url) => url.to_string(),
        }
    }

    /// Forgets every arrival (between scenarios, and after a warm-up).
    pub(super) fn reset(&self) {
        if let Sink::Builtin(receiver) = self {
            receiver.reset();
        }
    }

    /// Waits until the `expected` deliveries of the events `recorded` acknowledged arrived, or
    /// `deadline` passed, or the bench is interrupted, and reads when each arrived.
    async fn landed(
        &self,
        args: &BenchArgs,
        server: &Server,
        recorded: &Recorded,
        expected: usize,
        deadline: Duration,
    ) -> anyhow::Result<Landed> {
        let interrupted = args.interrupted.cancelled();
        match self {
            Sink::Builtin(receiver) => {
                let last = tokio::select! {
                    last = receiver.wait_for(expected, deadline) => last,
                    () = interrupted => None,
                };
                Ok(Landed {
                    count: receiver.count(),
                    by_key: receiver.arrivals(),
                    end: last.unwrap_or_else(Instant::now),
                    peak_rss_mib: server.peak_rss_mib(),
                    cpu: server.cpu(),
                })
            }
            Sink::External(_) => {
                let finished = tokio::select! {
                    finished = server.wait_finished(deadline) => finished?,
                    () = interrupted => false,
                };
                // Before the log is read: serving it is not part of the scenario.
                let mut landed = Landed {
                    count: 0,
                    by_key: HashMap::new(),
                    end: Instant::now(),
                    peak_rss_mib: server.peak_rss_mib(),
                    cpu: server.cpu(),
                };
                if args.interrupted.is_cancelled() {
                    return Ok(landed);
                }
                let mut last = None;
                for (key, at) in server.answers().await? {
                    if recorded.acks.contains_key(&key) {
                        landed.count += 1;
                        last = last.max(Some(at));
                        landed.by_key.entry(key).or_default().push(at);
                    }
                }
                if finished && landed.count >= expected {
                    landed.end = last.unwrap_or(landed.end);
                }
                Ok(landed)
            }
        }
    }
}

/// What reached the receiver.
pub(super) struct Landed {
    /// Deliveries that arrived.
    count: usize,
    /// When each arrived, by event key.
    by_key: HashMap<String, Vec<Instant>>,
    /// When the last expected one arrived, or when the wait for it ended (the deadline passed).
    end: Instant,
    /// The largest peak RSS of the Herald processes the bench started, once they had arrived.
    peak_rss_mib: Option<f64>,
    /// CPU time counters, read then.
    cpu: cpu::Reading,
}

/// A Herald under test: a `serve` child process (and extra workers) on a fresh database, or
/// with `--url` a server of the user's, in whose organization the bench adds its endpoints.
pub(super) struct Server {
    base: String,
    token: String,
    repository: String,
    http: reqwest::Client,
    /// What the bench started, when it started the server.
    owned: Option<Owned>,
    /// The endpoints the bench added to a server it did not start, deleted at the end.
    added: Vec<String>,
}

/// A server the bench started, and what to remove once it stops.
struct Owned {
    children: Vec<Child>,
    database_url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(std::path::PathBuf),
    Postgres { admin: String, name: String },
}

impl Owned {
    /// Prepares the fresh database (an organization, its token, a repository and `endpoints`
    /// endpoints) and starts `serve` on it, with the extra workers unless `api_only`; the
    /// server's base URL, the token and the repository's id once it answers.
    async fn launch(
        &mut self,
        args: &BenchArgs,
        sink: &Sink,
        endpoints: usize,
        api_only: bool,
        http: &reqwest::Client,
    ) -> anyhow::Result<(String, String, String)> {
        let db = store::connect(&self.database_url).await?;
        let org = store::orgs::create(&db, "bench")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = crate::app::token_secret(&db).await?;
        let token = TokenKeys::new(&key)
            .issue(&org.id.to_string(), "bench", Permission::Admin, 24 * 3600)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let repository = store::ci::create_repository(
            &db,
            org.id,
            store::ci::NewRepository {
                name: "bench".into(),
                is_private: false,
                default_branch: "main".into(),
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        for i in 0..endpoints {
            let fields = store::endpoints::EndpointFields {
                url: EndpointUrl::parse(&sink.endpoint_url(i))?,
                secret: Some(BENCH_SECRET.into()),
                events: vec![EventKind::Task],
                payload_query: Some(SELECTION.into()),
                payload_format: PayloadFormat::Data,
                enabled: true,
                insecure_ssl: false,
                status_filter: Vec::new(),
            };
            store::endpoints::create(&db, org.id, fields, &crate::secrets::Vault::default())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        db.close().await.ok();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut serve = vec![
            "serve".to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        if api_only {
            serve.push("--no-worker".into());
        }
        self.children.push(spawn(&self.database_url, &serve)?);
        if !api_only {
            for _ in 0..args.workers {
                self.children
                    .push(spawn(&self.database_url, &["worker".into()])?);
            }
        }
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..400 {
            if http.get(format!("{base}/healthz")).send().await.is_ok() {
                return Ok((base, token, repository.id.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::bail!("herald serve did not start")
    }

    /// Stops the processes and removes the database.
    async fn remove(mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        match &self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::Postgres { admin, name } => {
                if let Ok(db) = sea_orm::Database::connect(admin).await {
                    let _ = db
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            }
        }
    }
}

impl Server {
    pub(super) async fn start(
        args: &BenchArgs,
        sink: &Sink,
        endpoints: usize,
        api_only: bool,
    ) -> anyhow::Result<Self> {
        if let Some(url) = &args.url {
            return Self::attach(args, sink, endpoints, url).await;
        }
        let http = reqwest::Client::builder().no_proxy().build()?;
        let (database_url, cleanup) = fresh_database(&args.database_url).await?;
        let mut owned = Owned {
            children: Vec::new(),
            database_url,
            cleanup,
        };
        match owned.launch(args, sink, endpoints, api_only, &http).await {
            Ok((base, token, repository)) => Ok(Self {
                base,
                token,
                repository,
                http,
                owned: Some(owned),
                added: Vec::new(),
            }),
            Err(err) => {
                owned.remove().await;
                Err(err)
            }
        }
    }

    /// Prepares a scenario on the server at `url`: a repository of its own, and `endpoints`
    /// endpoints in the token's organization, which must have none (they would be sent the
    /// bench's events). On failure, the endpoints added so far are deleted again.
    async fn attach(
        args: &BenchArgs,
        sink: &Sink,
        endpoints: usize,
        url: &url::Url,
    ) -> anyhow::Result<Self> {
        let mut server = Self::at(args, url)?;
        match server.prepare(sink, endpoints).await {
            Ok(()) => Ok(server),
            Err(err) => {
                server.stop().await;
                Err(err)
            }
        }
    }

    /// The server at `url`, as the bench's token sees it, before anything is added.
    fn at(args: &BenchArgs, url: &url::Url) -> anyhow::Result<Self> {
        Ok(Self {
            base: url.as_str().trim_end_matches('/').to_owned(),
            token: args.token.clone().unwrap_or_default(),
            repository: String::new(),
            http: reqwest::Client::builder().no_proxy().build()?,
            owned: None,
            added: Vec::new(),
        })
    }

    /// Checks that the token is an ADMIN token of an organization with no endpoints; the
    /// organization's uid.
    async fn check_organization(&self) -> anyhow::Result<Value> {
        let viewer = self
            .gql("{ viewer { uid viewerPermission } }", json!({}))
            .await
            .with_context(|| format!("asking the server at {} who the token is", self.base))?;
        let viewer = &viewer["viewer"];
        if viewer["viewerPermission"] != "ADMIN" {
            anyhow::bail!(
                "the token is not an ADMIN token (the bench adds webhook endpoints, which takes ADMIN): issue one with herald token issue --permission ADMIN"
            );
        }
        let settings = self
            .gql(
                "{ viewer { webhookSettings { endpoints { webhookURL } } } }",
                json!({}),
            )
            .await?;
        let existing = settings["viewer"]["webhookSettings"]["endpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let left_behind = existing
            .iter()
            .filter(|e| e["webhookURL"].as_str().is_some_and(is_bench_url))
            .count();
        if left_behind > 0 {
            anyhow::bail!(
                "the token's organization still has {left_behind} endpoint(s) of an interrupted bench run: delete them (deleteWebHookEndpoint, or the web console) and run it again"
            );
        }
        if !existing.is_empty() {
            anyhow::bail!(
                "the token's organization has {} webhook endpoint(s), which would be sent the bench's events: give the bench an organization of its own (herald org create NAME)",
                existing.len()
            );
        }
        Ok(viewer["uid"].clone())
    }

    async fn prepare(&mut self, sink: &Sink, endpoints: usize) -> anyhow::Result<()> {
        let owner = self.check_organization().await?;
        let name = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let created = self
            .gql(
                "mutation($owner: ID!, $name: String!) { createRepository(input: {ownerUid: $owner, name: $name}) { repository { id } } }",
                json!({ "owner": owner, "name": name }),
            )
            .await
            .context("creating the bench's repository")?;
        self.repository = string(&created["createRepository"]["repository"]["id"])?;
        for i in 0..endpoints {
            let created = self
                .gql(
                    "mutation($input: CreateWebHookEndpointInput!) { createWebHookEndpoint(input: $input) { endpoint { id } } }",
                    json!({ "input": {
                        "ownerUid": owner,
                        "webhookURL": sink.endpoint_url(i),
                        "secretToken": BENCH_SECRET,
                        "events": ["TASK"],
                        "payloadQuery": SELECTION,
                    } }),
                )
                .await
                .context(
                    "adding the bench's endpoints (a server reaches the bench's receiver on loopback only with HERALD_ALLOW_PRIVATE_TARGETS=true)",
                )?;
            self.added
                .push(string(&created["createWebHookEndpoint"]["endpoint"]["id"])?);
        }
        Ok(())
    }

    fn start_worker(&mut self) -> anyhow::Result<()> {
        let owned = self
            .owned
            .as_mut()
            .context("a worker can be added only to a server the bench started")?;
        let child = spawn(&owned.database_url, &["worker".into()])?;
        owned.children.push(child);
        Ok(())
    }

    pub(super) async fn gql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        let body = json!({ "query": query, "variables": variables }).to_string();
        let response = self
            .http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|err| {
                if err.is_connect() {
                    anyhow::anyhow!(
                        "nothing answers at {} (is Herald running there?)",
                        self.base
                    )
                } else {
                    err.into()
                }
            })?;
        let value: Value = serde_json::from_slice(&response.bytes().await?)?;
        match value.get("errors").and_then(Value::as_array) {
            Some(errors) => {
                let messages: Vec<&str> = errors
                    .iter()
                    .filter_map(|error| error["message"].as_str())
                    .map(|message| message.trim_end_matches('.'))
                    .collect();
                anyhow::bail!("{}", messages.join("; "))
            }
            None => Ok(value["data"].clone()),
        }
    }

    /// Waits until the organization has no delivery waiting for an attempt, polling Herald's
    /// delivery log; whether that came before `deadline`. A delivery waiting for a retry means
    /// the receiver refused one, and the bench's figures would be its retry schedule's: that
    /// ends the wait with an error.
    async fn wait_finished(&self, deadline: Duration) -> anyhow::Result<bool> {
        const UNFINISHED: &str = "{ viewer {
            pending: webhookDeliveries(first: 1, state: PENDING) { nodes { id } }
            retrying: webhookDeliveries(first: 1, state: RETRYING) {
                nodes { response { status } attemptLog { error } } } } }";
        let until = Instant::now() + deadline;
        loop {
            let data = self.gql(UNFINISHED, json!({})).await?;
            let viewer = &data["viewer"];
            if let Some(retrying) = viewer["retrying"]["nodes"].get(0) {
                let why = match retrying["response"]["status"].as_i64() {
                    Some(status) => format!("it answered HTTP {status}"),
                    None => retrying["attemptLog"]
                        .as_array()
                        .and_then(|log| log.last())
                        .and_then(|attempt| attempt["error"].as_str())
                        .unwrap_or("no answer came")
                        .trim_end_matches('.')
                        .to_owned(),
                };
                anyhow::bail!(
                    "the receiver refused a delivery ({why}); it must answer 2xx to every one, and the bench signs them with the secret bench-secret"
                );
            }
            let pending = viewer["pending"]["nodes"]
                .as_array()
                .is_some_and(|nodes| !nodes.is_empty());
            if !pending {
                return Ok(true);
            }
            if Instant::now() > until {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every delivered delivery's event key and when its receiver's answer came, from Herald's
    /// delivery log (its last attempt's start and duration, to the millisecond).
    async fn answers(&self) -> anyhow::Result<Vec<(String, Instant)>> {
        const DELIVERED: &str = "query($after: String) { viewer {
            webhookDeliveries(first: 100, after: $after, state: DELIVERED) {
                pageInfo { hasNextPage endCursor }
                nodes { payload { data } attemptLog { timestamp duration } } } } }";
        // Herald's log keeps wall-clock milliseconds; arrivals are compared as `Instant`s.
        let (now, now_ms) = (Instant::now(), crate::now_ms());
        let instant = |ms: i64| {
            now.checked_sub(Duration::from_millis(
                now_ms.saturating_sub(ms).max(0) as u64
            ))
            .unwrap_or(now)
        };
        let mut answers = Vec::new();
        let mut after = Value::Null;
        loop {
            let data = self.gql(DELIVERED, json!({ "after": after })).await?;
            let page = &data["viewer"]["webhookDeliveries"];
            for node in page["nodes"].as_array().into_iter().flatten() {
                let key = node["payload"]["data"]
                    .as_str()
                    .and_then(|body| super::receiver::event_key(body.as_bytes()));
                let last = node["attemptLog"].as_array().and_then(|log| log.last());
                if let (Some(key), Some(last)) = (key, last) {
                    let answered = last["timestamp"].as_i64().unwrap_or_default()
                        + last["duration"].as_i64().unwrap_or_default();
                    answers.push((key, instant(answered)));
                }
            }
            if page["pageInfo"]["hasNextPage"] != true {
                return Ok(answers);
            }
            after = page["pageInfo"]["endCursor"].clone();
        }
    }

    /// CPU time counters of the machine and of the Herald processes the bench started.
    pub(super) fn cpu(&self) -> cpu::Reading {
        let pids: Vec<u32> = self
            .owned
            .iter()
            .flat_map(|owned| owned.children.iter().map(Child::id))
            .collect();
        cpu::Reading::now(&pids)
    }

    /// The largest peak RSS of the Herald processes the bench started, in MiB.
    pub(super) fn peak_rss_mib(&self) -> Option<f64> {
        self.owned
            .as_ref()?
            .children
            .iter()
            .filter_map(|child| {
                let status =
                    std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
                let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
                let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib / 1024.0)
            })
            .reduce(f64::max)
    }

    /// Adds an organization to the database of a server the bench started; an ADMIN token of
    /// it.
    pub(super) async fn add_organization(&self, name: &str) -> anyhow::Result<String> {
        let owned = self
            .owned
            .as_ref()
            .context("an organization can be added only to a server the bench started")?;
        let db = store::connect(&owned.database_url).await?;
        let org = store::orgs::create(&db, name)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = crate::app::token_secret(&db).await?;
        db.close().await.ok();
        TokenKeys::new(&key)
            .issue(&org.id.to_string(), "bench", Permission::Admin, 24 * 3600)
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The repository the bench's events are recorded in.
    pub(super) fn repository(&self) -> &str {
        &self.repository
    }

    /// The same server as seen by another organization's `token`, recording in `repository`;
    /// stopping it stops nothing.
    pub(super) fn as_organization(&self, token: String, repository: String) -> Self {
        Self {
            base: self.base.clone(),
            token,
            repository,
            http: self.http.clone(),
            owned: None,
            added: Vec::new(),
        }
    }

    /// Stops what the bench started and removes its database; on a server the bench did not
    /// start, deletes the endpoints it added (and with them their delivery log).
    pub(super) async fn stop(self) {
        for id in &self.added {
            let deleted = self
                .gql(
                    "mutation($id: ID!) { deleteWebHookEndpoint(input: {id: $id}) { clientMutationId } }",
                    json!({ "id": id }),
                )
                .await;
            if let Err(err) = deleted {
                eprintln!("the bench's endpoint {id} could not be deleted: {err}");
            }
        }
        if let Some(owned) = self.owned {
            owned.remove().await;
        }
    }
}

/// Checks, before any scenario runs, that the server of `--url` answers and that the token can
/// be measured with (see [`Server::check_organization`]).
pub async fn check_server(args: &BenchArgs) -> anyhow::Result<()> {
    let Some(url) = &args.url else { return Ok(()) };
    Server::at(args, url)?.check_organization().await.map(drop)
}

/// Whether an endpoint's URL is one the bench gives its endpoints.
fn is_bench_url(url: &str) -> bool {
    url.contains("/herald-bench/endpoint/") || url.contains("herald-bench-endpoint=")
}

/// A JSON string's value, or an error naming what came instead.
fn string(value: &Value) -> anyhow::Result<String> {
    value
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("expected an id, got {value}"))
}

fn spawn(database_url: &str, args: &[String]) -> anyhow::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(args)
        .env("HERALD_DATABASE_URL", database_url)
        .env("HERALD_ALLOW_PRIVATE_TARGETS", "true")
        .env("RUST_LOG", "warn")
        .env_remove("HERALD_JWT_SECRET")
        .env_remove("HERALD_ENCRYPTION_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting a Herald process")
}

async fn fresh_database(spec: &str) -> anyhow::Result<(String, Cleanup)> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    if spec.starts_with("postgres") {
        let name = format!("herald_bench_{id}");
        let admin = sea_orm::Database::connect(spec)
            .await
            .context("connecting to PostgreSQL")?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        let mut url = url::Url::parse(spec)?;
        url.set_path(&format!("/{name}"));
        Ok((
            url.to_string(),
            Cleanup::Postgres {
                admin: spec.to_owned(),
                name,
            },
        ))
    } else {
        let path = std::env::temp_dir().join(format!("herald-bench-{id}.db"));
        Ok((
            format!("sqlite://{}?mode=rwc", path.display()),
            Cleanup::File(path),
        ))
    }
}

/// Acknowledgement times by event key, and failed mutations.
#[derive(Default)]
pub(super) struct Recorded {
    pub(super) acks: HashMap<String, Instant>,
    /// How long each mutation took, from its request to its answer.
    pub(super) round_trips: Vec<Duration>,
    pub(super) errors: usize,
}

pub(super) const CREATE_BUILD: &str = "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"main\", changeIdInRepo: \"bench\"}) { build { id } } }";
pub(super) const CREATE_TASK: &str = "mutation($build: ID!) { createTask(input: {buildId: $build, name: \"t\"}) { task { id status } } }";
pub(super) const UPDATE_TASK: &str = "mutation($task: ID!, $status: TaskStatus!) { updateTaskStatus(input: {taskId: $task, status: $status}) { task { id status } } }";

/// Records `events` task events from `clients` concurrent clients, each cycling tasks through
/// CREATED → EXECUTING → COMPLETED and starting a new build every `tasks_per_build` tasks (one
/// build's events reach an endpoint in order, so a build is a chain); a `pace` spaces events out
/// (steady load).
pub(super) async fn record(
    server: &Arc<Server>,
    args: &BenchArgs,
    events: usize,
    pace: Option<Duration>,
    progress: &Progress,
) -> Recorded {
    let budget = Arc::new(AtomicUsize::new(0));
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let started = Instant::now();
    let tasks_per_build = args.tasks_per_build.max(1);
    let mut handles = Vec::new();
    for _ in 0..args.clients {
        let (server, budget, recorded) = (server.clone(), budget.clone(), recorded.clone());
        let (acked, interrupted) = (progress.acked.clone(), args.interrupted.clone());
        handles.push(tokio::spawn(async move {
            let mut build = String::new();
            let mut task: Option<String> = None;
            let mut step = 0;
            loop {
                let n = budget.fetch_add(1, Ordering::SeqCst);
                if n >= events || interrupted.is_cancelled() {
                    return;
                }
                if let Some(pace) = pace {
                    tokio::time::sleep_until((started + pace * n as u32).into()).await;
                }
                if step % (3 * tasks_per_build) == 0 {
                    let sent = Instant::now();
                    match server
                        .gql(CREATE_BUILD, json!({ "repo": server.repository }))
                        .await
                    {
                        Ok(data) => {
                            recorded.lock().await.round_trips.push(sent.elapsed());
                            build = data["createBuild"]["build"]["id"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned();
                        }
                        Err(_) => {
                            recorded.lock().await.errors += 1;
                            continue;
                        }
                    }
                }
                let sent = Instant::now();
                let result = match (&task, step % 3) {
                    (Some(id), 1) => {
                        server
                            .gql(UPDATE_TASK, json!({ "task": id, "status": "EXECUTING" }))
                            .await
                    }
                    (Some(id), 2) => {
                        server
                            .gql(UPDATE_TASK, json!({ "task": id, "status": "COMPLETED" }))
                            .await
                    }
                    _ => server.gql(CREATE_TASK, json!({ "build": build })).await,
                };
                let at = Instant::now();
                match result {
                    Ok(data) => {
                        let node = data
                            .as_object()
                            .and_then(|o| o.values().next())
                            .map(|p| p["task"].clone())
                            .unwrap_or_default();
                        let id = node["id"].as_str().unwrap_or_default().to_owned();
                        let key = format!("{id}:{}", node["status"].as_str().unwrap_or_default());
                        let mut recorded = recorded.lock().await;
                        recorded.acks.insert(key, at);
                        recorded.round_trips.push(at - sent);
                        acked.fetch_add(1, Ordering::Relaxed);
                        task = (step % 3 != 2).then_some(id);
                        step += 1;
                    }
                    Err(_) => recorded.lock().await.errors += 1,
                }
            }
        }));
    }
    for handle in handles {
        let _ = handle.await;
    }
    Arc::try_unwrap(recorded)
        .map(Mutex::into_inner)
        .unwrap_or_default()
}

/// How far a scenario got, shown on the terminal (and only there) a few times a second while
/// it runs: its events recorded and, with the built-in receiver, its deliveries arrived.
pub(super) struct Progress {
    acked: Arc<AtomicUsize>,
    /// Set, under the lock of stderr, when the line is cleared for good: the task showing it
    /// may be in the middle of a redraw when it is stopped.
    done: Arc<std::sync::atomic::AtomicBool>,
    shown: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub(super) fn start(name: &str, sink: &Sink) -> Self {
        use std::io::{IsTerminal as _, Write as _};
        let acked = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shown = std::io::stderr().is_terminal().then(|| {
            let (name, acked, done) = (name.to_owned(), acked.clone(), done.clone());
            let receiver = match sink {
                Sink::Builtin(receiver) => Some(receiver.clone()),
                Sink::External(_) => None,
            };
            tokio::spawn(async move {
                let started = Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let mut shown = format!("{:.1} s", started.elapsed().as_secs_f64());
                    match acked.load(Ordering::Relaxed) {
                        0 => {}
                        events => shown.push_str(&format!(", {events} events recorded")),
                    }
                    if let Some(receiver) = &receiver {
                        shown.push_str(&format!(", {} deliveries arrived", receiver.count()));
                    }
                    let mut stderr = std::io::stderr().lock();
                    if done.load(Ordering::SeqCst) {
                        return;
                    }
                    let _ = write!(stderr, "\r\x1b[2K{name}: {shown}");
                }
            })
        });
        Self { acked, done, shown }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        use std::io::Write as _;
        if let Some(shown) = self.shown.take() {
            let mut stderr = std::io::stderr().lock();
            self.done.store(true, Ordering::SeqCst);
            let _ = write!(stderr, "\r\x1b[2K");
            shown.abort();
        }
    }
}

/// Turns acknowledgements and arrivals into figures.
fn measure(
    name: &str,
    args: &BenchArgs,
    recorded: &Recorded,
    landed: &Landed,
    started: Instant,
    cpu_start: &cpu::Reading,
    per_event: usize,
) -> Figures {
    let mut latencies = Vec::new();
    for (key, acked) in &recorded.acks {
        for arrived in landed.by_key.get(key).into_iter().flatten() {
            latencies.push(arrived.saturating_duration_since(*acked));
        }
    }
    let last_ack = recorded.acks.values().max().copied().unwrap_or(started);
    let delivered = landed.count;
    let end = landed.end;
    let events = recorded.acks.len();
    Figures {
        scenario: name.into(),
        backend: backend(args).into(),
        events,
        deliveries: delivered,
        events_per_second: events as f64 / last_ack.duration_since(started).as_secs_f64().max(1e-9),
        deliveries_per_second: delivered as f64
            / end.duration_since(started).as_secs_f64().max(1e-9),
        seconds: end.duration_since(started).as_secs_f64(),
        errors: recorded.errors + (events * per_event).saturating_sub(delivered),
        peak_rss_mib: landed.peak_rss_mib,
        ..Figures::default()
    }
    .with_latencies(latencies)
    .with_cpu(cpu::Spent::between(cpu_start, &landed.cpu))
}

/// The database of the server measured: `unknown` for a server the bench did not start.
pub(super) fn backend(args: &BenchArgs) -> &'static str {
    if args.url.is_some() {
        "unknown"
    } else if args.database_url.starts_with("postgres") {
        "postgresql"
    } else {
        "sqlite"
    }
}

/// The events of a scenario: how many, how far apart (none: as fast as the clients go), and how
/// many to record first without measuring them.
struct Load {
    events: usize,
    pace: Option<Duration>,
    warmup: usize,
}

impl Load {
    fn flat_out(events: usize) -> Self {
        Self {
            events,
            pace: None,
            warmup: 0,
        }
    }
}

async fn scenario(
    name: &str,
    args: &BenchArgs,
    sink: &Sink,
    endpoints: usize,
    load: Load,
) -> anyhow::Result<Figures> {
    eprintln!(
        "{name}: {} events × {endpoints} endpoint(s) on {}…",
        load.events,
        super::target(args)
    );
    sink.reset();
    let server = Arc::new(Server::start(args, sink, endpoints, false).await?);
    let progress = Progress::start(name, sink);
    let measured = run_scenario(name, args, sink, &server, endpoints, load, &progress).await;
    drop(progress);
    if let Ok(server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
    measured
}

/// [`scenario`] on a started server, which the caller stops whatever happens.
async fn run_scenario(
    name: &str,
    args: &BenchArgs,
    sink: &Sink,
    server: &Arc<Server>,
    endpoints: usize,
    load: Load,
    progress: &Progress,
) -> anyhow::Result<Figures> {
    if load.warmup > 0 {
        eprintln!(
            "{name}: warming up with {} events, not measured…",
            load.warmup
        );
        let warm = record(server, args, load.warmup, load.pace, progress).await;
        sink.landed(
            args,
            server,
            &warm,
            warm.acks.len() * endpoints,
            DELIVERY_DEADLINE,
        )
        .await?;
        sink.reset();
        progress.acked.store(0, Ordering::Relaxed);
    }
    let (started, cpu_start) = (Instant::now(), server.cpu());
    let recorded = record(server, args, load.events, load.pace, progress).await;
    let landed = sink
        .landed(
            args,
            server,
            &recorded,
            recorded.acks.len() * endpoints,
            DELIVERY_DEADLINE,
        )
        .await?;
    Ok(measure(
        name, args, &recorded, &landed, started, &cpu_start, endpoints,
    ))
}

pub async fn ingest_deliver(args: &BenchArgs, sink: &Sink) -> anyhow::Result<Figures> {
    scenario("ingest-deliver", args, sink, 1, Load::flat_out(args.events)).await
}

pub async fn fanout(args: &BenchArgs, sink: &Sink) -> anyhow::Result<Figures> {
    let events = (args.events / args.fanout.max(1)).max(1);
    scenario("fanout", args, sink, args.fanout, Load::flat_out(events)).await
}

/// Seconds of load `steady` runs before it measures.
const STEADY_WARMUP_SECONDS: usize = 2;

/// A fixed rate for a fixed time, after a short warm-up at the same rate that is not measured:
/// the first events after a start wait for the server's pool to open its connections (on
/// PostgreSQL, tens of milliseconds each), which is a start's latency, not a steady one's.
pub async fn steady(args: &BenchArgs, sink: &Sink) -> anyhow::Result<Figures> {
    let load = Load {
        events: args.rate * args.seconds as usize,
        pace: Some(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64)),
        warmup: args.rate * STEADY_WARMUP_SECONDS,
    };
    scenario("steady", args, sink, 1, load).await
}

pub async fn burst(args: &BenchArgs, sink: &Sink) -> anyhow::Result<Figures> {
    scenario("burst", args, sink, 1, Load::flat_out(args.burst)).await
}

/// Queues `size` deliveries with no worker running (events to the `fanout` endpoints, as a
/// backlog of many receivers), then times one worker emptying the queue.
pub async fn drain(args: &BenchArgs, sink: &Sink, size: usize) -> anyhow::Result<Figures> {
    let endpoints = args.fanout.clamp(1, size.max(1));
    let events = size.div_ceil(endpoints);
    eprintln!(
        "drain-{size}: queueing {} deliveries ({events} events × {endpoints} endpoints) with no worker…",
        events * endpoints
    );
    sink.reset();
    let server = Arc::new(Server::start(args, sink, endpoints, true).await?);
    let queueing = Progress::start(&format!("drain-{size}"), sink);
    let recorded = record(&server, args, events, None, &queueing).await;
    drop(queueing);
    let queued = recorded.acks.len() * endpoints;
    let mut server =
        Arc::try_unwrap(server).map_err(|_| anyhow::anyhow!("the server is still shared"))?;
    eprintln!("drain-{size}: starting one worker…");
    let draining = Progress::start(&format!("drain-{size}"), sink);
    let (started, cpu_start) = (Instant::now(), server.cpu());
    let landed: anyhow::Result<Landed> = async {
        server.start_worker()?;
        sink.landed(args, &server, &recorded, queued, DELIVERY_DEADLINE)
            .await
    }
    .await;
    drop(draining);
    let landed = match landed {
        Ok(landed) => landed,
        Err(err) => {
            server.stop().await;
            return Err(err);
        }
    };
    let end = landed.end;
    let figures = Figures {
        scenario: format!("drain-{size}"),
        backend: backend(args).into(),
        events: recorded.acks.len(),
        deliveries: landed.count,
        deliveries_per_second: landed.count as f64
            / end.duration_since(started).as_secs_f64().max(1e-9),
        seconds: end.duration_since(started).as_secs_f64(),
        peak_rss_mib: landed.peak_rss_mib,
        errors: recorded.errors + queued.saturating_sub(landed.count),
        ..Figures::default()
    }
    .with_cpu(cpu::Spent::between(&cpu_start, &landed.cpu));
    server.stop().await;
    Ok(figures)
}

/// Plain keep-alive POSTs from the same HTTP client to the same receiver: the machine's limit.
pub async fn ceiling(args: &BenchArgs, sink: &Sink) -> anyhow::Result<Figures> {
    eprintln!("ceiling: {} plain POSTs…", args.requests);
    sink.reset();
    let client = reqwest::Client::builder().no_proxy().build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let (started, cpu_start) = (Instant::now(), cpu::Reading::now(&[]));
    let mut handles = Vec::new();
    for _ in 0..args.clients {
        let (client, next, url) = (client.clone(), next.clone(), sink.ceiling_url());
        let (total, interrupted) = (args.requests, args.interrupted.clone());
        handles.push(tokio::spawn(async move {
            let (mut answered, mut errors) = (0, 0);
            while next.fetch_add(1, Ordering::SeqCst) < total && !interrupted.is_cancelled() {
                let body =
                    r#"{"action":"updated","data":{"task":{"id":"0","status":"EXECUTING"}}}"#;
                let sent = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => answered += 1,
                    _ => errors += 1,
                }
            }
            (answered, errors)
        }));
    }
    let (mut answered, mut errors) = (0, 0);
    for handle in handles {
        let (a, e) = handle.await.unwrap_or((0, 1));
        answered += a;
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Figures {
        scenario: "ceiling".into(),
        backend: "-".into(),
        deliveries: answered,
        deliveries_per_second: answered as f64 / seconds,
        seconds,
        errors,
        ..Figures::default()
    }
    .with_cpu(cpu::Spent::between(&cpu_start, &cpu::Reading::now(&[]))))
}
