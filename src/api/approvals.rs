//! Approval hooks (ADMIN): create, change, delete and test them; and the decisions a held
//! build waits for, `approveBuild` and `rejectBuild`.

use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};
use serde_json::json;

use super::audit;
use super::webhook_draft::given_secret;
use crate::delivery::approval::{Approvals, Question, Verdict, sample_request};
use crate::domain::endpoint::check_secret_name;
use crate::domain::{
    ApprovalPoint, BuildStatus, EndpointUrl, Permission, SignatureStyle, WhenUnavailable,
    mask_secret,
};
use crate::events::writer::ChangeRequest;
use crate::schema::approvals::{ApprovalCall, ApprovalHook};
use crate::schema::auth::require;
use crate::schema::types::Build;
use crate::secrets::Vault;
use crate::store::approvals::{HookFields, fields_of};
use crate::store::{self, Writes, parse_id};
use crate::{Error, Result};

/// A call's timeout when none is given (ms).
pub const DEFAULT_TIMEOUT_MS: i64 = 3_000;
/// The longest a call may be waited for (ms).
pub const MAX_TIMEOUT_MS: i64 = 10_000;
/// The shortest a call may be waited for (ms).
pub const MIN_TIMEOUT_MS: i64 = 100;
/// The longest reason `rejectBuild` records.
pub const MAX_REJECT_REASON: usize = 1_000;

#[derive(InputObject)]
pub struct CreateApprovalHookInput {
    pub owner_uid: ID,
    pub url: String,
    /// The signing secret; write-only.
    pub secret_token: Option<String>,
    /// The organization's named secret that signs, instead of `secretToken`.
    pub secret_name: Option<String>,
    /// How calls are signed; `CIRRUS` when absent.
    pub signature_style: Option<SignatureStyle>,
    /// The points the hook is asked at.
    pub on: Vec<ApprovalPoint>,
    /// How long a call is waited for: 100 to 10,000 ms, 3,000 when absent.
    pub timeout_ms: Option<i64>,
    /// What no valid answer decides; `REJECT` when absent.
    pub when_unavailable: Option<WhenUnavailable>,
    pub enabled: Option<bool>,
    pub client_mutation_id: Option<String>,
}

