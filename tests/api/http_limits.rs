//! The HTTP server's limits: header, body and request timeouts, the connection cap, and a
//! shutdown that does not wait on clients. Loopback only; every wait is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::{Backend, TestApp, World};

/// Opens a connection and sends the start of a request whose headers never end.
async fn half_read_request(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /graphql HTTP/1.1\r\nHost: herald\r\n")
        .await
        .unwrap();
    stream
}

/// Whether the server closed `stream` (end of file or a reset) within `patience`.
async fn closed_within(stream: &mut TcpStream, patience: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = Instant::now() + patience;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Keeps sending header lines, one every `pace`, until the server closes the connection;
/// returns how long it stayed open since `opened` (before it connected), or `None` if it was
/// still open after `patience`.
async fn trickle(
    mut stream: TcpStream,
    opened: Instant,
    pace: Duration,
    patience: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 256];
    while opened.elapsed() < patience {
        if stream.write_all(b"X-Trickle: 1\r\n").await.is_err() {
            return Some(opened.elapsed());
        }
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(opened.elapsed()),
                Ok(_) => {}
            },
            _ = tokio::time::sleep(pace) => {}
        }
    }
    None
}

/// Reads one whole HTTP/1.1 answer from a connection the server closes after it.
async fn answer(stream: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 20 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("");
    (status, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_connections_are_closed_and_a_normal_client_is_still_served() {
    let header_timeout = Duration::from_secs(2);
    let app = TestApp::start_with(Backend::Sqlite, |config| {
        config.http_header_timeout = header_timeout;
    })
    .await
    .unwrap();
    let world = World::new(&app, "acme").await;

    let mut tricklers = tokio::task::JoinSet::new();
    let first = Instant::now();
    for _ in 0..2000 {
        let opened = Instant::now();
        let stream = half_read_request(app.addr).await;
        tricklers.spawn(trickle(
            stream,
            opened,
            Duration::from_millis(500),
            Duration::from_secs(40),
        ));
    }

    // While 2,000 connections trickle, a normal client (on its own connections) is served.
    let opening = first.elapsed();
    let started = Instant::now();
    let health = reqwest::Client::new()
        .get(app.url("/healthz"))
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .expect("/healthz answers while connections trickle");
    assert_eq!(health.status(), 200);
    let data = app.ok(&world.read, "{ viewer { name } }", json!({})).await;
    assert_eq!(data["viewer"]["name"], "acme");
    let served = started.elapsed();
    assert!(served < Duration::from_secs(15), "served in {served:?}");

    // Every trickling connection is closed by the header timeout: after it, not before.
    let mut open = 0;
    while let Some(result) = tricklers.join_next().await {
        match result.unwrap() {
            Some(lasted) => assert!(
                lasted >= header_timeout - Duration::from_millis(100),
                "a trickling connection was closed after {lasted:?}, before the header timeout"
            ),
            None => open += 1,
        }
    }
    assert_eq!(open, 0, "trickling connections still open after 40 s");
    eprintln!(
        "beside 2,000 trickling connections, /healthz and a query were served in {served:?}; all 2,000 were closed {:?} after the first opened",
        started.elapsed() + opening
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_within_the_grace_while_requests_are_half_read() {
    let grace = Duration::from_secs(1);
    let mut app = TestApp::start_with(Backend::Sqlite, |config| {
        config.shutdown_grace = grace;
        config.http_header_timeout = Duration::from_secs(120);
        config.http_body_timeout = Duration::from_secs(120);
        config.http_request_timeout = Duration::from_secs(120);
    })
    .await
    .unwrap();
    let mut half_read = Vec::new();
    for _ in 0..50 {
        half_read.push(half_read_request(app.addr).await);
    }
    // Headers whole, body a tenth sent.
    for _ in 0..5 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(
                b"POST /graphql HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\":",
            )
            .await
            .unwrap();
        half_read.push(stream);
    }
    // Let the server take them all in.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopping = Instant::now();
    tokio::time::timeout(grace + Duration::from_secs(10), app.stop())
        .await
        .expect("the shutdown ends within its grace (and a generous margin)");
    let took = stopping.elapsed();
    for stream in &mut half_read {
        assert!(
            closed_within(stream, Duration::from_secs(5)).await,
            "a half-read connection is closed by the shutdown"
        );
    }
    eprintln!("shutdown with 55 half-read requests took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_for_a_free_one() {
    let app = TestApp::start_with(Backend::Sqlite, |config| {
        config.http_max_connections = 3;
        config.http_header_timeout = Duration::from_secs(120);
    })
    .await
    .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(half_read_request(app.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let url = app.url("/healthz");
    let waiting = tokio::spawn(async move {
        reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map(|response| response.status())
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "a fourth connection is not served while three hold every slot: {:?}",
        waiting.await
    );

    // One slot frees: the waiting client gets it and is served.
    drop(held.pop());
    let status = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the waiting client is served once a slot frees")
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
}

/// A client that asks for large answers and never reads them holds its connection only until
/// a write has made no progress for the header timeout: then its slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_gives_its_slot_back() {
    let app = TestApp::start_with(Backend::Sqlite, |config| {
        config.http_max_connections = 1;
        config.http_header_timeout = Duration::from_secs(1);
    })
    .await
    .unwrap();
    // Pipelined requests for GraphiQL's script (1.4 MB each): far more than the socket's
    // buffers hold, so the server's writes stall.
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    let requests = "GET /graphiql/graphiql.min.js HTTP/1.1\r\nHost: herald\r\n\r\n".repeat(40);
    stalled.write_all(requests.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let status = reqwest::Client::new()
        .get(app.url("/healthz"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the next client is served once the stalled connection is closed")
        .status();
    assert_eq!(status, 200);
    println!(
        "served {:?} after a client stopped reading",
        started.elapsed()
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_answered_408_and_a_slow_request_503() {
    let app = TestApp::start_with(Backend::Sqlite, |config| {
        config.http_body_timeout = Duration::from_millis(500);
        config.http_request_timeout = Duration::from_secs(1);
    })
    .await
    .unwrap();
    let world = World::new(&app, "acme").await;

    // A body that stops coming.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"POST /graphql HTTP/1.1\r\nHost: herald\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\":",
        )
        .await
        .unwrap();
    let (status, body) = answer(&mut stream).await;
    assert_eq!(status, 408, "{body}");
    let body: Value = serde_json::from_str(&body).expect("a JSON GraphQL answer");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert_eq!(
        body["errors"][0]["message"],
        "The request body did not arrive within 500ms."
    );

    // A mutation stuck behind another writer's lock on the database runs past the request
    // timeout.
    let holder = sea_orm::Database::connect(&app.database_url).await.unwrap();
    let lock = {
        use sea_orm::{ConnectionTrait as _, TransactionTrait as _};
        let tx = holder.begin().await.unwrap();
        tx.execute_unprepared("CREATE TABLE lock_holder (x INTEGER)")
            .await
            .unwrap();
        tx
    };
    let response = reqwest::Client::new()
        .post(app.url("/graphql"))
        .bearer_auth(&world.write)
        .header("content-type", "application/json")
        .body(
            json!({
                "query": "mutation($org: ID!) { createRepository(input: {ownerUid: $org, name: \"late\"}) { repository { id } } }",
                "variables": { "org": world.org },
            })
            .to_string(),
        )
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "INTERNAL");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.starts_with("The request did not finish within 1s"),
        "{message}"
    );
    lock.rollback().await.unwrap();

    // The health endpoints answer in plain text.
    let health = reqwest::get(app.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[test]
fn http_limits_are_checked_at_start() {
    let mut config = herald::config::Config::defaults("sqlite::memory:");
    assert_eq!(config.http_header_timeout, Duration::from_secs(10));
    assert_eq!(config.http_body_timeout, Duration::from_secs(30));
    assert_eq!(config.http_request_timeout, Duration::from_secs(60));
    assert_eq!(config.http_max_connections, 4096);
    config.check().unwrap();

    config.http_body_timeout = Duration::from_secs(90);
    let err = config.check().unwrap_err().to_string();
    assert!(err.contains("HERALD_HTTP_BODY_TIMEOUT (90s)"), "{err}");
    config.http_body_timeout = Duration::from_secs(30);
    config.http_header_timeout = Duration::ZERO;
    let err = config.check().unwrap_err().to_string();
    assert_eq!(err, "HERALD_HTTP_HEADER_TIMEOUT must be longer than 0s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cap_past_the_open_files_limit_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("h.db").display());
    let mut config = herald::config::Config::defaults(url);
    config.http_max_connections = 1_000_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = herald::app::App::build(config, listener, herald::app::Role::ApiOnly)
        .await
        .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let err = tokio::time::timeout(Duration::from_secs(10), app.run(shutdown))
        .await
        .expect("refused at once")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("HERALD_HTTP_MAX_CONNECTIONS (1000000) and HERALD_WORKER_CONCURRENCY (512) need 1000768 open files"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_past_32_kib_are_refused_and_bodies_within_the_limit_are_read() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let client = reqwest::Client::new();
    let big = "x".repeat(40 * 1024);
    let response = client
        .get(app.url("/healthz"))
        .header("x-padding", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let fits = "x".repeat(16 * 1024);
    let response = client
        .get(app.url("/healthz"))
        .header("x-padding", &fits)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The read buffer is bounded, not the body: 200 KiB streams through it.
    let body = json!({ "query": "{ __typename }", "variables": { "pad": "x".repeat(200 * 1024) } });
    let response = client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(answer["data"]["__typename"], "Query", "{answer:#}");
}
