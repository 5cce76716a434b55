//! Kudu's web hooks API, called the way its documentation shows.

use base64::Engine as _;
use herald::domain::Permission;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Receiver, Reply, TestApp, World};

/// A REST client with one way of authenticating.
struct Rest<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
    auth: String,
}

impl<'a> Rest<'a> {
    fn bearer(app: &'a TestApp, token: &str) -> Self {
        Self {
            app,
            http: reqwest::Client::new(),
            auth: format!("Bearer {token}"),
        }
    }

    /// Kudu's clients send the credentials of the site as Basic authentication: here the token
    /// is the password.
    fn basic(app: &'a TestApp, token: &str) -> Self {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("$deployer:{token}"));
        Self {
            app,
            http: reqwest::Client::new(),
            auth: format!("Basic {encoded}"),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, self.app.url(path))
            .header("authorization", &self.auth);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap()
            },
        )
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }
}

fn assert_error(answer: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"]["code"], code, "{}", answer.1);
    let message = answer.1["error"]["message"].as_str().unwrap();
    assert!(
        message.ends_with('.') && !message.contains('\n'),
        "{message}"
    );
}

pub(super) async fn hooks_are_subscribed_listed_read_and_deleted_as_kudu_documents(app: TestApp) {
    let world = World::new(&app, "kudu-site").await;
    let admin = Rest::bearer(&app, &world.admin);
    let basic = Rest::basic(&app, &world.admin);
    let url = "http://www.callback.com/callback";

    let created = admin
        .post(
            "/api/hooks",
            json!({ "url": url, "event": "PostDeployment", "insecure_ssl": false }),
        )
        .await;
    assert_eq!(created.0, StatusCode::CREATED, "{}", created.1);
    let id = created.1["id"].as_i64().expect("a numeric id, as Kudu's");
    assert_eq!(
        created.1,
        json!({ "id": id, "url": url, "event": "PostDeployment" })
    );

    // The same URL and event again gives the same hook; another event is a conflict.
    let again = basic
        .post(
            "/api/hooks",
            json!({ "url": url, "event": "postdeployment" }),
        )
        .await;
    assert_eq!(again.0, StatusCode::CREATED);
    assert_eq!(again.1["id"], id);
    let conflict = admin
        .post(
            "/api/hooks",
            json!({ "url": url, "event": "PreDeployment" }),
        )
        .await;
    assert_error(&conflict, StatusCode::CONFLICT, "CONFLICT");

    let list = basic.get("/api/hooks").await;
    assert_eq!(list.0, StatusCode::OK);
    assert_eq!(
        list.1,
        json!([{ "id": id, "url": url, "event": "PostDeployment" }])
    );

    // The hook is an endpoint, visible in GraphQL.
    let endpoints = app
        .ok(
            &world.admin,
            "query($org: ID!) { ownerInfo(uid: $org) { webhookSettings { endpoints { id events publishedEvents payloadFormat signatureStyle } } } }",
            json!({ "org": world.org }),
        )
        .await;
    assert_eq!(
        endpoints["ownerInfo"]["webhookSettings"]["endpoints"][0],
        json!({ "id": id.to_string(), "events": ["PUBLISHED"], "publishedEvents": ["PostDeployment"], "payloadFormat": "RAW", "signatureStyle": "NONE" })
    );

    let read = admin.get(&format!("/api/hooks/{id}")).await;
    assert_eq!(read.0, StatusCode::OK);
    assert_eq!(read.1["event"], "PostDeployment");
    assert_eq!(read.1["last_status"], Value::Null, "nothing was sent yet");

    // Bad input, wrong tokens and other organizations.
    assert_error(
        &admin
            .post(
                "/api/hooks",
                json!({ "url": "ftp://x", "event": "PostDeployment" }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "BAD_USER_INPUT",
    );
    assert_error(
        &admin
            .post("/api/hooks", json!({ "event": "PostDeployment" }))
            .await,
        StatusCode::BAD_REQUEST,
        "BAD_USER_INPUT",
    );
    let reader = Rest::bearer(&app, &world.read);
    assert_error(
        &reader.get("/api/hooks").await,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );
    assert_error(
        &reader
            .post(
                "/api/hooks",
                json!({ "url": "http://example.com/x", "event": "a" }),
            )
            .await,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );
    let anonymous = Rest {
        app: &app,
        http: reqwest::Client::new(),
        auth: "Bearer not-a-token".into(),
    };
    assert_error(
        &anonymous.get("/api/hooks").await,
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
    );
    let other_org = app.org("someone-else").await;
    let other = Rest::bearer(&app, &app.token(&other_org, Permission::Admin));
    let foreign = other.get(&format!("/api/hooks/{id}")).await;
    let missing = other.get("/api/hooks/987654").await;
    assert_error(&foreign, StatusCode::NOT_FOUND, "NOT_FOUND");
    assert_eq!(
        foreign.1["error"]["message"]
            .as_str()
            .unwrap()
            .replace(&id.to_string(), "N"),
        missing.1["error"]["message"]
            .as_str()
            .unwrap()
            .replace("987654", "N"),
        "another organization's hook answers exactly as a missing one"
    );
    assert_error(
        &other.delete(&format!("/api/hooks/{id}")).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );

    let deleted = basic.delete(&format!("/api/hooks/{id}")).await;
    assert_eq!(deleted.0, StatusCode::OK);
    assert_error(
        &admin.get(&format!("/api/hooks/{id}")).await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    assert_eq!(admin.get("/api/hooks").await.1, json!([]));
}

pub(super) async fn publishing_reaches_hooks_unchanged_and_last_fields_follow(app: TestApp) {
    let receiver = Receiver::start().await;
    let world = World::new(&app, "kudu-publish").await;
    let admin = Rest::bearer(&app, &world.admin);
    let writer = Rest::basic(&app, &world.write);
    let (_, hook) = admin
        .post(
            "/api/hooks",
            json!({ "url": receiver.url("/zap"), "event": "PostDeployment" }),
        )
        .await;
    let id = hook["id"].as_i64().unwrap();
    let (_, build_hook) = admin
        .post(
            "/api/hooks",
            json!({ "url": receiver.url("/builds"), "event": "build" }),
        )
        .await;
    assert_eq!(build_hook["event"], "build");

    let body: Value = serde_json::from_str(
        &std::fs::read_to_string(format!(
            "{}/tests/golden/kudu/post_deployment.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap(),
    )
    .unwrap();
    let published = writer
        .post("/api/hooks/publish/postDeployment", body.clone())
        .await;
    assert_eq!(published.0, StatusCode::OK, "{}", published.1);
    assert_eq!(published.1, json!({ "deliveries": 1 }));
    let delivery = receiver.wait_for(1).await[0].clone();
    assert_eq!(delivery.uri.path(), "/zap");
    assert_eq!(delivery.json(), body, "the body arrives unchanged");
    assert!(delivery.header("webhook-signature").is_none());

    // The outcome is written just after the receiver answers.
    let mut read = Value::Null;
    for _ in 0..50 {
        read = admin.get(&format!("/api/hooks/{id}")).await.1;
        if read["last_status"] != "Pending" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(read["last_status"], "OK", "{read}");
    assert_eq!(read["last_reason"], Value::Null);
    assert_eq!(
        serde_json::from_str::<Value>(read["last_context"].as_str().unwrap()).unwrap(),
        body
    );
    let datetime = read["last_datetime"].as_str().unwrap();
    assert!(
        datetime.len() == 18
            && &datetime[2..3] == "/"
            && (datetime.ends_with("AM") || datetime.ends_with("PM")),
        "{datetime}"
    );

    // A failure: the receiver answers 500 until the schedule is spent.
    receiver.default_reply(Reply::status(500));
    let big = json!({ "status": "failed", "log": "x".repeat(6000) });
    writer.post("/api/hooks/publish/PostDeployment", big).await;
    receiver.wait_for(4).await;
    let mut read = Value::Null;
    for _ in 0..50 {
        read = admin.get(&format!("/api/hooks/{id}")).await.1;
        if read["last_status"] == "500" && read["last_reason"].is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(read["last_status"], "500", "{read}");
    assert_eq!(read["last_reason"], "the receiver answered HTTP 500");
    let context = read["last_context"].as_str().unwrap();
    assert!(
        context.ends_with("…[truncated]") && context.len() < 4200,
        "{}",
        context.len()
    );

    // Publishing needs WRITE, a JSON object, and a type that is not Herald's own.
    let reader = Rest::bearer(&app, &world.read);
    assert_error(
        &reader
            .post("/api/hooks/publish/PostDeployment", json!({}))
            .await,
        StatusCode::FORBIDDEN,
        "FORBIDDEN",
    );
    assert_error(
        &writer
            .post("/api/hooks/publish/PostDeployment", json!([1]))
            .await,
        StatusCode::BAD_REQUEST,
        "BAD_USER_INPUT",
    );
    assert_error(
        &writer.post("/api/hooks/publish/build", json!({})).await,
        StatusCode::BAD_REQUEST,
        "BAD_USER_INPUT",
    );
    let huge = json!({ "pad": "x".repeat(400 * 1024) });
    assert_error(
        &writer.post("/api/hooks/publish/PostDeployment", huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    );
}
