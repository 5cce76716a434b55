//! Scaling out: several processes on one PostgreSQL share the queue, lose nothing and send
//! nothing twice without a crash; leases are fenced; a tarpit does not starve others.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald::app::Role;
use herald::domain::DeliveryState;
use herald::store::deliveries::{self, AttemptRecord};
use herald::store::entities::delivery;
use sea_orm::EntityTrait as _;
use serde_json::{Value, json};

use crate::support::{
    Client, Herald, PgDatabase, Received, Receiver, Reply, TestApp, World, free_port,
    herald_output, task_at,
};

crate::on_both_backends!(
    an_attempt_whose_lease_was_taken_over_changes_nothing,
    a_claim_says_whether_it_may_have_left_due_deliveries,
    a_claim_takes_every_endpoints_first_delivery_before_any_endpoints_second,
    an_outcome_says_for_which_endpoints_it_released_held_deliveries,
    a_redelivered_delivery_hands_its_chain_on_in_order,
    a_redelivery_fences_out_the_claim_whose_lease_ran_out,
    a_tarpit_endpoint_does_not_starve_another_organization,
    an_upgrade_keeps_every_queued_delivery_and_its_order,
    a_worker_removes_deliveries_left_queued_for_a_deleted_endpoint
);

/// One `herald serve --no-worker` and `workers` `herald worker` processes on a fresh database,
/// with an organization, a token and an endpoint pointing at `receiver`.
struct Cluster {
    database: PgDatabase,
    api: Herald,
    workers: Vec<Herald>,
    client: Client,
    repository: String,
}

impl Cluster {
    async fn start(workers: usize, receiver: &Receiver) -> Option<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let database = PgDatabase::create().await?;
        herald_output(&database.url, &["migrate"]);
        let org = herald_output(&database.url, &["org", "create", "acme"]);
        let token = herald_output(
            &database.url,
            &["token", "issue", "--org", "acme", "--permission", "ADMIN"],
        );
        let (api, client) = api_process(&database, &token).await;
        let workers = (0..workers)
            .map(|_| Herald::spawn(&database.url, &["worker"]))
            .collect();
        client
            .gql(
                "mutation($org: ID!, $url: String!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: $url}) { endpoint { id } } }",
                json!({ "org": org, "url": receiver.url("/hook") }),
            )
            .await;
        let repo = client.gql("mutation($org: ID!) { createRepository(input: {ownerUid: $org, name: \"app\"}) { repository { id } } }", json!({ "org": org })).await;
        let repository = repo["createRepository"]["repository"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        Some(Self {
            database,
            api,
            workers,
            client,
            repository,
        })
    }

