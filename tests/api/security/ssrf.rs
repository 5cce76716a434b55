//! The SSRF guard against canary listeners: internal addresses in every spelling refused when
//! saved, names that resolve to them or rebind refused when resolved, redirects not followed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use herald::app::Role;
use herald::delivery::guard::{BLOCKED, Lookup};
use serde_json::{Value, json};
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

pub(super) async fn the_ssrf_catalogue_never_reaches_a_canary() {
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
