//! What a hook's answer, or its silence, decides.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Receiver, Reply, TestApp, World, code};

const CREATE_HOOK: &str = "mutation($input: CreateApprovalHookInput!) { createApprovalHook(input: $input) { hook { id on timeoutMs whenUnavailable } } }";
const CREATE_BUILD: &str = "mutation($repo: ID!) { createBuild(input: {repositoryId: $repo, branch: \"feature\", changeIdInRepo: \"c0ffee\"}) { build { id status workId } } }";

async fn hook(app: &TestApp, world: &World, url: &str, extra: Value) -> String {
    let mut input = json!({ "ownerUid": world.org, "url": url, "on": ["BUILD_CREATE"] });
    input
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    app.ok(&world.admin, CREATE_HOOK, json!({ "input": input }))
        .await["createApprovalHook"]["hook"]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn create_build(app: &TestApp, world: &World) -> Value {
    app.gql(
        Some(&world.write),
        CREATE_BUILD,
        json!({ "repo": world.repository }),
    )
    .await
}

async fn calls(app: &TestApp, world: &World) -> Vec<Value> {
    let data = app
        .ok(
            &world.admin,
            "query($org: ID!) { ownerInfo(uid: $org) { approvalCalls(first: 50) { edges { node { id hookId point decision status error reason workId request } } } } }",
            json!({ "org": world.org }),
        )
        .await;
    data["ownerInfo"]["approvalCalls"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|edge| edge["node"].clone())
        .collect()
}

async fn builds(app: &TestApp, world: &World) -> usize {
    let data = app
        .ok(
            &world.read,
            "query($repo: ID!) { repository(id: $repo) { builds(first: 50) { edges { node { id } } } } }",
            json!({ "repo": world.repository }),
        )
        .await;
    data["repository"]["builds"]["edges"]
        .as_array()
        .unwrap()
        .len()
}

pub(super) async fn an_approving_hook_gives_its_work_id_to_every_delivery(app: TestApp) {
    let hooks = Receiver::start().await;
    hooks.default_reply(Reply::status(200).json(json!({ "approved": true, "work_id": "work-42" })));
    let receiver = Receiver::start().await;
    let world = World::new(&app, "approving").await;
    hook(
        &app,
        &world,
        &hooks.url("/approve"),
        json!({ "secretToken": "approval-secret" }),
    )
    .await;
    world
        .endpoint(
            &app,
            &receiver.url("/hook"),
            json!({ "payloadQuery": "build(id: $buildId) { id status workId } task(id: $taskId) { name workId }" }),
        )
        .await;
    let created = create_build(&app, &world).await;
    let build = &created["data"]["createBuild"]["build"];
    assert_eq!(build["status"], "CREATED", "{created}");
    assert_eq!(build["workId"], "work-42");
    let build_id = build["id"].as_str().unwrap().to_owned();

    let call = hooks.wait_for(1).await[0].clone();
    assert_eq!(call.header("x-cirrus-event"), Some("approval"));
    assert!(herald::signing::verify_cirrus(
        "approval-secret",
        &call.body,
        call.header("x-cirrus-signature").unwrap()
    ));
    let body = call.json();
    assert_eq!(body["hook"], "pre");
    assert_eq!(body["point"], "BUILD_CREATE");
    assert_eq!(
        body["organization"],
        json!({ "uid": world.org, "name": "approving" })
    );
    assert!(body["actor"]["id"].is_string());
    assert_eq!(body["request"]["branch"], "feature");
    assert_eq!(
        body["request"]["repository"],
        json!({ "id": world.repository, "owner": "approving", "name": "app" })
    );

    world.task(&app, &build_id, "test").await;
    let received = receiver.wait_for(2).await;
    for delivery in &received {
        assert_eq!(
            delivery.header("x-herald-work-id"),
            Some("work-42"),
            "{:?}",
            delivery.headers
        );
    }
    assert_eq!(received[0].json()["data"]["build"]["workId"], "work-42");
    assert_eq!(
        received[1].json()["data"]["task"]["workId"],
        "work-42",
        "a task carries its build's"
    );
    let log = calls(&app, &world).await;
    assert_eq!(log.len(), 1, "the task point has no hook");
    assert_eq!(log[0]["decision"], "APPROVED");
    assert_eq!(log[0]["workId"], "work-42");
    assert_eq!(log[0]["status"], 200);
}

pub(super) async fn a_rejecting_hook_records_nothing(app: TestApp) {
    let hooks = Receiver::start().await;
    hooks.default_reply(
        Reply::status(200).json(
            json!({ "approved": false, "reason": "outside contributors need a maintainer." }),
        ),
    );
    let receiver = Receiver::start().await;
    let world = World::new(&app, "rejecting").await;
    hook(&app, &world, &hooks.url("/reject"), json!({})).await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({}))
        .await;
    let refused = create_build(&app, &world).await;
    assert_eq!(code(&refused), "FORBIDDEN", "{refused}");
    let message = refused["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("outside contributors need a maintainer")
            && message.ends_with('.')
            && !message.contains(".."),
        "{message}"
    );
    assert_eq!(builds(&app, &world).await, 0, "no build was recorded");
    receiver
        .expect_no_more_than(0, Duration::from_millis(300))
        .await;
    let log = calls(&app, &world).await;
    assert_eq!(log[0]["decision"], "REJECTED");
    assert_eq!(log[0]["reason"], "outside contributors need a maintainer.");
}

