//! Kudu's web hooks API over Herald's endpoints, for tools that subscribe by REST: a hook is an
//! endpoint (`events: [PUBLISHED]`, `publishedEvents: [<event>]`, RAW, style NONE; `build` and
//! `task` subscribe to CI events), and publishing one is `publishEvent`. The same checks, the
//! same transaction, the same audit events as the GraphQL mutations; only the door differs.

use serde_json::{Value as Json, json};

use super::webhook_draft::{Checks, Draft, check, check_endpoint_count};
use super::{MaxEndpoints, audit, publish};
use crate::delivery::guard::TargetPolicy;
use crate::domain::{DeliveryState, EventKind, PayloadFormat, Permission, SignatureStyle};
use crate::events::Outbox;
use crate::events::audit::{Actor, AuditDraft};
use crate::events::published::Publication;
use crate::schema::Viewer;
use crate::secrets::Vault;
use crate::store::endpoints::{event_kinds, fields_of, published_events};
use crate::store::entities::webhook_endpoint;
use crate::store::{self, Writes};
use crate::{Error, Result};

/// How much of the body last sent `last_context` shows.
pub const CONTEXT_BYTES: usize = 4 * 1024;

/// What the REST hooks use: the handles the GraphQL mutations use.
#[derive(Clone)]
pub struct Hooks {
    pub pool: sea_orm::DatabaseConnection,
    pub writes: Writes,
    pub outbox: Outbox,
    pub vault: Vault,
    pub policy: TargetPolicy,
    pub max_endpoints: MaxEndpoints,
    /// Writes the status change a held build's one-time link decides.
    pub writer: crate::events::Writer,
}

/// Who calls: the token's viewer, and the actor its audit events name.
pub struct Caller {
    pub viewer: Viewer,
    pub actor: Actor,
}

/// A hook as Kudu shows it.
#[derive(Debug)]
pub struct Hook {
    pub id: i64,
    /// The URL, credentials masked.
    pub url: String,
    pub event: String,
    pub last: Option<LastDelivery>,
}

/// A hook's latest delivery, as Kudu's `last_*` fields show it.
#[derive(Debug)]
pub struct LastDelivery {
    /// When it was last attempted, or queued (ms since the epoch).
    pub at: i64,
    /// `OK`, the HTTP status it was answered with, `Failed` without an answer, or `Pending`.
    pub status: String,
    /// The last attempt's failure, in one sentence.
    pub reason: Option<String>,
    /// The body sent, cut at [`CONTEXT_BYTES`] with a marker.
    pub context: String,
}

impl Hooks {
    /// Subscribes `url` to `event` (ADMIN). A URL that is a hook for the same event already
    /// gives that hook back (`false`: nothing was created); for another event, `CONFLICT`.
    pub async fn subscribe(
        &self,
        caller: &Caller,
        url: String,
        event: String,
        insecure_ssl: bool,
    ) -> Result<(Hook, bool)> {
        let org_id = caller.viewer.require(Permission::Admin)?.org_id;
        let event = event.trim().to_owned();
        let (events, published) = match event.to_ascii_lowercase().as_str() {
            "build" => (vec![EventKind::Build], Vec::new()),
            "task" => (vec![EventKind::Task], Vec::new()),
            _ => {
                crate::domain::published::check_type(&event)?;
                (vec![EventKind::Published], vec![event.clone()])
            }
        };
        let input = json!({ "url": url, "event": event, "insecure_ssl": insecure_ssl });
        let draft = Draft {
            url,
            secret: None,
            events,
            payload_query: None,
            payload_format: PayloadFormat::Raw,
            enabled: true,
            insecure_ssl,
            status_filter: Vec::new(),
            signature_style: SignatureStyle::None,
            secret_name: None,
            published_events: published,
            headers: Vec::new(),
            conditions: Vec::new(),
        };
        let checks = Checks {
            pool: &self.pool,
            vault: &self.vault,
            policy: &self.policy,
            renderer: self.outbox.renderer(),
        };
        let fields = check(&checks, draft, None).await?;
        let tx = self.writes.begin().await?;
        store::orgs::lock_organization(&*tx, org_id).await?;
        let existing = store::endpoints::list(&*tx, org_id).await?;
        for row in &existing {
            if fields_of(row, &self.vault)?.url.as_stored() != fields.url.as_stored() {
                continue;
            }
            let current = hook_event(row)?;
            if current.eq_ignore_ascii_case(&event) {
                return Ok((self.hook(row, false).await?, false));
            }
            return Err(Error::Conflict(format!(
                "The URL is already the address of a hook for the event {current:?}; delete that hook first or use another URL."
            )));
        }
        check_endpoint_count(self.max_endpoints, existing.len() + 1)?;
        let row = store::endpoints::create(&*tx, org_id, fields, &self.vault).await?;
        let draft = AuditDraft::new(org_id, caller.actor.clone(), "createWebHookEndpoint", input);
        audit::commit_draft(&self.outbox, tx, draft, None).await?;
        Ok((self.hook(&row, false).await?, true))
    }

