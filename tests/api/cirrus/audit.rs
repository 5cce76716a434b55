//! Audit events: one recorded with each mutation and none with a failed one, sent to the
//! endpoints that ask for them, without secrets.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Receiver, TestApp, World, code};

async fn audit_events(app: &TestApp, world: &World) -> Vec<Value> {
    let data = app
        .ok(
            &world.admin,
            "query($org: ID!) { ownerInfo(uid: $org) { auditEvents(first: 100) { edges { node { id type timestamp data actor { id username } actorLocationIP repository { id name } } } } } }",
            json!({ "org": world.org }),
        )
        .await;
    data["ownerInfo"]["auditEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|edge| edge["node"].clone())
        .collect()
}

fn mutation_names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|event| {
            let data: Value = serde_json::from_str(event["data"].as_str().unwrap()).unwrap();
            data["mutationName"].as_str().unwrap().to_owned()
        })
        .collect()
}

pub(super) async fn every_mutation_records_an_audit_event_and_a_failed_one_none(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    let endpoint = world
        .endpoint(&app, &receiver.url("/hook"), json!({}))
        .await;
    let build = world.build(&app).await;
    let task = world.task(&app, &build, "test").await;
    world.task_status(&app, &task, "COMPLETED").await;
    world.build_status(&app, &build, "COMPLETED").await;
    receiver.wait_for(4).await;
    // Redelivery is refused while an attempt is under way, and an attempt lasts until its
    // outcome is written, which may come after the receiver got the request.
    let mut delivery = None;
    for _ in 0..200 {
        let newest = app
            .ok(
                &world.admin,
                "{ viewer { webhookDeliveries(first: 1) { edges { node { id state } } } } }",
                json!({}),
            )
            .await["viewer"]["webhookDeliveries"]["edges"][0]["node"]
            .clone();
        if newest["state"] == "DELIVERED" {
            delivery = newest["id"].as_str().map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivery = delivery.expect("the newest delivery was recorded as delivered");
    app.ok(
        &world.admin,
        "mutation($id: ID!) { redeliverWebHook(input: {deliveryId: $id}) { delivery { id } } }",
        json!({ "id": delivery }),
    )
    .await;
    app.ok(
        &world.admin,
        "mutation($id: ID!) { sendTestWebHook(input: {endpointId: $id}) { delivery { id } } }",
        json!({ "id": endpoint }),
    )
    .await;
    app.ok(
        &world.admin,
        "mutation($id: ID!) { updateWebHookEndpoint(input: {id: $id, enabled: false}) { endpoint { id } } }",
        json!({ "id": endpoint }),
    )
    .await;
    app.ok(
        &world.admin,
        "mutation($id: ID!) { deleteWebHookEndpoint(input: {id: $id}) { deletedId } }",
        json!({ "id": endpoint }),
    )
    .await;
    app.ok(
        &world.admin,
        "mutation($org: ID!) { saveWebHookSettings(input: {ownerUid: $org, deliveryEndpoints: []}) { settings { endpoints { id } } } }",
        json!({ "org": world.org }),
    )
    .await;

    let events = audit_events(&app, &world).await;
    assert_eq!(
        mutation_names(&events),
        [
            "SaveWebHookSettings",
            "DeleteWebHookEndpoint",
            "UpdateWebHookEndpoint",
            "SendTestWebHook",
            "RedeliverWebHook",
            "UpdateBuildStatus",
            "UpdateTaskStatus",
            "CreateTask",
            "CreateBuild",
            "CreateWebHookEndpoint",
            "CreateRepository",
        ],
        "newest first"
    );
    for event in &events {
        assert_eq!(event["type"], "graphql.mutation");
        assert_eq!(event["actorLocationIP"], "127.0.0.1");
        assert!(uuid::Uuid::parse_str(event["id"].as_str().unwrap()).is_ok());
    }
    let by_admin = &events[0]["actor"];
    assert_eq!(by_admin["username"], "test");
    let by_ci = &events[5]["actor"];
    assert_eq!(by_ci["username"], "test");
    assert_eq!(by_ci["id"], by_admin["id"], "one user per name");
    for ci in &events[5..9] {
        assert_eq!(
            ci["repository"]["id"].as_str(),
            Some(world.repository.as_str())
        );
    }
    assert_eq!(events[10]["repository"]["name"], "app");
    assert!(events[0]["repository"].is_null());
    let data: Value = serde_json::from_str(events[6]["data"].as_str().unwrap()).unwrap();
    assert_eq!(
        data,
        json!({"mutationName": "UpdateTaskStatus", "taskId": task, "status": "COMPLETED"})
    );

    // Failed mutations, whether refused before the write or by it, record nothing.
    let failures = [
        (
            world.write.as_str(),
            "mutation { createBuild(input: {repositoryId: \"999\", branch: \"main\", changeIdInRepo: \"x\"}) { build { id } } }",
            "NOT_FOUND",
        ),
        (
            world.write.as_str(),
            "mutation { updateTaskStatus(input: {taskId: \"999\", status: FAILED}) { task { id } } }",
            "NOT_FOUND",
        ),
        (
            world.admin.as_str(),
            "mutation { deleteWebHookEndpoint(input: {id: \"999\"}) { deletedId } }",
            "NOT_FOUND",
        ),
        (
            world.read.as_str(),
            "mutation { createBuild(input: {repositoryId: \"1\", branch: \"main\", changeIdInRepo: \"x\"}) { build { id } } }",
            "FORBIDDEN",
        ),
        (
            world.write.as_str(),
            "mutation { createBuild(input: {repositoryId: \"1\", branch: \"main\", changeIdInRepo: \"x\", initializer: \"a\\u0000b\"}) { build { id } } }",
            "BAD_USER_INPUT",
        ),
        (
            world.write.as_str(),
            "mutation { createBuild(input: {repositoryId: \"1\", branch: \"main\", changeIdInRepo: \"x\", initializer: \" \"}) { build { id } } }",
            "BAD_USER_INPUT",
        ),
    ];
    for (token, query, expected) in failures {
        let response = app.gql(Some(token), query, json!({})).await;
        assert_eq!(code(&response), expected, "{response}");
    }
    let response = app
        .gql(
            Some(&world.admin),
            "mutation($org: ID!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: \"ftp://nowhere\"}) { endpoint { id } } }",
            json!({ "org": world.org }),
        )
        .await;
    assert_eq!(code(&response), "BAD_USER_INPUT", "{response}");
    assert_eq!(audit_events(&app, &world).await.len(), events.len());

    // Another organization's admin sees none of them.
    let other = World::new(&app, "other").await;
    assert_eq!(
        mutation_names(&audit_events(&app, &other).await),
        ["CreateRepository"]
    );
    let response = app
        .gql(
            Some(&world.write),
            "query($org: ID!) { ownerInfo(uid: $org) { auditEvents { edges { node { id } } } } }",
            json!({ "org": world.org }),
        )
        .await;
    assert_eq!(code(&response), "FORBIDDEN", "the audit log is for admins");
}

pub(super) async fn audit_events_reach_only_the_endpoints_that_ask_and_carry_no_secret(
    app: TestApp,
) {
    let everything = Receiver::start().await;
    let audits = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, &everything.url("/default"), json!({}))
        .await;
    let canary = "whsec-canary-7f3e";
    let url = format!("http://bot:pw-canary-91@{}/audit", audits.addr);
    world
        .endpoint(
            &app,
            &url,
            json!({ "events": ["AUDIT_EVENT", "BUILD"], "secretToken": canary, "statusFilter": ["FAILED"] }),
        )
        .await;
    let build = world.build(&app).await;
    world.task(&app, &build, "test").await;

    // The default endpoint gets the build and the task, and no audit event.
    let received = everything.wait_for(2).await;
    // The audit endpoint gets its own creation's audit event, then the build's and the task's;
    // its status filter holds back the build event, not audit events.
    let audited = audits.wait_for(3).await;
    everything
        .expect_no_more_than(2, Duration::from_millis(500))
        .await;
    audits
        .expect_no_more_than(3, Duration::from_millis(100))
        .await;
    assert!(
        received
            .iter()
            .all(|r| r.header("x-cirrus-event") != Some("audit_event"))
    );
    let names: Vec<String> = audited
        .iter()
        .map(|r| {
            assert_eq!(r.header("x-cirrus-event"), Some("audit_event"));
            assert!(
                r.header("x-cirrus-signature").is_some(),
                "signed like any delivery"
            );
            let body = r.json();
            assert_eq!(body["action"], "created");
            let data: Value = serde_json::from_str(body["data"]["data"].as_str().unwrap()).unwrap();
            data["mutationName"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["CreateBuild", "CreateTask", "CreateWebHookEndpoint"]
    );

    let events = audit_events(&app, &world).await;
    let creation = events
        .iter()
        .find(|event| event["data"].as_str().unwrap().contains("AUDIT_EVENT"))
        .unwrap();
    let data: Value = serde_json::from_str(creation["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["secretToken"], "[redacted]");
    assert_eq!(
        data["webhookURL"],
        format!("http://***:***@{}/***", audits.addr),
        "the credentials and the path, which may hold a token, are not kept"
    );
    for text in audited
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .chain(events.iter().map(|event| event.to_string()))
    {
        for secret in [canary, "pw-canary-91"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
