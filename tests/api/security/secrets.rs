//! Secrets sealed at rest: stored sealed under the encryption key, refused with another key or
//! none, sealed when encryption is turned on, and a first sealing cut short finished later.

use serde_json::json;

use crate::support::{Backend, Receiver, TestApp, World};

const KEY_ONE: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY_TWO: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn config_for(database_url: &str, key: Option<&str>) -> herald::config::Config {
    let mut config = herald::config::Config::defaults(database_url);
    config.encryption_key = key.map(|key| herald::config::Secret(key.to_owned()));
    config
}

pub(super) async fn secrets_are_sealed_at_rest(backend: Backend) {
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

pub(super) async fn turning_encryption_on_seals_the_secrets_already_stored() {
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
pub(super) async fn a_first_start_with_a_key_that_stopped_halfway_is_finished_by_the_next() {
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
