//! Approval hooks: an organization's own services, asked before a build or task is recorded.
//! Each is POSTed `{"hook": "pre", "point", "organization", "actor", "request"}`, signed like a
//! delivery (`X-Cirrus-Event: approval`), and waited for at most its timeout; its answer
//! `{"approved", "hold"?, "work_id"?, "reason"?}` approves, holds or rejects the change. All
//! must approve; any rejection wins; any hold holds. Every call is logged.
//!
//! The call happens before the change reaches the shared writer, and each organization has at
//! most [`MAX_IN_FLIGHT_PER_ORG`] calls under way: a slow hook costs only its own
//! organization's changes, at most their hooks' timeouts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use tokio::sync::Semaphore;

use super::client::{Destination, Outgoing, Sender, Signing};
use crate::domain::{ApprovalDecision, ApprovalPoint, WhenUnavailable};
use crate::secrets::Vault;
use crate::store::approvals::{self, NewCall};
use crate::store::entities::{approval_call, approval_hook};
use crate::store::{self, Writes};
use crate::{Error, Result};

/// Approval calls one organization may have under way at once; past it, a call waits for a
/// turn within its hook's timeout.
pub const MAX_IN_FLIGHT_PER_ORG: usize = 16;
/// The longest work id or reason an answer may carry.
pub const MAX_ANSWER_TEXT: usize = 255;
/// How long a process keeps an organization's hooks before reading them again: a hook
/// created or changed through another process applies within this time.
const HOOKS_KEPT: Duration = Duration::from_secs(1);

/// What the hooks decided about a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Record the change as asked, with the work id an answer gave.
    Approve { work_id: Option<String> },
    /// Record it waiting for a decision: a build `NEEDS_APPROVAL`, a task `PAUSED`. `calls`
    /// are the logged calls that held it, whose one-time links decide it once it is recorded
    /// (see [`Approvals::held`]).
    Hold {
        work_id: Option<String>,
        calls: Vec<i64>,
    },
    /// Refuse it; the reason in one sentence.
    Reject { reason: String },
}

impl Verdict {
    /// The work id an approving or holding answer gave.
    pub fn work_id(&self) -> Option<String> {
        match self {
            Self::Approve { work_id } | Self::Hold { work_id, .. } => work_id.clone(),
            Self::Reject { .. } => None,
        }
    }
}

/// A hook's valid answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub approved: Option<bool>,
    pub hold: bool,
    pub work_id: Option<String>,
    pub reason: Option<String>,
}

impl Answer {
    /// `{"hold": true}` holds whatever `approved` says; `{"approved": true}` approves; any
    /// other valid answer rejects.
    pub fn decision(&self) -> ApprovalDecision {
        if self.hold {
            ApprovalDecision::Held
        } else if self.approved == Some(true) {
            ApprovalDecision::Approved
        } else {
            ApprovalDecision::Rejected
        }
    }
}

/// Reads a hook's answer: a 2xx status and a JSON object with `approved` and/or `hold` as
/// booleans, and `work_id` and `reason` as strings of at most [`MAX_ANSWER_TEXT`] characters
/// when present. Anything else is no answer, and the sentence says why.
pub fn read_answer(status: Option<u16>, body: &str) -> std::result::Result<Answer, String> {
    match status {
        Some(200..=299) => {}
        Some(status) => return Err(format!("the hook answered HTTP {status}")),
        None => return Err("the hook gave no HTTP answer".into()),
    }
    let Ok(Json::Object(fields)) = serde_json::from_str::<Json>(body) else {
        return Err("the hook's answer is not a JSON object".into());
    };
    let flag = |name: &str| match fields.get(name) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Bool(value)) => Ok(Some(*value)),
        Some(_) => Err(format!(
            "the hook's answer has a `{name}` that is not true or false"
        )),
    };
    let text = |name: &str| match fields.get(name) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(value)) if value.chars().count() <= MAX_ANSWER_TEXT => {
            Ok(Some(value.chars().filter(|c| !c.is_control()).collect()))
        }
        Some(_) => Err(format!(
            "the hook's answer has a `{name}` that is not a string of at most {MAX_ANSWER_TEXT} characters"
        )),
    };
    let approved = flag("approved")?;
    let hold = flag("hold")?;
    if approved.is_none() && hold.is_none() {
        return Err("the hook's answer has neither `approved` nor `hold`".into());
    }
    Ok(Answer {
        approved,
        hold: hold.unwrap_or(false),
        work_id: text("work_id")?,
        reason: text("reason")?,
    })
}

