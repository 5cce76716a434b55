//! `herald` as a child process, run to completion or kept running, and a GraphQL client of a
//! Herald that no harness stands behind.

use std::time::Duration;

use serde_json::{Value, json};

/// A `herald` child process, killed when dropped.
pub struct Herald {
    pub child: std::process::Child,
    args: Vec<String>,
    database_url: String,
}

impl Herald {
    /// Starts `herald ARGS…` on a database, with private targets allowed, a short lease and a
    /// delivery timeout of half of it.
    pub fn spawn(database_url: &str, args: &[&str]) -> Self {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self {
            child: Self::start(database_url, &args),
            args,
            database_url: database_url.to_owned(),
        }
    }

    fn start(database_url: &str, args: &[String]) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .env("HERALD_DATABASE_URL", database_url)
            .env("HERALD_ALLOW_PRIVATE_TARGETS", "true")
            .env("HERALD_LEASE", "1s")
            .env("HERALD_DELIVERY_TIMEOUT", "500ms")
            .env("HERALD_RETRY_SCHEDULE", "100ms,200ms,400ms,800ms")
            .env_remove("HERALD_JWT_SECRET")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting herald")
    }

    /// SIGKILLs the process, then starts it again with the same arguments.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.child = Self::start(&self.database_url, &self.args);
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Herald {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a `herald` command to completion on a database and returns its trimmed stdout.
pub fn herald_output(database_url: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .env("HERALD_DATABASE_URL", database_url)
        .env_remove("HERALD_JWT_SECRET")
        .output()
        .expect("running herald");
    assert!(output.status.success(), "herald {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GraphQL client of a Herald at `base` (no harness behind it).
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(port: u16, token: &str) -> Self {
        Self {
            base: format!("http://127.0.0.1:{port}"),
            token: token.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// Waits until `/healthz` answers.
    pub async fn wait_healthy(&self) {
        for _ in 0..400 {
            if self
                .http
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("herald at {} did not become healthy", self.base);
    }

    /// Runs a request; `Err` with the response when it carried errors or failed.
    pub async fn try_gql(&self, query: &str, variables: Value) -> Result<Value, String> {
        let response = self
            .http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(json!({ "query": query, "variables": variables }).to_string())
            .send()
            .await
            .map_err(|err| err.to_string())?;
        let text = response.text().await.map_err(|err| err.to_string())?;
        let body: Value = serde_json::from_str(&text).map_err(|_| text.clone())?;
        match body.get("errors") {
            Some(_) => Err(body.to_string()),
            None => Ok(body["data"].clone()),
        }
    }

    /// The value of a counter or gauge in `/metrics`, without labels.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("a metrics body");
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
    }

    /// Runs a request that must succeed.
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.try_gql(query, variables)
            .await
            .unwrap_or_else(|err| panic!("GraphQL failed: {err}"))
    }
}
