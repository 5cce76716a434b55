//! The web console, driven in headless Chromium like an admin would use it. Needs Debian's
//! `chromium` and `chromium-driver` (CI installs them). Without chromedriver the browser tests
//! are ignored, with the reason, unless `CI` is set: there they fail (see `build.rs`). Screenshots of the main views land in the directory the tests print;
//! `HERALD_UPDATE_SCREENSHOT=1` also refreshes the README's `docs/console.png`.

mod approvals;
mod browser;
mod conditions;
mod signing;
#[path = "../api/support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use std::path::PathBuf;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use browser::{Browser, CHROMEDRIVER};
use support::{Backend, Receiver, TestApp, World};

/// Where this run's screenshots go.
fn screenshot_dir(test: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("console-screenshots")
        .join(test)
}

/// Starts Herald and a browser; fails without chromedriver.
async fn start(test: &str) -> (TestApp, Browser) {
    let shots = screenshot_dir(test);
    let Some(browser) = Browser::start(&shots).await else {
        panic!(
            "{CHROMEDRIVER} is missing; install Debian's chromium and chromium-driver to run the console tests"
        );
    };
    eprintln!("screenshots: {}", shots.display());
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    (app, browser)
}

async fn sign_in(browser: &Browser, app: &TestApp, token: &str) {
    browser.goto(&app.url("/")).await;
    browser.fill("#token", token).await;
    browser.click(".sign-in button[type=submit]").await;
    browser.find("#who").await;
}

