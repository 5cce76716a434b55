//! What the CI engine records: repositories, builds and tasks.

use std::collections::HashMap;

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, SqlErr,
};

use super::Page;
use super::entities::{build, repository};
use crate::domain::BuildStatus;
use crate::{Error, Result};

mod tasks;

pub use tasks::*;

/// A repository as the CI engine announces it.
pub struct NewRepository {
    pub name: String,
    pub is_private: bool,
    pub default_branch: String,
}

/// Creates a repository; names are unique within an organization.
pub async fn create_repository(
    conn: &impl ConnectionTrait,
    org_id: i64,
    new: NewRepository,
) -> Result<repository::Model> {
    let NewRepository {
        name,
        is_private,
        default_branch,
    } = new;
    let name = name.trim().to_owned();
    if name.is_empty() || name.len() > 200 {
        return Err(Error::Invalid(
            "A repository name must have between 1 and 200 characters.".into(),
        ));
    }
    let row = repository::ActiveModel {
        org_id: Set(org_id),
        name: Set(name.clone()),
        is_private: Set(is_private),
        default_branch: Set(default_branch),
        created_at: Set(crate::now_ms()),
        ..Default::default()
    };
    repository::Entity::insert(row)
        .exec_with_returning(conn)
        .await
        .map_err(|err| match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => {
                Error::Conflict(format!("A repository named {name:?} already exists."))
            }
            _ => err.into(),
        })
}

/// The organization's repository with this id.
pub async fn repository(
    conn: &impl ConnectionTrait,
    org_id: i64,
    id: i64,
) -> Result<repository::Model> {
    repository::Entity::find_by_id(id)
        .filter(repository::Column::OrgId.eq(org_id))
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found("repository", id))
}

/// The organization's repositories, oldest first.
pub async fn repositories(
    conn: &impl ConnectionTrait,
    org_id: i64,
    page: Page,
) -> Result<Vec<repository::Model>> {
    let mut query = repository::Entity::find().filter(repository::Column::OrgId.eq(org_id));
    if let Some(after) = page.after {
        query = query.filter(repository::Column::Id.gt(after));
    }
    Ok(query
        .order_by_asc(repository::Column::Id)
        .limit(page.limit + 1)
        .all(conn)
        .await?)
}

/// A build as the CI engine announces it.
#[derive(Clone, Debug)]
pub struct NewBuild {
    pub branch: String,
    pub tag: Option<String>,
    pub change_id_in_repo: String,
    pub change_message_title: String,
    pub change_message: String,
    pub pull_request: Option<i64>,
    pub pull_request_draft: Option<bool>,
    pub change_timestamp: Option<i64>,
    /// Who initiated the build: the name the CI engine gave, or its token's subject.
    pub initializer: String,
    /// `CREATED`, or `NEEDS_APPROVAL` when an approval hook held it.
    pub status: BuildStatus,
    /// What an approval hook's answer gave.
    pub work_id: Option<String>,
}

/// Records a new build of a repository, in its first status (`CREATED`, or `NEEDS_APPROVAL`
/// when an approval hook held it), initiated by the user
/// `initializer_id` (whose name `new` holds).
pub async fn create_build(
    conn: &impl ConnectionTrait,
    repo: &repository::Model,
    new: NewBuild,
    initializer_id: i64,
    now: i64,
) -> Result<build::Model> {
    let NewBuild {
        branch,
        tag,
        change_id_in_repo,
        change_message_title,
        change_message,
        pull_request,
        pull_request_draft,
        change_timestamp,
        initializer,
        status,
        work_id,
    } = new;
    let row = build::ActiveModel {
        org_id: Set(repo.org_id),
        repository_id: Set(repo.id),
        branch: Set(branch),
        tag: Set(tag),
        change_id_in_repo: Set(change_id_in_repo),
        change_message_title: Set(change_message_title),
        change_message: Set(change_message),
        pull_request: Set(pull_request),
        pull_request_draft: Set(pull_request_draft),
        change_timestamp: Set(change_timestamp.unwrap_or(now)),
        created_at: Set(now),
        status: Set(status),
        work_id: Set(work_id),
        status_timestamp: Set(now),
        executing_timestamp: Set(None),
        final_status_timestamp: Set(None),
        initializer_id: Set(Some(initializer_id)),
        initializer: Set(Some(initializer)),
        ..Default::default()
    };
    Ok(build::Entity::insert(row).exec_with_returning(conn).await?)
}

