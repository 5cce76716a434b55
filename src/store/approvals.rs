//! Approval hooks and the log of their calls.

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::Page;
use super::entities::{approval_call, approval_hook};
use crate::domain::{
    ApprovalDecision, ApprovalPoint, EndpointUrl, SignatureStyle, WhenUnavailable,
};
use crate::secrets::Vault;
use crate::{Error, Result};

/// The approval hooks one organization may have.
pub const MAX_HOOKS: usize = 10;

/// An approval hook's settings, checked and complete.
#[derive(Clone)]
pub struct HookFields {
    pub url: EndpointUrl,
    pub secret: Option<String>,
    pub secret_name: Option<String>,
    pub signature_style: SignatureStyle,
    pub points: Vec<ApprovalPoint>,
    pub timeout_ms: i64,
    pub when_unavailable: WhenUnavailable,
    pub enabled: bool,
}

impl HookFields {
    fn apply(self, row: &mut approval_hook::ActiveModel, now: i64, vault: &Vault) -> Result<()> {
        let HookFields {
            url,
            secret,
            secret_name,
            signature_style,
            points,
            timeout_ms,
            when_unavailable,
            enabled,
        } = self;
        let (stored, credentials) = super::urls::to_stored(&url, vault)?;
        row.url = Set(stored);
        row.credentials = Set(credentials);
        row.secret = Set(secret.map(|secret| vault.seal(&secret)).transpose()?);
        row.secret_name = Set(secret_name);
        row.signature_style = Set(signature_style);
        row.points = Set(serde_json::to_string(&points).map_err(Error::internal)?);
        row.timeout_ms = Set(timeout_ms);
        row.when_unavailable = Set(when_unavailable);
        row.enabled = Set(enabled);
        row.updated_at = Set(now);
        Ok(())
    }
}

/// Reads a stored hook back into its fields, secrets opened.
pub fn fields_of(row: &approval_hook::Model, vault: &Vault) -> Result<HookFields> {
    let url = super::urls::opened(&row.url, row.credentials.as_deref(), vault)?;
    Ok(HookFields {
        url,
        secret: row.secret.as_deref().map(|s| vault.open(s)).transpose()?,
        secret_name: row.secret_name.clone(),
        signature_style: row.signature_style,
        points: points(row)?,
        timeout_ms: row.timeout_ms,
        when_unavailable: row.when_unavailable,
        enabled: row.enabled,
    })
}

/// The points a hook is asked at.
pub fn points(row: &approval_hook::Model) -> Result<Vec<ApprovalPoint>> {
    serde_json::from_str(&row.points).map_err(Error::internal)
}

/// The hook's URL as it may be shown: credentials as `***:***`.
pub fn masked_url(row: &approval_hook::Model) -> Result<String> {
    super::urls::masked(&row.url, row.credentials.is_some())
}

/// Adds a hook to an organization.
pub async fn create(
    conn: &impl ConnectionTrait,
    org_id: i64,
    fields: HookFields,
    vault: &Vault,
) -> Result<approval_hook::Model> {
    if list(conn, org_id).await?.len() >= MAX_HOOKS {
        return Err(Error::Invalid(format!(
            "An organization may have at most {MAX_HOOKS} approval hooks."
        )));
    }
    if let Some(name) = &fields.secret_name {
        super::orgs::lock_organization(conn, org_id).await?;
        super::secrets::require(conn, org_id, name).await?;
    }
    let now = crate::now_ms();
    let mut row = approval_hook::ActiveModel {
        org_id: Set(org_id),
        created_at: Set(now),
        ..Default::default()
    };
    fields.apply(&mut row, now, vault)?;
    Ok(approval_hook::Entity::insert(row)
        .exec_with_returning(conn)
        .await?)
}

/// Replaces a hook's settings.
pub async fn update(
    conn: &impl ConnectionTrait,
    current: approval_hook::Model,
    fields: HookFields,
    vault: &Vault,
) -> Result<approval_hook::Model> {
    if let Some(name) = &fields.secret_name {
        super::orgs::lock_organization(conn, current.org_id).await?;
        super::secrets::require(conn, current.org_id, name).await?;
    }
    let mut row: approval_hook::ActiveModel = current.into();
    fields.apply(&mut row, crate::now_ms(), vault)?;
    Ok(row.update(conn).await?)
}

/// The organization's hook with this id.
pub async fn find(
    conn: &impl ConnectionTrait,
    org_id: i64,
    id: i64,
) -> Result<approval_hook::Model> {
    approval_hook::Entity::find_by_id(id)
        .filter(approval_hook::Column::OrgId.eq(org_id))
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found("approval hook", id))
}

/// The organization's hooks, oldest first.
pub async fn list(conn: &impl ConnectionTrait, org_id: i64) -> Result<Vec<approval_hook::Model>> {
    Ok(approval_hook::Entity::find()
        .filter(approval_hook::Column::OrgId.eq(org_id))
        .order_by_asc(approval_hook::Column::Id)
        .all(conn)
        .await?)
}