    /// Records a build of the repository; its id.
    async fn new_build(&self) -> String {
        let build = self
            .client
            .gql(CREATE_BUILD, json!({ "repo": self.repository }))
            .await;
        build["createBuild"]["build"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

/// A `herald serve --no-worker` on `database`, once healthy, and a client of it with `token`.
async fn api_process(database: &PgDatabase, token: &str) -> (Herald, Client) {
    let port = free_port();
    let api = Herald::spawn(
        &database.url,
        &[
            "serve",
            "--no-worker",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
    );
    let client = Client::new(port, token);
    client.wait_healthy().await;
    (api, client)
}

const CREATE_BUILD: &str = "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"main\", changeIdInRepo: \"c\"}) { build { id } } }";
const CREATE_TASK: &str = "mutation($build: ID!, $name: String!) { createTask(input: {buildId: $build, name: $name}) { task { id } } }";

/// Records `builds` builds with `tasks` tasks each from `lanes` concurrent clients, retrying a
/// mutation that failed (a failed mutation changed nothing). Returns how many events were
/// acknowledged.
async fn record_events(
    client: &Client,
    repository: &str,
    builds: usize,
    tasks: usize,
    lanes: usize,
) -> usize {
    let mut handles = Vec::new();
    for lane in 0..lanes {
        let client = client.clone();
        let repository = repository.to_owned();
        handles.push(tokio::spawn(async move {
            let mut acknowledged = 0;
            for _ in (lane..builds).step_by(lanes) {
                let build = retrying(&client, CREATE_BUILD, json!({ "repo": repository })).await;
                let build = build["createBuild"]["build"]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                acknowledged += 1;
                for t in 0..tasks {
                    retrying(
                        &client,
                        CREATE_TASK,
                        json!({ "build": build, "name": format!("task-{t}") }),
                    )
                    .await;
                    acknowledged += 1;
                }
            }
            acknowledged
        }));
    }
    let mut total = 0;
    for handle in handles {
        total += handle.await.unwrap();
    }
    total
}

async fn retrying(client: &Client, query: &str, variables: Value) -> Value {
    for _ in 0..100 {
        match client.try_gql(query, variables.clone()).await {
            Ok(data) => return data,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("a mutation kept failing");
}

/// Waits until `expected` distinct deliveries arrived, then a little longer for duplicates;
/// returns (distinct, total).
async fn settle(receiver: &Receiver, expected: usize) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let distinct = distinct_ids(receiver).len();
        if distinct >= expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {distinct} of {expected} events were delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (distinct_ids(receiver).len(), receiver.received().len())
}

fn distinct_ids(receiver: &Receiver) -> HashSet<String> {
    receiver
        .received()
        .iter()
        .map(|r| r.header("x-cirrus-delivery").unwrap().to_owned())
        .collect()
}

/// Checks each build's events arrived in order: its `created` event first, then its tasks.
fn assert_per_build_order(receiver: &Receiver) {
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for received in receiver.received() {
        let body = received.json();
        let build = body["data"]["build"]["id"].as_str().unwrap().to_owned();
        let what = match received.header("x-cirrus-event") {
            Some("build") => "build".to_owned(),
            _ => body["data"]["task"]["name"].as_str().unwrap().to_owned(),
        };
        let events = seen.entry(build).or_default();
        if !events.contains(&what) {
            events.push(what);
        }
    }
    for (build, events) in seen {
        assert_eq!(
            events[0], "build",
            "build {build}: a task event overtook the build's creation"
        );
        let tasks: Vec<usize> = events[1..]
            .iter()
            .map(|name| name.trim_start_matches("task-").parse().unwrap())
            .collect();
        assert!(
            tasks.windows(2).all(|w| w[0] < w[1]),
            "build {build}: tasks out of order: {tasks:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_api_and_two_workers_deliver_two_thousand_events_exactly_once() {
    let receiver = Receiver::start().await;
    let Some(cluster) = Cluster::start(2, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let acknowledged = record_events(&cluster.client, &cluster.repository, 100, 19, 8).await;
    assert_eq!(acknowledged, 2000);
    let (distinct, total) = settle(&receiver, acknowledged).await;
    assert_eq!(distinct, 2000, "every event was delivered");
    assert_eq!(total, 2000, "no event was delivered twice");
    assert_per_build_order(&receiver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_at_random_lose_nothing() {
    let receiver = Receiver::start().await;
    receiver.default_reply(Reply::status(200).delay(Duration::from_millis(10)));
    let Some(mut cluster) = Cluster::start(2, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let recording = {
        let client = cluster.client.clone();
        let repository = cluster.repository.clone();
        tokio::spawn(async move { record_events(&client, &repository, 60, 19, 4).await })
    };
    for kill in 0..12 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let victim = (herald::now_ms() as usize + kill) % cluster.workers.len();
        cluster.workers[victim].kill_and_restart();
    }
    let acknowledged = recording.await.unwrap();
    let (distinct, total) = settle(&receiver, acknowledged).await;
    assert_eq!(distinct, acknowledged, "no event was lost");
    println!(
        "12 worker kills while {acknowledged} events flowed caused {} duplicate deliveries",
        total - distinct
    );
    assert!(
        total - distinct <= 12 * 2 * 8,
        "only in-flight attempts may repeat"
    );
    assert!(cluster.api.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_database_connections_lose_nothing_and_need_no_restart() {
    let receiver = Receiver::start().await;
    let Some(mut cluster) = Cluster::start(1, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let stop = Arc::new(AtomicBool::new(false));
    let terminator = {
        let stop = stop.clone();
        let name = cluster.database.name().to_owned();
        let database_url = cluster.database.url.clone();
        tokio::spawn(async move {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let admin = sea_orm::Database::connect(&database_url).await.unwrap();
                use sea_orm::ConnectionTrait;
                admin
                    .execute_unprepared(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                    ))
                    .await
                    .unwrap();
                admin.close().await.ok();
                rounds += 1;
            }
            rounds
        })
    };
    let acknowledged = record_events(&cluster.client, &cluster.repository, 30, 19, 4).await;
    stop.store(true, Ordering::Relaxed);
    let rounds = terminator.await.unwrap();
    assert!(
        rounds >= 3,
        "the connections were terminated only {rounds} times"
    );
    let (distinct, _) = settle(&receiver, acknowledged).await;
    assert_eq!(
        distinct, acknowledged,
        "every acknowledged event was delivered"
    );
    assert!(
        cluster.api.running() && cluster.workers[0].running(),
        "no process had to restart"
    );
    println!("{rounds} rounds of pg_terminate_backend during {acknowledged} events: nothing lost");
}

/// Two API processes changing the same tasks at the same moment record one event per task, from
/// the status it really had: a batch's read of the tasks it changes locks them, so the second
/// batch reads them as the first left them and finds nothing to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_changing_the_same_tasks_record_one_event_each() {
    const TASKS: usize = 20;
    let receiver = Receiver::start().await;
    let Some(cluster) = Cluster::start(1, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let (_second_api, second) = api_process(&cluster.database, &cluster.client.token).await;
    // A build per task: each process takes all the changes in one batch.
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let build = cluster.new_build().await;
        let task = cluster
            .client
            .gql(
                CREATE_TASK,
                json!({ "build": build, "name": format!("task-{t}") }),
            )
            .await;
        tasks.push(
            task["createTask"]["task"]["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut requests = tokio::task::JoinSet::new();
    for task in &tasks {
        for client in [&cluster.client, &second] {
            let (client, task) = (client.clone(), task.clone());
            requests.spawn(async move {
                client
                    .gql(
                        "mutation($task: ID!) { updateTaskStatus(input: {taskId: $task, status: EXECUTING}) { task { status } } }",
                        json!({ "task": task }),
                    )
                    .await
            });
        }
    }
    while let Some(answer) = requests.join_next().await {
        assert_eq!(
            answer.unwrap()["updateTaskStatus"]["task"]["status"],
            "EXECUTING"
        );
    }
    let expected = 2 * TASKS + TASKS;
    let (distinct, _) = settle(&receiver, expected).await;
    let mut updates: HashMap<String, Vec<Value>> = HashMap::new();
    for received in receiver.received() {
        let body = received.json();
        if body["action"] == "updated" {
            let task = body["data"]["task"]["id"].as_str().unwrap().to_owned();
            updates
                .entry(task)
                .or_default()
                .push(body["old_status"].clone());
        }
    }
    let twice: Vec<_> = updates.iter().filter(|(_, olds)| olds.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "tasks with more than one event: {twice:?}"
    );
    assert_eq!(updates.len(), TASKS);
    assert!(updates.values().all(|olds| olds == &vec![json!("CREATED")]));
    assert_eq!(distinct, expected, "one event per change that happened");
}

/// Two API processes changing the same builds' statuses at once, each in the opposite order,
/// lock the builds in one order: no batch of changes deadlocks and has to be written again one
/// change at a time, and each change records one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_changing_builds_in_opposite_orders_do_not_deadlock() {
    const BUILDS: usize = 48;
    const STATUSES: [&str; 5] = ["TRIGGERED", "EXECUTING", "FAILED", "EXECUTING", "COMPLETED"];
    let receiver = Receiver::start().await;
    let Some(cluster) = Cluster::start(1, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let (_second_api, second) = api_process(&cluster.database, &cluster.client.token).await;
    let mut builds = Vec::new();
    for _ in 0..BUILDS {
        builds.push(cluster.new_build().await);
    }
    for status in STATUSES {
        let mut requests = tokio::task::JoinSet::new();
        for n in 0..BUILDS {
            let forward = (cluster.client.clone(), builds[n].clone());
            let backward = (second.clone(), builds[BUILDS - 1 - n].clone());
            for (client, build) in [forward, backward] {
                requests.spawn(async move {
                    client
                        .gql(
                            "mutation($build: ID!, $status: BuildStatus!) { updateBuildStatus(input: {buildId: $build, status: $status}) { build { status } } }",
                            json!({ "build": build, "status": status }),
                        )
                        .await
                });
            }
        }
        while let Some(answer) = requests.join_next().await {
            assert_eq!(
                answer.unwrap()["updateBuildStatus"]["build"]["status"],
                status
            );
        }
    }
    for client in [&cluster.client, &second] {
        assert_eq!(
            client.metric("herald_change_batches_split_total").await,
            0.0
        );
    }
    let expected = BUILDS * (1 + STATUSES.len());
    let (distinct, _) = settle(&receiver, expected).await;
    assert_eq!(distinct, expected, "one event per change that happened");
    let mut olds: HashMap<String, Vec<Value>> = HashMap::new();
    let mut seen = HashSet::new();
    for received in receiver.received() {
        // At least once: a delivery sent again counts once.
        if !seen.insert(received.header("x-cirrus-delivery").unwrap().to_owned()) {
            continue;
        }
        let body = received.json();
        if body["action"] == "updated" {
            let build = body["data"]["build"]["id"].as_str().unwrap().to_owned();
            olds.entry(build)
                .or_default()
                .push(body["old_status"].clone());
        }
    }
    assert_eq!(olds.len(), BUILDS);
    let changes: Vec<Value> = ["CREATED"]
        .iter()
        .chain(&STATUSES[..STATUSES.len() - 1])
        .map(|status| json!(status))
        .collect();
    assert!(olds.values().all(|olds| olds == &changes), "{olds:?}");
}

/// Each change that queues a delivery due now announces it on PostgreSQL's channel at its
/// commit, so a worker of another process sends it at once instead of at its next poll. A
/// delivery held behind an unfinished one of its chain is not announced: the worker that
/// finishes that one releases it, and would only claim nothing if woken for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_queues_due_deliveries_notifies_the_workers() {
    let receiver = Receiver::start().await;
    let Some(cluster) = Cluster::start(0, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let mut listener = sea_orm::sqlx::postgres::PgListener::connect(&cluster.database.url)
        .await
        .unwrap();
    listener.listen(deliveries::CHANNEL).await.unwrap();
    // Two builds, one after the other, each with two tasks: with no worker running, each
    // build's first delivery is due and its tasks' are held behind it.
    let acknowledged = record_events(&cluster.client, &cluster.repository, 2, 2, 1).await;
    assert_eq!(acknowledged, 6);
    let mut announced = 0;
    while let Ok(notification) = tokio::time::timeout(Duration::from_secs(2), listener.recv()).await
    {
        notification.unwrap();
        announced += 1;
    }
    assert_eq!(
        announced, 2,
        "one notification per change with a due delivery"
    );
}

/// The statements that claim, lease and record deliveries read the rows they name, not the
/// whole of `deliveries`, also on a new database: PostgreSQL settles a statement's plan after
/// a few runs, while the table is nearly empty, and a plan that scans it then keeps scanning
/// it as it grows (until autovacuum analyzes it, which this machine's PostgreSQL never does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_worker_reads_deliveries_by_key_as_the_table_grows() {
    use sea_orm::{ConnectionTrait, Statement};
    let Some(app) = TestApp::start(crate::support::Backend::Postgres).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({}))
        .await;
    // One build at a time, each delivered before the next: a claim, a lease and an outcome
    // for each, almost all of them on settled plans.
    let builds = 60;
    for n in 1..=builds {
        world.build(&app).await;
        receiver.wait_for(n).await;
    }
    // A backend reports its counters once a second at most.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let statement = Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT seq_tup_read AS n FROM pg_stat_user_tables WHERE relname = 'deliveries'",
    );
    let row = app
        .state
        .db
        .query_one_raw(statement)
        .await
        .unwrap()
        .unwrap();
    let scanned: i64 = row.try_get("", "n").unwrap();
    assert!(
        scanned < builds as i64,
        "scans read {scanned} rows of deliveries for {builds} deliveries"
    );
}

/// A TCP proxy in front of PostgreSQL that, once armed, passes the next `COMMIT` to the server
/// and then cuts the connection, without passing on the server's answer: a commit whose outcome
/// the client cannot know.
struct CommitCutter {
    port: u16,
    armed: Arc<AtomicBool>,
}

impl CommitCutter {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let arming = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let armed = arming.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let answers = tokio::spawn(async move {
                        tokio::io::copy(&mut from_server, &mut to_client).await
                    });
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = from_client.read(&mut buffer).await {
                        let sent = &buffer[..n];
                        let cut = sent.windows(6).any(|w| w == b"COMMIT")
                            && armed.swap(false, Ordering::SeqCst);
                        if cut {
                            answers.abort();
                        }
                        if to_server.write_all(sent).await.is_err() {
                            break;
                        }
                        if cut {
                            // Time for the server to commit, then both ends are dropped.
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            break;
                        }
                    }
                    answers.abort();
                });
            }
        });
        Self { port, armed }
    }
}

/// A change whose commit the database never confirms (the connection is cut after `COMMIT`
/// was sent) may have been recorded: the client is told so, not that nothing changed, which
/// would invite it to record the build a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_commit_is_not_confirmed_is_not_said_to_have_changed_nothing() {
    use sea_orm::{ConnectionTrait, Statement};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(database) = PgDatabase::create().await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    herald_output(&database.url, &["migrate"]);
    let org = herald_output(&database.url, &["org", "create", "acme"]);
    let token = herald_output(
        &database.url,
        &["token", "issue", "--org", "acme", "--permission", "ADMIN"],
    );
    let mut through = url::Url::parse(&database.url).unwrap();
    let upstream = (
        through.host_str().unwrap().to_owned(),
        through.port().unwrap_or(5432),
    );
    let upstream = tokio::net::lookup_host(upstream)
        .await
        .unwrap()
        .next()
        .unwrap();
    let cutter = CommitCutter::start(upstream).await;
    through.set_host(Some("127.0.0.1")).unwrap();
    through.set_port(Some(cutter.port)).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _api = Herald::spawn(
        through.as_str(),
        &["serve", "--no-worker", "--listen", &listen],
    );
    let client = Client::new(port, &token);
    client.wait_healthy().await;
    let repo = client.gql("mutation($org: ID!) { createRepository(input: {ownerUid: $org, name: \"app\"}) { repository { id } } }", json!({ "org": org })).await;
    let repo = repo["createRepository"]["repository"]["id"].clone();

    cutter.armed.store(true, Ordering::SeqCst);
    let answer = client.try_gql(CREATE_BUILD, json!({ "repo": repo })).await;
    let error = answer.expect_err("the commit's answer was cut");
    assert!(
        error.contains("may have been recorded") && !error.contains("nothing was changed"),
        "{error}"
    );
    // And it was recorded, with its event.
    let db = sea_orm::Database::connect(&database.url).await.unwrap();
    for table in ["builds", "events"] {
        let sql = format!("SELECT COUNT(*) AS n FROM {table}");
        let statement = Statement::from_string(sea_orm::DbBackend::Postgres, sql);
        let row = db.query_one_raw(statement).await.unwrap().unwrap();
        assert_eq!(row.try_get::<i64>("", "n").unwrap(), 1, "{table}");
    }
    db.close().await.ok();
}

/// Processes started together on a new PostgreSQL database each apply the migrations at start:
/// they take turns, and every one of them starts (rather than all but one failing on tables
/// another had just created).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_together_on_a_new_database_all_start() {
    use herald_migrations::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, Statement};
    let Some(database) = PgDatabase::create().await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let mut workers: Vec<Herald> = (0..4)
        .map(|_| Herald::spawn(&database.url, &["worker"]))
        .collect();
    let db = sea_orm::Database::connect(&database.url).await.unwrap();
    let applied = "SELECT COUNT(*) AS n FROM seaql_migrations";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let statement = Statement::from_string(sea_orm::DbBackend::Postgres, applied);
        let count = match db.query_one_raw(statement).await {
            Ok(Some(row)) => row.try_get::<i64>("", "n").unwrap(),
            _ => 0,
        };
        if count == Migrator::migrations().len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "the migrations were not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (n, worker) in workers.iter_mut().enumerate() {
        assert!(worker.running(), "worker {n} stopped at its start");
    }
    db.close().await.ok();
}

