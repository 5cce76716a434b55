//! `herald listen`: a local receiver that prints each delivery readably (or as one JSON object
//! per line), checks both signature schemes, and answers 2xx, or 400 when a secret is given and
//! the delivery is not signed with it. `herald demo` prints its deliveries with the same code.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::slack;
use crate::tools::receive::{Incoming, Signatures, now_secs};

/// How the receiver checks and answers.
/// No `Debug`: it holds the secret.
#[derive(Clone)]
pub struct ListenOptions {
    /// The endpoint's secret; without it signatures are shown as unchecked and never refused.
    pub secret: Option<String>,
    /// The answer to an accepted delivery.
    pub status: StatusCode,
    /// One JSON object per line instead of readable text.
    pub json: bool,
    /// How far a `webhook-timestamp` may be from now; zero accepts any.
    pub tolerance: Duration,
}

/// What the receiver saw in one delivery; `--json` prints it as is.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub event: String,
    pub action: Option<String>,
    pub delivery: Option<String>,
    pub old_status: Option<String>,
    pub status: Option<String>,
    pub repository: Option<String>,
    pub build_id: Option<String>,
    pub branch: Option<String>,
    pub task_id: Option<String>,
    pub task_name: Option<String>,
    /// `valid`, `invalid`, `stale`, `absent` or `unchecked`, per scheme.
    pub cirrus_signature: &'static str,
    pub webhook_signature: &'static str,
    /// The HTTP status the receiver answered.
    pub answered: u16,
    pub bytes: usize,
}

impl Summary {
    /// Reads a delivery and the receiver's verdict on it.
    pub fn of(incoming: &Incoming, signatures: &Signatures, answered: u16, bytes: usize) -> Self {
        let build = incoming.part("build");
        let task = incoming.part("task");
        Self {
            event: incoming.event.clone(),
            action: incoming.action.clone(),
            delivery: incoming.delivery.clone(),
            old_status: incoming.old_status.clone(),
            status: incoming.is_ci_event().then(|| incoming.status()).flatten(),
            repository: slack::repository_name(incoming.part("repository")),
            build_id: slack::text(&build["id"]),
            branch: slack::text(&build["branch"]),
            task_id: slack::text(&task["id"]),
            task_name: slack::text(&task["name"]),
            cirrus_signature: signatures.cirrus.as_str(),
            webhook_signature: signatures.standard.as_str(),
            answered,
            bytes,
        }
    }

    /// Three lines for a person: what happened, to what, and whether the signatures held.
    pub fn text(&self) -> String {
        let mut head = self.event.clone();
        if let Some(action) = self
            .action
            .as_deref()
            .filter(|action| *action != self.event)
        {
            head.push_str(&format!(" {action}"));
        }
        match (&self.old_status, &self.status) {
            (Some(old), Some(new)) => head.push_str(&format!("  {old} → {new}")),
            (None, Some(new)) => head.push_str(&format!("  {new}")),
            _ => {}
        }
        head.push_str(&format!(
            "  delivery {}",
            self.delivery.as_deref().unwrap_or("(no id)")
        ));
        let mut subject = Vec::new();
        if let Some(repository) = &self.repository {
            subject.push(format!("repository {repository}"));
        }
        if let Some(build) = &self.build_id {
            let branch = self
                .branch
                .as_deref()
                .map(|branch| format!(" ({branch})"))
                .unwrap_or_default();
            subject.push(format!("build {build}{branch}"));
        }
        if let Some(task) = &self.task_id {
            let name = self
                .task_name
                .as_deref()
                .map(|name| format!(" {name}"))
                .unwrap_or_default();
            subject.push(format!("task {task}{name}"));
        }
        if subject.is_empty() {
            subject.push(format!("{} bytes", self.bytes));
        }
        format!(
            "{head}\n  {}\n  X-Cirrus-Signature {}, webhook-signature {}; answered {}",
            subject.join("  "),
            self.cirrus_signature,
            self.webhook_signature,
            self.answered
        )
    }

    /// The summary as printed: readable text, or one line of JSON.
    pub fn render(&self, json: bool) -> String {
        if json {
            serde_json::to_string(self).unwrap_or_default()
        } else {
            self.text()
        }
    }
}

/// Checks a delivery, decides the answer and prints the summary on stdout.
pub fn receive(options: &ListenOptions, headers: &HeaderMap, body: &[u8]) -> StatusCode {
    let signatures = Signatures::check(
        headers,
        body,
        options.secret.as_deref(),
        options.tolerance,
        now_secs(),
    );
    let answer = if signatures.accepted() {
        options.status
    } else {
        StatusCode::BAD_REQUEST
    };
    let incoming = Incoming::parse(headers, body);
    let summary = Summary::of(&incoming, &signatures, answer.as_u16(), body.len());
    // One println per delivery, so concurrent deliveries never interleave their lines.
    println!("{}", summary.render(options.json));
    answer
}

/// The receiver's routes: every method and path is a delivery.
pub fn router(options: ListenOptions) -> Router {
    Router::new().fallback(handle).with_state(Arc::new(options))
}

async fn handle(
    State(options): State<Arc<ListenOptions>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let status = receive(&options, &headers, &body);
    let text = if status == StatusCode::BAD_REQUEST {
        "The signature is not valid for this receiver's secret.\n"
    } else {
        "received\n"
    };
    (status, text)
}

/// Serves the receiver on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    options: ListenOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(options))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving the receiver")
}

/// `herald listen`: prints where it listens (one line on stdout), then every delivery.
pub async fn run(listen: std::net::SocketAddr, options: ListenOptions) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let checking = match options.secret {
        Some(_) => "checking signatures against the given secret",
        None => "without a secret: signatures are shown, not checked",
    };
    if options.json {
        eprintln!("Listening on http://{addr}/ ({checking}).");
    } else {
        println!("Listening on http://{addr}/ ({checking}).");
    }
    let shutdown = CancellationToken::new();
    crate::app::cancel_on_signal(shutdown.clone());
    serve(listener, options, shutdown).await
}
