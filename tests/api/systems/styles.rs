//! Signature styles and rotations, checked by each system's own verification code.

use serde_json::json;

use super::verify;
use crate::support::{Backend, Received, Receiver, TestApp, World};

const SECRET: &str = "style-secret-for-every-receiver";

/// The headers that identify a delivery, sent in every style.
fn assert_identity(received: &Received) {
    for name in [
        "x-cirrus-event",
        "x-cirrus-delivery",
        "x-cirrus-timestamp",
        "webhook-id",
        "webhook-timestamp",
    ] {
        assert!(received.header(name).is_some(), "{name} is missing");
    }
}

pub(super) async fn each_style_verifies_as_its_own_receivers_do(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "styles").await;
    for style in ["CIRRUS", "GITHUB", "JOBSERV", "GITLAB", "CODEUP", "NONE"] {
        world
            .endpoint(
                &app,
                &receiver.url(&format!("/{style}")),
                json!({ "secretToken": SECRET, "signatureStyle": style, "events": ["BUILD"] }),
            )
            .await;
    }
    world.build(&app).await;
    let received = receiver.wait_for(6).await;
    let by = |style: &str| {
        received
            .iter()
            .find(|r| r.uri.path() == format!("/{style}"))
            .unwrap_or_else(|| panic!("nothing reached the {style} endpoint"))
            .clone()
    };
    for r in &received {
        assert_identity(r);
        assert_eq!(r.header("x-cirrus-event"), Some("build"));
    }

    let cirrus = by("CIRRUS");
    assert!(verify::cirrus(&cirrus, SECRET));
    assert!(verify::standard(&cirrus, SECRET));
    assert!(cirrus.header("x-hub-signature-256").is_none());

    let github = by("GITHUB");
    assert!(verify::github(&github, SECRET), "{:?}", github.headers);
    assert!(verify::standard(&github, SECRET));
    assert_eq!(github.header("x-github-event"), Some("build"));
    assert_eq!(
        github.header("x-github-delivery"),
        github.header("x-cirrus-delivery")
    );
    assert!(github.header("x-cirrus-signature").is_none());
    assert!(!verify::github(&github, "another-secret"));

    let jobserv = by("JOBSERV");
    assert!(verify::jobserv(&jobserv, SECRET), "{:?}", jobserv.headers);
    assert!(!verify::jobserv(&jobserv, "another-secret"));
    assert!(jobserv.header("x-cirrus-signature").is_none());

    let gitlab = by("GITLAB");
    assert!(verify::token(&gitlab, "x-gitlab-token", SECRET));
    assert_eq!(gitlab.header("x-gitlab-event"), Some("Build Hook"));
    assert!(verify::standard(&gitlab, SECRET));

    let codeup = by("CODEUP");
    assert!(verify::token(&codeup, "x-codeup-token", SECRET));
    assert_eq!(codeup.header("codeup-event"), Some("Build Hook"));
    assert!(codeup.header("x-gitlab-token").is_none());

    let none = by("NONE");
    for name in [
        "webhook-signature",
        "x-cirrus-signature",
        "x-hub-signature-256",
        "x-jobserv-sig",
        "x-gitlab-token",
        "x-codeup-token",
    ] {
        assert!(none.header(name).is_none(), "a NONE endpoint sent {name}");
    }
}

