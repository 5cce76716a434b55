//! What Herald meets in PostgreSQL itself: plans that must read deliveries by key as the table
//! grows, a commit whose answer is cut off, processes migrating a new database together, and
//! connections on loopback that need no TLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{CREATE_BUILD, Cluster, record_events, settle};
use crate::support::{
    Client, Herald, PgDatabase, Receiver, TestApp, World, free_port, herald_output,
};

/// The statements that claim, lease and record deliveries read the rows they name, not the
/// whole of `deliveries`, also on a new database: PostgreSQL settles a statement's plan after
/// a few runs, while the table is nearly empty, and a plan that scans it then keeps scanning
/// it as it grows (until autovacuum analyzes it, which this machine's PostgreSQL never does).
pub(super) async fn on_postgres_the_worker_reads_deliveries_by_key_as_the_table_grows() {
    use sea_orm::{ConnectionTrait, Statement};
    let Some(app) = TestApp::start(crate::support::Backend::Postgres).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let receiver = Receiver::start().await;
    let world = World::new(&app, "acme").await;
    world
        .endpoint(&app, &receiver.url("/hook"), json!({}))
        .await;
    // One build at a time, each delivered before the next: a claim, a lease and an outcome
    // for each, almost all of them on settled plans.
    let builds = 60;
    for n in 1..=builds {
        world.build(&app).await;
        receiver.wait_for(n).await;
    }
    // A backend reports its counters once a second at most.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let statement = Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT seq_tup_read AS n FROM pg_stat_user_tables WHERE relname = 'deliveries'",
    );
    let row = app
        .state
        .db
        .query_one_raw(statement)
        .await
        .unwrap()
        .unwrap();
    let scanned: i64 = row.try_get("", "n").unwrap();
    assert!(
        scanned < builds as i64,
        "scans read {scanned} rows of deliveries for {builds} deliveries"
    );
}

/// A TCP proxy in front of PostgreSQL that, once armed, passes the next `COMMIT` to the server
/// and then cuts the connection, without passing on the server's answer: a commit whose outcome
/// the client cannot know.
struct CommitCutter {
    port: u16,
    armed: Arc<AtomicBool>,
}

impl CommitCutter {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(false));
        let arming = armed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let armed = arming.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let answers = tokio::spawn(async move {
                        tokio::io::copy(&mut from_server, &mut to_client).await
                    });
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = from_client.read(&mut buffer).await {
                        let sent = &buffer[..n];
                        let cut = sent.windows(6).any(|w| w == b"COMMIT")
                            && armed.swap(false, Ordering::SeqCst);
                        if cut {
                            answers.abort();
                        }
                        if to_server.write_all(sent).await.is_err() {
                            break;
                        }
                        if cut {
                            // Time for the server to commit, then both ends are dropped.
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            break;
                        }
                    }
                    answers.abort();
                });
            }
        });
        Self { port, armed }
    }
}

/// A change whose commit the database never confirms (the connection is cut after `COMMIT`
/// was sent) may have been recorded: the client is told so, not that nothing changed, which
/// would invite it to record the build a second time.
pub(super) async fn a_change_whose_commit_is_not_confirmed_is_not_said_to_have_changed_nothing() {
    use sea_orm::{ConnectionTrait, Statement};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(database) = PgDatabase::create().await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    herald_output(&database.url, &["migrate"]);
    let org = herald_output(&database.url, &["org", "create", "acme"]);
    let token = herald_output(
        &database.url,
        &["token", "issue", "--org", "acme", "--permission", "ADMIN"],
    );
    let mut through = url::Url::parse(&database.url).unwrap();
    let upstream = (
        through.host_str().unwrap().to_owned(),
        through.port().unwrap_or(5432),
    );
    let upstream = tokio::net::lookup_host(upstream)
        .await
        .unwrap()
        .next()
        .unwrap();
    let cutter = CommitCutter::start(upstream).await;
    through.set_host(Some("127.0.0.1")).unwrap();
    through.set_port(Some(cutter.port)).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _api = Herald::spawn(
        through.as_str(),
        &["serve", "--no-worker", "--listen", &listen],
    );
    let client = Client::new(port, &token);
    client.wait_healthy().await;
    let repo = client.gql("mutation($org: ID!) { createRepository(input: {ownerUid: $org, name: \"app\"}) { repository { id } } }", json!({ "org": org })).await;
    let repo = repo["createRepository"]["repository"]["id"].clone();

    cutter.armed.store(true, Ordering::SeqCst);
    let answer = client.try_gql(CREATE_BUILD, json!({ "repo": repo })).await;
    let error = answer.expect_err("the commit's answer was cut");
    assert!(
        error.contains("may have been recorded") && !error.contains("nothing was changed"),
        "{error}"
    );
    // And it was recorded, with its event.
    let db = sea_orm::Database::connect(&database.url).await.unwrap();
    for table in ["builds", "events"] {
        let sql = format!("SELECT COUNT(*) AS n FROM {table}");
        let statement = Statement::from_string(sea_orm::DbBackend::Postgres, sql);
        let row = db.query_one_raw(statement).await.unwrap().unwrap();
        assert_eq!(row.try_get::<i64>("", "n").unwrap(), 1, "{table}");
    }
    db.close().await.ok();
}

