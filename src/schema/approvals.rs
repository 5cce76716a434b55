//! Approval hooks and their call log (ADMIN), as `OwnerInfo.approvalHooks` and
//! `OwnerInfo.approvalCalls` list them.

use async_graphql::{Context, ID, Object};

use crate::domain::{
    ApprovalDecision, ApprovalPoint, SignatureStyle, WhenUnavailable, mask_secret,
};
use crate::secrets::Vault;
use crate::store::approvals;
use crate::store::entities::{approval_call, approval_hook};
use crate::{Error, Result};

/// An organization's service asked before a build or task is recorded. Its secret is never
/// shown, only its mask; URL credentials are masked.
pub struct ApprovalHook(pub approval_hook::Model);

#[Object]
impl ApprovalHook {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    /// The URL, with any credentials replaced by `***`.
    async fn url(&self) -> Result<String> {
        approvals::masked_url(&self.0)
    }

    /// The secret's mask; null when the hook has no secret of its own.
    async fn masked_secret_token(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        let Some(sealed) = &self.0.secret else {
            return Ok(None);
        };
        let vault = ctx
            .data::<Vault>()
            .map_err(|_| Error::internal("the request has no vault"))?;
        Ok(Some(mask_secret(&vault.open(sealed)?)))
    }

    /// The organization's named secret that signs the calls, instead of the hook's own.
    async fn secret_name(&self) -> Option<&str> {
        self.0.secret_name.as_deref()
    }

    /// How the calls are signed, as deliveries are.
    async fn signature_style(&self) -> SignatureStyle {
        self.0.signature_style
    }

    /// The points the hook is asked at.
    async fn on(&self) -> Result<Vec<ApprovalPoint>> {
        approvals::points(&self.0)
    }

    /// How long a call is waited for (ms).
    async fn timeout_ms(&self) -> i64 {
        self.0.timeout_ms
    }

    /// What no valid answer within the timeout decides.
    async fn when_unavailable(&self) -> WhenUnavailable {
        self.0.when_unavailable
    }

    async fn enabled(&self) -> bool {
        self.0.enabled
    }
}

/// One call of an approval hook: what was asked, what came back, what it decided.
pub struct ApprovalCall(pub approval_call::Model);

#[Object]
impl ApprovalCall {
    /// The call's id, sent as `X-Cirrus-Delivery`.
    async fn id(&self) -> ID {
        ID(self.0.uid.clone())
    }

    async fn hook_id(&self) -> ID {
        ID(self.0.hook_id.to_string())
    }

    async fn point(&self) -> ApprovalPoint {
        self.0.point
    }

    /// When the call was made (ms since the epoch).
    async fn timestamp(&self) -> i64 {
        self.0.timestamp
    }

    /// The exact body sent.
    async fn request(&self) -> &str {
        &self.0.request
    }

    /// The answer's HTTP status; null when none came.
    async fn status(&self) -> Option<i32> {
        self.0.status
    }

    /// The answer's body (at most 64 KiB).
    async fn response(&self) -> &str {
        &self.0.response
    }

    /// How long the call took (ms).
    async fn duration(&self) -> i64 {
        self.0.duration_ms
    }

    async fn decision(&self) -> ApprovalDecision {
        self.0.decision
    }

    /// The reason the hook gave.
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }

    /// Why no valid answer came, in one sentence; null for a valid answer.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }

    /// The work id the answer gave.
    async fn work_id(&self) -> Option<&str> {
        self.0.work_id.as_deref()
    }
}
