//! A build's or task's change as an event: what the outbox records and the renderer reads.

use std::sync::Arc;

use crate::Result;
use crate::domain::{
    BuildId, EventAction, EventKind, OrgId, RepositoryId, TaskId, WebHookCondition,
};
use crate::store::entities::{build, task};

/// A build or task change, as an event.
#[derive(Clone, Debug)]
pub struct Change {
    pub org_id: OrgId,
    pub kind: EventKind,
    /// `created` or `updated`.
    pub action: EventAction,
    pub old_status: Option<&'static str>,
    /// The build's (build events) or task's (task events) status after the change.
    pub status: String,
    pub repository_id: RepositoryId,
    pub build_id: BuildId,
    pub task_id: Option<TaskId>,
    pub timestamp: i64,
    /// The build row as the change left it, when the change has it: the payload reads it
    /// instead of reading it back.
    pub build_row: Option<build::Model>,
    /// The task row as the change left it (task events).
    pub task_row: Option<task::Model>,
    /// The tasks of the build once the change is written, read for the payload with those of
    /// the other changes of its batch.
    pub build_tasks: Option<Arc<Vec<task::Model>>>,
}

impl Change {
    pub fn build_created(build: &build::Model) -> Self {
        Self {
            org_id: build.org_id.into(),
            kind: EventKind::Build,
            action: EventAction::Created,
            old_status: None,
            status: build.status.as_str().to_owned(),
            repository_id: build.repository_id.into(),
            build_id: build.id.into(),
            task_id: None,
            timestamp: build.created_at,
            build_row: Some(build.clone()),
            task_row: None,
            build_tasks: None,
        }
    }

    pub fn build_updated(before: &build::Model, after: &build::Model) -> Result<Self> {
        Ok(Self {
            action: EventAction::Updated,
            old_status: Some(before.status.as_str()),
            timestamp: after.status_timestamp,
            ..Self::build_created(after)
        })
    }

    pub fn task_created(task: &task::Model) -> Self {
        Self {
            org_id: task.org_id.into(),
            kind: EventKind::Task,
            action: EventAction::Created,
            old_status: None,
            status: task.status.as_str().to_owned(),
            repository_id: task.repository_id.into(),
            build_id: task.build_id.into(),
            task_id: Some(task.id.into()),
            timestamp: task.creation_timestamp,
            build_row: None,
            task_row: Some(task.clone()),
            build_tasks: None,
        }
    }

    /// The change also hands the payload its task's `build` row, which it read in its
    /// transaction and did not change.
    pub fn with_build(self, build: &build::Model) -> Self {
        Self {
            build_row: Some(build.clone()),
            ..self
        }
    }

    /// How the change's build (build events) or task (task events) compares with the previous
    /// one of its branch, when the change finished it with a verdict.
    pub fn transition(&self) -> Option<WebHookCondition> {
        match self.kind {
            EventKind::Task => self.task_row.as_ref()?.transition,
            _ => self.build_row.as_ref()?.transition,
        }
    }

    pub fn task_updated(before: &task::Model, after: &task::Model) -> Result<Self> {
        Ok(Self {
            action: EventAction::Updated,
            old_status: Some(before.status.as_str()),
            timestamp: after.status_timestamp,
            ..Self::task_created(after)
        })
    }
}
