//! What the CI engine records: repositories, builds and tasks.

use std::collections::HashMap;

use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend,
    EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect, SqlErr, Statement,
};

use super::entities::{build, repository, task};
use super::{Page, sql};
use crate::domain::{BuildStatus, Notification, TaskStatus, limits};
use crate::{Error, Result};

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
}

/// Records a new build of a repository, in status `CREATED`, initiated by the user
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
        status: Set(BuildStatus::Created),
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
) -> Result<Option<build::Model>> {
    if current.status == status {
        return Ok(None);
    }
    let executing = current.executing_timestamp;
    let mut row: build::ActiveModel = current.into();
    row.status = Set(status);
    row.status_timestamp = Set(now);
    if status == BuildStatus::Executing && executing.is_none() {
        row.executing_timestamp = Set(Some(now));
    }
    row.final_status_timestamp = Set(status.is_final().then_some(now));
    Ok(Some(row.update(conn).await?))
}

/// How many tasks each of these builds has (builds with none are left out).
pub async fn task_counts(
    conn: &impl ConnectionTrait,
    builds: &[i64],
) -> Result<HashMap<i64, usize>> {
    if builds.is_empty() {
        return Ok(HashMap::new());
    }
    #[derive(FromQueryResult)]
    struct Count {
        build_id: i64,
        tasks: i64,
    }
    Ok(task::Entity::find()
        .select_only()
        .column(task::Column::BuildId)
        .column_as(task::Column::Id.count(), "tasks")
        .filter(task::Column::BuildId.is_in(builds.iter().copied()))
        .group_by(task::Column::BuildId)
        .into_model::<Count>()
        .all(conn)
        .await?
        .into_iter()
        .map(|count| (count.build_id, count.tasks.max(0) as usize))
        .collect())
}

/// A task as the CI engine announces it.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub name: String,
    pub name_alias: Option<String>,
    pub labels: Vec<String>,
    pub instance_type: Option<String>,
    pub local_group_id: Option<i64>,
}

/// A new task of a build that has `build_tasks` tasks, in status `CREATED`, checked and ready
/// for [`insert_tasks`].
pub fn new_task_row(
    build: &build::Model,
    build_tasks: usize,
    new: NewTask,
    now: i64,
) -> Result<task::ActiveModel> {
    let NewTask {
        name,
        name_alias,
        labels,
        instance_type,
        local_group_id,
    } = new;
    if name.trim().is_empty() {
        return Err(Error::Invalid("A task needs a name.".into()));
    }
    if build_tasks >= limits::MAX_TASKS_PER_BUILD {
        return Err(Error::Invalid(format!(
            "Build {} has {build_tasks} tasks already; a build has at most {}.",
            build.id,
            limits::MAX_TASKS_PER_BUILD
        )));
    }
    let row = task::ActiveModel {
        org_id: Set(build.org_id),
        repository_id: Set(build.repository_id),
        build_id: Set(build.id),
        name: Set(name),
        name_alias: Set(name_alias),
        local_group_id: Set(local_group_id.unwrap_or(0)),
        status: Set(TaskStatus::Created),
        status_timestamp: Set(now),
        creation_timestamp: Set(now),
        executing_timestamp: Set(None),
        final_status_timestamp: Set(None),
        labels: Set(serde_json::to_string(&labels).map_err(Error::internal)?),
        automatic_re_run: Set(false),
        automatically_re_runnable: Set(false),
        manual_rerun_count: Set(0),
        instance_type: Set(instance_type.unwrap_or_else(|| "container".into())),
        notifications: Set("[]".into()),
        ..Default::default()
    };
    Ok(row)
}

/// Records new tasks in one statement; the rows as written.
pub async fn insert_tasks(
    conn: &impl ConnectionTrait,
    rows: Vec<task::ActiveModel>,
) -> Result<Vec<task::Model>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    Ok(task::Entity::insert_many(rows)
        .exec_with_returning(conn)
        .await?)
}

/// The organization's task with this id.
pub async fn task(conn: &impl ConnectionTrait, org_id: i64, id: i64) -> Result<task::Model> {
    task::Entity::find_by_id(id)
        .filter(task::Column::OrgId.eq(org_id))
        .one(conn)
        .await?
        .ok_or_else(|| Error::not_found("task", id))
}

/// A build's tasks, in creation order.
pub async fn tasks_of_build(
    conn: &impl ConnectionTrait,
    org_id: i64,
    build_id: i64,
) -> Result<Vec<task::Model>> {
    Ok(task::Entity::find()
        .filter(task::Column::OrgId.eq(org_id))
        .filter(task::Column::BuildId.eq(build_id))
        .order_by_asc(task::Column::Id)
        .all(conn)
        .await?)
}

/// The tasks of the builds these (organization, build) pairs name, in creation order; a pair
/// naming another organization's build finds nothing.
pub async fn tasks_of_builds(
    conn: &impl ConnectionTrait,
    keys: &[(i64, i64)],
) -> Result<Vec<task::Model>> {
    let rows = task::Entity::find()
        .filter(task::Column::BuildId.is_in(keys.iter().map(|(_, id)| *id)))
        .order_by_asc(task::Column::Id)
        .all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter(|row| keys.contains(&(row.org_id, row.build_id)))
        .collect())
}