/// What is asked: the organization, the point, who asks and the mutation's input.
pub struct Question<'a> {
    pub org_id: i64,
    pub org_name: &'a str,
    pub point: ApprovalPoint,
    /// The token's subject.
    pub actor: &'a str,
    /// The mutation's input, with the repository it concerns.
    pub request: Json,
}

impl Question<'_> {
    /// The body a hook is sent. A build's question also carries `decide`: a one-time link (its
    /// `token`, and the `approve` and `reject` URLs to POST to) with which the hook decides the
    /// build later, should its answer hold it.
    pub fn body(&self, decide: Option<&Decide>) -> String {
        let mut body = json!({
            "hook": "pre",
            "point": self.point.as_str(),
            "organization": { "uid": self.org_id.to_string(), "name": self.org_name },
            "actor": { "id": self.actor },
            "request": self.request,
        });
        if let Some(decide) = decide {
            body["decide"] = json!({
                "token": decide.token,
                "approve": decide.url("approve"),
                "reject": decide.url("reject"),
            });
        }
        body.to_string()
    }
}

/// A held build's one-time link, as a call's request carries it.
pub struct Decide {
    pub token: String,
    /// `HERALD_PUBLIC_URL`, without a trailing `/`; the links are paths without it.
    pub base: String,
}

impl Decide {
    fn new(public_url: Option<&str>) -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        Self {
            token: hex::encode(bytes),
            base: public_url
                .unwrap_or_default()
                .trim_end_matches('/')
                .to_owned(),
        }
    }

    fn url(&self, action: &str) -> String {
        format!("{}/api/approvals/{}/{action}", self.base, self.token)
    }
}

/// The hash a link's token is kept as.
pub fn token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What a test call asks about (`testApprovalHook`, `herald hook test`): a made-up build, or
/// task, of a made-up repository of `owner`, marked `"test": true`.
pub fn sample_request(point: ApprovalPoint, owner: &str) -> Json {
    let repository = json!({ "id": "0", "owner": owner, "name": "sample" });
    match point {
        ApprovalPoint::BuildCreate => json!({
            "repositoryId": "0", "branch": "main",
            "changeIdInRepo": "0000000000000000000000000000000000000000",
            "changeMessageTitle": "A test of the approval hook", "repository": repository,
            "test": true,
        }),
        ApprovalPoint::TaskCreate => json!({
            "buildId": "0", "name": "sample", "repository": repository,
            "build": { "id": "0", "branch": "main" }, "test": true,
        }),
    }
}

/// An organization's enabled hooks as read at a time.
type KeptHooks = (Instant, Arc<Vec<approval_hook::Model>>);

/// Asks approval hooks, logs their calls and decides.
pub struct Approvals {
    sender: Sender,
    vault: Vault,
    pool: sea_orm::DatabaseConnection,
    writes: Writes,
    /// Each organization's enabled hooks, and when they were read.
    hooks: Mutex<HashMap<i64, KeptHooks>>,
    in_flight: Mutex<HashMap<i64, Arc<Semaphore>>>,
    /// `HERALD_PUBLIC_URL`, the base of held builds' one-time links.
    public_url: Option<String>,
}

impl Approvals {
    pub fn new(
        sender: Sender,
        vault: Vault,
        pool: sea_orm::DatabaseConnection,
        writes: Writes,
        public_url: Option<String>,
    ) -> Self {
        Self {
            sender,
            vault,
            pool,
            writes,
            hooks: Mutex::default(),
            in_flight: Mutex::default(),
            public_url,
        }
    }

    /// Ties the calls that held a build to it once it is recorded, so that their one-time
    /// links decide it.
    pub async fn held(&self, calls: &[i64], build_id: i64) -> Result<()> {
        if calls.is_empty() {
            return Ok(());
        }
        let tx = self.writes.begin().await?;
        approvals::attach_build(&*tx, calls, build_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets what this process knows of an organization's hooks (they just changed).
    pub fn forget(&self, org_id: i64) {
        self.hooks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&org_id);
    }

    /// The organization's enabled hooks asked at `point`: none, for nearly every organization,
    /// so that a change without hooks costs no read most of the time.
    pub async fn hooks_at(
        &self,
        org_id: i64,
        point: ApprovalPoint,
    ) -> Result<Vec<approval_hook::Model>> {
        let kept = self
            .hooks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&org_id)
            .filter(|(at, _)| at.elapsed() < HOOKS_KEPT)
            .map(|(_, hooks)| hooks.clone());
        let hooks = match kept {
            Some(hooks) => hooks,
            None => {
                let read: Vec<_> = approvals::list(&self.pool, org_id)
                    .await?
                    .into_iter()
                    .filter(|hook| hook.enabled)
                    .collect();
                let read = Arc::new(read);
                self.hooks
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(org_id, (Instant::now(), read.clone()));
                read
            }
        };
        let mut at = Vec::new();
        for hook in hooks.iter() {
            if approvals::points(hook)?.contains(&point) {
                at.push(hook.clone());
            }
        }
        Ok(at)
    }

