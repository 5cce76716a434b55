//! A Herald the bench starts itself: a fresh database, seeded with an organization, its token, a
//! repository and the scenario's endpoints; the processes on it; and their removal.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use sea_orm::ConnectionTrait;

use super::BenchArgs;
use super::sink::Sink;
use crate::domain::{EndpointUrl, EventKind, PayloadFormat, Permission};
use crate::schema::TokenKeys;
use crate::store;

/// The selection every bench endpoint uses: small, and enough to key arrivals.
pub(super) const SELECTION: &str = "task(id: $taskId) { id status }";

/// The secret every bench endpoint signs with.
pub(super) const BENCH_SECRET: &str = "bench-secret";

/// A server the bench started, and what to remove once it stops.
pub(super) struct Owned {
    pub(super) children: Vec<Child>,
    pub(super) database_url: String,
    pub(super) cleanup: Cleanup,
}

pub(super) enum Cleanup {
    File(std::path::PathBuf),
    Postgres { admin: String, name: String },
}

impl Owned {
    /// Prepares the fresh database (an organization, its token, a repository and `endpoints`
    /// endpoints) and starts `serve` on it, with the extra workers unless `api_only`; the
    /// server's base URL, the token and the repository's id once it answers.
    pub(super) async fn launch(
        &mut self,
        args: &BenchArgs,
        sink: &Sink,
        endpoints: usize,
        api_only: bool,
        http: &reqwest::Client,
    ) -> anyhow::Result<(String, String, String)> {
        let db = store::connect(&self.database_url).await?;
        let org = store::orgs::create(&db, "bench")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = crate::app::token_secret(&db).await?;
        let token = TokenKeys::new(&key)
            .issue(&org.id.to_string(), "bench", Permission::Admin, 24 * 3600)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let repository = store::ci::create_repository(
            &db,
            org.id,
            store::ci::NewRepository {
                name: "bench".into(),
                is_private: false,
                default_branch: "main".into(),
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        for i in 0..endpoints {
            let fields = store::endpoints::EndpointFields {
                url: EndpointUrl::parse(&sink.endpoint_url(i))?,
                secret: Some(BENCH_SECRET.into()),
                events: vec![EventKind::Task],
                payload_query: Some(SELECTION.into()),
                payload_format: PayloadFormat::Data,
                enabled: true,
                insecure_ssl: false,
                status_filter: Vec::new(),
                signature_style: crate::domain::SignatureStyle::Cirrus,
                published_events: Vec::new(),
                headers: Vec::new(),
                secret_name: None,
                previous_secret: None,
                conditions: Vec::new(),
            };
            store::endpoints::create(&db, org.id, fields, &crate::secrets::Vault::default())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        db.close().await.ok();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut serve = vec![
            "serve".to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        if api_only {
            serve.push("--no-worker".into());
        }
        self.children.push(spawn(&self.database_url, &serve)?);
        if !api_only {
            for _ in 0..args.workers {
                self.children
                    .push(spawn(&self.database_url, &["worker".into()])?);
            }
        }
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..400 {
            if http.get(format!("{base}/healthz")).send().await.is_ok() {
                return Ok((base, token, repository.id.to_string()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::bail!("herald serve did not start")
    }

    /// Stops the processes and removes the database.
    pub(super) async fn remove(mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        match &self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::Postgres { admin, name } => {
                if let Ok(db) = sea_orm::Database::connect(admin).await {
                    let _ = db
                        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            }
        }
    }
}

pub(super) fn spawn(database_url: &str, args: &[String]) -> anyhow::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(args)
        .env("HERALD_DATABASE_URL", database_url)
        .env("HERALD_ALLOW_PRIVATE_TARGETS", "true")
        .env("RUST_LOG", "warn")
        .env_remove("HERALD_JWT_SECRET")
        .env_remove("HERALD_ENCRYPTION_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting a Herald process")
}

pub(super) async fn fresh_database(spec: &str) -> anyhow::Result<(String, Cleanup)> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    if spec.starts_with("postgres") {
        let name = format!("herald_bench_{id}");
        let admin = sea_orm::Database::connect(spec)
            .await
            .context("connecting to PostgreSQL")?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await?;
        let mut url = url::Url::parse(spec)?;
        url.set_path(&format!("/{name}"));
        Ok((
            url.to_string(),
            Cleanup::Postgres {
                admin: spec.to_owned(),
                name,
            },
        ))
    } else {
        let path = std::env::temp_dir().join(format!("herald-bench-{id}.db"));
        Ok((
            format!("sqlite://{}?mode=rwc", path.display()),
            Cleanup::File(path),
        ))
    }
}
