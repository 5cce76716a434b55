//! Smaller edges: an endpoint update does not undo a concurrent change it did not ask for, and
//! URLs with credentials are shown without their user name.

use std::time::Duration;

use sea_orm::{ConnectionTrait, Database, TransactionTrait};
use serde_json::json;

use crate::support::{TestApp, World, code};

const UPDATE: &str = "mutation($id: ID!) { updateWebHookEndpoint(input: {id: $id, events: [BUILD]}) { endpoint { id enabled events } } }";

/// While another writer turns an endpoint off (as the worker does on a 410), an update of its
/// events waits for it and keeps it off: the update reads the endpoint inside its own write.
async fn an_update_keeps_an_endpoint_disabled_meanwhile(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let id = world
        .endpoint(&app, "https://hooks.example.com/gone", json!({}))
        .await;
    let other = Database::connect(&app.database_url).await.unwrap();
    let tx = other.begin().await.unwrap();
    tx.execute_unprepared(&format!(
        "UPDATE webhook_endpoints SET enabled = false WHERE id = {id}"
    ))
    .await
    .unwrap();

    let update = {
        let (app_url, admin) = (app.url("/graphql"), world.admin.clone());
        let id = id.clone();
        tokio::spawn(async move {
            reqwest::Client::new()
                .post(app_url)
                .bearer_auth(admin)
                .header("content-type", "application/json")
                .body(json!({ "query": UPDATE, "variables": { "id": id } }).to_string())
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    // Let the update read the endpoint and reach its write, which waits for this one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.commit().await.unwrap();
    let response: serde_json::Value = serde_json::from_str(&update.await.unwrap()).unwrap();
    assert!(response.get("errors").is_none(), "{response:#}");
    let endpoint = &response["data"]["updateWebHookEndpoint"]["endpoint"];
    assert_eq!(endpoint["events"], json!(["BUILD"]));
    assert_eq!(
        endpoint["enabled"], false,
        "the update turned the endpoint back on"
    );
    let stored = app
        .ok(
            &world.admin,
            "{ viewer { webhookSettings { endpoints { enabled events } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        stored["viewer"]["webhookSettings"]["endpoints"][0],
        json!({ "enabled": false, "events": ["BUILD"] })
    );
    // Turning it on again is a change the input asks for.
    let on = app
        .ok(
            &world.admin,
            "mutation($id: ID!) { updateWebHookEndpoint(input: {id: $id, enabled: true}) { endpoint { enabled } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(on["updateWebHookEndpoint"]["endpoint"]["enabled"], true);
}

/// A URL's user name is hidden wherever the URL is shown: the endpoint, errors, audit events.
async fn url_user_names_are_masked(app: TestApp) {
    let world = World::new(&app, "acme").await;
    let user = "cnryUSERq7";
    for (url, shown) in [
        (
            format!("https://{user}:pw@hooks.example.com/a"),
            "https://***:***@hooks.example.com/a",
        ),
        (
            format!("https://{user}@hooks.example.com/b"),
            "https://***:***@hooks.example.com/b",
        ),
    ] {
        let id = world.endpoint(&app, &url, json!({})).await;
        let data = app
            .ok(
                &world.admin,
                "{ viewer { webhookSettings { endpoints { id webhookURL } } } }",
                json!({}),
            )
            .await;
        let endpoints = data["viewer"]["webhookSettings"]["endpoints"]
            .as_array()
            .unwrap();
        let endpoint = endpoints.iter().find(|e| e["id"] == id).unwrap();
        assert_eq!(endpoint["webhookURL"], shown);
        let duplicate = app
            .gql(
                Some(&world.admin),
                "mutation($org: ID!, $url: String!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: $url}) { endpoint { id } } }",
                json!({ "org": world.org, "url": url }),
            )
            .await;
        assert_eq!(code(&duplicate), "CONFLICT");
        assert!(!duplicate.to_string().contains(user), "{duplicate}");
        let twice = app
            .gql(
                Some(&world.admin),
                "mutation($org: ID!, $url: String!) { saveWebHookSettings(input: {ownerUid: $org, deliveryEndpoints: [{webhookURL: $url}, {webhookURL: $url}]}) { settings { endpoints { id } } } }",
                json!({ "org": world.org, "url": url }),
            )
            .await;
        assert_eq!(code(&twice), "BAD_USER_INPUT");
        assert!(!twice.to_string().contains(user), "{twice}");
    }
    let audit = app
        .ok(
            &world.admin,
            "{ viewer { auditEvents(first: 20) { edges { node { data } } } } }",
            json!({}),
        )
        .await;
    assert!(!audit.to_string().contains(user), "{audit}");
}

crate::on_both_backends!(
    an_update_keeps_an_endpoint_disabled_meanwhile,
    url_user_names_are_masked,
);

/// A database URL in an error names neither its user nor its password.
#[test]
fn database_urls_in_errors_hide_the_user_name() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["migrate"])
        .env(
            "HERALD_DATABASE_URL",
            "postgres://cnryDBUSER:cnryDBPASS@127.0.0.1:1/herald",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("***:***@127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("cnryDBUSER"), "{stderr}");
    assert!(!stderr.contains("cnryDBPASS"), "{stderr}");
}