    /// Asks `hooks` (of the question's organization) at once, logs every call, and decides.
    pub async fn ask(
        &self,
        hooks: &[approval_hook::Model],
        question: &Question<'_>,
    ) -> Result<Verdict> {
        if hooks.is_empty() {
            return Ok(Verdict::Approve { work_id: None });
        }
        let calls = hooks.iter().map(|hook| self.call(hook, question, true));
        let calls = futures_util::future::join_all(calls).await;
        let logged = self.log(calls).await?;
        Ok(decide(hooks, &logged))
    }

    /// Calls one hook with a sample question and logs the call (`testApprovalHook`); the
    /// sample carries no one-time link, since it holds no build.
    pub async fn test(
        &self,
        hook: &approval_hook::Model,
        question: &Question<'_>,
    ) -> Result<approval_call::Model> {
        let call = self.call(hook, question, false).await;
        self.log(vec![call])
            .await?
            .pop()
            .ok_or_else(|| Error::internal("a logged call did not come back"))
    }

    async fn log(&self, calls: Vec<NewCall>) -> Result<Vec<approval_call::Model>> {
        let tx = self.writes.begin().await?;
        let rows = approvals::insert_calls(&*tx, calls).await?;
        tx.commit().await?;
        Ok(rows)
    }

    fn semaphore(&self, org_id: i64) -> Arc<Semaphore> {
        self.in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(org_id)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_ORG)))
            .clone()
    }

    /// One call: sent within the hook's timeout (a turn among the organization's calls
    /// included), read, and decided on its own.
    async fn call(
        &self,
        hook: &approval_hook::Model,
        question: &Question<'_>,
        with_link: bool,
    ) -> NewCall {
        let started = Instant::now();
        // A held build's one-time link; a test call holds no build, so it carries none.
        let decide = (with_link && question.point == ApprovalPoint::BuildCreate)
            .then(|| Decide::new(self.public_url.as_deref()));
        let body = question.body(decide.as_ref());
        let body = body.as_str();
        let uid = uuid::Uuid::now_v7().to_string();
        let timeout = Duration::from_millis(hook.timeout_ms.max(1) as u64);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut call = NewCall {
            uid: uid.clone(),
            org_id: hook.org_id,
            hook_id: hook.id,
            point: question.point,
            timestamp: crate::now_ms(),
            // The log keeps the request without the link's token: only its hash is kept.
            request: match &decide {
                Some(decide) => question.body(Some(&Decide {
                    token: "********".into(),
                    base: decide.base.clone(),
                })),
                None => body.to_owned(),
            },
            status: None,
            response: String::new(),
            duration_ms: 0,
            decision: ApprovalDecision::Rejected,
            reason: None,
            error: None,
            work_id: None,
            decide_token: decide.as_ref().map(|decide| token_hash(&decide.token)),
        };
        let answered = async {
            let semaphore = self.semaphore(hook.org_id);
            let Ok(_turn) = semaphore.acquire_owned().await else {
                return Err("the organization's approval calls were stopped".to_owned());
            };
            let (destination, signing) = self.target(hook).await.map_err(|err| {
                tracing::error!(hook = hook.id, error = %err, "an approval hook's URL or secret cannot be read");
                "the hook's stored URL or secret cannot be read".to_owned()
            })?;
            let answer = self
                .sender
                .send(Outgoing {
                    to: &destination,
                    event: "approval",
                    delivery_id: &uid,
                    event_timestamp: call.timestamp,
                    signing: &signing,
                    work_id: None,
                    sequence: None,
                    body: body.to_owned(),
                })
                .await;
            Ok(answer)
        };
        match tokio::time::timeout_at(deadline, answered).await {
            Err(_) => {
                call.error = Some(format!(
                    "the hook did not answer within {} ms",
                    hook.timeout_ms
                ));
            }
            Ok(Err(error)) => call.error = Some(error),
            Ok(Ok(answer)) => {
                call.status = answer.status.map(i32::from);
                match answer.error {
                    Some(error) => call.error = Some(error),
                    None => match read_answer(answer.status, &answer.body) {
                        Ok(read) => {
                            call.decision = read.decision();
                            call.work_id = read.work_id;
                            call.reason = read.reason;
                        }
                        Err(error) => call.error = Some(error),
                    },
                }
                call.response = answer.body;
            }
        }
        if call.error.is_some() {
            call.decision = match hook.when_unavailable {
                WhenUnavailable::Reject => ApprovalDecision::Rejected,
                WhenUnavailable::Approve => ApprovalDecision::Approved,
                WhenUnavailable::Hold => ApprovalDecision::Held,
            };
        }
        call.duration_ms = started.elapsed().as_millis() as i64;
        call
    }

    async fn target(&self, hook: &approval_hook::Model) -> Result<(Destination, Signing)> {
        let fields = approvals::fields_of(hook, &self.vault)?;
        let (current, replaced) = match &fields.secret_name {
            Some(name) => {
                let secret = store::secrets::find(&self.pool, hook.org_id, name)
                    .await?
                    .ok_or_else(|| Error::internal(format!("the named secret {name:?} is gone")))?;
                let (current, replaced) =
                    store::secrets::keys(&secret, &self.vault)?.signing_at(crate::now_ms());
                (Some(current), replaced)
            }
            None => (fields.secret, None),
        };
        Ok((
            Destination::new(&fields.url, false),
            Signing::new(
                fields.signature_style,
                current.as_deref(),
                replaced.as_deref(),
                &[],
            ),
        ))
    }
}