/// The tasks these (organization, task) pairs name, by id, locked until the transaction ends
/// (on PostgreSQL; SQLite's writer holds the database's one write lock): a change of a task
/// reads it as the last change committed left it, though another process changes it at the
/// same moment. A pair naming another organization's task finds nothing.
pub async fn tasks_of(
    conn: &impl ConnectionTrait,
    keys: &[(i64, i64)],
) -> Result<HashMap<i64, task::Model>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = locked::<task::Entity>(conn, (task::Column::OrgId, task::Column::Id), keys).await?;
    Ok(rows.into_iter().map(|row| (row.id, row)).collect())
}

/// The rows these (organization, id) pairs name, locked until the transaction ends (on
/// PostgreSQL), in the order of their ids: two batches locking some of the same rows take them
/// in one order and never deadlock; the later one waits for the earlier one's commit. A pair
/// naming another organization's row neither finds nor locks it.
async fn locked<E: EntityTrait>(
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

/// The task `current` moved to `status`, with `notifications` appended; `None` when it already
/// had that status (nothing changes, not even the notifications). [`write_task_statuses`]
/// writes it.
pub fn next_task_status(
    current: &task::Model,
    status: TaskStatus,
    notifications: Vec<Notification>,
    now: i64,
) -> Result<Option<task::Model>> {
    if current.status == status {
        return Ok(None);
    }
    let mut all = labels_or_notes::<Notification>(&current.notifications)?;
    all.extend(notifications);
    // Every payload of the task carries all of them: a task may not grow them without end.
    if all.len() > limits::MAX_NOTIFICATIONS_PER_TASK {
        return Err(Error::Invalid(format!(
            "Task {} would have {} notifications; a task keeps at most {}.",
            current.id,
            all.len(),
            limits::MAX_NOTIFICATIONS_PER_TASK
        )));
    }
    let mut next = current.clone();
    next.status = status;
    next.status_timestamp = now;
    if status == TaskStatus::Executing && next.executing_timestamp.is_none() {
        next.executing_timestamp = Some(now);
    }
    next.final_status_timestamp = status.is_final().then_some(now);
    next.notifications = serde_json::to_string(&all).map_err(Error::internal)?;
    Ok(Some(next))
}

/// Writes the status, its times and the notifications of these tasks, as
/// [`next_task_status`] left them, in one statement.
pub async fn write_task_statuses(conn: &impl ConnectionTrait, tasks: &[task::Model]) -> Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    let backend = conn.get_database_backend();
    let rows = sql::rows(tasks.iter().map(|task| TaskStatusRow {
        id: task.id,
        status: task.status.as_str(),
        status_timestamp: task.status_timestamp,
        executing_timestamp: task.executing_timestamp,
        final_status_timestamp: task.final_status_timestamp,
        notifications: &task.notifications,
    }));
    let mut values = vec![rows];
    values.extend(sql::pg_ids(backend, tasks.iter().map(|task| task.id)));
    let statement = Statement::from_sql_and_values(backend, task_statuses_sql(backend), values);
    let written = conn.execute_raw(statement).await?.rows_affected();
    if written != tasks.len() as u64 {
        return Err(Error::internal(format!(
            "{written} of {} task status changes were written",
            tasks.len()
        )));
    }
    Ok(())
}

/// A row of [`task_statuses_sql`]: a task's new status, its times and its notifications.
#[derive(serde::Serialize)]
#[cfg_attr(test, derive(Default))]
struct TaskStatusRow<'a> {
    id: i64,
    status: &'a str,
    status_timestamp: i64,
    executing_timestamp: Option<i64>,
    final_status_timestamp: Option<i64>,
    notifications: &'a str,
}

impl sql::Row for TaskStatusRow<'_> {}

/// [`write_task_statuses`]' statement; its parameter is one [`TaskStatusRow`] per task, and on
/// PostgreSQL the tasks' ids again.
fn task_statuses_sql(backend: DbBackend) -> String {
    let (int, text) = (
        |name| sql::int_field("t", name),
        |name| sql::field("t", name),
    );
    let sql = format!(
        "WITH v(v_id, v_status, v_at, v_executing, v_final, v_notes) AS (
            SELECT {}, {}, {}, {}, {}, {} FROM {})
        UPDATE tasks SET status = v_status, status_timestamp = v_at,
            executing_timestamp = v_executing, final_status_timestamp = v_final,
            notifications = v_notes
        FROM v WHERE id = v_id {}",
        int("id"),
        text("status"),
        int("status_timestamp"),
        int("executing_timestamp"),
        int("final_status_timestamp"),
        text("notifications"),
        sql::json_rows(backend, "t"),
        sql::pg_by_ids(backend, "id"),
    );
    sql::numbered(backend, &sql)
}

/// Reads a stored JSON list (labels or notifications).
pub fn labels_or_notes<T: serde::de::DeserializeOwned>(json: &str) -> Result<Vec<T>> {
    serde_json::from_str(json).map_err(Error::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_statuses_read_every_field_of_their_rows_by_name() {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            sql::assert_reads_fields_of::<TaskStatusRow>(&task_statuses_sql(backend), "t");
        }
    }
}