pub(super) async fn a_held_build_waits_for_an_admin(app: TestApp) {
    let hooks = Receiver::start().await;
    hooks.default_reply(
        Reply::status(200).json(json!({ "approved": true, "hold": true, "work_id": "w-hold" })),
    );
    let receiver = Receiver::start().await;
    let world = World::new(&app, "holding").await;
    hook(&app, &world, &hooks.url("/hold"), json!({})).await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({ "events": ["BUILD"] }))
        .await;
    let created = create_build(&app, &world).await;
    let build = created["data"]["createBuild"]["build"].clone();
    assert_eq!(build["status"], "NEEDS_APPROVAL", "{created}");
    assert_eq!(build["workId"], "w-hold");
    let id = build["id"].as_str().unwrap().to_owned();
    let first = receiver.wait_for(1).await[0].json();
    assert_eq!(first["action"], "created");
    assert_eq!(first["data"]["build"]["status"], "NEEDS_APPROVAL");

    let approve = "mutation($id: ID!) { approveBuild(input: {buildId: $id}) { build { status } } }";
    let reject = "mutation($id: ID!) { rejectBuild(input: {buildId: $id, reason: \"not now\"}) { build { status } } }";
    let write = app
        .gql(Some(&world.write), approve, json!({ "id": id }))
        .await;
    assert_eq!(code(&write), "FORBIDDEN", "deciding needs ADMIN");
    let approved = app.ok(&world.admin, approve, json!({ "id": id })).await;
    assert_eq!(approved["approveBuild"]["build"]["status"], "TRIGGERED");
    let second = receiver.wait_for(2).await[1].json();
    assert_eq!(second["action"], "updated");
    assert_eq!(second["old_status"], "NEEDS_APPROVAL");
    assert_eq!(second["data"]["build"]["status"], "TRIGGERED");
    let again = app
        .gql(Some(&world.admin), approve, json!({ "id": id }))
        .await;
    assert_eq!(
        code(&again),
        "BAD_USER_INPUT",
        "only a held build can be approved"
    );

    let other = create_build(&app, &world).await["data"]["createBuild"]["build"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Two decisions at once: exactly one applies.
    let both = app
        .gql_at_once(
            &world.admin,
            vec![
                (approve, json!({ "id": other })),
                (reject, json!({ "id": other })),
            ],
        )
        .await;
    let applied: Vec<&Value> = both.iter().filter(|r| r["errors"].is_null()).collect();
    assert_eq!(applied.len(), 1, "{both:#?}");
    let refused: Vec<&Value> = both.iter().filter(|r| !r["errors"].is_null()).collect();
    assert_eq!(code(refused[0]), "BAD_USER_INPUT");
    let third = create_build(&app, &world).await["data"]["createBuild"]["build"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rejected = app.ok(&world.admin, reject, json!({ "id": third })).await;
    assert_eq!(rejected["rejectBuild"]["build"]["status"], "ABORTED");
}

pub(super) async fn no_valid_answer_decides_by_when_unavailable(app: TestApp) {
    let hooks = Receiver::start().await;
    let world = World::new(&app, "silent").await;
    let id = hook(
        &app,
        &world,
        &hooks.url("/slow"),
        json!({ "timeoutMs": 300 }),
    )
    .await;
    let update = "mutation($id: ID!, $when: WhenUnavailable!) { updateApprovalHook(input: {id: $id, whenUnavailable: $when}) { hook { whenUnavailable } } }";

    // A tarpit, under each setting.
    hooks.default_reply(
        Reply::status(200)
            .json(json!({ "approved": true }))
            .delay(Duration::from_secs(3)),
    );
    let refused = create_build(&app, &world).await;
    assert_eq!(code(&refused), "FORBIDDEN");
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer within 300 ms"),
        "{refused}"
    );
    app.ok(&world.admin, update, json!({ "id": id, "when": "APPROVE" }))
        .await;
    assert_eq!(
        create_build(&app, &world).await["data"]["createBuild"]["build"]["status"],
        "CREATED"
    );
    app.ok(&world.admin, update, json!({ "id": id, "when": "HOLD" }))
        .await;
    assert_eq!(
        create_build(&app, &world).await["data"]["createBuild"]["build"]["status"],
        "NEEDS_APPROVAL"
    );

    // Garbage answers are no answer.
    app.ok(&world.admin, update, json!({ "id": id, "when": "REJECT" }))
        .await;
    for (reply, words) in [
        (
            Reply::status(200).body("<html>yes</html>"),
            "not a JSON object",
        ),
        (
            Reply::status(500).json(json!({ "approved": true })),
            "answered HTTP 500",
        ),
        (
            Reply::status(200).json(json!({ "approved": "yes" })),
            "not true or false",
        ),
        (Reply::status(200).json(json!({})), "neither"),
    ] {
        hooks.default_reply(reply);
        let refused = create_build(&app, &world).await;
        assert_eq!(code(&refused), "FORBIDDEN", "{refused}");
        let message = refused["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains(words) && message.contains("rejects when unavailable"),
            "{message}"
        );
    }
    let log = calls(&app, &world).await;
    assert_eq!(log.len(), 7);
    assert!(log.iter().all(|call| call["error"].is_string()), "{log:#?}");
    assert_eq!(builds(&app, &world).await, 2, "the APPROVE and HOLD ones");
}

