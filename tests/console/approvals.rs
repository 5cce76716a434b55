//! Approvals in the console: a hook that holds builds, its call in the approval log with the
//! request and the answer, a test call from its card, a hook added and deleted through the
//! form, and the held build approved from the Builds view.

use serde_json::json;

use super::browser::Browser;
use super::support::{Receiver, Reply, World};
use super::{sign_in, start};

/// Clicks `css` once it is scrolled to the middle of the window, clear of the sticky header.
async fn click_centered(browser: &Browser, css: &str) {
    browser.find(css).await;
    browser
        .script(
            "document.querySelector(arguments[0]).scrollIntoView({ block: 'center' });",
            json!([css]),
        )
        .await;
    browser.click(css).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    herald_no_chromedriver,
    ignore = "needs /usr/bin/chromedriver (Debian's chromium and chromium-driver)"
)]
async fn an_admin_reads_the_approval_log_and_approves_a_held_build() {
    let (app, browser) = start("approvals").await;
    let gate = Receiver::start().await;
    gate.default_reply(Reply::status(200).json(json!({ "hold": true, "work_id": "w-1" })));
    let world = World::new(&app, "acme").await;
    let url = gate.url("/gate");
    app.ok(
        &world.admin,
        "mutation($input: CreateApprovalHookInput!) { createApprovalHook(input: $input) { hook { id } } }",
        json!({ "input": {
            "ownerUid": world.org, "url": url, "secretToken": "gate-secret-1234",
            "on": ["BUILD_CREATE"], "whenUnavailable": "REJECT",
        } }),
    )
    .await;

    // The CI engine records a build; the hook holds it.
    let build = world.build(&app).await;
    let status = async || {
        app.ok(
            &world.admin,
            "query($id: ID!) { build(id: $id) { status workId } }",
            json!({ "id": build }),
        )
        .await["build"]
            .clone()
    };
    assert_eq!(
        status().await,
        json!({ "status": "NEEDS_APPROVAL", "workId": "w-1" })
    );
    assert_eq!(
        gate.received()[0].header("x-cirrus-event"),
        Some("approval")
    );

    // The Approvals page lists the hook, without its secret, and the call in the log.
    sign_in(&browser, &app, &world.admin).await;
    browser.click("#nav [data-tab=approvals]").await;
    let hooks = browser.wait_for_text("#approval-hooks", &url).await;
    assert!(hooks.contains("Build created"), "{hooks}");
    assert!(hooks.contains("3000 ms"), "{hooks}");
    assert!(hooks.contains("REJECT"), "{hooks}");
    assert!(
        !hooks.contains("gate-secret"),
        "the secret is shown: {hooks}"
    );
    let log = browser.wait_for_text("#approval-log", "HELD").await;
    assert!(log.contains("Build created"), "{log}");
    assert!(log.contains("HTTP 200"), "{log}");
    browser.click("#approval-log .approval-row").await;
    let detail = browser.wait_for_text("#approval-detail", "w-1").await;
    assert!(detail.contains("\"point\": \"BUILD_CREATE\""), "{detail}");
    assert!(
        detail.contains("\"changeIdInRepo\": \"abc123\""),
        "{detail}"
    );
    assert!(detail.contains("\"hold\": true"), "{detail}");
    browser.screenshot("approvals").await;

    // A test call from the hook's card shows its decision, and joins the log.
    click_centered(&browser, ".approval-hook .test-hook").await;
    browser
        .wait_for_text(".approval-hook .test-result", "HELD")
        .await;
    assert_eq!(gate.wait_for(2).await[1].json()["request"]["test"], true);
    browser.script("window.scrollTo(0, 0);", json!([])).await;
    browser.screenshot("approval-hooks").await;
    browser
        .wait_for_text("#approval-detail", "\"test\": true")
        .await;

    // A second hook through the form, asked before tasks only; then deleted.
    browser.fill("#approval-url", &gate.url("/tasks")).await;
    browser.fill("#approval-secret", "task-secret-5678").await;
    click_centered(&browser, "#point-build_create").await;
    click_centered(&browser, "#point-task_create").await;
    browser.fill("#approval-timeout", "1500").await;
    browser.select("#when-unavailable", "HOLD").await;
    click_centered(&browser, "#save-approval-hook").await;
    browser
        .wait_for_text("#approval-hooks", &gate.url("/tasks"))
        .await;
    let saved = app
        .ok(
            &world.admin,
            "{ viewer { approvalHooks { id url on timeoutMs whenUnavailable maskedSecretToken } } }",
            json!({}),
        )
        .await["viewer"]["approvalHooks"]
        .clone();
    let added = &saved[1];
    assert_eq!(added["url"], gate.url("/tasks"));
    assert_eq!(added["on"], json!(["TASK_CREATE"]));
    assert_eq!(added["timeoutMs"], 1500);
    assert_eq!(added["whenUnavailable"], "HOLD");
    assert!(added["maskedSecretToken"].is_string(), "{added}");
    let card = format!(
        ".approval-hook[data-id=\"{}\"]",
        added["id"].as_str().unwrap()
    );
    click_centered(&browser, &format!("{card} .danger-text")).await;
    browser
        .wait_for_text("#confirm", "Delete this approval hook?")
        .await;
    browser.click("#confirm-ok").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while browser.count(&card).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted hook is still listed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let left = app
        .ok(
            &world.admin,
            "{ viewer { approvalHooks { url } } }",
            json!({}),
        )
        .await;
    assert_eq!(left["viewer"]["approvalHooks"], json!([{ "url": url }]));

    // The held build waits under Builds; an admin approves it.
    browser.click("#nav [data-tab=builds]").await;
    let builds = browser.wait_for_text("#build-list", "NEEDS_APPROVAL").await;
    assert!(builds.contains("w-1"), "{builds}");
    browser.screenshot("builds-held").await;
    click_centered(&browser, ".approve-build").await;
    browser.wait_for_text("#build-list", "TRIGGERED").await;
    assert_eq!(browser.count(".approve-build").await, 0);
    assert_eq!(
        status().await,
        json!({ "status": "TRIGGERED", "workId": "w-1" })
    );
}