    /// Every endpoint of the organization, as hooks, oldest first (ADMIN).
    pub async fn list(&self, caller: &Caller) -> Result<Vec<Hook>> {
        let org_id = caller.viewer.require(Permission::Admin)?.org_id;
        let mut hooks = Vec::new();
        for row in store::endpoints::list(&self.pool, org_id).await? {
            hooks.push(self.hook(&row, false).await?);
        }
        Ok(hooks)
    }

    /// One hook with its latest delivery (ADMIN); another organization's is not found.
    pub async fn get(&self, caller: &Caller, id: i64) -> Result<Hook> {
        let org_id = caller.viewer.require(Permission::Admin)?.org_id;
        let row = store::endpoints::find(&self.pool, org_id, id)
            .await
            .map_err(|_| Error::not_found("hook", id))?;
        self.hook(&row, true).await
    }

    /// Deletes a hook and its delivery log (ADMIN).
    pub async fn delete(&self, caller: &Caller, id: i64) -> Result<()> {
        let org_id = caller.viewer.require(Permission::Admin)?.org_id;
        let tx = self.writes.begin().await?;
        let row = store::endpoints::find(&*tx, org_id, id)
            .await
            .map_err(|_| Error::not_found("hook", id))?;
        store::endpoints::delete(&*tx, &row).await?;
        let draft = AuditDraft::new(
            org_id,
            caller.actor.clone(),
            "deleteWebHookEndpoint",
            json!({ "id": id.to_string() }),
        );
        audit::commit_draft(&self.outbox, tx, draft, None).await
    }

    /// Publishes `payload` as an event of type `kind` (WRITE); returns how many hooks it was
    /// queued for.
    pub async fn publish(
        &self,
        caller: &Caller,
        kind: String,
        subject: Option<String>,
        payload: Json,
    ) -> Result<usize> {
        let org_id = caller.viewer.require(Permission::Write)?.org_id;
        let input = json!({ "type": kind, "subject": subject, "payload": payload });
        let draft = AuditDraft::new(org_id, caller.actor.clone(), "publishEvent", input);
        let publication = Publication {
            org_id,
            kind,
            subject,
            payload,
        };
        let (_, deliveries) =
            publish::record(&self.writes, &self.outbox, publication, draft).await?;
        Ok(deliveries)
    }

