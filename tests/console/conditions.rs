//! Transition conditions in the console: an admin asks for broken and fixed builds only, the
//! card says so, and only the build that breaks the branch is sent.

use serde_json::json;

use super::support::{Receiver, World};
use super::{sign_in, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    herald_no_chromedriver,
    ignore = "needs /usr/bin/chromedriver (Debian's chromium and chromium-driver)"
)]
async fn an_admin_asks_for_broken_and_fixed_builds_only() {
    let (app, browser) = start("conditions").await;
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    let url = receiver.url("/changes");

    sign_in(&browser, &app, &world.admin).await;
    browser.wait_for_text("main", "No endpoints yet").await;
    browser.click("#new-endpoint").await;
    browser.fill("#webhook-url", &url).await;
    browser.click("#event-build").await;
    browser.click("#condition-broken").await;
    browser.click("#condition-fixed").await;
    browser.screenshot("conditions-editor").await;
    browser.click("#save-endpoint").await;
    let card = browser.wait_for_text(".endpoint", &url).await;
    assert!(card.contains("only broken, fixed"), "{card}");

    let data = app
        .ok(
            &world.admin,
            "{ viewer { webhookSettings { endpoints { events conditions } } } }",
            json!({}),
        )
        .await;
    let saved = &data["viewer"]["webhookSettings"]["endpoints"][0];
    assert_eq!(saved["events"], json!(["BUILD"]));
    assert_eq!(saved["conditions"], json!(["BROKEN", "FIXED"]));

    // The form shows them checked again, and saving keeps them.
    browser.click(".endpoint .actions a.button").await;
    browser.find("#condition-broken:checked").await;
    browser.find("#condition-fixed:checked").await;
    browser.click("#save-endpoint").await;
    browser
        .wait_for_text(".endpoint", "only broken, fixed")
        .await;

    // main passes, then fails: one delivery, the broken build.
    let passed = world.build(&app).await;
    world.build_status(&app, &passed, "COMPLETED").await;
    let failed = world.build(&app).await;
    world.build_status(&app, &failed, "FAILED").await;
    let sent = receiver.wait_for(1).await;
    receiver
        .expect_no_more_than(1, std::time::Duration::from_millis(300))
        .await;
    assert_eq!(sent[0].json()["data"]["build"]["id"], json!(failed));
}