/// Herald's connections to a PostgreSQL on loopback are in the clear although the server offers
/// TLS (which sqlx, like libpq, otherwise takes whenever offered): on loopback it protects
/// nothing and costs every statement. The same query sees TLS on a connection that asks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_postgres_on_loopback_do_not_use_tls() {
    use sea_orm::{ConnectionTrait, Statement};
    let receiver = Receiver::start().await;
    let Some(cluster) = Cluster::start(1, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let acknowledged = record_events(&cluster.client, &cluster.repository, 2, 3, 2).await;
    settle(&receiver, acknowledged).await;
    let mut asking = url::Url::parse(&cluster.database.url).unwrap();
    asking.query_pairs_mut().append_pair("sslmode", "prefer");
    // One connection, so that `pg_backend_pid()` is the only one of the test's.
    let mut options = sea_orm::ConnectOptions::new(asking.to_string());
    options.max_connections(1).sqlx_logging(false);
    let admin = sea_orm::Database::connect(options).await.unwrap();
    let query = |sql: &str| Statement::from_string(sea_orm::DbBackend::Postgres, sql.to_owned());
    let offered = admin
        .query_one_raw(query("SHOW ssl"))
        .await
        .unwrap()
        .unwrap();
    if offered.try_get::<String>("", "ssl").unwrap() != "on" {
        return eprintln!("skipped: the test PostgreSQL does not offer TLS");
    }
    let own = admin
        .query_one_raw(query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(
        own.try_get::<bool>("", "ssl").unwrap(),
        "a connection with sslmode=prefer uses TLS"
    );
    let herald = admin
        .query_all_raw(query(&format!(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = '{}' AND a.pid <> pg_backend_pid()",
            cluster.database.name()
        )))
        .await
        .unwrap();
    let tls: Vec<bool> = herald
        .iter()
        .map(|row| row.try_get::<bool>("", "ssl").unwrap())
        .collect();
    admin.close().await.ok();
    assert!(
        tls.len() >= 3,
        "the API's and the worker's connections, with the listener: {tls:?}"
    );
    assert!(
        tls.iter().all(|tls| !tls),
        "no connection of Herald's uses TLS: {tls:?}"
    );
}

/// An API-only Herald on `app`'s backend, for a test that plays the worker itself, with an
/// organization and one endpoint that nothing sends to.
async fn without_worker(app: TestApp) -> (TestApp, World) {
    let backend = app.backend;
    drop(app);
    let app = TestApp::start_role(backend, Role::ApiOnly, |_| {})
        .await
        .unwrap();
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, "http://127.0.0.1:9/hook", json!({}))
        .await;
    (app, world)
}