pub(super) async fn every_hook_must_approve(app: TestApp) {
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    let world = World::new(&app, "several").await;
    hook(&app, &world, &first.url("/a"), json!({})).await;
    hook(
        &app,
        &world,
        &second.url("/b"),
        json!({ "on": ["BUILD_CREATE", "TASK_CREATE"] }),
    )
    .await;
    first.default_reply(Reply::status(200).json(json!({ "approved": true, "work_id": "from-a" })));

    second.default_reply(
        Reply::status(200).json(json!({ "approved": false, "reason": "b says no" })),
    );
    let refused = create_build(&app, &world).await;
    assert_eq!(code(&refused), "FORBIDDEN");
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("b says no")
    );

    second.default_reply(Reply::status(200).json(json!({ "hold": true })));
    let held = create_build(&app, &world).await["data"]["createBuild"]["build"].clone();
    assert_eq!(held["status"], "NEEDS_APPROVAL");
    assert_eq!(held["workId"], "from-a");

    second.default_reply(Reply::status(200).json(json!({ "approved": true })));
    let approved = create_build(&app, &world).await["data"]["createBuild"]["build"].clone();
    assert_eq!(approved["status"], "CREATED");
    assert_eq!(approved["workId"], "from-a");

    // The task point asks only the second hook; its hold pauses the task.
    second.default_reply(Reply::status(200).json(json!({ "hold": true, "work_id": "task-work" })));
    let task = app
        .ok(
            &world.write,
            "mutation($build: ID!) { createTask(input: {buildId: $build, name: \"deploy\"}) { task { status workId } } }",
            json!({ "build": approved["id"] }),
        )
        .await;
    assert_eq!(
        task["createTask"]["task"],
        json!({ "status": "PAUSED", "workId": "task-work" })
    );
    let task_call = second.received().last().unwrap().json();
    assert_eq!(task_call["point"], "TASK_CREATE");
    assert_eq!(task_call["request"]["build"]["id"], approved["id"]);
    assert_eq!(
        first.received().len(),
        3,
        "the first hook is asked at BUILD_CREATE only"
    );
}

