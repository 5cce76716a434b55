//! The Herald under test: one the bench started on a fresh database, or a server of the user's
//! (`--url`) in whose organization the bench adds its endpoints; its GraphQL, its delivery log,
//! and what it costs in CPU and memory.

use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::BenchArgs;
use super::cpu;
use super::setup::{BENCH_SECRET, Owned, SELECTION, fresh_database, spawn};
use super::sink::Sink;
use crate::domain::Permission;
use crate::schema::TokenKeys;
use crate::store;

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

    pub(super) fn start_worker(&mut self) -> anyhow::Result<()> {
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
    pub(super) async fn wait_finished(&self, deadline: Duration) -> anyhow::Result<bool> {
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
    pub(super) async fn answers(&self) -> anyhow::Result<Vec<(String, Instant)>> {
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
