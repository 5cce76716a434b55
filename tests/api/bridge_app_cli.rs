//! `herald bridge slack --bot-token` as a command: the token never shows, and exactly one
//! destination is given.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bridge::{finish, spawn_bridge};
use crate::bridge_app::{body, send};
use crate::fake_slack_api::{CHANNEL_NAME, FakeSlackApi};

/// Sends a signed build event to a bridge that is starting, until it answers.
async fn send_when_up(url: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sent = reqwest::Client::new().get(url).send().await;
        if sent.is_ok() {
            return send(url, "build", "d-up", 1, &body("FAILED", Value::Null)).await;
        }
        assert!(Instant::now() < deadline, "the bridge did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bot token is never printed, logged or answered, even when Slack refuses it; and the
/// two destinations are one or the other, refused in one sentence otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_token_never_shows_and_one_destination_is_required() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let slack = FakeSlackApi::start().await;
    let api = slack.url();
    let canary = "xoxb-9-CANARYTOKEN";
    for (args, env) in [
        (vec!["--bot-token", canary], vec![("RUST_LOG", "trace")]),
        (
            vec![],
            vec![("SLACK_BOT_TOKEN", canary), ("RUST_LOG", "trace")],
        ),
    ] {
        let mut args = args;
        args.extend(["--channel", CHANNEL_NAME, "--slack-api", &api]);
        args.extend(["--channel-interval", "100ms"]);
        let (mut child, url) = spawn_bridge(&args, &env);
        let (status, answer) = send_when_up(&url).await;
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(status, 502, "{answer}");
        assert_eq!(
            answer.trim(),
            "Slack refused the bot token (invalid_auth); check SLACK_BOT_TOKEN."
        );
        assert!(stderr.contains("invalid_auth"), "{stderr}");
        assert!(!stderr.contains("CANARYTOKEN"), "{stderr}");
    }

    let webhook = "https://hooks.slack.com/services/T0/B0/CANARYHOOK";
    for (args, env, says) in [
        (
            vec![
                "--bot-token",
                canary,
                "--channel",
                "C1",
                "--slack-url",
                webhook,
            ],
            vec![],
            "not both",
        ),
        (
            vec!["--slack-url", webhook],
            vec![("SLACK_BOT_TOKEN", canary)],
            "not both",
        ),
        (
            vec![],
            vec![],
            "give --slack-url (SLACK_WEBHOOK_URL) for an incoming webhook, or --bot-token",
        ),
        (vec!["--bot-token", canary], vec![], "needs --channel"),
    ] {
        let output = finish(spawn_bridge(&args, &env).0);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one sentence: {stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(!stderr.contains("CANARY"), "{stderr}");
    }
}
