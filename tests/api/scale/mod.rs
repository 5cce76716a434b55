//! Scaling out: several processes on one PostgreSQL share the queue, lose nothing and send
//! nothing twice without a crash; leases are fenced; a tarpit does not starve others.
//!
//! The tests are declared here, so that their names stay `scale::…`, beside the cluster that the
//! PostgreSQL-only ones share; their bodies are in the files below, by concern.

mod claims;
mod database;
mod processes;
mod queue;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Client, Herald, PgDatabase, Receiver, free_port, herald_output};

use claims::{
    a_claim_says_whether_it_may_have_left_due_deliveries,
    a_claim_takes_every_endpoints_first_delivery_before_any_endpoints_second,
    a_redelivered_delivery_hands_its_chain_on_in_order,
    a_redelivery_fences_out_the_claim_whose_lease_ran_out,
    an_attempt_whose_lease_was_taken_over_changes_nothing,
    an_outcome_says_for_which_endpoints_it_released_held_deliveries,
};
use queue::{
    a_tarpit_endpoint_does_not_starve_another_organization,
    a_worker_removes_deliveries_left_queued_for_a_deleted_endpoint,
    an_upgrade_keeps_every_queued_delivery_and_its_order,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apis_finishing_builds_of_one_branch_chain_their_transitions() {
    processes::two_apis_finishing_builds_of_one_branch_chain_their_transitions().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apis_and_two_workers_number_two_thousand_events_without_gaps() {
    processes::two_apis_and_two_workers_number_two_thousand_events_without_gaps().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_api_and_two_workers_deliver_two_thousand_events_exactly_once() {
    processes::one_api_and_two_workers_deliver_two_thousand_events_exactly_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_at_random_lose_nothing() {
    processes::workers_killed_at_random_lose_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_database_connections_lose_nothing_and_need_no_restart() {
    processes::terminated_database_connections_lose_nothing_and_need_no_restart().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_changing_the_same_tasks_record_one_event_each() {
    processes::two_api_processes_changing_the_same_tasks_record_one_event_each().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_changing_builds_in_opposite_orders_do_not_deadlock() {
    processes::two_api_processes_changing_builds_in_opposite_orders_do_not_deadlock().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_queues_due_deliveries_notifies_the_workers() {
    processes::a_change_that_queues_due_deliveries_notifies_the_workers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_worker_reads_deliveries_by_key_as_the_table_grows() {
    database::on_postgres_the_worker_reads_deliveries_by_key_as_the_table_grows().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_commit_is_not_confirmed_is_not_said_to_have_changed_nothing() {
    database::a_change_whose_commit_is_not_confirmed_is_not_said_to_have_changed_nothing().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_together_on_a_new_database_all_start() {
    database::processes_started_together_on_a_new_database_all_start().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_postgres_on_loopback_do_not_use_tls() {
    database::connections_to_postgres_on_loopback_do_not_use_tls().await;
}

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
