//! Tasks: creating them in batches, reading them, and writing their statuses in one statement.

use std::collections::HashMap;

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult,
    QueryFilter, QueryOrder, QuerySelect, Statement,
};

use super::super::entities::{build, task};
use super::super::sql;
use super::{labels_or_notes, locked};
use crate::domain::{Notification, TaskStatus, limits};
use crate::{Error, Result};

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
    /// `CREATED`, or `PAUSED` when an approval hook held it.
    pub status: TaskStatus,
    /// What an approval hook's answer gave.
    pub work_id: Option<String>,
}

/// A new task of a build that has `build_tasks` tasks, in its first status, checked and ready
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
        status,
        work_id,
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
        status: Set(status),
        work_id: Set(work_id),
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
        transition: task.transition.map(|t| t.as_str()),
        previous_task_id: task.previous_task_id,
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
    transition: Option<&'static str>,
    previous_task_id: Option<i64>,
}

impl sql::Row for TaskStatusRow<'_> {}

/// [`write_task_statuses`]' statement; its parameter is one [`TaskStatusRow`] per task, and on
/// PostgreSQL the tasks' ids again.
fn task_statuses_sql(backend: DbBackend) -> String {
    let (int, text) = sql::fields("t");
    let sql = format!(
        "WITH v(v_id, v_status, v_at, v_executing, v_final, v_notes, v_transition, v_previous)
          AS (SELECT {}, {}, {}, {}, {}, {}, {}, {} FROM {})
        UPDATE tasks SET status = v_status, status_timestamp = v_at,
            executing_timestamp = v_executing, final_status_timestamp = v_final,
            notifications = v_notes, transition = v_transition, previous_task_id = v_previous
        FROM v WHERE id = v_id {}",
        int("id"),
        text("status"),
        int("status_timestamp"),
        int("executing_timestamp"),
        int("final_status_timestamp"),
        text("notifications"),
        text("transition"),
        int("previous_task_id"),
        sql::json_rows(backend, "t"),
        sql::pg_by_ids(backend, "id"),
    );
    sql::numbered(backend, &sql)
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