pub(super) async fn rotations_overlap_for_receivers_holding_either_secret(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "rotation").await;
    let endpoint = world
        .endpoint(
            &app,
            &receiver.url("/own"),
            json!({ "secretToken": "old-endpoint-secret", "events": ["BUILD"] }),
        )
        .await;
    let rotated = app
        .ok(
            &world.admin,
            "mutation($id: ID!) { rotateWebHookSecret(input: {endpointId: $id, newValue: \"new-endpoint-secret\", overlapSeconds: 3600}) { endpoint { maskedSecretToken secretOverlapEndsTimestamp } overlapEndsTimestamp } }",
            json!({ "id": endpoint }),
        )
        .await;
    let ends = rotated["rotateWebHookSecret"]["overlapEndsTimestamp"]
        .as_i64()
        .unwrap();
    assert_eq!(
        rotated["rotateWebHookSecret"]["endpoint"]["secretOverlapEndsTimestamp"],
        json!(ends)
    );
    assert_eq!(
        rotated["rotateWebHookSecret"]["endpoint"]["maskedSecretToken"], "********cret",
        "the new secret is the endpoint's secret"
    );
    world.build(&app).await;
    let delivery = receiver.wait_for(1).await[0].clone();
    assert!(verify::standard(&delivery, "old-endpoint-secret"));
    assert!(verify::standard(&delivery, "new-endpoint-secret"));
    assert!(
        verify::cirrus(&delivery, "old-endpoint-secret"),
        "the one-signature header keeps the replaced secret until the overlap ends"
    );

    // A named secret, rotated without overlap, signs with the new value only; set again, with
    // the value set.
    app.ok(
        &world.admin,
        "mutation($org: ID!) { setWebHookSecret(input: {ownerUid: $org, name: \"jobserv-key\", value: \"first-named-value\"}) { secret { name } } }",
        json!({ "org": world.org }),
    )
    .await;
    let named = world
        .endpoint(
            &app,
            &receiver.url("/named"),
            json!({ "secretName": "jobserv-key", "signatureStyle": "JOBSERV", "events": ["BUILD"] }),
        )
        .await;
    app.ok(
        &world.admin,
        "mutation($org: ID!) { rotateWebHookSecret(input: {ownerUid: $org, name: \"jobserv-key\", newValue: \"second-named-value\", overlapSeconds: 0}) { secret { name overlapEndsTimestamp } } }",
        json!({ "org": world.org }),
    )
    .await;
    world.build(&app).await;
    let received = receiver.wait_for(3).await;
    let named_delivery = received.iter().find(|r| r.uri.path() == "/named").unwrap();
    assert!(verify::jobserv(named_delivery, "second-named-value"));
    assert!(!verify::standard(named_delivery, "first-named-value"));
    let secrets = app
        .ok(
            &world.admin,
            "query($org: ID!) { ownerInfo(uid: $org) { webhookSecrets { name maskedValue updatedTimestamp usedBy } } }",
            json!({ "org": world.org }),
        )
        .await;
    assert_eq!(
        secrets["ownerInfo"]["webhookSecrets"],
        json!([{
            "name": "jobserv-key",
            "maskedValue": "********alue",
            "updatedTimestamp": secrets["ownerInfo"]["webhookSecrets"][0]["updatedTimestamp"],
            "usedBy": [named],
        }])
    );
}

/// A named secret changed while a delivery waits for its retry: the retry signs with the new
/// value.
pub(super) async fn a_changed_named_secret_signs_every_later_attempt(backend: Backend) {
    let Some(app) = TestApp::start_with(backend, |config| {
        config.retry_schedule = herald::domain::RetrySchedule::parse("2s").unwrap();
    })
    .await
    else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let receiver = Receiver::start().await;
    receiver.script([crate::support::Reply::status(500)]);
    let world = World::new(&app, "changed").await;
    app.ok(
        &world.admin,
        "mutation($org: ID!) { setWebHookSecret(input: {ownerUid: $org, name: \"shared\", value: \"before-the-change\"}) { secret { name } } }",
        json!({ "org": world.org }),
    )
    .await;
    world
        .endpoint(
            &app,
            &receiver.url("/hook"),
            json!({ "secretName": "shared", "signatureStyle": "GITHUB", "events": ["BUILD"] }),
        )
        .await;
    world.build(&app).await;
    let first = receiver.wait_for(1).await[0].clone();
    assert!(verify::github(&first, "before-the-change"));
    app.ok(
        &world.admin,
        "mutation($org: ID!) { setWebHookSecret(input: {ownerUid: $org, name: \"shared\", value: \"after-the-change\"}) { secret { name } } }",
        json!({ "org": world.org }),
    )
    .await;
    let retry = receiver.wait_for(2).await[1].clone();
    assert_eq!(first.body, retry.body, "a retry sends the same bytes");
    assert!(verify::github(&retry, "after-the-change"));
    assert!(!verify::github(&retry, "before-the-change"));
}