/// A redelivery made after a claim's lease ran out takes the delivery from that claim: the
/// expired attempt's outcome (here a last attempt's failure), decided on the old schedule,
/// cannot land on the redelivery.
async fn a_redelivery_fences_out_the_claim_whose_lease_ran_out(app: TestApp) {
    let (app, world) = without_worker(app).await;
    world.build(&app).await;
    let db = &app.state.db;
    let tx = herald::store::begin_write(db).await.unwrap();
    let request = deliveries::ClaimRequest {
        now: herald::now_ms(),
        lease_ms: 1,
        limit: 10,
        busy: Vec::new(),
        room_of: |_| 10,
        per_endpoint: 16,
        after: 0,
    };
    let deliveries::Leases { token, rows, .. } = deliveries::claim(&tx, request).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(rows.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let uid = rows[0].uid.clone();
    app.ok(
        &world.admin,
        "mutation($id: ID!) { redeliverWebHook(input: {deliveryId: $id}) { delivery { id } } }",
        json!({ "id": uid }),
    )
    .await;

    let stale = AttemptRecord {
        delivery_id: rows[0].id.into(),
        endpoint_id: rows[0].endpoint_id.into(),
        build_id: rows[0].build_id.map(Into::into),
        token,
        state: DeliveryState::Failed,
        next_attempt_at: herald::now_ms(),
        timestamp: herald::now_ms(),
        status: Some(500),
        duration_ms: 5,
        error: Some("The receiver answered 500.".into()),
        response_headers: "{}".into(),
        response_body: String::new(),
    };
    let recorded = deliveries::record_attempts(db, &[&stale]).await.unwrap();
    assert!(
        recorded.ids.is_empty(),
        "the stale claim's outcome was written"
    );
    let delivery = app
        .ok(
            &world.admin,
            "query($id: ID!) { webhookDelivery(id: $id) { state attempts } }",
            json!({ "id": uid }),
        )
        .await;
    assert_eq!(
        delivery["webhookDelivery"],
        json!({"state": "PENDING", "attempts": 0}),
        "the redelivery waits for its own attempt"
    );
}

async fn an_attempt_whose_lease_was_taken_over_changes_nothing(app: TestApp) {
    let (app, world) = without_worker(app).await;
    world.build(&app).await;
    let db = &app.state.db;

    let claim = |lease_ms: i64| async move {
        let tx = herald::store::begin_write(db).await.unwrap();
        let request = deliveries::ClaimRequest {
            now: herald::now_ms(),
            lease_ms,
            limit: 10,
            busy: Vec::new(),
            room_of: |_| 10,
            per_endpoint: 16,
            after: 0,
        };
        let claimed = deliveries::claim(&tx, request).await.unwrap();
        tx.commit().await.unwrap();
        claimed
    };
    let deliveries::Leases {
        token: stale, rows, ..
    } = claim(1).await;
    assert_eq!(rows.len(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let deliveries::Leases {
        token: current,
        rows,
        ..
    } = claim(60_000).await;
    assert_eq!(rows.len(), 1, "the expired lease was taken over");
    let id = rows[0].id;
    assert!(
        claim(60_000).await.rows.is_empty(),
        "a held lease is not claimed again"
    );

    let outcome = |token: &str, state: DeliveryState, status: i32| AttemptRecord {
        delivery_id: id.into(),
        endpoint_id: rows[0].endpoint_id.into(),
        build_id: rows[0].build_id.map(Into::into),
        token: token.to_owned(),
        state,
        next_attempt_at: herald::now_ms(),
        timestamp: herald::now_ms(),
        status: Some(status),
        duration_ms: 5,
        error: None,
        response_headers: "{}".into(),
        response_body: String::new(),
    };
    let recorded = deliveries::record_attempts(
        db,
        &[
            &outcome(&current, DeliveryState::Delivered, 200),
            &outcome(&stale, DeliveryState::Failed, 500),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        recorded.ids.into_iter().collect::<Vec<_>>(),
        vec![id],
        "only the current lease's attempt is recorded"
    );
    let stale_alone =
        deliveries::record_attempts(db, &[&outcome(&stale, DeliveryState::Failed, 500)])
            .await
            .unwrap();
    assert!(stale_alone.ids.is_empty(), "a stale token records nothing");
    let org: i64 = world.org.parse().unwrap();
    let page = herald::store::Page::new(Some(5), None).unwrap();
    let row = deliveries::list(db, org, None, None, page)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (row.state.as_str(), row.attempts, row.last_status),
        ("DELIVERED", 1, Some(200))
    );
    assert_eq!(
        deliveries::attempts(db, id).await.unwrap().len(),
        1,
        "the stale attempt left no record"
    );
}

/// The worker claims again when a slot frees only if its last claim may have left due
/// deliveries behind; a claim that says it took them all when it did not would leave them to
/// the poll.
async fn a_claim_says_whether_it_may_have_left_due_deliveries(app: TestApp) {
    let (app, world) = without_worker(app).await;
    // Three builds: three chains, each with one due delivery to the one endpoint.
    for _ in 0..3 {
        world.build(&app).await;
    }
    let db = &app.state.db;
    let claim = |limit: usize, room: usize| async move {
        let tx = herald::store::begin_write(db).await.unwrap();
        let request = deliveries::ClaimRequest {
            now: herald::now_ms(),
            lease_ms: 60_000,
            limit,
            busy: Vec::new(),
            room_of: move |_| room,
            per_endpoint: 16,
            after: 0,
        };
        let leases = deliveries::claim(&tx, request).await.unwrap();
        tx.commit().await.unwrap();
        (leases.rows.len(), leases.more_due)
    };
    assert_eq!(
        claim(10, 0).await,
        (0, true),
        "due deliveries passed over for an endpoint without room"
    );
    assert_eq!(
        claim(2, 10).await,
        (2, true),
        "a claim that took as many as it could"
    );
    assert_eq!(
        claim(10, 10).await,
        (1, false),
        "the last due delivery, and nothing left"
    );
    assert_eq!(claim(10, 10).await, (0, false), "nothing due");
}

/// A claim visits the endpoints in a round and takes each one's first due delivery before any
/// one's second: an endpoint's backlog, however much older, does not fill a claim while
/// another endpoint has a delivery due.
async fn a_claim_takes_every_endpoints_first_delivery_before_any_endpoints_second(app: TestApp) {
    let (app, world) = without_worker(app).await;
    for _ in 0..30 {
        world.build(&app).await;
    }
    let other = World::new(&app, "other").await;
    let endpoint: i64 = other
        .endpoint(&app, "http://127.0.0.1:9/other", json!({}))
        .await
        .parse()
        .unwrap();
    other.build(&app).await;
    let db = &app.state.db;
    let tx = herald::store::begin_write(db).await.unwrap();
    let request = deliveries::ClaimRequest {
        now: herald::now_ms(),
        lease_ms: 60_000,
        limit: 4,
        busy: Vec::new(),
        room_of: |_| 16,
        per_endpoint: 16,
        after: 0,
    };
    let leases = deliveries::claim(&tx, request).await.unwrap();
    tx.commit().await.unwrap();
    let endpoints: Vec<i64> = leases.rows.iter().map(|row| row.endpoint_id).collect();
    assert_eq!(endpoints.len(), 4);
    assert_eq!(
        endpoints.iter().filter(|id| **id == endpoint).count(),
        1,
        "the other endpoint's delivery was left behind the backlog: {endpoints:?}"
    );
    assert!(leases.more_due, "the backlog has more due");
}

async fn an_outcome_says_for_which_endpoints_it_released_held_deliveries(app: TestApp) {
    let (app, world) = without_worker(app).await;
    // One chain: the build's delivery is due, the task's is held behind it.
    let build = world.build(&app).await;
    world.task(&app, &build, "test").await;
    let db = &app.state.db;
    let first = deliver_the_one_due(db).await;
    assert_eq!(
        first.released,
        HashSet::from([first.endpoint]),
        "the build's delivery released the task's"
    );
    let last = deliver_the_one_due(db).await;
    assert!(
        last.released.is_empty(),
        "the chain's last delivery released nothing"
    );
}

/// A finished delivery sent again goes ahead of its chain's unfinished ones; when it finishes,
/// the next to go is the first of those, which is not held, and then the held one after it.
async fn a_redelivered_delivery_hands_its_chain_on_in_order(app: TestApp) {
    let (app, world) = without_worker(app).await;
    let build = world.build(&app).await;
    world.task(&app, &build, "one").await;
    world.task(&app, &build, "two").await;
    let db = &app.state.db;
    let built = deliver_the_one_due(db).await;
    let row = delivery::Entity::find_by_id(built.id)
        .one(db)
        .await
        .unwrap()
        .unwrap();
    deliveries::redeliver(db, &row, herald::now_ms())
        .await
        .unwrap();
    let again = deliver_the_one_due(db).await;
    assert_eq!(again.id, built.id, "the redelivered delivery goes first");
    assert_eq!(
        again.released,
        HashSet::from([again.endpoint]),
        "it hands the chain on"
    );
    let one = deliver_the_one_due(db).await;
    assert!(one.id > built.id);
    assert_eq!(
        one.released,
        HashSet::from([one.endpoint]),
        "the first task's delivery releases the second's"
    );
    let two = deliver_the_one_due(db).await;
    assert!(two.id > one.id);
    assert!(two.released.is_empty());
}

/// Upgrading a database whose deliveries are still queued keeps every one of them: taken
/// down a step (before migration `delivery_queue`), the queue's rows are the deliveries' own
/// columns again; up again, they are queue rows, and a worker started on the upgraded database
/// sends them all, the build's in order.
async fn an_upgrade_keeps_every_queued_delivery_and_its_order(app: TestApp) {
    use herald_migrations::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, Statement};
    let (app, receiver, world) = without_a_worker(app).await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({ "events": ["TASK"] }))
        .await;
    let build = world.build(&app).await;
    let one = world.task(&app, &build, "one").await;
    world.task_status(&app, &one, "EXECUTING").await;
    let two = world.task(&app, &build, "two").await;
    let db = &app.state.db;
    let count = |sql: &'static str| async move {
        let statement = Statement::from_string(db.get_database_backend(), sql);
        let row = db.query_one_raw(statement).await.unwrap().unwrap();
        row.try_get::<i64>("", "n").unwrap()
    };
    let held_in_queue = "SELECT COUNT(*) AS n FROM delivery_queue WHERE held = true";
    assert_eq!(count(held_in_queue).await, 2, "two wait behind the first");

    // The queue's migration and every one after it.
    let steps = Migrator::migrations()
        .iter()
        .rev()
        .position(|migration| migration.name() == "m20261214_000001_delivery_queue")
        .unwrap()
        + 1;
    Migrator::down(db, Some(steps as u32)).await.unwrap();
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM deliveries WHERE state = 'PENDING' AND held = true").await,
        2,
        "taken down, the deliveries hold their queue's state"
    );
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM deliveries WHERE state = 'PENDING' AND held = false")
            .await,
        1
    );

    Migrator::up(db, None).await.unwrap();
    assert_eq!(count("SELECT COUNT(*) AS n FROM delivery_queue").await, 3);
    assert_eq!(count(held_in_queue).await, 2);
    let _worker = Herald::spawn(&app.database_url, &["worker"]);
    let received = receiver.wait_for(3).await;
    let order: Vec<(String, String)> = received.iter().map(Received::task).collect();
    let at = task_at;
    assert_eq!(
        order,
        [
            at(&one, "CREATED"),
            at(&one, "EXECUTING"),
            at(&two, "CREATED")
        ]
    );
    receiver
        .expect_no_more_than(3, Duration::from_millis(300))
        .await;
}

