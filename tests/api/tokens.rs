//! API tokens: revoked per organization (GraphQL and `herald token revoke`), and their signing
//! key sealed at rest with `HERALD_ENCRYPTION_KEY`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use herald::app::{App, AppState, Role};
use herald::domain::Permission;
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{Backend, Client, TestApp, World, code};

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const REVOKED: &str = "This token was revoked; issue a new one.";
const VIEWER: &str = "{ viewer { uid name } }";
const REVOKE: &str = "mutation($org: ID!) { revokeTokens(input: {ownerUid: $org, clientMutationId: \"r1\"}) { revokedBefore clientMutationId } }";

fn herald(database_url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .args(args)
        .env("HERALD_DATABASE_URL", database_url)
        .env_remove("HERALD_JWT_SECRET")
        .env_remove("HERALD_ENCRYPTION_KEY");
    command
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_owned()
}

/// Waits until the clock reaches `ms` (ms since the epoch).
async fn sleep_until_ms(ms: i64) {
    let wait = ms - herald::now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64 + 5)).await;
    }
}

/// Asserts a request with `token` is refused as revoked.
fn assert_revoked(response: &Value) {
    assert_eq!(code(response), "UNAUTHENTICATED", "{response:#}");
    assert_eq!(response["errors"][0]["message"], REVOKED, "{response:#}");
}

async fn an_admin_revokes_the_tokens_of_its_organization(app: TestApp) {
    let acme = World::new(&app, "acme").await;
    let other = World::new(&app, "other").await;
    // Only an ADMIN of the organization itself may revoke.
    let forbidden = app
        .gql(Some(&acme.write), REVOKE, json!({ "org": acme.org }))
        .await;
    assert_eq!(code(&forbidden), "FORBIDDEN");
    let elsewhere = app
        .gql(Some(&acme.admin), REVOKE, json!({ "org": other.org }))
        .await;
    assert_eq!(code(&elsewhere), "NOT_FOUND");
    app.ok(&acme.read, VIEWER, json!({})).await;

    let started = herald::now_ms();
    let data = app
        .ok(&acme.admin, REVOKE, json!({ "org": acme.org }))
        .await;
    let finished = herald::now_ms();
    let before = data["revokeTokens"]["revokedBefore"].as_i64().unwrap();
    assert_eq!(data["revokeTokens"]["clientMutationId"], "r1");
    assert_eq!(before % 1000, 0, "a whole second: {before}");
    // The next whole second after the revocation was made, somewhere during the request.
    let next_second = |ms: i64| (ms / 1000 + 1) * 1000;
    assert!(
        before >= next_second(started) && before <= next_second(finished),
        "{started} {before} {finished}"
    );

    // At once, in this process: every token issued until now is refused, the revoking one too.
    for token in [&acme.read, &acme.write, &acme.admin] {
        assert_revoked(&app.gql(Some(token), VIEWER, json!({})).await);
    }
    // A token issued in the second of the revocation, after it, is refused as well: `iat`
    // counts seconds.
    let same_second = app.token(&acme.org, Permission::Read);
    if herald::now_ms() < before - 50 {
        assert_revoked(&app.gql(Some(&same_second), VIEWER, json!({})).await);
    }
    // Another organization's tokens are untouched.
    app.ok(&other.read, VIEWER, json!({})).await;
    app.ok(&other.admin, VIEWER, json!({})).await;

    // A token issued from the revocation time on works.
    sleep_until_ms(before).await;
    let admin = app.token(&acme.org, Permission::Admin);
    let read = app.token(&acme.org, Permission::Read);
    app.ok(&read, VIEWER, json!({})).await;
    let audit = app
        .ok(
            &admin,
            "{ viewer { auditEvents(first: 10) { edges { node { data actor { username } } } } } }",
            json!({}),
        )
        .await;
    let recorded = audit["viewer"]["auditEvents"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|edge| {
            edge["node"]["data"]
                .as_str()
                .is_some_and(|data| data.contains("\"mutationName\":\"RevokeTokens\""))
        });
    assert!(recorded, "no audit event of the revocation: {audit:#}");

    // A second revocation moves the time forward and refuses the new tokens too.
    let again = app.ok(&admin, REVOKE, json!({ "org": acme.org })).await;
    assert!(again["revokeTokens"]["revokedBefore"].as_i64().unwrap() > before);
    assert_revoked(&app.gql(Some(&read), VIEWER, json!({})).await);
    app.ok(&other.read, VIEWER, json!({})).await;
}

