//! `herald listen`: a local receiver that prints each delivery readably (or as one JSON object
//! per line), checks both signature schemes, and answers 2xx, or 400 when a secret is given and
//! the delivery is not signed with it. `herald demo` prints its deliveries with the same code.
//! With `--approve`, `--reject REASON` or `--hold` it also plays an approval hook: calls with
//! `X-Cirrus-Event: approval` get that answer, and one line each says what was asked and decided.
//! With `--catch-up` it fetches the events its endpoint's sequence says it missed (see
//! [`super::catch_up`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::delivery::approval::{MAX_ANSWER_TEXT, read_answer};
use crate::slack;
use crate::tools::catch_up::{CatchUp, CatchUpOptions, Claim, Show};
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
    /// `valid`, `invalid`, `stale`, `absent` or `unchecked`, per scheme: the style's own
    /// header (`signatureHeader`: `X-Cirrus-Signature`, or another style's) and Standard
    /// Webhooks'.
    pub cirrus_signature: &'static str,
    pub signature_header: &'static str,
    pub webhook_signature: &'static str,
    /// The HTTP status the receiver answered.
    pub answered: u16,
    pub bytes: usize,
    /// `X-Herald-Sequence`, when the delivery carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<i64>,
    /// Fetched from Herald's `webhookEvents` (with `--catch-up`) rather than received.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fetched: bool,
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
            signature_header: signatures.style_header,
            webhook_signature: signatures.standard.as_str(),
            answered,
            bytes,
            sequence: incoming.sequence,
            fetched: false,
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
        if let Some(sequence) = self.sequence {
            head.push_str(&format!("  #{sequence}"));
        }

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
        let checks = match self.fetched {
            true => "fetched from webhookEvents: missed as a delivery".to_owned(),
            false => format!(
                "{} {}, webhook-signature {}; answered {}",
                self.signature_header, self.cirrus_signature, self.webhook_signature, self.answered
            ),
        };
        format!("{head}\n  {}\n  {checks}", subject.join("  "))
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

/// A delivery's signatures, checked against the receiver's secret.
fn check(options: &ListenOptions, headers: &HeaderMap, body: &[u8]) -> Signatures {
    Signatures::check(
        headers,
        body,
        options.secret.as_deref(),
        options.tolerance,
        now_secs(),
    )
}

/// Decides the answer to a delivery whose signatures are checked, and prints its summary on
/// stdout.
fn show(
    options: &ListenOptions,
    incoming: &Incoming,
    signatures: &Signatures,
    bytes: usize,
) -> StatusCode {
    let answer = if signatures.accepted() {
        options.status
    } else {
        StatusCode::BAD_REQUEST
    };
    let summary = Summary::of(incoming, signatures, answer.as_u16(), bytes);
    // One println per delivery, so concurrent deliveries never interleave their lines.
    println!("{}", summary.render(options.json));
    answer
}

/// How approval calls (`X-Cirrus-Event: approval`) are answered, when they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApprovalAnswer {
    /// `{"approved": true, "work_id": <a new UUID>}`.
    Approve,
    /// `{"approved": false, "reason": …}`.
    Reject { reason: String },
    /// `{"hold": true, "work_id": <a new UUID>}`.
    Hold,
}

impl ApprovalAnswer {
    /// The answer's body; each approval or hold carries a work id of its own.
    pub fn body(&self) -> Json {
        let work_id = || uuid::Uuid::new_v4().to_string();
        match self {
            Self::Approve => json!({ "approved": true, "work_id": work_id() }),
            Self::Reject { reason } => json!({ "approved": false, "reason": reason }),
            Self::Hold => json!({ "hold": true, "work_id": work_id() }),
        }
    }
}

/// A reason an answer may carry: Herald reads at most this many characters.
pub fn parse_reason(text: &str) -> Result<String, String> {
    let most = MAX_ANSWER_TEXT;
    if text.chars().count() > most {
        Err(format!("a reason is at most {most} characters"))
    } else {
        Ok(text.to_owned())
    }
}

/// What the receiver saw in one approval call and how it answered; `--json` prints it as is.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSummary {
    pub event: &'static str,
    pub delivery: Option<String>,
    pub point: Option<String>,
    pub organization: Option<String>,
    pub organization_uid: Option<String>,
    pub actor: Option<String>,
    pub repository: Option<String>,
    /// `APPROVED`, `HELD` or `REJECTED` as Herald reads the answer; none when refused (400).
    pub decision: Option<String>,
    pub work_id: Option<String>,
    pub reason: Option<String>,
    pub cirrus_signature: &'static str,
    pub signature_header: &'static str,
    pub webhook_signature: &'static str,
    pub answered: u16,
    /// The body as received (JSON when it is JSON, else text).
    pub body: Json,
    /// The answer's body; null when refused.
    pub answer: Json,
}

