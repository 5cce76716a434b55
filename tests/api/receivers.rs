//! The receiver tools as users run them: `herald listen`, `herald verify` (both signature
//! schemes) and `herald demo`, each a real child process.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald::signing;
use serde_json::{Value, json};

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

/// A child process whose stdout is read line by line, with a timeout.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .env_remove("HERALD_JWT_SECRET")
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
        Self { child, lines }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(60))
            .expect("a line on stdout in time")
    }

    /// Sends SIGTERM, as a service manager would, and returns the exit code.
    fn terminate(mut self) -> Option<i32> {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().unwrap();
        panic!("the process did not stop within 10 seconds of SIGTERM");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn task_body() -> String {
    json!({
        "action": "updated",
        "old_status": "EXECUTING",
        "data": {
            "repository": { "id": "3", "owner": "acme", "name": "app" },
            "build": { "id": "12", "branch": "main", "status": "EXECUTING" },
            "task": { "id": "34", "name": "unit tests", "status": "COMPLETED" },
        },
    })
    .to_string()
}

/// Posts `body` with Herald's headers, signed with `secret`.
async fn deliver(url: &str, body: &str, signed: &str, secret: &str) -> u16 {
    let timestamp = now();
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("x-cirrus-event", "task")
        .header("x-cirrus-delivery", "d-1")
        .header(
            "x-cirrus-signature",
            signing::cirrus_signature(secret, signed.as_bytes()),
        )
        .header("webhook-id", "d-1")
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signing::standard_signature(secret, "d-1", timestamp, signed.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_prints_deliveries_and_refuses_a_tampered_one() {
    let listen =
        Running::spawn(herald().args(["listen", "--listen", "127.0.0.1:0", "--secret", "s3cret"]));
    let first = listen.line();
    let addr = first
        .strip_prefix("Listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();

    let body = task_body();
    assert_eq!(deliver(&addr, &body, &body, "s3cret").await, 200);
    assert_eq!(
        listen.line(),
        "task updated  EXECUTING → COMPLETED  delivery d-1"
    );
    assert_eq!(
        listen.line(),
        "  repository acme/app  build 12 (main)  task 34 unit tests"
    );
    assert_eq!(
        listen.line(),
        "  X-Cirrus-Signature valid, webhook-signature valid; answered 200"
    );

    let tampered = body.replace("COMPLETED", "FAILED");
    assert_eq!(deliver(&addr, &tampered, &body, "s3cret").await, 400);
    assert_eq!(
        listen.line(),
        "task updated  EXECUTING → FAILED  delivery d-1"
    );
    listen.line();
    assert_eq!(
        listen.line(),
        "  X-Cirrus-Signature invalid, webhook-signature invalid; answered 400"
    );
    assert_eq!(listen.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_json_prints_one_object_per_delivery_and_answers_the_chosen_status() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = Running::spawn(herald().args([
        "listen",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--json",
        "--status",
        "202",
    ]));
    let url = format!("http://127.0.0.1:{port}/hook");
    let mut status = None;
    for _ in 0..200 {
        if let Ok(response) = reqwest::Client::new()
            .post(&url)
            .body(task_body())
            .send()
            .await
        {
            status = Some(response.status().as_u16());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, Some(202));
    let line: Value = serde_json::from_str(&listen.line()).unwrap();
    assert_eq!(
        line["event"], "task",
        "no X-Cirrus-Event: guessed from the body"
    );
    assert_eq!(line["repository"], "acme/app");
    assert_eq!(line["taskName"], "unit tests");
    assert_eq!(line["cirrusSignature"], "absent");
    assert_eq!(line["answered"], 202);
}

fn verify(args: &[&str], body: &[u8]) -> Option<i32> {
    let mut child = herald()
        .arg("verify")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(body);
    child.wait().unwrap().code()
}

#[test]
fn verify_checks_standard_webhooks_headers() {
    let body = br#"{"action":"created"}"#;
    let ts = now();
    let signature = signing::standard_signature("key", "msg-1", ts, body);
    let ts_text = ts.to_string();
    let args = |id: &'static str, ts: &str, sig: &str| -> Vec<String> {
        [
            "--secret",
            "key",
            "--webhook-id",
            id,
            "--webhook-timestamp",
            ts,
            "--webhook-signature",
            sig,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: Vec<String>, body: &[u8]| {
        verify(&args.iter().map(String::as_str).collect::<Vec<_>>(), body)
    };
    assert_eq!(run(args("msg-1", &ts_text, &signature), body), Some(0));
    assert_eq!(
        run(
            args("msg-1", &ts_text, &signature),
            b"{\"action\":\"deleted\"}"
        ),
        Some(1)
    );
    assert_eq!(run(args("msg-2", &ts_text, &signature), body), Some(1));
    assert_eq!(run(args("msg-1", &ts_text, "v1,not*base64"), body), Some(1));

    let old = ts - 3600;
    let old_signature = signing::standard_signature("key", "msg-1", old, body);
    assert_eq!(
        run(args("msg-1", &old.to_string(), &old_signature), body),
        Some(1)
    );
    let mut lenient = args("msg-1", &old.to_string(), &old_signature);
    lenient.extend(["--tolerance".into(), "0s".into()]);
    assert_eq!(run(lenient, body), Some(0));

    // Malformed usage: exit 2.
    assert_eq!(run(args("msg-1", "yesterday", &signature), body), Some(2));
    assert_eq!(
        verify(
            &["--secret", "key", "--webhook-signature", &signature],
            body
        ),
        Some(2)
    );
    let mut both = args("msg-1", &ts_text, &signature);
    both.extend(["--signature".into(), signing::cirrus_signature("key", body)]);
    assert_eq!(run(both, body), Some(2));
    assert_eq!(
        verify(
            &[
                "--secret",
                "key",
                "--tolerance",
                "soon",
                "--signature",
                "00"
            ],
            body
        ),
        Some(2)
    );
}

#[test]
fn verify_still_checks_cirrus_signatures_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body.json");
    std::fs::write(&path, br#"{"action":"updated"}"#).unwrap();
    let path = path.to_str().unwrap();
    let signature = signing::cirrus_signature("key", br#"{"action":"updated"}"#);
    assert_eq!(
        verify(
            &["--secret", "key", "--signature", &signature, "--file", path],
            b""
        ),
        Some(0)
    );
    assert_eq!(
        verify(
            &[
                "--secret",
                "other",
                "--signature",
                &signature,
                "--file",
                path
            ],
            b""
        ),
        Some(1)
    );
    assert_eq!(
        verify(
            &["--secret", "key", "--signature", "xyz", "--file", path],
            b""
        ),
        Some(1)
    );
    assert_eq!(
        verify(
            &[
                "--secret",
                "key",
                "--signature",
                &signature,
                "--file",
                "/nonexistent/body"
            ],
            b""
        ),
        Some(1)
    );
}

#[test]
fn demo_shows_a_verified_delivery_and_stops_cleanly_on_sigterm() {
    let demo = Running::spawn(herald().args(["demo", "--listen", "127.0.0.1:0"]));
    let mut seen = Vec::new();
    let first_delivery = loop {
        let line = demo.line();
        seen.push(line.clone());
        if line.contains("  delivery ") {
            break line;
        }
        assert!(seen.len() < 50, "no delivery in {seen:#?}");
    };
    assert!(
        first_delivery.starts_with("build created  CREATED  delivery "),
        "{first_delivery}"
    );
    assert!(
        seen.iter()
            .any(|line| line.trim_start().starts_with("token:")),
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|line| line.contains("console:  http://127.0.0.1:")),
        "{seen:#?}"
    );
    assert_eq!(demo.line(), "  repository demo/hello-world  build 1 (main)");
    assert_eq!(
        demo.line(),
        "  X-Cirrus-Signature valid, webhook-signature valid; answered 200"
    );
    assert_eq!(demo.terminate(), Some(0));
}