/// What [`deliver_the_one_due`] delivered.
struct Delivered {
    id: i64,
    endpoint: i64,
    /// The endpoints of the deliveries its outcome released.
    released: HashSet<i64>,
}

/// Claims the one delivery due, as a worker would, and records it as delivered.
async fn deliver_the_one_due(db: &sea_orm::DatabaseConnection) -> Delivered {
    let tx = herald::store::begin_write(db).await.unwrap();
    let request = deliveries::ClaimRequest {
        now: herald::now_ms(),
        lease_ms: 60_000,
        limit: 10,
        busy: Vec::new(),
        room_of: |_| 10,
        per_endpoint: 16,
        after: 0,
    };
    let deliveries::Leases { token, rows, .. } = deliveries::claim(&tx, request).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(rows.len(), 1, "one delivery of the chain is due at a time");
    let record = AttemptRecord {
        delivery_id: rows[0].id.into(),
        endpoint_id: rows[0].endpoint_id.into(),
        build_id: rows[0].build_id.map(Into::into),
        token,
        state: DeliveryState::Delivered,
        next_attempt_at: herald::now_ms(),
        timestamp: herald::now_ms(),
        status: Some(200),
        duration_ms: 5,
        error: None,
        response_headers: "{}".into(),
        response_body: String::new(),
    };
    let tx = herald::store::begin_write(db).await.unwrap();
    let recorded = deliveries::record_attempts(&tx, &[&record]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(recorded.ids, HashSet::from([record.delivery_id.get()]));
    Delivered {
        id: record.delivery_id.get(),
        endpoint: record.endpoint_id.get(),
        released: recorded.released,
    }
}

async fn a_tarpit_endpoint_does_not_starve_another_organization(app: TestApp) {
    let backend = app.backend;
    drop(app);
    let app = TestApp::start_with(backend, |config| {
        config.delivery_timeout = Duration::from_secs(30);
        config.lease = Duration::from_secs(60);
    })
    .await
    .unwrap();
    // The tarpit accepts connections and never answers.
    let tarpit = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tarpit_addr = tarpit.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = held.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = tarpit.accept().await {
                held.lock().unwrap().push(socket);
            }
        });
    }
    let slow = World::new(&app, "slow").await;
    slow.endpoint(&app, &format!("http://{tarpit_addr}/hook"), json!({}))
        .await;
    for _ in 0..40 {
        slow.build(&app).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let receiver = Receiver::start().await;
    let fast = World::new(&app, "fast").await;
    fast.endpoint(&app, &receiver.url("/hook"), json!({})).await;
    let started = Instant::now();
    for _ in 0..20 {
        fast.build(&app).await;
    }
    receiver.wait_for(20).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the other organization waited {took:?} behind a 30 s tarpit"
    );
    let connections = held.lock().unwrap().len();
    assert!(
        connections <= 8,
        "the tarpit held {connections} attempts at once, over the per-endpoint cap"
    );
}

