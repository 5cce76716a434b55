//! CI records: repositories, builds and tasks recorded and read back, and on SQLite written to
//! the disk before they are acknowledged.

use serde_json::{Value, json};

use crate::support::{Backend, TestApp, World, code};

pub(super) async fn records_repositories_builds_and_tasks(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let build = app
        .ok(
            &world.write,
            "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"feature\", changeIdInRepo: \"deadbeef\",
               changeMessageTitle: \"Add it\", pullRequest: 42, pullRequestDraft: true, clientMutationId: \"m1\"}) {
               clientMutationId build { id status branch pullRequest pullRequestDraft changeIdInRepo changeMessageTitle durationInSeconds } } }",
            json!({ "repo": world.repository }),
        )
        .await;
    let payload = &build["createBuild"];
    assert_eq!(payload["clientMutationId"], "m1");
    assert_eq!(payload["build"]["status"], "CREATED");
    assert_eq!(payload["build"]["pullRequest"], 42);
    assert_eq!(payload["build"]["durationInSeconds"], 0, "not started yet");
    let build_id = payload["build"]["id"].as_str().unwrap().to_owned();

    let task = world.task(&app, &build_id, "test").await;
    app.ok(
        &world.write,
        "mutation($task: ID!) { updateTaskStatus(input: {taskId: $task, status: FAILED,
           notifications: [{level: ERROR, message: \"Instances got rescheduled\", link: \"https://ci.example/1\"}]}) { task { id } } }",
        json!({ "task": task }),
    )
    .await;
    world.build_status(&app, &build_id, "FAILED").await;

    let data = app
        .ok(
            &world.read,
            "query($build: ID!, $task: ID!, $org: ID!) {
               viewer { uid name viewerPermission repositories { edges { node { name owner builds(status: FAILED) { edges { node { id } } } } } } }
               ownerInfo(uid: $org) { name }
               ownerInfoByName(name: \"acme\") { uid }
               build(id: $build) { status durationInSeconds tasks { name status finalStatusTimestamp labels uniqueLabels
                 notifications { level message link } build { id } repository { name } } }
               task(id: $task) { status statusTimestamp creationTimestamp }
               none: task(id: null) { id } }",
            json!({ "build": build_id, "task": task, "org": world.org }),
        )
        .await;
    assert_eq!(data["viewer"]["name"], "acme");
    assert_eq!(data["viewer"]["viewerPermission"], "READ");
    let repo = &data["viewer"]["repositories"]["edges"][0]["node"];
    assert_eq!(repo["owner"], "acme");
    assert_eq!(repo["builds"]["edges"][0]["node"]["id"], build_id.as_str());
    assert_eq!(data["ownerInfo"]["name"], "acme");
    assert_eq!(data["ownerInfoByName"]["uid"], world.org.as_str());
    assert_eq!(data["build"]["status"], "FAILED");
    assert!(data["build"]["durationInSeconds"].is_i64());
    let task_node = &data["build"]["tasks"][0];
    assert_eq!(task_node["status"], "FAILED");
    assert!(task_node["finalStatusTimestamp"].is_i64());
    assert_eq!(task_node["labels"], json!(["linux"]));
    assert_eq!(
        task_node["notifications"][0]["message"],
        "Instances got rescheduled"
    );
    assert_eq!(task_node["build"]["id"], build_id.as_str());
    assert!(data["task"]["statusTimestamp"].as_i64() >= data["task"]["creationTimestamp"].as_i64());
    assert_eq!(data["none"], Value::Null);

    // Pagination: three builds, two per page.
    world.build(&app).await;
    world.build(&app).await;
    let page = app
        .ok(&world.read, "query($repo: ID!) { repository(id: $repo) { builds(first: 2) { edges { cursor node { id } } pageInfo { hasNextPage endCursor } } } }", json!({ "repo": world.repository }))
        .await;
    let builds = &page["repository"]["builds"];
    assert_eq!(builds["edges"].as_array().unwrap().len(), 2);
    assert_eq!(builds["pageInfo"]["hasNextPage"], true);
    let rest = app
        .ok(
            &world.read,
            "query($repo: ID!, $after: String) { repository(id: $repo) { builds(first: 2, after: $after) { edges { node { id } } pageInfo { hasNextPage } } } }",
            json!({ "repo": world.repository, "after": builds["pageInfo"]["endCursor"] }),
        )
        .await;
    assert_eq!(
        rest["repository"]["builds"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        rest["repository"]["builds"]["pageInfo"]["hasNextPage"],
        false
    );

    // A repository name is unique within its organization.
    let again = app
        .gql(Some(&world.write), "mutation($org: ID!) { createRepository(input: {ownerUid: $org, name: \"app\"}) { repository { id } } }", json!({ "org": world.org }))
        .await;
    assert_eq!(code(&again), "CONFLICT");
}

/// On SQLite, what the API acknowledges (a change that records an event, an endpoint) is
/// committed with `synchronous = FULL`: in WAL mode, `NORMAL` lets a power loss take back the
/// last commits, acknowledged ones too. A power loss cannot be staged here; the level of the
/// one writing connection after each write can.
pub(super) async fn on_sqlite_acknowledged_writes_wait_for_the_disk() {
    use sea_orm::{ConnectionTrait, Statement};
    let app = TestApp::start_role(Backend::Sqlite, herald::app::Role::ApiOnly, |_| {})
        .await
        .unwrap();
    let world = World::new(&app, "acme").await;
    let level = || async {
        let statement = Statement::from_string(sea_orm::DbBackend::Sqlite, "PRAGMA synchronous");
        let row = app
            .state
            .writes
            .conn()
            .query_one_raw(statement)
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i32>(0).unwrap()
    };
    // 2 is FULL.
    world.build(&app).await;
    assert_eq!(level().await, 2, "after a change");
    world
        .endpoint(&app, "https://hooks.example.com/x", json!({}))
        .await;
    assert_eq!(level().await, 2, "after an endpoint");
}