/// The verdict of logged calls, one per hook in `hooks`' order: any rejection wins, then any
/// hold; the work id is the first an approving or holding hook gave.
fn decide(hooks: &[approval_hook::Model], calls: &[approval_call::Model]) -> Verdict {
    let work_id = calls.iter().find_map(|call| call.work_id.clone());
    if let Some(call) = calls
        .iter()
        .find(|call| call.decision == ApprovalDecision::Rejected)
    {
        let url = hooks
            .iter()
            .find(|hook| hook.id == call.hook_id)
            .and_then(|hook| approvals::masked_url(hook).ok())
            .unwrap_or_default();
        let reason = match (&call.error, &call.reason) {
            (Some(error), _) => format!(
                "the approval hook at {url} gave no valid answer ({error}), and it rejects when unavailable"
            ),
            (None, Some(reason)) if !reason.trim().is_empty() => format!(
                "the approval hook at {url} rejected it: {}",
                reason.trim().trim_end_matches('.')
            ),
            (None, _) => format!("the approval hook at {url} rejected it"),
        };
        return Verdict::Reject { reason };
    }
    let held: Vec<i64> = calls
        .iter()
        .filter(|call| call.decision == ApprovalDecision::Held && call.decide_token.is_some())
        .map(|call| call.id)
        .collect();
    if calls
        .iter()
        .any(|call| call.decision == ApprovalDecision::Held)
    {
        return Verdict::Hold {
            work_id,
            calls: held,
        };
    }
    Verdict::Approve { work_id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decide_as_documented() {
        let read = |body: &str| read_answer(Some(200), body);
        assert_eq!(
            read(r#"{"approved": true, "work_id": "w-1"}"#)
                .unwrap()
                .decision(),
            ApprovalDecision::Approved
        );
        assert_eq!(
            read(r#"{"approved": true, "hold": true}"#)
                .unwrap()
                .decision(),
            ApprovalDecision::Held
        );
        assert_eq!(
            read(r#"{"hold": true}"#).unwrap().decision(),
            ApprovalDecision::Held
        );
        assert_eq!(
            read(r#"{"approved": false, "reason": "no"}"#)
                .unwrap()
                .decision(),
            ApprovalDecision::Rejected
        );
        assert_eq!(
            read(r#"{"approved": false, "hold": false}"#)
                .unwrap()
                .decision(),
            ApprovalDecision::Rejected
        );
        for garbage in [
            "",
            "[]",
            "{}",
            r#"{"approved": "yes"}"#,
            r#"{"approved": true, "work_id": 7}"#,
            "<html>",
        ] {
            assert!(read(garbage).is_err(), "{garbage:?} was read as an answer");
        }
        assert!(read_answer(Some(500), r#"{"approved": true}"#).is_err());
        assert!(read_answer(None, "").is_err());
        let long = format!(r#"{{"approved": true, "work_id": "{}"}}"#, "x".repeat(256));
        assert!(read(&long).is_err());
    }
}
