//! Transition conditions: builds of two branches pass, fail, keep failing and pass again, and
//! each endpoint gets only the changes it names, decided from the branch's own history.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Receiver, TestApp, World};

const SELECTION: &str = "query($buildId: ID!, $taskId: ID) {
  build(id: $buildId) { id branch status transition previousBuild { id status } }
  task(id: $taskId) { id name status transition }
}";

/// A build of `branch`.
async fn build_on(app: &TestApp, world: &World, branch: &str) -> String {
    let data = app
        .ok(
            &world.write,
            "mutation($repo: ID!, $branch: String!) { createBuild(input: {repositoryId: $repo, branch: $branch, changeIdInRepo: \"abc\", changeMessageTitle: \"Change\"}) { build { id } } }",
            json!({ "repo": world.repository, "branch": branch }),
        )
        .await;
    data["createBuild"]["build"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A build of `branch` whose task `lint` ends `task_status` and which then ends `status`.
async fn finished(
    app: &TestApp,
    world: &World,
    branch: &str,
    task_status: &str,
    status: &str,
) -> String {
    let build = build_on(app, world, branch).await;
    let task = world.task(app, &build, "lint").await;
    world.task_status(app, &task, task_status).await;
    world.build_status(app, &build, status).await;
    build
}

/// The build's transition and the id of its previous build, as the API shows them.
async fn transition_of(app: &TestApp, world: &World, build: &str) -> (Value, Value) {
    let data = app
        .ok(
            &world.read,
            "query($id: ID!) { build(id: $id) { transition previousBuild { id } } }",
            json!({ "id": build }),
        )
        .await;
    (
        data["build"]["transition"].clone(),
        data["build"]["previousBuild"]["id"].clone(),
    )
}

/// The deliveries received at `path`, as their bodies.
fn bodies_at(receiver: &Receiver, path: &str) -> Vec<Value> {
    receiver
        .received()
        .into_iter()
        .filter(|r| r.uri.path() == path)
        .map(|r| r.json())
        .collect()
}

pub(super) async fn conditions_send_only_the_changes_of_each_branch(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "conditions").await;
    let with = |conditions: Value, more: Value| {
        let mut input =
            json!({ "events": ["BUILD"], "payloadQuery": SELECTION, "conditions": conditions });
        input
            .as_object_mut()
            .unwrap()
            .extend(more.as_object().cloned().unwrap_or_default());
        input
    };
    world
        .endpoint(
            &app,
            &receiver.url("/broken"),
            with(json!(["BROKEN"]), json!({})),
        )
        .await;
    let changes = json!([
        "BROKEN",
        "FIXED",
        "STILL_FAILING",
        "FIRST_FAILURE_ON_BRANCH"
    ]);
    world
        .endpoint(&app, &receiver.url("/changes"), with(changes, json!({})))
        .await;
    // With a status filter, both must hold.
    world
        .endpoint(
            &app,
            &receiver.url("/still-errored"),
            with(
                json!(["STILL_FAILING"]),
                json!({ "statusFilter": ["ERRORED"] }),
            ),
        )
        .await;
    world
        .endpoint(
            &app,
            &receiver.url("/tasks"),
            json!({ "events": ["TASK"], "payloadQuery": SELECTION, "conditions": ["BROKEN", "FIXED"] }),
        )
        .await;
    // Conditions and a status filter that can never hold together are refused.
    let refused = app
        .gql(
            Some(&world.admin),
            "mutation($input: CreateWebHookEndpointInput!) { createWebHookEndpoint(input: $input) { endpoint { id } } }",
            json!({ "input": { "ownerUid": world.org, "webhookURL": receiver.url("/never"), "conditions": ["FIXED"], "statusFilter": ["FAILED", "ERRORED"] } }),
        )
        .await;
    assert_eq!(
        refused["errors"][0]["message"],
        "The conditions and the status filter exclude each other: no build or task reaching one of those statuses can have one of those transitions.",
        "{refused:#}"
    );
    let shown = app
        .ok(
            &world.admin,
            "query($org: ID!) { ownerInfo(uid: $org) { webhookSettings { endpoints { conditions } } } }",
            json!({ "org": world.org }),
        )
        .await;
    assert_eq!(
        shown["ownerInfo"]["webhookSettings"]["endpoints"][1]["conditions"],
        json!([
            "BROKEN",
            "FIRST_FAILURE_ON_BRANCH",
            "FIXED",
            "STILL_FAILING"
        ])
    );

    // main: pass → fail → fail → pass; feature: a first failure; each build's task `lint`
    // follows its build.
    let main = [
        finished(&app, &world, "main", "COMPLETED", "COMPLETED").await,
        finished(&app, &world, "main", "FAILED", "FAILED").await,
        finished(&app, &world, "main", "FAILED", "ERRORED").await,
        finished(&app, &world, "main", "COMPLETED", "COMPLETED").await,
    ];
    let feature = finished(&app, &world, "feature", "COMPLETED", "FAILED").await;

    let expected = [
        (&main[0], json!(null), json!(null)),
        (&main[1], json!("BROKEN"), json!(main[0])),
        (&main[2], json!("STILL_FAILING"), json!(main[1])),
        (&main[3], json!("FIXED"), json!(main[2])),
        (&feature, json!("FIRST_FAILURE_ON_BRANCH"), json!(null)),
    ];
    for (build, transition, previous) in &expected {
        assert_eq!(
            transition_of(&app, &world, build).await,
            (transition.clone(), previous.clone()),
            "build {build}"
        );
    }

    // 1 BROKEN + 4 changes + 1 STILL_FAILING that ERRORED + 2 task changes (BROKEN, FIXED).
    receiver.wait_for(8).await;
    receiver
        .expect_no_more_than(8, Duration::from_millis(500))
        .await;
    let broken = bodies_at(&receiver, "/broken");
    assert_eq!(broken.len(), 1, "{broken:#?}");
    assert_eq!(broken[0]["data"]["build"]["id"], json!(main[1]));
    assert_eq!(broken[0]["data"]["build"]["transition"], "BROKEN");
    assert_eq!(
        broken[0]["data"]["build"]["previousBuild"],
        json!({ "id": main[0], "status": "COMPLETED" })
    );
    let changes: Vec<(Value, Value)> = bodies_at(&receiver, "/changes")
        .iter()
        .map(|body| {
            let build = &body["data"]["build"];
            (build["id"].clone(), build["transition"].clone())
        })
        .collect();
    assert_eq!(
        changes,
        [
            (json!(main[1]), json!("BROKEN")),
            (json!(main[2]), json!("STILL_FAILING")),
            (json!(main[3]), json!("FIXED")),
            (json!(feature), json!("FIRST_FAILURE_ON_BRANCH")),
        ]
    );
    let errored = bodies_at(&receiver, "/still-errored");
    assert_eq!(errored.len(), 1);
    assert_eq!(errored[0]["data"]["build"]["id"], json!(main[2]));
    // Tasks follow the tasks of their name on the branch: `lint` broke with main[1] and was
    // fixed with main[3]; feature's passing `lint` is the first on its branch.
    let tasks: Vec<(Value, Value)> = bodies_at(&receiver, "/tasks")
        .iter()
        .map(|body| {
            let task = &body["data"]["task"];
            (task["status"].clone(), task["transition"].clone())
        })
        .collect();
    assert_eq!(
        tasks,
        [
            (json!("FAILED"), json!("BROKEN")),
            (json!("COMPLETED"), json!("FIXED")),
        ]
    );
}

pub(super) async fn concurrent_finishes_on_a_branch_compare_with_each_other(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "concurrent").await;
    world
        .endpoint(
            &app,
            &receiver.url("/broken"),
            json!({ "events": ["BUILD"], "conditions": ["BROKEN"] }),
        )
        .await;
    for round in 0..3 {
        let branch = format!("release-{round}");
        let passed = finished(&app, &world, &branch, "COMPLETED", "COMPLETED").await;
        let (a, b) = (
            build_on(&app, &world, &branch).await,
            build_on(&app, &world, &branch).await,
        );
        let fail = "mutation($build: ID!) { updateBuildStatus(input: {buildId: $build, status: FAILED}) { build { id transition } } }";
        let answers = app
            .gql_at_once(
                &world.write,
                vec![(fail, json!({ "build": a })), (fail, json!({ "build": b }))],
            )
            .await;
        for answer in &answers {
            assert!(answer.get("errors").is_none(), "{answer:#}");
        }
        // Whichever was recorded first broke the branch, against the passing build; the other
        // compares with it.
        let (ta, pa) = transition_of(&app, &world, &a).await;
        let (tb, pb) = transition_of(&app, &world, &b).await;
        let mut seen = [(a.clone(), ta, pa), (b.clone(), tb, pb)];
        seen.sort_by_key(|(_, transition, _)| *transition != "BROKEN");
        let [(first, t1, p1), (_, t2, p2)] = seen;
        assert_eq!((t1, p1), (json!("BROKEN"), json!(passed)), "round {round}");
        assert_eq!(
            (t2, p2),
            (json!("STILL_FAILING"), json!(first)),
            "round {round}"
        );
    }
    // Exactly one BROKEN per branch reaches the endpoint.
    receiver.wait_for(3).await;
    receiver
        .expect_no_more_than(3, Duration::from_millis(500))
        .await;
}

