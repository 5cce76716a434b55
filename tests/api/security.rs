//! Hardened edges: the SSRF guard against canary listeners, hostile receivers, secrets that
//! never leak, and GraphQL request limits.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use herald::app::Role;
use herald::delivery::guard::{BLOCKED, Lookup};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{Backend, Receiver, Reply, TestApp, World, code};

/// A resolver that answers from a script: each name has a list of answers, used in turn (the
/// last one repeats), so a name can change its answer between lookups.
#[derive(Default)]
struct ScriptedLookup {
    answers: Mutex<HashMap<String, Vec<Vec<IpAddr>>>>,
}

impl ScriptedLookup {
    fn answer(&self, host: &str, answers: &[&[&str]]) {
        let parsed = answers
            .iter()
            .map(|ips| ips.iter().map(|ip| ip.parse().unwrap()).collect())
            .collect();
        self.answers.lock().unwrap().insert(host.to_owned(), parsed);
    }
}

impl Lookup for ScriptedLookup {
    fn lookup<'a>(&'a self, host: &'a str) -> BoxFuture<'a, std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let mut answers = self.answers.lock().unwrap();
            let list = answers
                .get_mut(host)
                .ok_or_else(|| std::io::Error::other("no such host"))?;
            Ok(if list.len() > 1 {
                list.remove(0)
            } else {
                list[0].clone()
            })
        })
    }
}