impl ApprovalSummary {
    /// One line for a person: the point, who asks for what, and the decision.
    pub fn text(&self) -> String {
        let unknown = |value: &Option<String>| value.clone().unwrap_or_else(|| "?".into());
        let mut line = format!(
            "approval {}  organization {}",
            unknown(&self.point),
            unknown(&self.organization)
        );
        if let Some(uid) = &self.organization_uid {
            line.push_str(&format!(" (uid {uid})"));
        }
        line.push_str(&format!("  actor {}", unknown(&self.actor)));
        if let Some(repository) = &self.repository {
            line.push_str(&format!("  repository {repository}"));
        }
        match &self.decision {
            Some(decision) => {
                line.push_str(&format!("  → {decision}"));
                if let Some(work_id) = &self.work_id {
                    line.push_str(&format!(" work_id={work_id}"));
                }
                if let Some(reason) = &self.reason {
                    line.push_str(&format!(" reason={reason:?}"));
                }
            }
            None if self.cirrus_signature == "absent" && self.webhook_signature == "absent" => {
                line.push_str("  → refused: no signature came, and --secret asks for one")
            }
            None => line.push_str("  → refused: the signature is not valid"),
        }
        line.push_str(&format!(
            "  ({} {}, webhook-signature {}; answered {})",
            self.signature_header, self.cirrus_signature, self.webhook_signature, self.answered
        ));
        line
    }

    /// The summary as printed: one line of text, or one line of JSON.
    pub fn render(&self, json: bool) -> String {
        if json {
            serde_json::to_string(self).unwrap_or_default()
        } else {
            self.text()
        }
    }
}

/// Checks an approval call, answers it as `answer` says (400 when a secret is given and the
/// call is not signed with it) and prints one line on stdout.
pub fn receive_approval(
    options: &ListenOptions,
    answer: &ApprovalAnswer,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, Option<Json>) {
    let signatures = Signatures::check(
        headers,
        body,
        options.secret.as_deref(),
        options.tolerance,
        now_secs(),
    );
    let request: Json = serde_json::from_slice(body)
        .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(body).into_owned()));
    let text = |value: &Json| slack::text(value);
    let mut summary = ApprovalSummary {
        event: "approval",
        delivery: headers
            .get("x-cirrus-delivery")
            .or_else(|| headers.get("webhook-id"))
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned),
        point: text(&request["point"]),
        organization: text(&request["organization"]["name"]),
        organization_uid: text(&request["organization"]["uid"]),
        actor: text(&request["actor"]["id"]),
        repository: slack::repository_name(&request["request"]["repository"]),
        decision: None,
        work_id: None,
        reason: None,
        cirrus_signature: signatures.cirrus.as_str(),
        signature_header: signatures.style_header,
        webhook_signature: signatures.standard.as_str(),
        answered: StatusCode::BAD_REQUEST.as_u16(),
        body: request,
        answer: Json::Null,
    };
    let reply = signatures.accepted().then(|| answer.body());
    if let Some(reply) = &reply {
        // What Herald will make of the answer, read as Herald reads it.
        if let Ok(read) = read_answer(Some(200), &reply.to_string()) {
            summary.decision = Some(read.decision().as_str().to_owned());
            summary.work_id = read.work_id;
            summary.reason = read.reason;
        }
        summary.answered = StatusCode::OK.as_u16();
        summary.answer = reply.clone();
    }
    println!("{}", summary.render(options.json));
    (
        StatusCode::from_u16(summary.answered).unwrap_or(StatusCode::OK),
        reply,
    )
}

/// The receiver's state: how it checks, how it answers approval calls if it does, and what it
/// has seen of its endpoint's sequence if it catches up.
struct Answering {
    options: ListenOptions,
    approval: Option<ApprovalAnswer>,
    catch_up: Option<Arc<CatchUp>>,
}

/// The receiver's routes: every method and path is a delivery.
pub fn router(options: ListenOptions) -> Router {
    router_with(options, None, None)
}

/// The receiver's routes, answering approval calls as `approval` says (as any delivery when
/// it is none), and catching up on missed events when `catch_up` is given.
fn router_with(
    options: ListenOptions,
    approval: Option<ApprovalAnswer>,
    catch_up: Option<Arc<CatchUp>>,
) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(Arc::new(Answering {
            options,
            approval,
            catch_up,
        }))
}

