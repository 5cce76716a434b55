//! Approval hooks from the command line, each command a real child process: `herald listen
//! --approve | --reject REASON | --hold` answering approval calls, and `herald hook test`
//! sending a sample call and exiting by the decision.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::signing;
use serde_json::{Value, json};

use crate::support::{Receiver, Reply};

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

/// `herald listen` as a child, its stdout read line by line; killed when dropped.
struct Listening {
    child: Child,
    lines: mpsc::Receiver<String>,
    url: String,
}

impl Listening {
    /// Starts `herald listen` with `args` and waits until it listens. With `--json` it says where
    /// on stderr, so the port is chosen here.
    fn start(args: &[&str]) -> Self {
        let json = args.contains(&"--json");
        let port = match json {
            true => crate::support::free_port(),
            false => 0,
        };
        let mut child = herald()
            .args(["listen", "--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut listening = Self {
            child,
            lines,
            url: format!("http://127.0.0.1:{port}/"),
        };
        if json {
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return listening;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("herald listen did not listen on port {port}");
        }
        let first = listening.line();
        listening.url = first
            .strip_prefix("Listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        listening
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("a line on stdout in time")
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An approval call as Herald sends one for `createBuild` in the organization acme.
fn approval_body() -> String {
    json!({
        "hook": "pre",
        "point": "BUILD_CREATE",
        "organization": { "uid": "7", "name": "acme" },
        "actor": { "id": "cli:acme" },
        "request": {
            "repositoryId": "3", "branch": "main", "changeIdInRepo": "abc123",
            "repository": { "id": "3", "owner": "acme", "name": "app" },
        },
    })
    .to_string()
}

/// Posts `body` as event `event`, signed with `secret` over `signed`; the status and the body.
async fn post(url: &str, event: &str, body: &str, signed: &str, secret: &str) -> (u16, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("x-cirrus-event", event)
        .header("x-cirrus-delivery", "call-1")
        .header(
            "x-cirrus-signature",
            signing::cirrus_signature(secret, signed.as_bytes()),
        )
        .header("webhook-id", "call-1")
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signing::standard_signature(secret, "call-1", timestamp, signed.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

fn is_uuid_v4(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok_and(|id| id.get_version_num() == 4)
}

/// Each flag answers approval calls as documented, signed calls only, with a fresh work id
/// each time, and prints one line naming the point, organization, actor and decision; other
/// deliveries are received as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_answers_approval_calls_as_its_flag_says() {
    let body = approval_body();
    let head =
        "approval BUILD_CREATE  organization acme (uid 7)  actor cli:acme  repository acme/app  → ";

    let approve = Listening::start(&["--secret", "s3cret", "--approve"]);
    let mut work_ids = Vec::new();
    for _ in 0..2 {
        let (status, answer) = post(&approve.url, "approval", &body, &body, "s3cret").await;
        assert_eq!(status, 200, "{answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["approved"], true, "{answer}");
        let work_id = answer["work_id"].as_str().unwrap().to_owned();
        assert!(is_uuid_v4(&work_id), "{work_id}");
        assert_eq!(answer.as_object().unwrap().len(), 2, "{answer}");
        assert_eq!(
            approve.line(),
            format!(
                "{head}APPROVED work_id={work_id}  (X-Cirrus-Signature valid, webhook-signature valid; answered 200)"
            )
        );
        work_ids.push(work_id);
    }
    assert_ne!(
        work_ids[0], work_ids[1],
        "each answer has a work id of its own"
    );

    // The secret still guards approval calls: a tampered one is refused, not answered.
    let tampered = body.replace("main", "release");
    let (status, answer) = post(&approve.url, "approval", &tampered, &body, "s3cret").await;
    assert_eq!(status, 400, "{answer}");
    assert!(serde_json::from_str::<Value>(&answer).is_err(), "{answer}");
    let refused = approve.line();
    assert!(
        refused.ends_with(
            "refused: the signature is not valid  (X-Cirrus-Signature invalid, webhook-signature invalid; answered 400)"
        ),
        "{refused}"
    );

    // Anything else is a delivery, printed and answered as without the flag.
    let task = json!({
        "action": "created",
        "data": { "repository": { "owner": "acme", "name": "app" }, "build": { "id": "12" }, "task": { "id": "34", "name": "lint" } },
    })
    .to_string();
    assert_eq!(
        post(&approve.url, "task", &task, &task, "s3cret").await,
        (200, "received\n".to_owned())
    );
    assert!(approve.line().starts_with("task created"));
    approve.line();
    assert_eq!(
        approve.line(),
        "  X-Cirrus-Signature valid, webhook-signature valid; answered 200"
    );

    let reject = Listening::start(&["--reject", "not today"]);
    let (status, answer) = post(&reject.url, "approval", &body, &body, "any").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        json!({ "approved": false, "reason": "not today" })
    );
    assert_eq!(
        reject.line(),
        format!(
            "{head}REJECTED reason=\"not today\"  (X-Cirrus-Signature unchecked, webhook-signature unchecked; answered 200)"
        )
    );

    let hold = Listening::start(&["--hold", "--json"]);
    let (status, answer) = post(&hold.url, "approval", &body, &body, "any").await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["hold"], true, "{answer}");
    let work_id = answer["work_id"].as_str().unwrap();
    assert!(is_uuid_v4(work_id), "{work_id}");
    let printed: Value = serde_json::from_str(&hold.line()).unwrap();
    assert_eq!(printed["event"], "approval");
    assert_eq!(printed["point"], "BUILD_CREATE");
    assert_eq!(printed["organization"], "acme");
    assert_eq!(printed["actor"], "cli:acme");
    assert_eq!(printed["decision"], "HELD");
    assert_eq!(printed["workId"], work_id);
    assert_eq!(printed["answered"], 200);
    assert_eq!(printed["answer"], answer);
    assert_eq!(
        printed["body"],
        serde_json::from_str::<Value>(&body).unwrap()
    );
}

#[test]
fn listen_takes_one_approval_answer_at_most() {
    for flags in [
        &["--approve", "--hold"][..],
        &["--approve", "--reject", "no"],
        &["--hold", "--reject", "no"],
    ] {
        let output = herald()
            .args(["listen", "--listen", "127.0.0.1:0"])
            .args(flags)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{flags:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("cannot be used with"),
            "{flags:?}: {output:?}"
        );
    }
}

/// Runs `herald hook test` off the runtime's threads (the receiver runs on them).
async fn hook_test(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        herald()
            .args(["hook", "test"])
            .args(&args)
            .env_remove("HERALD_HOOK_SECRET")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The sample call is an approval call as Herald sends it, signed in the chosen style; the
/// status, the answer and the decision are printed, and the exit code follows the decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_test_sends_a_signed_sample_call_and_exits_by_the_decision() {
    let receiver = Receiver::start().await;
    receiver.script([
        Reply::status(200).json(json!({ "approved": true, "work_id": "w-9" })),
        Reply::status(200).json(json!({ "approved": false, "reason": "frozen" })),
        Reply::status(200).json(json!({ "approved": true, "hold": true })),
        Reply::status(500).json(json!({ "approved": true })),
        Reply::status(200).body("ok"),
    ]);
    let url = receiver.url("/approve");

    let approved = hook_test(&[&url, "--point", "TASK_CREATE", "--secret", "s3cret"]).await;
    assert_eq!(approved.status.code(), Some(0), "{approved:?}");
    assert_eq!(
        stdout_lines(&approved),
        [
            "status: 200",
            r#"answer: {"approved":true,"work_id":"w-9"}"#,
            "decision: APPROVED work_id=w-9",
        ]
    );
    let call = &receiver.wait_for(1).await[0];
    assert_eq!(call.uri.path(), "/approve");
    assert_eq!(call.header("x-cirrus-event"), Some("approval"));
    assert_eq!(
        call.header("x-cirrus-signature"),
        Some(signing::cirrus_signature("s3cret", &call.body).as_str())
    );
    let id = call.header("webhook-id").unwrap();
    let timestamp: i64 = call.header("webhook-timestamp").unwrap().parse().unwrap();
    assert!(signing::verify_standard(
        "s3cret",
        id,
        timestamp,
        &call.body,
        call.header("webhook-signature").unwrap()
    ));
    let body = call.json();
    assert_eq!(body["hook"], "pre");
    assert_eq!(body["point"], "TASK_CREATE");
    assert!(body["organization"]["uid"].is_string(), "{body}");
    assert!(body["organization"]["name"].is_string(), "{body}");
    assert!(body["actor"]["id"].is_string(), "{body}");
    assert_eq!(body["request"]["test"], true);
    assert_eq!(
        body["request"]["repository"]["owner"],
        body["organization"]["name"]
    );
    assert!(body["request"]["repository"]["name"].is_string(), "{body}");

    let rejected = hook_test(&[
        &url,
        "--point",
        "build_create",
        "--signature-style",
        "GITHUB",
        "--secret",
        "s3cret",
    ])
    .await;
    assert_eq!(rejected.status.code(), Some(1), "{rejected:?}");
    assert_eq!(
        stdout_lines(&rejected)[2],
        r#"decision: REJECTED reason="frozen""#
    );
    let call = &receiver.wait_for(2).await[1];
    assert_eq!(call.json()["point"], "BUILD_CREATE");
    assert_eq!(call.header("x-github-event"), Some("approval"));
    assert_eq!(
        call.header("x-hub-signature-256"),
        Some(format!("sha256={}", signing::cirrus_signature("s3cret", &call.body)).as_str())
    );
    assert_eq!(call.header("x-cirrus-signature"), None);

    let held = hook_test(&[&url, "--point", "BUILD_CREATE"]).await;
    assert_eq!(held.status.code(), Some(1), "{held:?}");
    assert_eq!(stdout_lines(&held)[2], "decision: HELD");
    assert_eq!(
        receiver.wait_for(3).await[2].header("x-cirrus-signature"),
        None
    );

    let failed = hook_test(&[&url, "--point", "BUILD_CREATE"]).await;
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert_eq!(
        stdout_lines(&failed),
        [
            "status: 500",
            r#"answer: {"approved":true}"#,
            "no valid answer: the hook answered HTTP 500",
        ]
    );

    let garbled = hook_test(&[&url, "--point", "BUILD_CREATE"]).await;
    assert_eq!(garbled.status.code(), Some(1), "{garbled:?}");
    assert_eq!(
        stdout_lines(&garbled),
        [
            "status: 200",
            "answer: ok",
            "no valid answer: the hook's answer is not a JSON object",
        ]
    );
}

/// Against `herald listen` playing the hook: exit 0 when it approves, 1 when it rejects, holds,
/// refuses the signature or cannot be reached; 2 on bad usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_test_against_herald_listen_exits_0_only_when_approved() {
    let approve = Listening::start(&["--secret", "s3cret", "--approve"]);
    let approved = hook_test(&[
        &approve.url,
        "--point",
        "BUILD_CREATE",
        "--secret",
        "s3cret",
    ])
    .await;
    assert_eq!(approved.status.code(), Some(0), "{approved:?}");
    let lines = stdout_lines(&approved);
    assert_eq!(lines[0], "status: 200");
    let work_id = lines[2]
        .strip_prefix("decision: APPROVED work_id=")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(is_uuid_v4(work_id), "{work_id}");
    let heard = approve.line();
    assert!(
        heard.starts_with("approval BUILD_CREATE  organization "),
        "{heard}"
    );
    assert!(
        heard.contains(&format!(
            "→ APPROVED work_id={work_id}  (X-Cirrus-Signature valid"
        )),
        "{heard}"
    );

    // The wrong secret: the receiver refuses the call, which is no valid answer.
    let forged = hook_test(&[&approve.url, "--point", "BUILD_CREATE", "--secret", "wrong"]).await;
    assert_eq!(forged.status.code(), Some(1), "{forged:?}");
    assert_eq!(
        stdout_lines(&forged)[2],
        "no valid answer: the hook answered HTTP 400"
    );

    let reject = Listening::start(&["--reject", "not today"]);
    let rejected = hook_test(&[&reject.url, "--point", "TASK_CREATE"]).await;
    assert_eq!(rejected.status.code(), Some(1), "{rejected:?}");
    assert_eq!(
        stdout_lines(&rejected),
        [
            "status: 200",
            r#"answer: {"approved":false,"reason":"not today"}"#,
            r#"decision: REJECTED reason="not today""#,
        ]
    );
    assert!(reject.line().starts_with("approval TASK_CREATE  "));

    let hold = Listening::start(&["--hold"]);
    let held = hook_test(&[&hold.url, "--point", "TASK_CREATE"]).await;
    assert_eq!(held.status.code(), Some(1), "{held:?}");
    assert!(
        stdout_lines(&held)[2].starts_with("decision: HELD work_id="),
        "{held:?}"
    );

    // Nobody listening: no answer at all.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = format!("http://127.0.0.1:{port}/");
    let unreachable = hook_test(&[&closed, "--point", "BUILD_CREATE", "--timeout", "2s"]).await;
    assert_eq!(unreachable.status.code(), Some(1), "{unreachable:?}");
    assert_eq!(
        stdout_lines(&unreachable),
        [
            "status: none",
            "answer: (empty)",
            "no valid answer: the receiver refused the connection",
        ]
    );

    for usage in [
        &[closed.as_str()][..],
        &[&closed, "--point", "DEPLOY"],
        &["ftp://example.com/", "--point", "BUILD_CREATE"],
        &[&closed, "--point", "BUILD_CREATE", "--timeout", "0s"],
        &[
            &closed,
            "--point",
            "BUILD_CREATE",
            "--signature-style",
            "PLAIN",
        ],
    ] {
        let output = hook_test(usage).await;
        assert_eq!(output.status.code(), Some(2), "{usage:?}: {output:?}");
        assert!(output.stdout.is_empty(), "{usage:?}: {output:?}");
    }
}
