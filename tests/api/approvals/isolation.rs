//! Approval hooks and other tenants: internal addresses are refused, and a tarpit hook costs
//! only its own organization.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{Backend, Receiver, Reply, TestApp, World, code};

pub(super) async fn internal_hook_urls_are_refused(backend: Backend) {
    let Some(app) =
        TestApp::start_with(backend, |config| config.allow_private_targets = false).await
    else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let world = World::new(&app, "guarded").await;
    for url in [
        "http://127.0.0.1:9/approve",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
        "http://localhost/x",
    ] {
        let response = app
            .gql(
                Some(&world.admin),
                "mutation($input: CreateApprovalHookInput!) { createApprovalHook(input: $input) { hook { id } } }",
                json!({ "input": { "ownerUid": world.org, "url": url, "on": ["BUILD_CREATE"] } }),
            )
            .await;
        assert_eq!(code(&response), "BAD_USER_INPUT", "{url}: {response}");
    }
    let hooks = app
        .ok(
            &world.admin,
            "query($org: ID!) { ownerInfo(uid: $org) { approvalHooks { id } } }",
            json!({ "org": world.org }),
        )
        .await;
    assert_eq!(hooks["ownerInfo"]["approvalHooks"], json!([]));
}

/// The median of `samples` createBuild latencies of `world`.
async fn median_latency(app: &TestApp, world: &World, samples: usize) -> Duration {
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        world.build(app).await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies[samples / 2]
}

pub(super) async fn a_tarpit_hook_does_not_slow_another_organizations_builds(backend: Backend) {
    let Some(app) = TestApp::start(backend).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let tarpit = Receiver::start().await;
    tarpit.default_reply(
        Reply::status(200)
            .json(json!({ "approved": true }))
            .delay(Duration::from_secs(30)),
    );
    let stuck = World::new(&app, "tarpitted").await;
    let other = World::new(&app, "bystander").await;
    app.ok(
        &stuck.admin,
        "mutation($input: CreateApprovalHookInput!) { createApprovalHook(input: $input) { hook { id } } }",
        json!({ "input": { "ownerUid": stuck.org, "url": tarpit.url("/tarpit"), "on": ["BUILD_CREATE"], "timeoutMs": 10000, "whenUnavailable": "APPROVE" } }),
    )
    .await;
    // Warm up, then a quiet run.
    median_latency(&app, &other, 5).await;
    let quiet = median_latency(&app, &other, 15).await;

    // Forty builds of the tarpitted organization wait on its hook, more than it may have in
    // flight, while the bystander records its builds.
    let mut waiting = Vec::new();
    for _ in 0..40 {
        let app_url = app.url("/graphql");
        let token = stuck.write.clone();
        let repo = stuck.repository.clone();
        waiting.push(tokio::spawn(async move {
            reqwest::Client::new()
                .post(app_url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(json!({ "query": "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"main\", changeIdInRepo: \"x\"}) { build { id } } }", "variables": { "repo": repo } }).to_string())
                .send()
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !tarpit.received().is_empty() || waiting.iter().any(|w| !w.is_finished()),
        "the tarpit is being called"
    );
    let during = median_latency(&app, &other, 15).await;
    let floor = Duration::from_millis(5);
    assert!(
        during <= quiet.max(floor) * 2,
        "the bystander's createBuild took {during:?} (median) beside the tarpit, {quiet:?} when quiet"
    );
    eprintln!("bystander createBuild median: quiet {quiet:?}, beside a tarpit hook {during:?}");
    for task in &waiting {
        assert!(
            !task.is_finished(),
            "the tarpitted builds still wait on their hook"
        );
    }
    for task in waiting {
        task.abort();
    }
}