pub(super) async fn a_rerun_that_passes_fixes_the_branch(app: TestApp) {
    let world = World::new(&app, "rerun").await;
    let passed = finished(&app, &world, "main", "COMPLETED", "COMPLETED").await;
    let failed = finished(&app, &world, "main", "FAILED", "FAILED").await;
    assert_eq!(
        transition_of(&app, &world, &failed).await,
        (json!("BROKEN"), json!(passed))
    );
    // The failed build runs again: while it runs it has no transition, and passing fixes the
    // branch, against its own first run.
    world.build_status(&app, &failed, "EXECUTING").await;
    assert_eq!(
        transition_of(&app, &world, &failed).await,
        (json!(null), json!(null))
    );
    world.build_status(&app, &failed, "COMPLETED").await;
    assert_eq!(
        transition_of(&app, &world, &failed).await,
        (json!("FIXED"), json!(failed))
    );
    // Aborted builds count for nothing: the next failure still compares with the fixed one.
    let aborted = build_on(&app, &world, "main").await;
    world.build_status(&app, &aborted, "ABORTED").await;
    assert_eq!(
        transition_of(&app, &world, &aborted).await,
        (json!(null), json!(null))
    );
    let next = finished(&app, &world, "main", "FAILED", "ERRORED").await;
    assert_eq!(
        transition_of(&app, &world, &next).await,
        (json!("BROKEN"), json!(failed))
    );
}