/// On PostgreSQL, an event recorded while its endpoint is being deleted may queue deliveries
/// the deletion did not see. This leaves that state directly (the endpoint's row deleted under
/// its queued deliveries, and a second endpoint's delivery beside them); a worker's sweep
/// removes the first endpoint's deliveries, which nothing could send, and sends the other's.
async fn a_worker_removes_deliveries_left_queued_for_a_deleted_endpoint(app: TestApp) {
    use sea_orm::{ConnectionTrait, Statement};
    let (app, receiver, world) = without_a_worker(app).await;
    let gone = world
        .endpoint(&app, &receiver.url("/gone"), json!({}))
        .await;
    world
        .endpoint(&app, &receiver.url("/kept"), json!({}))
        .await;
    world.build(&app).await;
    let db = &app.state.db;
    let sql = format!("DELETE FROM webhook_endpoints WHERE id = {gone}");
    db.execute_raw(Statement::from_string(db.get_database_backend(), sql))
        .await
        .unwrap();
    let log = "{ viewer { webhookDeliveries { edges { node { state } } } } }";
    let states = || async {
        let data = app.ok(&world.admin, log, json!({})).await;
        data["viewer"]["webhookDeliveries"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|edge| edge["node"]["state"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(states().await, ["PENDING", "PENDING"]);
    let _worker = Herald::spawn(&app.database_url, &["worker"]);
    let received = receiver.wait_for(1).await;
    assert_eq!(received[0].uri.path(), "/kept");
    let deadline = Instant::now() + Duration::from_secs(10);
    while states().await != ["DELIVERED"] {
        assert!(
            Instant::now() < deadline,
            "the deleted endpoint's delivery stayed: {:?}",
            states().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    receiver
        .expect_no_more_than(1, Duration::from_millis(500))
        .await;
}

/// The same backend as `app`, with no worker (deliveries stay queued until a test starts a
/// `herald worker`), a receiver and an organization.
async fn without_a_worker(app: TestApp) -> (TestApp, Receiver, World) {
    let backend = app.backend;
    drop(app);
    let app = TestApp::start_role(backend, Role::ApiOnly, |_| {})
        .await
        .unwrap();
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    (app, receiver, world)
}