/// A listener that must never be reached; it counts connections.
struct Canary {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Canary {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        // The same port on the IPv6 loopback, when the machine has one.
        if let Ok(v6) = TcpListener::bind(("::1", port)).await {
            let counter = hits.clone();
            tokio::spawn(async move {
                while v6.accept().await.is_ok() {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        Self { port, hits }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssrf_catalogue_never_reaches_a_canary() {
    let canary = Canary::start().await;
    let p = canary.port;
    // A legitimate receiver on 127.0.0.2, the one internal address the operator allows, on the
    // canary's port: a name that rebinds from it to 127.0.0.1 would land on the canary.
    let receiver = Receiver::start_on(SocketAddr::from(([127, 0, 0, 2], p))).await;
    let lookup = Arc::new(ScriptedLookup::default());
    lookup.answer("private.test", &[&["127.0.0.1"]]);
    lookup.answer(
        "mixed.test",
        &[&["10.0.0.1", "127.0.0.1", "::1", "fd00::1", "169.254.169.254"]],
    );
    lookup.answer("mapped.test", &[&["::ffff:127.0.0.1"]]);
    lookup.answer("nat64.test", &[&["64:ff9b::7f00:1"]]);
    // The allowed receiver's address beside the canary's: the name is refused whole.
    lookup.answer("partly.test", &[&["127.0.0.2", "127.0.0.1"]]);
    lookup.answer("rebind.test", &[&["127.0.0.2"], &["127.0.0.1"]]);
    lookup.answer("good.test", &[&["127.0.0.2"]]);
    let app = TestApp::start_custom(
        Backend::Sqlite,
        Role::All,
        |config| {
            config.allow_private_targets = false;
            config.allowed_targets = vec!["127.0.0.2/32".parse().unwrap()];
            config.retry_schedule = herald::domain::RetrySchedule::parse("50ms").unwrap();
        },
        Some(lookup.clone()),
    )
    .await
    .unwrap();
    let world = World::new(&app, "acme").await;

    // Refused when saved: literal internal addresses in every spelling, and local names.
    let literal = [
        format!("http://127.0.0.1:{p}/"),
        format!("http://0x7f000001:{p}/"),
        format!("http://2130706433:{p}/"),
        format!("http://127.1:{p}/"),
        format!("http://0177.0.0.1:{p}/"),
        format!("http://0:{p}/"),
        format!("http://0.0.0.0:{p}/"),
        format!("http://[::1]:{p}/"),
        format!("http://[::]:{p}/"),
        format!("http://[::ffff:127.0.0.1]:{p}/"),
        format!("http://[::ffff:7f00:1]:{p}/"),
        format!("http://[0:0:0:0:0:ffff:127.0.0.1]:{p}/"),
        format!("http://[::ffff:0:7f00:1]:{p}/"),
        format!("http://[::5efe:7f00:1]:{p}/"),
        format!("http://[64:ff9b:1::7f00:1]:{p}/"),
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/".to_owned(),
        "http://192.88.99.1/".to_owned(),
        "http://168.63.129.16/".to_owned(),
        format!("http://localhost:{p}/"),
        format!("http://LOCALHOST.:{p}/"),
        format!("http://anything.localhost:{p}/"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[fe80::1]/".to_owned(),
        "http://[fd12:3456::1]/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://172.16.0.1/".to_owned(),
        "http://192.168.1.1/".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://224.0.0.1/".to_owned(),
        "http://255.255.255.255/".to_owned(),
    ];
    for url in &literal {
        let response = app
            .gql(Some(&world.admin), "mutation($org: ID!, $url: String!) { createWebHookEndpoint(input: {ownerUid: $org, webhookURL: $url}) { endpoint { id } } }", json!({ "org": world.org, "url": url }))
            .await;
        assert_eq!(
            code(&response),
            "BAD_USER_INPUT",
            "{url} was accepted: {response:#}"
        );
    }

    // Accepted when saved (a name), refused when resolved: every attempt fails with the reason.
    let mut resolved = Vec::new();
    for host in [
        "private.test",
        "mixed.test",
        "mapped.test",
        "nat64.test",
        "partly.test",
    ] {
        resolved.push(
            world
                .endpoint(
                    &app,
                    &format!("http://{host}:{p}/hook"),
                    json!({ "events": ["BUILD"] }),
                )
                .await,
        );
    }
    // Rebinding: the first lookup is the allowed receiver, later ones the canary. The receiver
    // closes every connection, so each attempt looks the name up again.
    receiver.default_reply(Reply::status(200).header("connection", "close"));
    let rebind = world
        .endpoint(
            &app,
            &format!("http://rebind.test:{p}/hook"),
            json!({ "events": ["TASK"] }),
        )
        .await;
    let build = world.build(&app).await;
    world.task(&app, &build, "first").await;
    let first = receiver.wait_for(1).await;
    assert_eq!(first[0].json()["data"]["task"]["name"], "first");
    world.task(&app, &build, "second").await;
    // Redirects to an internal address are never followed.
    receiver.script([Reply::status(302)
        .header("location", &format!("http://127.0.0.1:{p}/"))
        .header("connection", "close")]);
    let redirect = world
        .endpoint(
            &app,
            &format!("http://good.test:{p}/redirect"),
            json!({ "events": ["TASK"] }),
        )
        .await;
    world.task(&app, &build, "third").await;

    let finished = |nodes: &[Value]| {
        nodes
            .iter()
            .all(|n| n["state"] == "FAILED" || n["state"] == "DELIVERED")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let deliveries = loop {
        let data = app.ok(&world.admin, "{ viewer { webhookDeliveries(first: 50) { edges { node { state endpointId attemptLog { status error } } } } } }", json!({})).await;
        let nodes: Vec<Value> = data["viewer"]["webhookDeliveries"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"].clone())
            .collect();
        if nodes.len() == 9 && finished(&nodes) {
            break nodes;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries did not finish: {nodes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        canary.hits.load(Ordering::SeqCst),
        0,
        "a canary was reached"
    );
    let of = |endpoint: &str| {
        deliveries
            .iter()
            .filter(|d| d["endpointId"] == endpoint)
            .cloned()
            .collect::<Vec<_>>()
    };
    for endpoint in &resolved {
        let log = of(endpoint)[0]["attemptLog"].clone();
        assert!(
            log.as_array()
                .unwrap()
                .iter()
                .all(|a| a["error"] == BLOCKED && a["status"].is_null()),
            "{log:#}"
        );
    }
    let rebound: Vec<Value> = of(&rebind);
    assert!(
        rebound
            .iter()
            .any(|d| d["state"] == "FAILED" && d["attemptLog"][0]["error"] == BLOCKED),
        "the rebound name was contacted: {rebound:#?}"
    );
    let redirected = &of(&redirect)[0]["attemptLog"];
    assert_eq!(redirected[0]["status"], 302, "{redirected:#}");
    for delivery in &deliveries {
        let text = delivery.to_string();
        assert!(
            !text.contains("127.0.0.") && !text.contains("::1"),
            "an error named an address: {text}"
        );
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_receivers_are_bounded_in_time_and_bytes_on_sqlite() {
    hostile_receivers_are_bounded_in_time_and_bytes(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_receivers_are_bounded_in_time_and_bytes_on_postgres() {
    hostile_receivers_are_bounded_in_time_and_bytes(Backend::Postgres).await;
}

/// Each hostile receiver's attempt ends within the timeout, keeps at most the response cap, and
/// is recorded: what a receiver answers cannot keep an outcome from being written (on
/// PostgreSQL, a NUL byte in a body used to fail the outcome's whole batch).
async fn hostile_receivers_are_bounded_in_time_and_bytes(backend: Backend) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_limits_apply_before_any_resolver() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let world = World::new(&app, "acme").await;
    let aliases: String = (0..31)
        .map(|i| format!("a{i}: viewer {{ name }} "))
        .collect();
    let response = app
        .gql(Some(&world.read), &format!("{{ {aliases} }}"), json!({}))
        .await;
    assert_eq!(code(&response), "BAD_USER_INPUT");
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("31 aliases")
    );
    let directives: String = (0..21).map(|_| "@include(if: true) ").collect();
    let response = app
        .gql(
            Some(&world.read),
            &format!("{{ viewer {directives} {{ name }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(code(&response), "BAD_USER_INPUT");
    let mut deep =
        String::from("{ viewer { repositories { edges { node { builds { edges { node { ");
    for _ in 0..4 {
        deep.push_str("repository { builds { edges { node { ");
    }
    deep.push_str("id");
    deep.push_str(&" } } } }".repeat(6));
    deep.push_str(" } } }");
    let response = app.gql(Some(&world.read), &deep, json!({})).await;
    assert_eq!(code(&response), "BAD_USER_INPUT", "{response:#}");
    // Twelve levels, but lists within lists: each page of builds, and each build's tasks,
    // multiplies the work of what it holds.
    let wide = "{ viewer { repositories(first: 100) { edges { node { builds(first: 100) { edges { node { tasks { uniqueLabels build { tasks { id } } } } } } } } } } }";
    let response = app.gql(Some(&world.read), wide, json!({})).await;
    assert_eq!(code(&response), "BAD_USER_INPUT", "{response:#}");
    let message = response["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("too complex"), "{message}");

    let http = reqwest::Client::new();
    let big = json!({ "query": "{ __typename }", "variables": { "pad": "x".repeat(300 * 1024) } })
        .to_string();
    let response = http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let batch = r#"[{"query":"{ __typename }"},{"query":"{ __typename }"}]"#;
    let response = http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Introspection and GraphiQL can be turned off.
    let closed = TestApp::start_with(Backend::Sqlite, |config| config.graphiql = false)
        .await
        .unwrap();
    let introspect = "{ __schema { types { name } } }";
    assert!(
        app.gql(Some(&world.read), introspect, json!({})).await["data"]["__schema"]["types"]
            .is_array()
    );
    assert_eq!(
        code(&app.gql(None, introspect, json!({})).await),
        "UNAUTHENTICATED"
    );
    let closed_world = World::new(&closed, "acme").await;
    assert!(
        closed
            .gql(Some(&closed_world.read), introspect, json!({}))
            .await["data"]["__schema"]
            .is_null()
    );
    assert_eq!(
        http.get(closed.url("/graphql"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        http.get(app.url("/graphql")).send().await.unwrap().status(),
        200
    );
}

const KEY_ONE: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY_TWO: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn config_for(database_url: &str, key: Option<&str>) -> herald::config::Config {
    let mut config = herald::config::Config::defaults(database_url);
    config.encryption_key = key.map(|key| herald::config::Secret(key.to_owned()));
    config
}

async fn secrets_are_sealed_at_rest(backend: Backend) {
    let receiver = Receiver::start().await;
    let Some(app) = TestApp::start_with(backend, |config| {
        config.encryption_key = Some(herald::config::Secret(KEY_ONE.into()))
    })
    .await
    else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let world = World::new(&app, "acme").await;
    let secret = "sealed-signing-secret-0042";
    let url = format!("http://robot:sealed-password@{}/hook", receiver.addr);
    world
        .endpoint(&app, &url, json!({ "secretToken": secret }))
        .await;
    world.build(&app).await;
    let delivery = receiver.wait_for(1).await[0].clone();
    let expected = herald::signing::cirrus_signature(secret, &delivery.body);
    assert_eq!(
        delivery.header("x-cirrus-signature"),
        Some(expected.as_str()),
        "deliveries are signed with the opened secret"
    );
    assert!(
        delivery
            .header("authorization")
            .is_some_and(|value| value.starts_with("Basic "))
    );

    let row = herald::store::endpoints::list(&app.state.db, world.org.parse().unwrap())
        .await
        .unwrap()
        .remove(0);
    let sealed_secret = row.secret.clone().unwrap();
    let sealed_credentials = row.credentials.clone().unwrap();
    assert!(
        sealed_secret.starts_with(herald::secrets::PREFIX) && !sealed_secret.contains("signing")
    );
    assert!(
        sealed_credentials.starts_with(herald::secrets::PREFIX)
            && !sealed_credentials.contains("password")
    );
    assert!(
        !row.url.contains("robot") && !row.url.contains("password"),
        "{}",
        row.url
    );

    // The same database with another key, or none, is refused with one clear sentence.
    let wrong = herald::app::AppState::new(config_for(&app.database_url, Some(KEY_TWO)))
        .await
        .err()
        .expect("a wrong key is refused");
    assert!(wrong.to_string().contains("is not the key"), "{wrong}");
    let missing = herald::app::AppState::new(config_for(&app.database_url, None))
        .await
        .err()
        .expect("a missing key is refused");
    assert!(
        missing.to_string().contains("set HERALD_ENCRYPTION_KEY"),
        "{missing}"
    );
    let malformed = herald::app::AppState::new(config_for(&app.database_url, Some("not-a-key")))
        .await
        .err()
        .expect("a malformed key is refused");
    assert!(malformed.to_string().contains("32 bytes"), "{malformed}");
    assert!(
        herald::app::AppState::new(config_for(&app.database_url, Some(KEY_ONE)))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_on_sqlite() {
    secrets_are_sealed_at_rest(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_sealed_at_rest_on_postgres() {
    secrets_are_sealed_at_rest(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turning_encryption_on_seals_the_secrets_already_stored() {
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let world = World::new(&app, "acme").await;
    world
        .endpoint(
            &app,
            "https://u:clear-password@hooks.example.com/x",
            json!({ "secretToken": "clear-secret-value" }),
        )
        .await;
    let before = herald::store::endpoints::list(&app.state.db, world.org.parse().unwrap())
        .await
        .unwrap()
        .remove(0);
    assert_eq!(before.secret.as_deref(), Some("clear-secret-value"));
    let sealed = herald::app::AppState::new(config_for(&app.database_url, Some(KEY_ONE)))
        .await
        .unwrap();
    let after = herald::store::endpoints::list(&sealed.db, world.org.parse().unwrap())
        .await
        .unwrap()
        .remove(0);
    assert!(
        after
            .secret
            .as_deref()
            .unwrap()
            .starts_with(herald::secrets::PREFIX)
    );
    let fields = herald::store::endpoints::fields_of(&after, &sealed.vault).unwrap();
    assert_eq!(fields.secret.as_deref(), Some("clear-secret-value"));
    assert_eq!(
        fields.url.as_stored(),
        "https://u:clear-password@hooks.example.com/x"
    );
}

/// A first start with a key that stopped halfway (one secret sealed, no record of the key yet)
/// is finished by the next start, rather than leaving a database that refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_with_a_key_that_stopped_halfway_is_finished_by_the_next() {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    let app = TestApp::start(Backend::Sqlite).await.unwrap();
    let world = World::new(&app, "acme").await;
    for (url, secret) in [
        ("https://hooks.example.com/a", "first-secret"),
        ("https://hooks.example.com/b", "second-secret"),
    ] {
        world
            .endpoint(&app, url, json!({ "secretToken": secret }))
            .await;
    }
    let org: i64 = world.org.parse().unwrap();
    let rows = herald::store::endpoints::list(&app.state.db, org)
        .await
        .unwrap();
    let vault = herald::secrets::Vault::with_key(KEY_ONE).unwrap();
    let mut halfway: herald::store::entities::webhook_endpoint::ActiveModel =
        rows[0].clone().into();
    halfway.secret = Set(Some(
        vault.seal(rows[0].secret.as_deref().unwrap()).unwrap(),
    ));
    halfway.update(&app.state.db).await.unwrap();

    let sealed = herald::app::AppState::new(config_for(&app.database_url, Some(KEY_ONE)))
        .await
        .expect("the next start with the key");
    let mut secrets: Vec<String> = herald::store::endpoints::list(&sealed.db, org)
        .await
        .unwrap()
        .iter()
        .map(|row| {
            assert!(
                row.secret
                    .as_deref()
                    .unwrap()
                    .starts_with(herald::secrets::PREFIX)
            );
            let fields = herald::store::endpoints::fields_of(row, &sealed.vault).unwrap();
            fields.secret.unwrap()
        })
        .collect();
    secrets.sort();
    assert_eq!(secrets, ["first-secret", "second-secret"]);
    // And the key is recorded: a start without it is refused.
    assert!(
        herald::app::AppState::new(config_for(&app.database_url, None))
            .await
            .is_err()
    );
}

/// Log output of the whole test binary, captured once.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        buffer
    })
    .clone()
}

/// Every form a secret could leak in.
fn forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    vec![
        secret.to_owned(),
        hex::encode(secret),
        STANDARD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
            .to_string(),
    ]
}

fn assert_absent(haystack: &str, secret: &str, place: &str) {
    for form in forms(secret) {
        assert!(
            !haystack.contains(&form),
            "the secret leaked into {place} as {form:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_secret_appears_nowhere() {
    let logs = captured_logs();
    let secret = "cnry7SIGNq9xK2vLw";
    let password = "cnry4PASSm8zR1tYe";
    let ok = Receiver::start().await;
    let failing = Receiver::start().await;
    failing.default_reply(Reply::status(500));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = TestApp::start_with(Backend::Sqlite, |config| {
        config.retry_schedule = herald::domain::RetrySchedule::parse("50ms").unwrap();
    })
    .await
    .unwrap();
    let world = World::new(&app, "acme").await;
    let mut responses = Vec::new();
    for url in [
        format!("http://bot:{password}@{}/ok", ok.addr),
        format!("http://bot:{password}@{}/fail", failing.addr),
        format!("http://bot:{password}@{closed}/closed"),
    ] {
        world
            .endpoint(&app, &url, json!({ "secretToken": secret }))
            .await;
    }
    // Failed mutations that carry the secret in their variables.
    let bad = [
        json!({ "ownerUid": world.org, "webhookURL": format!("ftp://bot:{password}@example.com/"), "secretToken": secret }),
        json!({ "ownerUid": world.org, "webhookURL": format!("http://bot:{password}@{}/ok", ok.addr), "secretToken": secret }),
        json!({ "ownerUid": world.org, "webhookURL": "https://h.example.com/", "secretToken": secret, "payloadQuery": "build { nope" }),
    ];
    for input in bad {
        let response = app.gql(Some(&world.admin), "mutation($input: CreateWebHookEndpointInput!) { createWebHookEndpoint(input: $input) { endpoint { id } } }", json!({ "input": input })).await;
        assert!(response.get("errors").is_some());
        responses.push(response.to_string());
    }
    let build = world.build(&app).await;
    let task = world.task(&app, &build, "test").await;
    world.task_status(&app, &task, "FAILED").await;
    ok.wait_for(3).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let data = app
            .ok(
                &world.admin,
                "{ viewer { webhookDeliveries(first: 50) { edges { node { state } } } } }",
                json!({}),
            )
            .await;
        let states: Vec<Value> = data["viewer"]["webhookDeliveries"]["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["state"].clone())
            .collect();
        if states.len() == 9 && states.iter().all(|s| s == "FAILED" || s == "DELIVERED") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries did not finish: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let everything = app
        .ok(
            &world.admin,
            "{ viewer { webhookSettings { endpoints { id webhookURL maskedSecretToken events payloadQuery payloadFormat enabled insecureSsl
                lastDelivery { id payload { data } response { data } } } }
              webhookDeliveries(first: 50) { edges { node { id state payload { event action data } response { status data }
                attemptLog { status error responseHeaders responseData } } } } } }",
            json!({}),
        )
        .await;
    responses.push(everything.to_string());
    let preview = app
        .ok(&world.admin, "mutation($org: ID!, $build: ID!) { previewWebHookPayload(input: {ownerUid: $org, buildId: $build}) { body } }", json!({ "org": world.org, "build": build }))
        .await;
    responses.push(preview.to_string());

    let responses = responses.join("\n");
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let org: i64 = world.org.parse().unwrap();
    let page = herald::store::Page::new(Some(50), None).unwrap();
    let mut stored = String::new();
    for row in herald::store::deliveries::list(&app.state.db, org, None, None, page)
        .await
        .unwrap()
    {
        stored.push_str(&format!("{row:?}"));
        for attempt in herald::store::deliveries::attempts(&app.state.db, row.id)
            .await
            .unwrap()
        {
            stored.push_str(&format!("{attempt:?}"));
        }
    }
    let mut outbound = String::new();
    let mut outbound_without_auth = String::new();
    for received in ok.received().into_iter().chain(failing.received()) {
        for (name, value) in &received.headers {
            let line = format!("{name}: {}\n", value.to_str().unwrap_or(""));
            outbound.push_str(&line);
            if name != "authorization" {
                outbound_without_auth.push_str(&line);
            }
        }
        outbound.push_str(&String::from_utf8_lossy(&received.body));
    }
    assert!(!outbound.is_empty() && !stored.is_empty() && !logs.is_empty());
    for (place, text) in [
        ("GraphQL responses", &responses),
        ("logs", &logs),
        ("stored deliveries and attempts", &stored),
    ] {
        assert_absent(text, secret, place);
        assert_absent(text, password, place);
    }
    assert_absent(&outbound, secret, "outbound requests");
    // The password is meant to travel, as HTTP Basic authentication, and nowhere else.
    assert_absent(&outbound_without_auth, password, "outbound requests");
}