/// Processes started together on a new PostgreSQL database each apply the migrations at start:
/// they take turns, and every one of them starts (rather than all but one failing on tables
/// another had just created).
pub(super) async fn processes_started_together_on_a_new_database_all_start() {
    use herald_migrations::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, Statement};
    let Some(database) = PgDatabase::create().await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let mut workers: Vec<Herald> = (0..4)
        .map(|_| Herald::spawn(&database.url, &["worker"]))
        .collect();
    let db = sea_orm::Database::connect(&database.url).await.unwrap();
    let applied = "SELECT COUNT(*) AS n FROM seaql_migrations";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let statement = Statement::from_string(sea_orm::DbBackend::Postgres, applied);
        let count = match db.query_one_raw(statement).await {
            Ok(Some(row)) => row.try_get::<i64>("", "n").unwrap(),
            _ => 0,
        };
        if count == Migrator::migrations().len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "the migrations were not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (n, worker) in workers.iter_mut().enumerate() {
        assert!(worker.running(), "worker {n} stopped at its start");
    }
    db.close().await.ok();
}

/// Herald's connections to a PostgreSQL on loopback are in the clear although the server offers
/// TLS (which sqlx, like libpq, otherwise takes whenever offered): on loopback it protects
/// nothing and costs every statement. The same query sees TLS on a connection that asks for it.
pub(super) async fn connections_to_postgres_on_loopback_do_not_use_tls() {
    use sea_orm::{ConnectionTrait, Statement};
    let receiver = Receiver::start().await;
    let Some(cluster) = Cluster::start(1, &receiver).await else {
        return eprintln!("skipped: HERALD_TEST_POSTGRES_URL is not set");
    };
    let acknowledged = record_events(&cluster.client, &cluster.repository, 2, 3, 2).await;
    settle(&receiver, acknowledged).await;
    let mut asking = url::Url::parse(&cluster.database.url).unwrap();
    asking.query_pairs_mut().append_pair("sslmode", "prefer");
    // One connection, so that `pg_backend_pid()` is the only one of the test's.
    let mut options = sea_orm::ConnectOptions::new(asking.to_string());
    options.max_connections(1).sqlx_logging(false);
    let admin = sea_orm::Database::connect(options).await.unwrap();
    let query = |sql: &str| Statement::from_string(sea_orm::DbBackend::Postgres, sql.to_owned());
    let offered = admin
        .query_one_raw(query("SHOW ssl"))
        .await
        .unwrap()
        .unwrap();
    if offered.try_get::<String>("", "ssl").unwrap() != "on" {
        return eprintln!("skipped: the test PostgreSQL does not offer TLS");
    }
    let own = admin
        .query_one_raw(query(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(
        own.try_get::<bool>("", "ssl").unwrap(),
        "a connection with sslmode=prefer uses TLS"
    );
    let herald = admin
        .query_all_raw(query(&format!(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = '{}' AND a.pid <> pg_backend_pid()",
            cluster.database.name()
        )))
        .await
        .unwrap();
    let tls: Vec<bool> = herald
        .iter()
        .map(|row| row.try_get::<bool>("", "ssl").unwrap())
        .collect();
    admin.close().await.ok();
    assert!(
        tls.len() >= 3,
        "the API's and the worker's connections, with the listener: {tls:?}"
    );
    assert!(
        tls.iter().all(|tls| !tls),
        "no connection of Herald's uses TLS: {tls:?}"
    );
}
