//! `herald demo`: Herald at work in under a minute. It starts the server on a temporary SQLite
//! database with a local receiver, creates an organization, a repository and a signed endpoint,
//! plays a build with three tasks through their statuses over the real GraphQL API, and prints
//! every delivery as it arrives (with its verified signatures), then keeps serving until
//! SIGINT or SIGTERM so the API and the delivery log can be explored with the printed token.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use axum::http::StatusCode;
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{App, Role};
use crate::config::Config;
use crate::domain::{Permission, RetrySchedule};
use crate::store;
use crate::tools::listen::{self, ListenOptions};
use crate::tools::receive::DEFAULT_TOLERANCE;

/// The pause between two steps of the scenario, so its deliveries can be read as they come.
const STEP: Duration = Duration::from_millis(250);

/// The three tasks of the demo build.
const TASKS: [&str; 3] = ["lint", "test", "package"];

/// Runs the demo on `listen` (port 0 picks a free port) until SIGINT or SIGTERM.
pub async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("herald-demo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the demo directory {}", dir.display()))?;
    let result = run_in(&dir, listen).await;
    // The database is a throwaway: nothing of the demo outlives it.
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(dir: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    crate::app::cancel_on_signal(shutdown.clone());

    let secret = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let receiver = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo receiver")?;
    let receiver_url = format!("http://{}/hook", receiver.local_addr()?);
    let options = ListenOptions {
        secret: Some(secret.clone()),
        status: StatusCode::OK,
        json: false,
        tolerance: DEFAULT_TOLERANCE,
    };
    let receiver = tokio::spawn(listen::serve(receiver, options, shutdown.clone()));

    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen} (pass --listen to choose another address)"))?;
    let addr = listener.local_addr()?;
    let database = format!("sqlite://{}?mode=rwc", dir.join("herald.db").display());
    let mut config = Config::defaults(database);
    config.listen = addr;
    // The receiver is on loopback, which Herald refuses unless told otherwise.
    config.allow_private_targets = true;
    config.retry_schedule = RetrySchedule::parse("1s,5s,30s").map_err(|err| anyhow!(err))?;
    config.shutdown_grace = Duration::from_secs(2);
    let app = App::build(config, listener, Role::All).await?;
    let state = app.state().clone();
    let server = tokio::spawn(app.run(shutdown.clone()));

    let org = store::orgs::create(state.writes.conn(), "demo")
        .await
        .map_err(|err| anyhow!("{err}"))?;
    let token = state
        .keys
        .issue(&org.id.to_string(), "demo", Permission::Admin, 24 * 3600)
        .map_err(|err| anyhow!("{err}"))?;
    println!("Herald demo, on a temporary database in {}", dir.display());
    println!("  console:  http://{addr}/   (GraphiQL: http://{addr}/graphql)");
    println!("  token:    {token}");
    println!("  receiver: {receiver_url} (signed with a generated secret)");
    println!();

    let api = Api {
        http: reqwest::Client::new(),
        url: format!("http://{addr}/graphql"),
        token: token.clone(),
    };
    let org_uid = org.id.to_string();
    let played = tokio::select! {
        played = play(&api, &org_uid, &receiver_url, &secret) => Some(played),
        _ = shutdown.cancelled() => None,
    };
    if let Some(played) = played {
        if let Err(err) = played {
            shutdown.cancel();
            let _ = server.await;
            let _ = receiver.await;
            return Err(err);
        }
        println!();
        println!("Every delivery arrived. Herald keeps serving; try the delivery log:");
        println!(
            "  curl -s http://{addr}/graphql -H 'Authorization: Bearer {token}' -H 'content-type: application/json' \\\n    -d '{{\"query\": \"{{ viewer {{ webhookDeliveries(first: 20) {{ edges {{ node {{ event action state attempts }} }} }} }} }}\"}}'"
        );
        println!("Press Ctrl-C to stop.");
    }
    shutdown.cancelled().await;
    server.await.context("joining the server")??;
    receiver.await.context("joining the receiver")??;
    eprintln!("The demo stopped; its database is deleted.");
    Ok(())
}

