//! Hostile receivers, over raw TCP: whatever they answer, or fail to, an attempt ends within
//! the timeout, keeps at most the response cap, and is recorded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{Backend, Receiver, TestApp, World};

/// A raw TCP receiver that answers every connection with `behaviour`.
async fn hostile<F, Fut>(behaviour: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let behaviour = Arc::new(behaviour);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let behaviour = behaviour.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 64 * 1024];
                let _ = tokio::time::timeout(Duration::from_millis(200), socket.read(&mut request))
                    .await;
                behaviour(socket).await;
            });
        }
    });
    addr
}

async fn endless(
    mut socket: tokio::net::TcpStream,
    head: &'static [u8],
    chunk: &'static [u8],
    pause: Duration,
) {
    if socket.write_all(head).await.is_err() {
        return;
    }
    while socket.write_all(chunk).await.is_ok() {
        tokio::time::sleep(pause).await;
    }
}

/// Each hostile receiver's attempt ends within the timeout, keeps at most the response cap, and
/// is recorded: what a receiver answers cannot keep an outcome from being written (on
/// PostgreSQL, a NUL byte in a body used to fail the outcome's whole batch).
pub(super) async fn hostile_receivers_are_bounded_in_time_and_bytes(backend: Backend) {
    let timeout = Duration::from_secs(1);
    let Some(app) = TestApp::start_with(backend, |config| {
        config.delivery_timeout = timeout;
        config.retry_schedule = herald::domain::RetrySchedule::parse("").unwrap();
    })
    .await
    else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let bomb = {
        use flate2::write::GzEncoder;
        use std::io::Write as _;
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![b'a'; 20 * 1024 * 1024]).unwrap();
        encoder.finish().unwrap()
    };
    let bomb_len = bomb.len();
    let bomb = Arc::new(bomb);
    let cases: Vec<(&str, SocketAddr)> = vec![
        (
            "never answers",
            hostile(|socket| async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(socket)
            })
            .await,
        ),
        (
            "trickles headers",
            hostile(|s| endless(s, b"HTTP/1.1 200 OK\r\n", b"X", Duration::from_millis(100))).await,
        ),
        (
            "trickles the body",
            hostile(|s| {
                endless(
                    s,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n",
                    b"x",
                    Duration::from_millis(100),
                )
            })
            .await,
        ),
        (
            "sends an endless body",
            hostile(|s| {
                endless(
                    s,
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n",
                    &[b'z'; 16384],
                    Duration::ZERO,
                )
            })
            .await,
        ),
        (
            "sends endless headers",
            hostile(|s| {
                endless(
                    s,
                    b"HTTP/1.1 200 OK\r\n",
                    b"X-Flood: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
                    Duration::ZERO,
                )
            })
            .await,
        ),
        (
            "sends one huge header",
            hostile(|s| {
                endless(
                    s,
                    b"HTTP/1.1 200 OK\r\nX-Huge: ",
                    &[b'h'; 16384],
                    Duration::ZERO,
                )
            })
            .await,
        ),
        (
            "speaks no HTTP",
            hostile(|mut s| async move {
                let _ = s.write_all(b"SSH-2.0-OpenSSH\r\n\r\ngarbage\r\n").await;
            })
            .await,
        ),
        ("sends a decompression bomb", {
            let bomb = bomb.clone();
            hostile(move |mut s| {
                let bomb = bomb.clone();
                async move {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
                        bomb.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&bomb).await;
                }
            })
            .await
        }),
        (
            "answers with NUL bytes",
            hostile(|mut s| async move {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nok\0\x1f\x8b\0")
                    .await;
            })
            .await,
        ),
    ];
    let mut worlds = Vec::new();
    for (i, (name, addr)) in cases.iter().enumerate() {
        let world = World::new(&app, &format!("org{i}")).await;
        world
            .endpoint(&app, &format!("http://{addr}/hook"), json!({}))
            .await;
        worlds.push((name, world));
    }
    let started = Instant::now();
    for (_, world) in &worlds {
        world.build(&app).await;
    }
    for (name, world) in &worlds {
        let delivery = loop {
            let data = app.ok(&world.admin, "{ viewer { webhookDeliveries { edges { node { state attemptLog { status duration error responseData } } } } } }", json!({})).await;
            let node = data["viewer"]["webhookDeliveries"]["edges"][0]["node"].clone();
            if node["state"] == "FAILED" || node["state"] == "DELIVERED" {
                break node;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{name}: the attempt did not end: {node:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let attempt = &delivery["attemptLog"][0];
        let duration = attempt["duration"].as_i64().unwrap();
        assert!(
            duration <= 1500,
            "{name}: the attempt took {duration} ms past a 1 s timeout"
        );
        let body = attempt["responseData"].as_str().unwrap();
        assert!(
            body.len() <= 3 * 64 * 1024,
            "{name}: kept {} bytes of response",
            body.len()
        );
        match **name {
            "sends an endless body" => {
                assert_eq!(attempt["status"], 200);
                assert_eq!(
                    body.len(),
                    64 * 1024,
                    "the body is read up to the cap and no further"
                );
            }
            "answers with NUL bytes" => {
                assert_eq!(delivery["state"], "DELIVERED");
                assert_eq!(body, "ok\u{FFFD}\u{1f}\u{FFFD}\u{FFFD}");
            }
            "trickles the body" => {
                // The status came in time; the body read stopped at the timeout.
                assert_eq!(attempt["status"], 200);
            }
            "sends a decompression bomb" => {
                assert_eq!(attempt["status"], 200);
                assert!(
                    bomb_len < 64 * 1024 && body.len() <= 3 * bomb_len,
                    "the bomb was not inflated"
                );
            }
            _ => {
                assert!(attempt["status"].is_null(), "{name}: {attempt:#}");
                let error = attempt["error"].as_str().unwrap();
                assert!(
                    !error.is_empty() && !error.contains('\n'),
                    "{name}: {error}"
                );
            }
        }
    }
    // The worker is unharmed: a normal receiver still gets its delivery at once.
    let receiver = Receiver::start().await;
    let world = World::new(&app, "healthy").await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({}))
        .await;
    world.build(&app).await;
    receiver.wait_for(1).await;
}
