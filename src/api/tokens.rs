//! Token revocation (ADMIN).

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use crate::domain::Permission;
use crate::schema::auth::{TokenKeys, require, revocation_time};
use crate::store::{self, Writes, parse_id};
use crate::{Error, Result};

#[derive(InputObject)]
pub struct RevokeTokensInput {
    /// The organization whose tokens are refused.
    pub owner_uid: ID,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct RevokeTokensPayload {
    /// Tokens issued before this time (ms since the epoch, a whole second) are refused; tokens
    /// issued from it on are accepted.
    pub revoked_before: i64,
    pub client_mutation_id: Option<String>,
}

#[derive(Default)]
pub struct TokenMutation;

#[Object]
impl TokenMutation {
    /// Refuses every token of the organization issued until now, the one making this request
    /// included (ADMIN). Issue new tokens afterwards (`herald token issue`).
    async fn revoke_tokens(
        &self,
        ctx: &Context<'_>,
        input: RevokeTokensInput,
    ) -> Result<RevokeTokensPayload> {
        let viewer = require(ctx, Permission::Admin)?;
        let writes = super::handle::<Writes>(ctx)?;
        let keys = super::handle::<TokenKeys>(ctx)?;
        let not_found = || Error::not_found("organization", input.owner_uid.as_str());
        if parse_id("organization", &input.owner_uid)? != viewer.org_id {
            return Err(not_found());
        }
        let tx = writes.begin().await?;
        let before = revocation_time(crate::now_ms());
        let before = store::orgs::revoke_tokens(&*tx, viewer.org_id, before)
            .await?
            .ok_or_else(not_found)?;
        super::audit::commit(ctx, tx, viewer.org_id, None).await?;
        keys.revoked(viewer.org_id, before);
        Ok(RevokeTokensPayload {
            revoked_before: before,
            client_mutation_id: input.client_mutation_id,
        })
    }
}