fn is_approval_call(headers: &HeaderMap) -> bool {
    headers
        .get("x-cirrus-event")
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"approval"))
}

const BAD_SIGNATURE: &str = "The signature is not valid for this receiver's secret.\n";

async fn handle(
    State(state): State<Arc<Answering>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let options = &state.options;
    if let Some(answer) = state
        .approval
        .as_ref()
        .filter(|_| is_approval_call(&headers))
    {
        return match receive_approval(options, answer, &headers, &body) {
            (status, Some(reply)) => (status, axum::Json(reply)).into_response(),
            (status, None) => (status, BAD_SIGNATURE).into_response(),
        };
    }
    let signatures = check(options, &headers, &body);
    let incoming = Incoming::parse(&headers, &body);
    // Only a delivery signed with the secret, and answered 2xx, takes its number: a forged
    // or refused one must not stand for the real one.
    let catching_up = state
        .catch_up
        .as_ref()
        .zip(incoming.sequence)
        .filter(|_| options.status.is_success() && signatures.accepted());
    if let Some((catch_up, n)) = catching_up {
        let id = incoming.delivery.as_deref().unwrap_or_default();
        match catch_up.claim(n, id) {
            Claim::New => {}
            Claim::Repeat => return (StatusCode::OK, "already received\n").into_response(),
            Claim::Conflict(other) => {
                let why = format!(
                    "Delivery {id} is numbered {n}, which --endpoint's feed gave to delivery {other}: point only that endpoint at this listener.\n"
                );
                eprint!("{why}");
                return (StatusCode::CONFLICT, why).into_response();
            }
        }
    }
    let status = show(options, &incoming, &signatures, body.len());
    if let Some((catch_up, _)) = catching_up {
        catch_up.after_delivery();
    }
    let text = if status == StatusCode::BAD_REQUEST {
        BAD_SIGNATURE
    } else {
        "received\n"
    };
    (status, text).into_response()
}

/// Serves the receiver on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    options: ListenOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(listener, options, None, None, shutdown).await
}

/// Serves the receiver on `listener` until `shutdown`, answering approval calls as `approval`
/// says and catching up as `catch_up` says.
async fn serve_with(
    listener: TcpListener,
    options: ListenOptions,
    approval: Option<ApprovalAnswer>,
    catch_up: Option<Arc<CatchUp>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router_with(options, approval, catch_up))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving the receiver")
}

/// `herald listen`: prints where it listens (one line on stdout), then every delivery; with
/// `catch_up`, first every event after the one its state file names, and then each event
/// its endpoint's sequence says it missed.
pub async fn run(
    listen: std::net::SocketAddr,
    options: ListenOptions,
    approval: Option<ApprovalAnswer>,
    catch_up: Option<CatchUpOptions>,
) -> anyhow::Result<()> {
    let json = options.json;
    let show: Show = Box::new(move |headers, body, n| {
        let incoming = Incoming::parse(headers, body);
        // Nothing was received or answered: the checks say where it came from instead.
        let mut summary = Summary::of(&incoming, &Signatures::fetched(), 0, body.len());
        summary.sequence = Some(n);
        summary.fetched = true;
        summary.cirrus_signature = "fetched";
        summary.webhook_signature = "fetched";
        summary.signature_header = "webhookEvents";
        println!("{}", summary.render(json));
    });
    let catch_up = catch_up
        .map(|catch_up| CatchUp::new(catch_up, show))
        .transpose()?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let checking = match options.secret {
        Some(_) => "checking signatures against the given secret",
        None => "without a secret: signatures are shown, not checked",
    };
    let mut answering = match &approval {
        None => String::new(),
        Some(ApprovalAnswer::Approve) => "; approving approval calls".into(),
        Some(ApprovalAnswer::Reject { .. }) => "; rejecting approval calls".into(),
        Some(ApprovalAnswer::Hold) => "; holding approval calls".into(),
    };
    if let Some(catch_up) = &catch_up {
        answering.push_str(&format!("; {}", catch_up.describe()));
    }
    if options.json {
        eprintln!("Listening on http://{addr}/ ({checking}{answering}).");
    } else {
        println!("Listening on http://{addr}/ ({checking}{answering}).");
    }
    let shutdown = CancellationToken::new();
    crate::app::cancel_on_signal(shutdown.clone());
    // What the state file says was missed comes first; a refusal (a wrong token or endpoint)
    // can only be fixed by the command line.
    if let Some(catch_up) = &catch_up {
        catch_up
            .fetch_missing()
            .await
            .map_err(|refused| anyhow::anyhow!(refused))?;
    }
    serve_with(listener, options, approval, catch_up, shutdown).await
}
