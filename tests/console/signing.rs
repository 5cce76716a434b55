//! Signing in the console: a signature style, a named secret, custom headers and the RAW
//! format chosen in the endpoint editor, previewed, saved, tested and listed under Secrets.

use serde_json::json;

use super::support::{Receiver, World};
use super::{sign_in, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    herald_no_chromedriver,
    ignore = "needs /usr/bin/chromedriver (Debian's chromium and chromium-driver)"
)]
async fn an_admin_signs_an_endpoint_codeup_style_with_a_named_secret_and_a_custom_header() {
    let (app, browser) = start("codeup").await;
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    world.build(&app).await;
    app.ok(
        &world.admin,
        "mutation($org: ID!) { setWebHookSecret(input: {ownerUid: $org, name: \"codeup-shared\", value: \"named-secret-value-0042\"}) { secret { name } } }",
        json!({ "org": world.org }),
    )
    .await;
    let url = receiver.url("/codeup");

    sign_in(&browser, &app, &world.admin).await;
    browser.wait_for_text("main", "No endpoints yet").await;
    browser.click("#new-endpoint").await;
    // Cirrus's style by default, its headers above the body.
    browser
        .wait_for_text("#preview-headers", "x-cirrus-event: build")
        .await;
    browser.fill("#webhook-url", &url).await;

    // Codeup's style, the RAW format, the named secret and a custom header.
    browser.select("#signature-style", "CODEUP").await;
    browser
        .wait_for_text("#signature-hint", "X-Codeup-Token")
        .await;
    browser.click("#format-raw").await;
    browser.click("#secret-source-named").await;
    browser.select("#secret-name", "codeup-shared").await;
    browser.click("#add-header").await;
    browser.fill("#headers .header-name", "X-Team").await;
    browser.fill("#headers .header-value", "platform-7").await;

    // The preview shows the request's headers as sent, every secret masked.
    let headers = browser
        .wait_for_text("#preview-headers", "x-team: ********")
        .await;
    assert!(headers.contains("codeup-event: Build Hook"), "{headers}");
    assert!(headers.contains("x-codeup-token: ********"), "{headers}");
    assert!(!headers.contains("x-cirrus-signature"), "{headers}");
    assert!(!headers.contains("platform-7"), "{headers}");
    // RAW: the selection's result itself, without the envelope's action.
    let body = browser
        .wait_for_text("#preview-body", "\"changeIdInRepo\": \"abc123\"")
        .await;
    assert!(!body.contains("\"action\""), "{body}");
    browser.screenshot("codeup-editor").await;
    browser.click("#save-endpoint").await;
    let card = browser.wait_for_text(".endpoint", &url).await;
    assert!(card.contains("CODEUP"), "{card}");
    assert!(card.contains("codeup-shared"), "{card}");
    assert!(card.contains("X-Team"), "{card}");
    assert!(
        !card.contains("platform-7"),
        "the header's value is shown: {card}"
    );
    browser.screenshot("codeup-endpoints").await;

    let data = app
        .ok(
            &world.admin,
            "{ viewer { webhookSettings { endpoints { signatureStyle payloadFormat secretName maskedSecretToken headers { name maskedValue } } } } }",
            json!({}),
        )
        .await;
    let saved = &data["viewer"]["webhookSettings"]["endpoints"][0];
    assert_eq!(saved["signatureStyle"], "CODEUP");
    assert_eq!(saved["payloadFormat"], "RAW");
    assert_eq!(saved["secretName"], "codeup-shared");
    assert!(saved["maskedSecretToken"].is_null(), "{saved}");
    assert_eq!(
        saved["headers"],
        json!([{ "name": "X-Team", "maskedValue": "********" }])
    );

    // Saving again sends the masked value back, which keeps the stored one.
    browser.click(".endpoint .actions a.button").await;
    browser
        .wait_for_text("#headers .header-value", "********")
        .await;
    browser.click("#save-endpoint").await;
    browser.wait_for_text(".endpoint", &url).await;

    // A test build from the card, sent as Codeup would.
    browser.select(".endpoint .test-event", "build").await;
    browser.click(".endpoint .send-test").await;
    let sent = receiver.wait_for(1).await;
    assert_eq!(sent[0].header("codeup-event"), Some("Build Hook"));
    assert_eq!(
        sent[0].header("x-codeup-token"),
        Some("named-secret-value-0042")
    );
    assert_eq!(sent[0].header("x-team"), Some("platform-7"));
    assert_eq!(sent[0].json()["build"]["changeIdInRepo"], "abc123");

    // The secret lists the endpoint that signs with it.
    browser.click("#nav [data-tab=secrets]").await;
    let secrets = browser.wait_for_text("#secret-list", "codeup-shared").await;
    assert!(secrets.contains(&url), "{secrets}");
    assert!(!secrets.contains("named-secret-value"), "{secrets}");
    browser.screenshot("secrets").await;
}