pub(super) async fn an_upgrade_starts_each_branch_from_its_last_finish(app: TestApp) {
    use herald_migrations::{Migrator, MigratorTrait};
    let world = World::new(&app, "upgrade").await;
    let passed = finished(&app, &world, "main", "COMPLETED", "COMPLETED").await;
    let failed = finished(&app, &world, "dev", "FAILED", "FAILED").await;
    // As if the builds were recorded before transitions existed.
    let db = &app.state.db;
    Migrator::down(db, Some(1)).await.unwrap();
    Migrator::up(db, None).await.unwrap();

    let broken = finished(&app, &world, "main", "FAILED", "FAILED").await;
    assert_eq!(
        transition_of(&app, &world, &broken).await,
        (json!("BROKEN"), json!(passed))
    );
    let fixed = finished(&app, &world, "dev", "COMPLETED", "COMPLETED").await;
    assert_eq!(
        transition_of(&app, &world, &fixed).await,
        (json!("FIXED"), json!(failed))
    );
    // Tasks too: `lint` passed on main before, and fails now.
    let data = app
        .ok(
            &world.read,
            "query($id: ID!) { build(id: $id) { tasks { name transition } } }",
            json!({ "id": broken }),
        )
        .await;
    assert_eq!(
        data["build"]["tasks"],
        json!([{ "name": "lint", "transition": "BROKEN" }])
    );
}