/// `herald token revoke` writes the revocation to the database a running server reads: the
/// server refuses the organization's tokens within a second or so (its cache's bound).
async fn the_cli_revokes_tokens_for_a_running_server(app: TestApp) {
    let acme = World::new(&app, "acme").await;
    let other = World::new(&app, "other").await;
    let unknown = herald(&app.database_url, &["token", "revoke", "--org", "nobody"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(
        stderr(&unknown).contains("no organization named"),
        "{unknown:?}"
    );
    app.ok(&acme.read, VIEWER, json!({})).await;

    let revoked = herald(&app.database_url, &["token", "revoke", "--org", "acme"])
        .output()
        .unwrap();
    assert!(revoked.status.success(), "{revoked:?}");
    let line = stdout(&revoked);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with("Tokens of \"acme\" issued before ") && line.ends_with("are refused."),
        "{line}"
    );
    let deadline = Instant::now() + herald::schema::auth::REVOCATION_STALENESS * 3;
    loop {
        let response = app.gql(Some(&acme.read), VIEWER, json!({})).await;
        if response.get("errors").is_some() {
            assert_revoked(&response);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the revocation never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.ok(&other.read, VIEWER, json!({})).await;
}

/// Serves `state` on port 0 (API only) until the token is cancelled; its port.
async fn serve(state: AppState, shutdown: CancellationToken) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = App::from_state(state, listener, Role::ApiOnly);
    let port = app.local_addr().unwrap().port();
    tokio::spawn(app.run(shutdown));
    port
}

/// The token key as stored in the settings table.
async fn stored_key(db: &sea_orm::DatabaseConnection) -> String {
    herald::store::entities::setting::Entity::find_by_id("jwt_secret")
        .one(db)
        .await
        .unwrap()
        .expect("a stored token key")
        .value
}

/// Every byte of a SQLite database at rest: the file and its write-ahead log.
fn sqlite_bytes(database_url: &str) -> Vec<u8> {
    let path = database_url
        .strip_prefix("sqlite://")
        .and_then(|rest| rest.split('?').next())
        .unwrap();
    let mut bytes = std::fs::read(path).unwrap();
    for suffix in ["-wal", "-journal"] {
        if let Ok(more) = std::fs::read(format!("{path}{suffix}")) {
            bytes.extend(more);
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// A database whose token key was stored in clear is sealed by the first start with
/// `HERALD_ENCRYPTION_KEY`: the key is no longer in the database's bytes, tokens issued before
/// and after verify, and `herald token issue` needs the key too.
async fn the_token_key_is_sealed_at_rest(app: TestApp) {
    let acme = World::new(&app, "acme").await;
    let clear = stored_key(&app.state.db).await;
    assert!(!clear.starts_with(herald::secrets::PREFIX));
    if app.backend == Backend::Sqlite {
        assert!(contains(&sqlite_bytes(&app.database_url), &clear));
    }

    let mut config = herald::config::Config::defaults(app.database_url.clone());
    config.encryption_key = Some(herald::config::Secret(KEY.into()));
    let sealed = AppState::new(config).await.expect("a start with the key");
    let stored = stored_key(&sealed.db).await;
    assert!(stored.starts_with(herald::secrets::PREFIX), "{stored}");
    assert!(!stored.contains(&clear));
    if app.backend == Backend::Sqlite {
        assert!(
            !contains(&sqlite_bytes(&app.database_url), &clear),
            "the clear token key is still in the database's files"
        );
    }

    let shutdown = CancellationToken::new();
    let port = serve(sealed.clone(), shutdown.clone()).await;
    let before = Client::new(port, &acme.read);
    before.wait_healthy().await;
    before.gql(VIEWER, json!({})).await;
    let after = sealed
        .keys
        .issue(&acme.org, "test", Permission::Read, 60)
        .unwrap();
    Client::new(port, &after).gql(VIEWER, json!({})).await;

    // The command line opens the sealed key with the same variable, and says what is missing
    // without it.
    let missing = herald(
        &app.database_url,
        &["token", "issue", "--org", "acme", "--permission", "READ"],
    )
    .output()
    .unwrap();
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(
        stderr(&missing).contains("set HERALD_ENCRYPTION_KEY"),
        "{missing:?}"
    );
    let issued = herald(
        &app.database_url,
        &["token", "issue", "--org", "acme", "--permission", "READ"],
    )
    .env("HERALD_ENCRYPTION_KEY", KEY)
    .output()
    .unwrap();
    assert!(issued.status.success(), "{issued:?}");
    Client::new(port, &stdout(&issued))
        .gql(VIEWER, json!({}))
        .await;
    shutdown.cancel();
}

crate::on_both_backends!(
    an_admin_revokes_the_tokens_of_its_organization,
    the_cli_revokes_tokens_for_a_running_server,
    the_token_key_is_sealed_at_rest,
);

/// `herald token issue` with a key on a new database stores the token key sealed; a server
/// started with another key stops with one sentence before recording that key, and the right
/// key starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_key_sealed_by_the_cli_needs_the_same_key_to_start() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("h.db").display());
    let created = herald(&url, &["org", "create", "acme"]).output().unwrap();
    assert!(created.status.success(), "{created:?}");
    let issued = herald(
        &url,
        &["token", "issue", "--org", "acme", "--permission", "READ"],
    )
    .env("HERALD_ENCRYPTION_KEY", KEY)
    .output()
    .unwrap();
    assert!(issued.status.success(), "{issued:?}");
    let start = |key: &str| {
        let mut config = herald::config::Config::defaults(url.clone());
        config.encryption_key = Some(herald::config::Secret(key.into()));
        AppState::new(config)
    };
    let other = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    let refused = start(other).await.err().expect("another key is refused");
    assert!(
        refused.to_string().contains("is not the key"),
        "{refused:#}"
    );
    let state = start(KEY).await.expect("the key it was sealed with");
    let token = stdout(&issued);
    let shutdown = CancellationToken::new();
    let port = serve(state, shutdown.clone()).await;
    let client = Client::new(port, &token);
    client.wait_healthy().await;
    client.gql(VIEWER, json!({})).await;
    shutdown.cancel();
}

/// A database sealed before the token key was (its secrets sealed, the token key in clear) has
/// the token key sealed by its next start with the key, and tokens issued before still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_token_key_beside_sealed_secrets_is_sealed_by_the_next_start() {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    let app = TestApp::start_with(Backend::Sqlite, |config| {
        config.encryption_key = Some(herald::config::Secret(KEY.into()));
    })
    .await
    .unwrap();
    let world = World::new(&app, "acme").await;
    let clear = "6b65792d73746f7265642d696e2d636c6561722d62792d616e2d6f6c64657221";
    let row = herald::store::entities::setting::ActiveModel {
        key: Set("jwt_secret".into()),
        value: Set(clear.into()),
    };
    row.update(&app.state.db).await.unwrap();
    let old = herald::schema::TokenKeys::new(clear)
        .issue(&world.org, "old", Permission::Read, 60)
        .unwrap();

    let mut config = herald::config::Config::defaults(app.database_url.clone());
    config.encryption_key = Some(herald::config::Secret(KEY.into()));
    let state = AppState::new(config).await.unwrap();
    assert!(
        stored_key(&state.db)
            .await
            .starts_with(herald::secrets::PREFIX)
    );
    assert!(!contains(&sqlite_bytes(&app.database_url), clear));
    let shutdown = CancellationToken::new();
    let port = serve(state, shutdown.clone()).await;
    let client = Client::new(port, &old);
    client.wait_healthy().await;
    client.gql(VIEWER, json!({})).await;
    shutdown.cancel();
}