/// A GraphQL client with the demo's ADMIN token.
struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn run(&self, query: &str, variables: Json) -> anyhow::Result<Json> {
        let text = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(json!({ "query": query, "variables": variables }).to_string())
            .send()
            .await
            .context("calling the demo's GraphQL API")?
            .text()
            .await
            .context("reading the demo's GraphQL answer")?;
        let response: Json =
            serde_json::from_str(&text).context("reading the demo's GraphQL answer")?;
        if let Some(error) = response["errors"][0]["message"].as_str() {
            bail!("the demo's GraphQL request failed: {error}");
        }
        Ok(response["data"].clone())
    }

    /// Runs a mutation and returns the id at `path` in its answer.
    async fn id(&self, query: &str, variables: Json, path: &[&str]) -> anyhow::Result<String> {
        let data = self.run(query, variables).await?;
        let id = path.iter().fold(&data, |value, key| &value[*key]);
        id.as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the demo's GraphQL answer has no id"))
    }
}

async fn play(api: &Api, org: &str, receiver: &str, secret: &str) -> anyhow::Result<()> {
    let repository = api
        .id(
            "mutation($org: ID!) { createRepository(input: {ownerUid: $org, name: \"hello-world\"}) { repository { id } } }",
            json!({ "org": org }),
            &["createRepository", "repository", "id"],
        )
        .await?;
    api.run(
        "mutation($org: ID!, $url: String!, $secret: String!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: $url, secretToken: $secret}) { endpoint { id } } }",
        json!({ "org": org, "url": receiver, "secret": secret }),
    )
    .await?;
    let build = api
        .id(
            "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"main\", changeIdInRepo: \"4f2a9c1\", changeMessageTitle: \"Greet the world\"}) { build { id } } }",
            json!({ "repo": repository }),
            &["createBuild", "build", "id"],
        )
        .await?;
    let build_status = "mutation($id: ID!, $status: BuildStatus!) { updateBuildStatus(input: {buildId: $id, status: $status}) { build { id } } }";
    let task_status = "mutation($id: ID!, $status: TaskStatus!) { updateTaskStatus(input: {taskId: $id, status: $status}) { task { id } } }";
    tokio::time::sleep(STEP).await;
    api.run(build_status, json!({ "id": build, "status": "EXECUTING" }))
        .await?;
    let mut tasks = Vec::new();
    for name in TASKS {
        tokio::time::sleep(STEP).await;
        let task = api
            .id(
                "mutation($build: ID!, $name: String!) { createTask(input: {buildId: $build, name: $name}) { task { id } } }",
                json!({ "build": build, "name": name }),
                &["createTask", "task", "id"],
            )
            .await?;
        tasks.push(task);
    }
    for status in ["EXECUTING", "COMPLETED"] {
        for task in &tasks {
            tokio::time::sleep(STEP).await;
            api.run(task_status, json!({ "id": task, "status": status }))
                .await?;
        }
    }
    tokio::time::sleep(STEP).await;
    api.run(build_status, json!({ "id": build, "status": "COMPLETED" }))
        .await?;
    wait_until_delivered(api).await
}

/// Waits until the delivery log shows every delivery delivered (or 30 seconds pass).
async fn wait_until_delivered(api: &Api) -> anyhow::Result<()> {
    let query = "{ viewer { webhookDeliveries(first: 100) { edges { node { state } } } } }";
    for _ in 0..120 {
        let data = api.run(query, json!({})).await?;
        let edges = data["viewer"]["webhookDeliveries"]["edges"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !edges.is_empty()
            && edges
                .iter()
                .all(|edge| edge["node"]["state"] == "DELIVERED")
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("the demo's deliveries did not all arrive within 30 seconds")
}
