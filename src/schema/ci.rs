//! Queries of the CI engine's records: organizations, repositories, builds, tasks.

use async_graphql::{Context, ID, Object};

use super::auth::require;
use super::types::{Build, OwnerInfo, Repository, Task};
use super::{db, rows};
use crate::domain::Permission;
use crate::store::{self, parse_id};
use crate::{Error, Result};

#[derive(Default)]
pub struct CiQuery;

#[Object]
impl CiQuery {
    /// The organization of the token asking.
    async fn viewer(&self, ctx: &Context<'_>) -> Result<OwnerInfo> {
        let viewer = require(ctx, Permission::Read)?;
        owner(ctx, viewer.org_id, &viewer.org_id.to_string()).await
    }

    /// An organization by uid; only the token's own exists for it.
    async fn owner_info(&self, ctx: &Context<'_>, uid: ID) -> Result<Option<OwnerInfo>> {
        let viewer = require(ctx, Permission::Read)?;
        if parse_id("organization", &uid)? != viewer.org_id {
            return Err(Error::not_found("organization", uid.as_str()));
        }
        owner(ctx, viewer.org_id, &uid).await.map(Some)
    }

    /// An organization by name; only the token's own exists for it.
    async fn owner_info_by_name(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> Result<Option<OwnerInfo>> {
        let viewer = require(ctx, Permission::Read)?;
        // No name holds a NUL, and PostgreSQL refuses one in a parameter: the error would end
        // the transaction of the change whose payload a stored selection renders.
        if name.contains('\0') {
            return Err(Error::not_found("organization", format!("{name:?}")));
        }
        let org = store::orgs::find_by_name(&db(ctx)?.conn(), &name).await?;
        match org {
            Some(org) if org.id == viewer.org_id => Ok(Some(OwnerInfo(org))),
            _ => Err(Error::not_found("organization", format!("{name:?}"))),
        }
    }

    async fn repository(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Repository>> {
        let viewer = require(ctx, Permission::Read)?;
        let id = parse_id("repository", &id)?;
        Ok(Some(Repository(
            rows::repository(ctx, viewer.org_id, id).await?,
        )))
    }

    async fn build(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Build>> {
        let viewer = require(ctx, Permission::Read)?;
        let id = parse_id("build", &id)?;
        Ok(Some(Build(rows::build(ctx, viewer.org_id, id).await?)))
    }

    /// A task; null for a null id, so one payload selection serves build and task events.
    async fn task(&self, ctx: &Context<'_>, id: Option<ID>) -> Result<Option<Task>> {
        let viewer = require(ctx, Permission::Read)?;
        let Some(id) = id else { return Ok(None) };
        let id = parse_id("task", &id)?;
        Ok(Some(Task(rows::task(ctx, viewer.org_id, id).await?)))
    }
}

async fn owner(ctx: &Context<'_>, org_id: i64, uid: &str) -> Result<OwnerInfo> {
    rows::organization(ctx, org_id)
        .await?
        .map(OwnerInfo)
        .ok_or_else(|| Error::not_found("organization", uid))
}