/// Deletes a hook; its calls stay in the log.
pub async fn delete(conn: &impl ConnectionTrait, row: &approval_hook::Model) -> Result<()> {
    approval_hook::Entity::delete_by_id(row.id)
        .exec(conn)
        .await?;
    Ok(())
}

/// A call of a hook, ready to be logged.
pub struct NewCall {
    pub uid: String,
    pub org_id: i64,
    pub hook_id: i64,
    pub point: ApprovalPoint,
    pub timestamp: i64,
    pub request: String,
    pub status: Option<i32>,
    pub response: String,
    pub duration_ms: i64,
    pub decision: ApprovalDecision,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub work_id: Option<String>,
    /// The SHA-256 (hex) of the one-time token the request carried.
    pub decide_token: Option<String>,
}

/// Logs calls, in one statement; their rows in the order given.
pub async fn insert_calls(
    conn: &impl ConnectionTrait,
    calls: Vec<NewCall>,
) -> Result<Vec<approval_call::Model>> {
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    let rows = calls.into_iter().map(|call| approval_call::ActiveModel {
        uid: Set(call.uid),
        org_id: Set(call.org_id),
        hook_id: Set(call.hook_id),
        point: Set(call.point),
        timestamp: Set(call.timestamp),
        request: Set(call.request),
        status: Set(call.status),
        response: Set(call.response),
        duration_ms: Set(call.duration_ms),
        decision: Set(call.decision),
        reason: Set(call.reason),
        error: Set(call.error),
        work_id: Set(call.work_id),
        decide_token: Set(call.decide_token),
        build_id: Set(None),
        decided_at: Set(None),
        ..Default::default()
    });
    let mut inserted = approval_call::Entity::insert_many(rows)
        .exec_with_returning(conn)
        .await?;
    inserted.sort_by_key(|row| row.id);
    Ok(inserted)
}

/// The organization's calls, newest first, of one hook or of all.
pub async fn calls(
    conn: &impl ConnectionTrait,
    org_id: i64,
    hook_id: Option<i64>,
    page: Page,
) -> Result<Vec<approval_call::Model>> {
    let mut query = approval_call::Entity::find().filter(approval_call::Column::OrgId.eq(org_id));
    if let Some(hook_id) = hook_id {
        query = query.filter(approval_call::Column::HookId.eq(hook_id));
    }
    if let Some(after) = page.after {
        query = query.filter(approval_call::Column::Id.lt(after));
    }
    Ok(query
        .order_by_desc(approval_call::Column::Id)
        .limit(page.limit + 1)
        .all(conn)
        .await?)
}

/// Seals every hook's secret and URL credentials stored in clear (the first start with an
/// encryption key).
pub async fn seal_all(conn: &impl ConnectionTrait, vault: &Vault) -> Result<()> {
    for row in approval_hook::Entity::find().all(conn).await? {
        let fields = fields_of(&row, vault)?;
        let mut active: approval_hook::ActiveModel = row.clone().into();
        fields.apply(&mut active, row.updated_at, vault)?;
        active.update(conn).await?;
    }
    Ok(())
}

/// How long a held build's one-time link stays usable.
pub const LINK_VALID_MS: i64 = 7 * 24 * 3600 * 1000;

/// Ties the calls that held a build to it, so that their one-time links decide it.
pub async fn attach_build(
    conn: &impl ConnectionTrait,
    call_ids: &[i64],
    build_id: i64,
) -> Result<()> {
    if call_ids.is_empty() {
        return Ok(());
    }
    approval_call::Entity::update_many()
        .col_expr(approval_call::Column::BuildId, build_id.into())
        .filter(approval_call::Column::Id.is_in(call_ids.iter().copied()))
        .exec(conn)
        .await?;
    Ok(())
}

/// The call whose one-time link's token hashes to `token_hash`, when the link is live: it held
/// a build, was not used, and is not older than [`LINK_VALID_MS`]. Any other token finds
/// nothing.
pub async fn live_link(
    conn: &impl ConnectionTrait,
    token_hash: &str,
    now: i64,
) -> Result<Option<approval_call::Model>> {
    let call = approval_call::Entity::find()
        .filter(approval_call::Column::DecideToken.eq(token_hash))
        .one(conn)
        .await?;
    Ok(call.filter(|call| {
        call.build_id.is_some()
            && call.decided_at.is_none()
            && call.timestamp + LINK_VALID_MS >= now
    }))
}

/// Marks a call's one-time link used.
pub async fn spend_link(conn: &impl ConnectionTrait, call_id: i64, now: i64) -> Result<()> {
    approval_call::Entity::update_many()
        .col_expr(approval_call::Column::DecidedAt, now.into())
        .filter(approval_call::Column::Id.eq(call_id))
        .filter(approval_call::Column::DecidedAt.is_null())
        .exec(conn)
        .await?;
    Ok(())
}