    /// Decides a build an approval hook held, with the one-time link its call carried: it
    /// moves to `TRIGGERED` when `approve`, else to `ABORTED`. A token that is unknown, used
    /// or expired, or whose build no longer waits, finds nothing.
    pub async fn decide_by_link(
        &self,
        token: &str,
        approve: bool,
        reason: Option<String>,
        ip: Option<String>,
    ) -> Result<crate::store::entities::build::Model> {
        use crate::domain::BuildStatus;
        use crate::events::writer::{ChangeRequest, Changed};
        crate::domain::limits::optional_text("reason", reason.as_deref(), 1_000)?;
        let hash = crate::delivery::approval::token_hash(token);
        let missing = || Error::not_found("approval link", "with this token");
        // A read first: an unknown token costs no write turn.
        let call = store::approvals::live_link(&self.pool, &hash, crate::now_ms())
            .await?
            .ok_or_else(missing)?;
        let build_id = call.build_id.ok_or_else(missing)?;
        let (status, name) = match approve {
            true => (BuildStatus::Triggered, "approveBuild"),
            false => (BuildStatus::Aborted, "rejectBuild"),
        };
        let actor = Actor::from_subject(&format!("approval-hook:{}", call.hook_id), ip);
        let input = json!({ "buildId": build_id.to_string(), "reason": reason, "link": true });
        let draft = AuditDraft::new(call.org_id, actor, name, input);
        // The writer applies it only to a build still waiting: of two decisions at once, one
        // wins. The link is spent once the decision is recorded.
        let request = ChangeRequest::UpdateBuildStatus {
            org_id: call.org_id.into(),
            build_id: build_id.into(),
            status,
            only_from: Some(BuildStatus::NeedsApproval),
        };
        let build = match self.writer.submit(request, draft).await? {
            Changed::Build(build) => build,
            Changed::Task(_) => {
                return Err(Error::internal("a build's change came back as a task"));
            }
        };
        let tx = self.writes.begin().await?;
        store::approvals::spend_link(&*tx, call.id, crate::now_ms()).await?;
        tx.commit().await?;
        Ok(build)
    }

    async fn hook(&self, row: &webhook_endpoint::Model, with_last: bool) -> Result<Hook> {
        let last = match with_last {
            false => None,
            true => self.last_delivery(row.id).await?,
        };
        Ok(Hook {
            id: row.id,
            url: store::endpoints::masked_url(row)?,
            event: hook_event(row)?,
            last,
        })
    }

    async fn last_delivery(&self, endpoint_id: i64) -> Result<Option<LastDelivery>> {
        let Some(row) = store::deliveries::last_of_endpoint(&self.pool, endpoint_id).await? else {
            return Ok(None);
        };
        // The attempt the row counts: one recorded after the row was read is not its.
        let attempt = store::deliveries::attempts(&self.pool, row.id)
            .await?
            .into_iter()
            .find(|attempt| attempt.number == row.attempts);
        let status = match (row.state, row.last_status) {
            (DeliveryState::Delivered, _) => "OK".to_owned(),
            (_, Some(status)) => status.to_string(),
            (_, None) if row.attempts > 0 => "Failed".to_owned(),
            (_, None) => "Pending".to_owned(),
        };
        let mut context = row.body;
        if context.len() > CONTEXT_BYTES {
            let mut end = CONTEXT_BYTES;
            while !context.is_char_boundary(end) {
                end -= 1;
            }
            context.truncate(end);
            context.push_str("…[truncated]");
        }
        Ok(Some(LastDelivery {
            at: attempt.as_ref().map_or(row.updated_at, |a| a.timestamp),
            status,
            reason: attempt.and_then(|a| a.error),
            context,
        }))
    }
}

/// The event a hook is for: its one published type, `build` or `task`; an endpoint made in
/// GraphQL with several kinds shows them joined with commas.
pub fn hook_event(row: &webhook_endpoint::Model) -> Result<String> {
    let kinds = event_kinds(row)?;
    let published = published_events(row)?;
    if let ([EventKind::Published], [only]) = (kinds.as_slice(), published.as_slice()) {
        return Ok(only.clone());
    }
    let kinds = if kinds.is_empty() {
        vec![EventKind::Build, EventKind::Task]
    } else {
        kinds
    };
    let names: Vec<String> = kinds
        .iter()
        .map(|kind| match kind {
            EventKind::Published if !published.is_empty() => published.join(","),
            other => other.header_value().to_owned(),
        })
        .collect();
    Ok(names.join(","))
}