pub(super) async fn a_hook_decides_the_build_it_held_with_its_one_time_link(app: TestApp) {
    let hooks = Receiver::start().await;
    hooks.default_reply(Reply::status(200).json(json!({ "hold": true })));
    let receiver = Receiver::start().await;
    let world = World::new(&app, "linked").await;
    hook(&app, &world, &hooks.url("/hold"), json!({})).await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({ "events": ["BUILD"] }))
        .await;
    let http = reqwest::Client::new();
    let post = |path: String, body: &'static str| {
        let request = http
            .post(app.url(&path))
            .header("content-type", "application/json")
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };

    let first = create_build(&app, &world).await["data"]["createBuild"]["build"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let decide = hooks.wait_for(1).await[0].json()["decide"].clone();
    let token = decide["token"].as_str().unwrap();
    assert_eq!(token.len(), 64);
    assert_eq!(decide["approve"], format!("/api/approvals/{token}/approve"));
    let logged = calls(&app, &world).await[0]["request"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !logged.contains(token),
        "the log keeps no usable link: {logged}"
    );
    let (status, body) = post(decide["approve"].as_str().unwrap().to_owned(), "").await;
    assert_eq!(
        (status, body),
        (200, json!({ "id": first, "status": "TRIGGERED" }))
    );
    let (status, body) = post(decide["reject"].as_str().unwrap().to_owned(), "").await;
    assert_eq!(status, 404, "a link works once: {body}");
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    let (status, _) = post(format!("/api/approvals/{}/approve", "0".repeat(64)), "").await;
    assert_eq!(status, 404);

    let second = create_build(&app, &world).await["data"]["createBuild"]["build"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let decide = hooks.wait_for(2).await[1].json()["decide"].clone();
    let (status, body) = post(
        decide["reject"].as_str().unwrap().to_owned(),
        r#"{"reason": "tests must pass first"}"#,
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({ "id": second, "status": "ABORTED" }))
    );
    let updates: Vec<Value> = receiver
        .wait_for(4)
        .await
        .iter()
        .map(|r| r.json())
        .filter(|b| b["action"] == "updated")
        .collect();
    assert_eq!(updates.len(), 2, "each decision is an event");
    let audit = app
        .ok(&world.admin, "query($org: ID!) { ownerInfo(uid: $org) { auditEvents(first: 20) { edges { node { data actor { username } } } } } }", json!({ "org": world.org }))
        .await
        .to_string();
    assert!(
        audit.contains("RejectBuild")
            && audit.contains("tests must pass first")
            && audit.contains("approval-hook:"),
        "{audit}"
    );
}

pub(super) async fn a_named_secret_signs_a_hook_and_stays_while_it_does(app: TestApp) {
    let hooks = Receiver::start().await;
    hooks.default_reply(Reply::status(200).json(json!({ "approved": true })));
    let world = World::new(&app, "named-hook").await;
    app.ok(
        &world.admin,
        "mutation($org: ID!) { setWebHookSecret(input: {ownerUid: $org, name: \"gate\", value: \"gate-secret-value\"}) { secret { name } } }",
        json!({ "org": world.org }),
    )
    .await;
    let id = hook(
        &app,
        &world,
        &hooks.url("/gate"),
        json!({ "secretName": "gate", "signatureStyle": "JOBSERV" }),
    )
    .await;
    create_build(&app, &world).await;
    let call = hooks.wait_for(1).await[0].clone();
    let expected = format!(
        "sha256:{}",
        herald::signing::cirrus_signature("gate-secret-value", &call.body)
    );
    assert_eq!(call.header("x-jobserv-sig"), Some(expected.as_str()));
    let delete = app
        .gql(
            Some(&world.admin),
            "mutation($org: ID!) { deleteWebHookSecret(input: {ownerUid: $org, name: \"gate\"}) { deletedName } }",
            json!({ "org": world.org }),
        )
        .await;
    assert_eq!(code(&delete), "CONFLICT", "{delete}");
    assert!(
        delete["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("approval hook")
    );
    let secrets = app
        .ok(
            &world.admin,
            "query($org: ID!) { ownerInfo(uid: $org) { webhookSecrets { usedByApprovalHooks } } }",
            json!({ "org": world.org }),
        )
        .await;
    assert_eq!(
        secrets["ownerInfo"]["webhookSecrets"][0]["usedByApprovalHooks"],
        json!([id])
    );
    let gitlab = app
        .gql(
            Some(&world.admin),
            "mutation($id: ID!, $secret: String!) { updateApprovalHook(input: {id: $id, signatureStyle: GITLAB, secretToken: $secret}) { hook { id } } }",
            json!({ "id": id, "secret": "clé-secrète" }),
        )
        .await;
    assert_eq!(code(&gitlab), "BAD_USER_INPUT", "{gitlab}");
}