async fn endpoint_count(app: &TestApp, world: &World) -> usize {
    let data = app
        .ok(
            &world.admin,
            "{ viewer { webhookSettings { endpoints { id } } } }",
            json!({}),
        )
        .await;
    data["viewer"]["webhookSettings"]["endpoints"]
        .as_array()
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_from_the_binary_with_a_content_security_policy() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let http = reqwest::Client::new();
    for (path, content_type, needle) in [
        ("/", "text/html; charset=utf-8", "<title>Herald</title>"),
        (
            "/assets/api.js",
            "text/javascript; charset=utf-8",
            "/graphql",
        ),
        (
            "/assets/style.css",
            "text/css; charset=utf-8",
            "prefers-color-scheme",
        ),
        ("/assets/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let response = http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'"), "{policy}");
        assert!(policy.contains("connect-src 'self'"), "{policy}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let body = response.text().await.unwrap();
        assert!(body.contains(needle), "{path} lacks {needle}");
    }
    let missing = http
        .get(app.url("/assets/nothing.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    herald_no_chromedriver,
    ignore = "needs /usr/bin/chromedriver (Debian's chromium and chromium-driver)"
)]
async fn an_admin_configures_an_endpoint_previews_its_payload_and_replays_a_delivery() {
    let (app, browser) = start("admin").await;
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    // A build to preview against, recorded before any endpoint exists.
    world.build(&app).await;

    // A wrong token is refused with a clear message.
    browser.goto(&app.url("/")).await;
    browser.screenshot("sign-in").await;
    browser.fill("#token", "not-a-token").await;
    browser.click(".sign-in button[type=submit]").await;
    browser
        .wait_for_text("#sign-in-error", "Herald did not accept this token")
        .await;

    sign_in(&browser, &app, &world.admin).await;
    browser.wait_for_text("#org-name", "acme").await;
    browser.wait_for_text("#permission", "ADMIN").await;
    browser.wait_for_text("main", "No endpoints yet").await;

    // The editor starts from Cirrus's default selection and previews it.
    browser.click("#new-endpoint").await;
    browser
        .wait_for_text("#payload-query", "query WebhookPayload")
        .await;
    browser
        .wait_for_text("#preview-body", "\"changeIdInRepo\": \"abc123\"")
        .await;
    // What Cirrus sends today: the build's initializer is in the default selection.
    browser
        .wait_for_text("#preview-body", "\"username\": \"test\"")
        .await;
    // Cirrus's documented selection is one click away, and so is the default again.
    browser.click("#cirrus-documented-selection").await;
    browser
        .wait_for_text("#payload-query", "changeIdInRepo changeTimestamp status")
        .await;
    browser
        .wait_for_text("#selection-status.ok", "The selection is valid")
        .await;
    browser.click("#reset-selection").await;
    browser
        .wait_for_text("#selection-status.ok", "The default selection")
        .await;
    browser
        .fill("#webhook-url", &receiver.url("/console-hook"))
        .await;
    browser.fill("#secret-token", "console-secret").await;

    // A bad selection shows where it is wrong, and saving it stores nothing.
    browser
        .fill("#payload-query", "build(id: $buildId) {\n  id\n  colour\n}")
        .await;
    let error = browser
        .wait_for_text("#selection-status.bad", "line 3, column 3")
        .await;
    assert!(error.contains("colour"), "{error}");
    assert!(error.contains("Go to line 3"), "{error}");
    assert_eq!(browser.count(".gutter .bad").await, 1);
    browser.screenshot("selection-error").await;
    browser.click("#save-endpoint").await;
    browser
        .wait_for_text("#form-error", "Nothing was saved")
        .await;
    assert_eq!(endpoint_count(&app, &world).await, 0);

    // A good custom selection previews the exact body, in either envelope.
    browser
        .fill(
            "#payload-query",
            "repository(id: $repositoryId) { owner name }\nbuild(id: $buildId) {\n  id\n  branch\n  status\n  changeMessageTitle\n}",
        )
        .await;
    browser
        .wait_for_text("#selection-status.ok", "The selection is valid")
        .await;
    let preview = browser
        .wait_for_text("#preview-body", "\"changeMessageTitle\": \"Fix it\"")
        .await;
    assert!(preview.contains("\"data\""), "{preview}");
    assert!(!preview.contains("changeIdInRepo"), "{preview}");
    assert_eq!(browser.count(".gutter .bad").await, 0);
    browser.click("#format-flat").await;
    // FLAT spreads the selection's fields beside "action" instead of under "data".
    browser
        .wait_for_text("#preview-body", "\"created\",\n  \"repository\": {")
        .await;
    browser.click("#format-data").await;
    browser.wait_for_text("#preview-body", "\"data\"").await;
    browser
        .script(
            "document.querySelector('.editor').scrollIntoView({ block: 'center' });",
            json!([]),
        )
        .await;
    let editor_shot = browser.screenshot("endpoint-editor").await;
    browser.click("#save-endpoint").await;
    let list = browser
        .wait_for_text(".endpoints", &receiver.url("/console-hook"))
        .await;
    assert!(list.contains("custom"), "{list}");
    assert!(
        !list.contains("console-secret"),
        "the secret is shown: {list}"
    );
    browser.screenshot("endpoints").await;

    // The CI engine records a build; its delivery appears in the log by itself.
    let build = world.build(&app).await;
    let first = receiver.wait_for(1).await;
    let body = first[0].json();
    assert_eq!(body["data"]["build"]["id"], build.as_str());
    assert_eq!(body["data"]["build"]["changeMessageTitle"], "Fix it");
    assert_eq!(body["data"]["repository"]["name"], "app");
    browser.click("#nav [data-tab=deliveries]").await;
    browser.wait_for_text(".delivery-row", "DELIVERED").await;
    browser.click(".delivery-row").await;
    let detail = browser.wait_for_text("#delivery-detail", "HTTP 200").await;
    let delivery_id = first[0].header("x-cirrus-delivery").unwrap().to_owned();
    assert!(detail.contains(&delivery_id), "{detail}");
    assert!(
        detail.contains("\"changeMessageTitle\": \"Fix it\""),
        "{detail}"
    );
    assert!(detail.contains("X-Cirrus-Signature"), "{detail}");
    browser.screenshot("deliveries").await;

    // Redelivery: the receiver gets the same delivery id twice, and the log shows both.
    browser.click("#redeliver").await;
    let both = receiver.wait_for(2).await;
    assert_eq!(
        both[1].header("x-cirrus-delivery"),
        Some(delivery_id.as_str())
    );
    assert_eq!(both[1].body, both[0].body);
    browser.wait_for_text("#delivery-detail", "Attempt 2").await;
    browser.screenshot("redelivered").await;

    // A test ping from the filtered log.
    browser.goto(&app.url("/#/endpoints")).await;
    browser.click(".endpoint a.button.ghost").await;
    browser.click(".filters button").await;
    let ping = receiver.wait_for(3).await;
    assert_eq!(ping[2].header("x-cirrus-event"), Some("ping"));
    browser.wait_for_text("#delivery-detail", "ping").await;

    browser.color_scheme("dark").await;
    browser.screenshot("deliveries-dark").await;
    browser.set_window(390, 844).await;
    browser.screenshot("deliveries-phone").await;

    if std::env::var("HERALD_UPDATE_SCREENSHOT").is_ok_and(|value| value == "1") {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console.png");
        std::fs::copy(&editor_shot, &docs).expect("updating docs/console.png");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    herald_no_chromedriver,
    ignore = "needs /usr/bin/chromedriver (Debian's chromium and chromium-driver)"
)]
async fn a_read_token_sees_builds_and_no_webhook_controls() {
    let (app, browser) = start("read").await;
    let world = World::new(&app, "acme").await;
    let build = world.build(&app).await;
    world.task(&app, &build, "lint").await;

    sign_in(&browser, &app, &world.read).await;
    browser.wait_for_text("#permission", "READ").await;
    let page = browser.wait_for_text("main", "lint").await;
    assert!(page.contains("need an ADMIN token"), "{page}");
    assert_eq!(browser.count("#nav [data-tab=endpoints]").await, 0);
    assert_eq!(browser.count("#nav [data-tab=deliveries]").await, 0);
    browser.screenshot("builds-read").await;

    // Typing an admin address shows why, not a failing form.
    browser.goto(&app.url("/#/endpoints/new")).await;
    browser
        .wait_for_text("main", "An ADMIN token is needed here")
        .await;
    assert_eq!(browser.count("#endpoint-form").await, 0);

    // Signing out forgets the token.
    browser.click("#sign-out").await;
    browser.find("#token").await;
    let stored = browser
        .script("return sessionStorage.getItem('herald.token');", json!([]))
        .await;
    assert!(stored.is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    herald_no_chromedriver,
    ignore = "needs /usr/bin/chromedriver (Debian's chromium and chromium-driver)"
)]
async fn an_admin_disables_edits_and_deletes_an_endpoint() {
    let (app, browser) = start("manage").await;
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    let url = receiver.url("/managed");
    let id = world
        .endpoint(&app, &url, json!({ "secretToken": "old-secret-1234" }))
        .await;
    let endpoint = async || {
        app.ok(
            &world.admin,
            "query($id: ID!) { webhookEndpoint(id: $id) { webhookURL maskedSecretToken events enabled } }",
            json!({ "id": id }),
        )
        .await["webhookEndpoint"]
            .clone()
    };

    sign_in(&browser, &app, &world.admin).await;
    let card = browser.wait_for_text(".endpoint", &url).await;
    assert!(!card.contains("old-secret"), "the secret is shown: {card}");

    // The switch disables the endpoint at once.
    browser.click(".endpoint .switch").await;
    browser.wait_for_text(".endpoint .switch", "Off").await;
    assert_eq!(endpoint().await["enabled"], false);

    // Editing replaces the secret and the events; the URL is left as it was.
    browser.click(".endpoint .actions a.button").await;
    let help = browser
        .wait_for_text(".endpoint-form", "A secret is set")
        .await;
    assert!(!help.contains("old-secret"), "{help}");
    browser.fill("#secret-token", "new-secret-5678").await;
    browser.click("#event-task").await;
    browser.click("#event-audit_event").await;
    browser.click("#enabled").await;
    browser.click("#save-endpoint").await;
    browser.wait_for_text(".endpoint .switch", "On").await;
    browser
        .wait_for_text(".endpoint", "task, audit event")
        .await;
    let saved = endpoint().await;
    assert_eq!(saved["webhookURL"], url.as_str());
    assert_eq!(saved["events"], json!(["TASK", "AUDIT_EVENT"]));
    assert_eq!(saved["enabled"], true);
    // The new secret signs what is sent now.
    app.ok(
        &world.admin,
        "mutation($id: ID!) { sendTestWebHook(input: {endpointId: $id}) { delivery { id } } }",
        json!({ "id": id }),
    )
    .await;
    // The ping, and the audit events of the edit and of the ping, which it now subscribes to.
    let received = receiver.wait_for(3).await;
    let events: Vec<_> = received
        .iter()
        .map(|r| r.header("x-cirrus-event").unwrap())
        .collect();
    assert_eq!(
        events
            .iter()
            .filter(|event| **event == "audit_event")
            .count(),
        2,
        "{events:?}"
    );
    for delivery in &received {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"new-secret-5678").unwrap();
        mac.update(&delivery.body);
        let expected = hex::encode(mac.finalize().into_bytes());
        assert_eq!(
            delivery.header("x-cirrus-signature"),
            Some(expected.as_str())
        );
    }
    assert!(events.contains(&"ping"), "{events:?}");

    // Deleting asks first.
    browser.click(".endpoint .danger-text").await;
    browser
        .wait_for_text("#confirm", "Delete this endpoint?")
        .await;
    browser.screenshot("delete-confirmation").await;
    browser.click("#confirm-ok").await;
    browser.wait_for_text("main", "No endpoints yet").await;
    assert_eq!(endpoint_count(&app, &world).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    herald_no_chromedriver,
    ignore = "needs /usr/bin/chromedriver (Debian's chromium and chromium-driver)"
)]
async fn graphiql_renders_offline_and_sends_the_token_of_its_headers_pane() {
    let (app, browser) = start("graphiql").await;
    let world = World::new(&app, "acme").await;

    // Every script comes from the binary under `script-src 'self'`: GraphiQL renders at all
    // only if none was blocked.
    browser.goto(&app.url("/graphql")).await;
    browser.find(".graphiql-container").await;
    let notice = browser.wait_for_text("#notice", "Headers").await;
    assert!(notice.contains("needs a token"), "{notice}");
    let headers = browser
        .wait_for_text(".graphiql-editor-tool", "Authorization")
        .await;
    assert!(headers.contains("paste a token here"), "{headers}");

    // With a token (here the console's, from this tab's session), GraphiQL reads the schema
    // and runs a query, sending the token in its Authorization header.
    browser
        .script(
            "sessionStorage.setItem('herald.token', arguments[0]);",
            json!([world.read]),
        )
        .await;
    browser.goto(&app.url("/graphql")).await;
    browser.find(".graphiql-container").await;
    browser
        .script(
            "document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue(arguments[0]);",
            json!(["{ viewer { name } }"]),
        )
        .await;
    browser.click(".graphiql-execute-button").await;
    browser
        .wait_for_text(".graphiql-response", "\"name\": \"acme\"")
        .await;
    browser
        .click(".graphiql-sidebar button[aria-label='Show Documentation Explorer']")
        .await;
    browser
        .wait_for_text(".graphiql-doc-explorer", "Query")
        .await;
    browser.screenshot("graphiql").await;
}