/// The organization's build with this id.
pub async fn build(conn: &impl ConnectionTrait, org_id: i64, id: i64) -> Result<build::Model> {
    build::Entity::find_by_id(id)
        .filter(build::Column::OrgId.eq(org_id))
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found("build", id))
}

/// The organization's newest build, if it has one.
pub async fn newest_build(
    conn: &impl ConnectionTrait,
    org_id: i64,
) -> Result<Option<build::Model>> {
    Ok(build::Entity::find()
        .filter(build::Column::OrgId.eq(org_id))
        .order_by_desc(build::Column::Id)
        .one(conn)
        .await?)
}

/// The builds these (organization, build) pairs name, by id, locked until the transaction ends
/// (see [`tasks_of`]), for changes of their status. A pair naming another organization's build
/// finds nothing.
pub async fn builds_to_change(
    conn: &impl ConnectionTrait,
    keys: &[(i64, i64)],
) -> Result<HashMap<i64, build::Model>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    // After the tasks (see [`tasks_of`]).
    let rows =
        locked::<build::Entity>(conn, (build::Column::OrgId, build::Column::Id), keys).await?;
    Ok(rows.into_iter().map(|row| (row.id, row)).collect())
}

/// The builds these (organization, build) pairs name; a pair naming another organization's
/// build finds nothing.
pub async fn builds_of(
    conn: &impl ConnectionTrait,
    keys: &[(i64, i64)],
) -> Result<Vec<build::Model>> {
    let rows = build::Entity::find()
        .filter(build::Column::Id.is_in(keys.iter().map(|(_, id)| *id)))
        .all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter(|row| keys.contains(&(row.org_id, row.id)))
        .collect())
}

/// A repository's builds, newest first, optionally of one status.
pub async fn builds(
    conn: &impl ConnectionTrait,
    org_id: i64,
    repository_id: i64,
    status: Option<BuildStatus>,
    page: Page,
) -> Result<Vec<build::Model>> {
    let mut query = build::Entity::find()
        .filter(build::Column::OrgId.eq(org_id))
        .filter(build::Column::RepositoryId.eq(repository_id));
    if let Some(status) = status {
        query = query.filter(build::Column::Status.eq(status.as_str()));
    }
    if let Some(after) = page.after {
        query = query.filter(build::Column::Id.lt(after));
    }
    Ok(query
        .order_by_desc(build::Column::Id)
        .limit(page.limit + 1)
        .all(conn)
        .await?)
}

/// Moves a build to `status`; `None` when it already had that status (nothing changes).
pub async fn set_build_status(
    conn: &impl ConnectionTrait,
    current: build::Model,
    status: BuildStatus,
    now: i64,
    decided: crate::store::branches::Decided,
) -> Result<Option<build::Model>> {
    if current.status == status {
        return Ok(None);
    }
    let executing = current.executing_timestamp;
    let mut row: build::ActiveModel = current.into();
    row.status = Set(status);
    row.transition = Set(decided.transition);
    row.previous_build_id = Set(decided.previous_id);
    row.status_timestamp = Set(now);
    if status == BuildStatus::Executing && executing.is_none() {
        row.executing_timestamp = Set(Some(now));
    }
    row.final_status_timestamp = Set(status.is_final().then_some(now));
    Ok(Some(row.update(conn).await?))
}

/// The rows these (organization, id) pairs name, locked until the transaction ends (on
/// PostgreSQL), in the order of their ids: two batches locking some of the same rows take them
/// in one order and never deadlock; the later one waits for the earlier one's commit. A pair
/// naming another organization's row neither finds nor locks it.
pub(super) async fn locked<E: EntityTrait>(
    conn: &impl ConnectionTrait,
    (org, id): (E::Column, E::Column),
    keys: &[(i64, i64)],
) -> Result<Vec<E::Model>> {
    let named = keys.iter().fold(Condition::any(), |any, (org_id, row_id)| {
        any.add(Condition::all().add(org.eq(*org_id)).add(id.eq(*row_id)))
    });
    Ok(E::find()
        .filter(named)
        .order_by_asc(id)
        .lock_exclusive()
        .all(conn)
        .await?)
}

/// Reads a stored JSON list (labels or notifications).
pub fn labels_or_notes<T: serde::de::DeserializeOwned>(json: &str) -> Result<Vec<T>> {
    serde_json::from_str(json).map_err(Error::internal)
}