/// Changes to a hook; absent fields keep their values.
#[derive(InputObject)]
pub struct UpdateApprovalHookInput {
    pub id: ID,
    pub url: Option<String>,
    /// A new secret; the masked value keeps the stored one, empty removes it.
    pub secret_token: Option<String>,
    pub secret_name: Option<String>,
    pub signature_style: Option<SignatureStyle>,
    pub on: Option<Vec<ApprovalPoint>>,
    pub timeout_ms: Option<i64>,
    pub when_unavailable: Option<WhenUnavailable>,
    pub enabled: Option<bool>,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct ApprovalHookPayload {
    pub hook: ApprovalHook,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct DeleteApprovalHookInput {
    pub id: ID,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct DeleteApprovalHookPayload {
    pub deleted_id: ID,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct TestApprovalHookInput {
    pub id: ID,
    /// The point to ask about; the hook's first when absent.
    pub point: Option<ApprovalPoint>,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct TestApprovalHookPayload {
    /// The call, as the approval log keeps it. A test records no build.
    pub call: ApprovalCall,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct ApproveBuildInput {
    pub build_id: ID,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct RejectBuildInput {
    pub build_id: ID,
    /// Why, kept in the audit log.
    pub reason: Option<String>,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct DecidedBuildPayload {
    pub build: Build,
    pub client_mutation_id: Option<String>,
}

/// A hook's settings as a client sent them.
struct Draft {
    url: String,
    secret: Option<String>,
    secret_name: Option<String>,
    signature_style: SignatureStyle,
    points: Vec<ApprovalPoint>,
    timeout_ms: i64,
    when_unavailable: WhenUnavailable,
    enabled: bool,
}

/// Checks a draft against the hook it replaces (if any): the URL parses and may be called,
/// the points are named, the timeout is in bounds, masked values keep what is stored.
fn check(ctx: &Context<'_>, draft: Draft, current: Option<&HookFields>) -> Result<HookFields> {
    let policy = super::handle::<crate::delivery::guard::TargetPolicy>(ctx)?;
    let url = match current {
        Some(current) if current.url.masked() == draft.url.trim() => current.url.clone(),
        _ => EndpointUrl::parse(&draft.url)?,
    };
    crate::delivery::guard::check_url(&url, policy)?;
    let secret = given_secret(draft.secret, current.and_then(|c| c.secret.as_deref()))?;
    if matches!(
        draft.signature_style,
        SignatureStyle::Gitlab | SignatureStyle::Codeup
    ) && let Some(secret) = &secret
        && secret.chars().any(|c| !(' '..='~').contains(&c))
    {
        return Err(Error::Invalid(
            "A GITLAB or CODEUP approval hook sends its secret as a header, so the secret must be visible ASCII characters or spaces.".into(),
        ));
    }
    let secret_name = draft.secret_name.filter(|name| !name.trim().is_empty());
    if let Some(name) = &secret_name {
        check_secret_name(name)?;
        if secret.is_some() {
            return Err(Error::Invalid(
                "An approval hook takes a secretToken or a secretName, not both.".into(),
            ));
        }
    }
    let mut points = Vec::new();
    for point in draft.points {
        if !points.contains(&point) {
            points.push(point);
        }
    }
    if points.is_empty() {
        return Err(Error::Invalid(
            "An approval hook must be asked at one point at least (on: [BUILD_CREATE]).".into(),
        ));
    }
    if !(MIN_TIMEOUT_MS..=MAX_TIMEOUT_MS).contains(&draft.timeout_ms) {
        return Err(Error::Invalid(format!(
            "The timeout must be between {MIN_TIMEOUT_MS} and {MAX_TIMEOUT_MS} ms."
        )));
    }
    Ok(HookFields {
        url,
        secret,
        secret_name,
        signature_style: draft.signature_style,
        points,
        timeout_ms: draft.timeout_ms,
        when_unavailable: draft.when_unavailable,
        enabled: draft.enabled,
    })
}

#[derive(Default)]
pub struct ApprovalMutation;

#[Object]
impl ApprovalMutation {
    /// Adds an approval hook (ADMIN).
    async fn create_approval_hook(
        &self,
        ctx: &Context<'_>,
        input: CreateApprovalHookInput,
    ) -> Result<ApprovalHookPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let org_id = super::owner_of(viewer.org_id, &input.owner_uid)?;
        let draft = Draft {
            url: input.url,
            secret: input.secret_token,
            secret_name: input.secret_name,
            signature_style: input.signature_style.unwrap_or(SignatureStyle::Cirrus),
            points: input.on,
            timeout_ms: input.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            when_unavailable: input.when_unavailable.unwrap_or(WhenUnavailable::Reject),
            enabled: input.enabled.unwrap_or(true),
        };
        let fields = check(ctx, draft, None)?;
        let vault = super::handle::<Vault>(ctx)?;
        let tx = super::handle::<Writes>(ctx)?.begin().await?;
        store::orgs::lock_organization(&*tx, org_id).await?;
        let hook = store::approvals::create(&*tx, org_id, fields, vault).await?;
        audit::commit(ctx, tx, org_id, None).await?;
        super::handle::<Arc<Approvals>>(ctx)?.forget(org_id);
        Ok(ApprovalHookPayload {
            hook: ApprovalHook(hook),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Changes an approval hook (ADMIN); absent fields keep their values.
    async fn update_approval_hook(
        &self,
        ctx: &Context<'_>,
        input: UpdateApprovalHookInput,
    ) -> Result<ApprovalHookPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let vault = super::handle::<Vault>(ctx)?;
        let id = parse_id("approval hook", &input.id)?;
        let tx = super::handle::<Writes>(ctx)?.begin().await?;
        store::orgs::lock_organization(&*tx, viewer.org_id).await?;
        let row = store::approvals::find(&*tx, viewer.org_id, id).await?;
        let stored = fields_of(&row, vault)?;
        let names_secret = input
            .secret_name
            .as_ref()
            .is_some_and(|n| !n.trim().is_empty());
        let gives_secret = input.secret_token.as_ref().is_some_and(|s| !s.is_empty());
        let draft = Draft {
            url: input.url.unwrap_or_else(|| stored.url.masked()),
            secret: match input.secret_token {
                Some(secret) => Some(secret),
                None if names_secret => None,
                None => stored.secret.as_deref().map(mask_secret),
            },
            secret_name: match input.secret_name {
                Some(name) => Some(name),
                None if gives_secret => None,
                None => stored.secret_name.clone(),
            },
            signature_style: input.signature_style.unwrap_or(stored.signature_style),
            points: input.on.unwrap_or_else(|| stored.points.clone()),
            timeout_ms: input.timeout_ms.unwrap_or(stored.timeout_ms),
            when_unavailable: input.when_unavailable.unwrap_or(stored.when_unavailable),
            enabled: input.enabled.unwrap_or(stored.enabled),
        };
        let fields = check(ctx, draft, Some(&stored))?;
        let hook = store::approvals::update(&*tx, row, fields, vault).await?;
        audit::commit(ctx, tx, viewer.org_id, None).await?;
        super::handle::<Arc<Approvals>>(ctx)?.forget(viewer.org_id);
        Ok(ApprovalHookPayload {
            hook: ApprovalHook(hook),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Deletes an approval hook (ADMIN); its calls stay in the log.
    async fn delete_approval_hook(
        &self,
        ctx: &Context<'_>,
        input: DeleteApprovalHookInput,
    ) -> Result<DeleteApprovalHookPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let id = parse_id("approval hook", &input.id)?;
        let tx = super::handle::<Writes>(ctx)?.begin().await?;
        let row = store::approvals::find(&*tx, viewer.org_id, id).await?;
        store::approvals::delete(&*tx, &row).await?;
        audit::commit(ctx, tx, viewer.org_id, None).await?;
        super::handle::<Arc<Approvals>>(ctx)?.forget(viewer.org_id);
        Ok(DeleteApprovalHookPayload {
            deleted_id: input.id,
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Calls a hook with a sample request and logs the call, recording nothing else (ADMIN).
    async fn test_approval_hook(
        &self,
        ctx: &Context<'_>,
        input: TestApprovalHookInput,
    ) -> Result<TestApprovalHookPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let pool = super::pool(ctx)?;
        let id = parse_id("approval hook", &input.id)?;
        let hook = store::approvals::find(pool, viewer.org_id, id).await?;
        let point = match input.point {
            Some(point) => point,
            None => *store::approvals::points(&hook)?
                .first()
                .unwrap_or(&ApprovalPoint::BuildCreate),
        };
        let org = store::orgs::find(pool, viewer.org_id)
            .await?
            .ok_or_else(|| Error::not_found("organization", viewer.org_id))?;
        let actor = audit::actor(ctx);
        let question = Question {
            org_id: org.id,
            org_name: &org.name,
            point,
            actor: &actor.username,
            request: sample_request(point, &org.name),
        };
        let call = super::handle::<Arc<Approvals>>(ctx)?
            .test(&hook, &question)
            .await?;
        Ok(TestApprovalHookPayload {
            call: ApprovalCall(call),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Approves a build that `NEEDS_APPROVAL`: it moves to `TRIGGERED` (ADMIN).
    async fn approve_build(
        &self,
        ctx: &Context<'_>,
        input: ApproveBuildInput,
    ) -> Result<DecidedBuildPayload> {
        let build = decide(ctx, &input.build_id, BuildStatus::Triggered).await?;
        Ok(DecidedBuildPayload {
            build: Build(build),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Rejects a build that `NEEDS_APPROVAL`: it moves to `ABORTED` (ADMIN).
    async fn reject_build(
        &self,
        ctx: &Context<'_>,
        input: RejectBuildInput,
    ) -> Result<DecidedBuildPayload> {
        crate::domain::limits::optional_text("reason", input.reason.as_deref(), MAX_REJECT_REASON)?;
        let build = decide(ctx, &input.build_id, BuildStatus::Aborted).await?;
        Ok(DecidedBuildPayload {
            build: Build(build),
            client_mutation_id: input.client_mutation_id,
        })
    }
}

/// Moves a held build to `status` through the writer of changes, as any status change.
async fn decide(
    ctx: &Context<'_>,
    build_id: &ID,
    status: BuildStatus,
) -> Result<crate::store::entities::build::Model> {
    let viewer = require(ctx, Permission::Admin)?;
    let id = parse_id("build", build_id)?;
    // The writer applies it only to a build still waiting: of two decisions at once, one wins.
    let request = ChangeRequest::UpdateBuildStatus {
        org_id: viewer.org_id.into(),
        build_id: id.into(),
        status,
        only_from: Some(BuildStatus::NeedsApproval),
    };
    super::ci::changed_build(ctx, request).await
}

/// Asks the organization's approval hooks at `point` about the mutation being resolved,
/// whose change concerns `repository_id` (and `build`, for a task), before anything is
/// recorded. An approval or a hold gives the status to record and the work id; a rejection is
/// `FORBIDDEN`, with the hook's reason. Without hooks it reads nothing most of the time.
pub(super) async fn gate(
    ctx: &Context<'_>,
    org_id: i64,
    point: ApprovalPoint,
    repository_id: i64,
    build: Option<&crate::store::entities::build::Model>,
) -> Result<Verdict> {
    let approvals = super::handle::<Arc<Approvals>>(ctx)?;
    let hooks = approvals.hooks_at(org_id, point).await?;
    if hooks.is_empty() {
        return Ok(Verdict::Approve { work_id: None });
    }
    let pool = super::pool(ctx)?;
    let repository = store::ci::repository(pool, org_id, repository_id).await?;
    let org = store::orgs::find(pool, org_id)
        .await?
        .ok_or_else(|| Error::not_found("organization", org_id))?;
    let mut request = audit::input(ctx);
    if let Some(fields) = request.as_object_mut() {
        fields.insert(
            "repository".into(),
            json!({ "id": repository.id.to_string(), "owner": org.name, "name": repository.name }),
        );
        if let Some(build) = build {
            fields.insert(
                "build".into(),
                json!({ "id": build.id.to_string(), "branch": build.branch, "changeIdInRepo": build.change_id_in_repo }),
            );
        }
    }
    let actor = audit::actor(ctx);
    let question = Question {
        org_id,
        org_name: &org.name,
        point,
        actor: &actor.username,
        request,
    };
    match approvals.ask(&hooks, &question).await? {
        Verdict::Reject { reason } => {
            let what = match point {
                ApprovalPoint::BuildCreate => "build",
                ApprovalPoint::TaskCreate => "task",
            };
            Err(Error::Rejected(format!(
                "The {what} was not recorded: {reason}."
            )))
        }
        verdict => Ok(verdict),
    }
}
