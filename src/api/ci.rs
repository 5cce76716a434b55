//! Mutations of the CI engine: repositories, builds, tasks. A build's or task's change goes
//! through the process's writer of changes ([`crate::events::Writer`]).

use async_graphql::{Context, ID, InputObject, Object, SimpleObject};

use super::{approvals, audit};
use crate::delivery::approval::Verdict;
use crate::domain::{
    ApprovalPoint, BuildStatus, Notification, NotificationLevel, Permission, TaskStatus, limits,
};
use crate::events::Writer;
use crate::events::audit::check_user_name;
use crate::events::writer::{ChangeRequest, Changed};
use crate::schema::auth::require;
use crate::schema::types::{Build, Repository, Task};
use crate::store::entities::{build, task};
use crate::store::{self, parse_id};
use crate::{Error, Result};

#[derive(InputObject)]
pub struct CreateRepositoryInput {
    pub owner_uid: ID,
    pub name: String,
    pub is_private: Option<bool>,
    pub default_branch: Option<String>,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct CreateRepositoryPayload {
    pub repository: Repository,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct CreateBuildInput {
    pub repository_id: ID,
    pub branch: String,
    pub change_id_in_repo: String,
    pub change_message_title: Option<String>,
    pub change_message: Option<String>,
    pub tag: Option<String>,
    pub pull_request: Option<i64>,
    pub pull_request_draft: Option<bool>,
    /// When the change was made (ms since the epoch); now when absent.
    pub change_timestamp: Option<i64>,
    /// Who initiated the build, as the CI engine names them (`Build.initializer`); the token's
    /// subject when absent.
    pub initializer: Option<String>,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct UpdateBuildStatusInput {
    pub build_id: ID,
    pub status: BuildStatus,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct BuildPayload {
    pub build: Build,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct CreateTaskInput {
    pub build_id: ID,
    pub name: String,
    pub name_alias: Option<String>,
    pub labels: Option<Vec<String>>,
    pub instance_type: Option<String>,
    pub local_group_id: Option<i64>,
    pub client_mutation_id: Option<String>,
}

#[derive(InputObject)]
pub struct NotificationInput {
    pub level: NotificationLevel,
    pub message: String,
    pub link: Option<String>,
}

#[derive(InputObject)]
pub struct UpdateTaskStatusInput {
    pub task_id: ID,
    pub status: TaskStatus,
    /// Notes to attach to the task with this change.
    pub notifications: Option<Vec<NotificationInput>>,
    pub client_mutation_id: Option<String>,
}

#[derive(SimpleObject)]
pub struct TaskPayload {
    pub task: Task,
    pub client_mutation_id: Option<String>,
}

#[derive(Default)]
pub struct CiMutation;

#[Object]
impl CiMutation {
    /// Records a repository (WRITE).
    async fn create_repository(
        &self,
        ctx: &Context<'_>,
        input: CreateRepositoryInput,
    ) -> Result<CreateRepositoryPayload> {
        let viewer = require(ctx, Permission::Write)?;
        if parse_id("organization", &input.owner_uid)? != viewer.org_id {
            return Err(Error::not_found("organization", input.owner_uid.as_str()));
        }
        limits::optional_text(
            "default branch",
            input.default_branch.as_deref(),
            limits::MAX_NAME,
        )?;
        let new = store::ci::NewRepository {
            name: input.name,
            is_private: input.is_private.unwrap_or(false),
            default_branch: input.default_branch.unwrap_or_else(|| "main".into()),
        };
        let tx = super::handle::<store::Writes>(ctx)?.begin().await?;
        let repository = store::ci::create_repository(&*tx, viewer.org_id, new).await?;
        audit::commit(ctx, tx, viewer.org_id, Some(repository.id)).await?;
        Ok(CreateRepositoryPayload {
            repository: Repository(repository),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Records a build in status CREATED and emits its `created` event (WRITE).
    async fn create_build(
        &self,
        ctx: &Context<'_>,
        input: CreateBuildInput,
    ) -> Result<BuildPayload> {
        let viewer = require(ctx, Permission::Write)?;
        limits::text("branch", &input.branch, true, limits::MAX_NAME)?;
        limits::text(
            "change id",
            &input.change_id_in_repo,
            true,
            limits::MAX_NAME,
        )?;
        limits::optional_text("tag", input.tag.as_deref(), limits::MAX_NAME)?;
        limits::optional_text(
            "change message title",
            input.change_message_title.as_deref(),
            limits::MAX_TITLE,
        )?;
        limits::optional_text(
            "change message",
            input.change_message.as_deref(),
            limits::MAX_MESSAGE,
        )?;
        let repository_id = parse_id("repository", &input.repository_id)?;
        let verdict = approvals::gate(
            ctx,
            viewer.org_id,
            ApprovalPoint::BuildCreate,
            repository_id,
            None,
        )
        .await?;
        let status = match verdict {
            Verdict::Hold { .. } => BuildStatus::NeedsApproval,
            _ => BuildStatus::Created,
        };
        let request = ChangeRequest::CreateBuild {
            org_id: viewer.org_id.into(),
            repository_id: repository_id.into(),
            new: store::ci::NewBuild {
                branch: input.branch,
                tag: input.tag,
                change_id_in_repo: input.change_id_in_repo,
                change_message_title: input.change_message_title.unwrap_or_default(),
                change_message: input.change_message.unwrap_or_default(),
                pull_request: input.pull_request,
                pull_request_draft: input.pull_request_draft,
                change_timestamp: input.change_timestamp,
                initializer: match input.initializer {
                    Some(name) => {
                        check_user_name("initializer", &name)?;
                        name
                    }
                    None => audit::actor(ctx).username,
                },
                status,
                work_id: verdict.work_id(),
            },
        };
        let build = changed_build(ctx, request).await?;
        if let Verdict::Hold { calls, .. } = &verdict {
            // The build is recorded; a failure here leaves it to an admin's decision.
            let approvals =
                super::handle::<std::sync::Arc<crate::delivery::approval::Approvals>>(ctx)?;
            if let Err(err) = approvals.held(calls, build.id).await {
                tracing::warn!(build = build.id, error = %err, "a held build's one-time links could not be tied to it");
            }
        }
        Ok(BuildPayload {
            build: Build(build),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Records a build's new status; emits an `updated` event unless the status is unchanged (WRITE).
    async fn update_build_status(
        &self,
        ctx: &Context<'_>,
        input: UpdateBuildStatusInput,
    ) -> Result<BuildPayload> {
        let viewer = require(ctx, Permission::Write)?;
        let request = ChangeRequest::UpdateBuildStatus {
            org_id: viewer.org_id.into(),
            build_id: parse_id("build", &input.build_id)?.into(),
            status: input.status,
            only_from: None,
        };
        Ok(BuildPayload {
            build: Build(changed_build(ctx, request).await?),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Records a task in status CREATED and emits its `created` event (WRITE).
    async fn create_task(&self, ctx: &Context<'_>, input: CreateTaskInput) -> Result<TaskPayload> {
        let viewer = require(ctx, Permission::Write)?;
        limits::text("task name", &input.name, true, limits::MAX_NAME)?;
        limits::optional_text("name alias", input.name_alias.as_deref(), limits::MAX_NAME)?;
        limits::optional_text(
            "instance type",
            input.instance_type.as_deref(),
            limits::MAX_NAME,
        )?;
        let labels = input.labels.as_deref().unwrap_or_default();
        limits::count("labels", labels.len(), limits::MAX_LABELS)?;
        for label in labels {
            limits::text("label", label, false, limits::MAX_NAME)?;
        }
        let build_id = parse_id("build", &input.build_id)?;
        let approvals = super::handle::<std::sync::Arc<crate::delivery::approval::Approvals>>(ctx)?;
        let verdict = if approvals
            .hooks_at(viewer.org_id, ApprovalPoint::TaskCreate)
            .await?
            .is_empty()
        {
            Verdict::Approve { work_id: None }
        } else {
            let build = store::ci::build(super::pool(ctx)?, viewer.org_id, build_id).await?;
            approvals::gate(
                ctx,
                viewer.org_id,
                ApprovalPoint::TaskCreate,
                build.repository_id,
                Some(&build),
            )
            .await?
        };
        let status = match verdict {
            Verdict::Hold { .. } => TaskStatus::Paused,
            _ => TaskStatus::Created,
        };
        let request = ChangeRequest::CreateTask {
            org_id: viewer.org_id.into(),
            build_id: build_id.into(),
            new: store::ci::NewTask {
                name: input.name,
                name_alias: input.name_alias,
                labels: input.labels.unwrap_or_default(),
                instance_type: input.instance_type,
                local_group_id: input.local_group_id,
                status,
                work_id: verdict.work_id(),
            },
        };
        Ok(TaskPayload {
            task: Task(changed_task(ctx, request).await?),
            client_mutation_id: input.client_mutation_id,
        })
    }

    /// Records a task's new status; emits an `updated` event unless the status is unchanged (WRITE).
    async fn update_task_status(
        &self,
        ctx: &Context<'_>,
        input: UpdateTaskStatusInput,
    ) -> Result<TaskPayload> {
        let viewer = require(ctx, Permission::Write)?;
        let notes = input.notifications.as_deref().unwrap_or_default();
        limits::count(
            "notifications in one change",
            notes.len(),
            limits::MAX_NOTIFICATIONS_PER_CHANGE,
        )?;
        for note in notes {
            limits::text(
                "notification message",
                &note.message,
                false,
                limits::MAX_NOTIFICATION_MESSAGE,
            )?;
            limits::optional_text("notification link", note.link.as_deref(), limits::MAX_LINK)?;
        }
        let notifications = input
            .notifications
            .unwrap_or_default()
            .into_iter()
            .map(
                |NotificationInput {
                     level,
                     message,
                     link,
                 }| Notification {
                    level,
                    message,
                    link,
                },
            )
            .collect();
        let request = ChangeRequest::UpdateTaskStatus {
            org_id: viewer.org_id.into(),
            task_id: parse_id("task", &input.task_id)?.into(),
            status: input.status,
            notifications,
        };
        Ok(TaskPayload {
            task: Task(changed_task(ctx, request).await?),
            client_mutation_id: input.client_mutation_id,
        })
    }
}

/// Writes a change of a build through the process's writer of changes.
pub(super) async fn changed_build(
    ctx: &Context<'_>,
    request: ChangeRequest,
) -> Result<build::Model> {
    let audit = audit::draft(ctx, request.org_id().get());
    match super::handle::<Writer>(ctx)?.submit(request, audit).await? {
        Changed::Build(build) => Ok(build),
        Changed::Task(_) => Err(Error::internal("a build's change came back as a task")),
    }
}

/// Writes a change of a task through the process's writer of changes.
async fn changed_task(ctx: &Context<'_>, request: ChangeRequest) -> Result<task::Model> {
    let audit = audit::draft(ctx, request.org_id().get());
    match super::handle::<Writer>(ctx)?.submit(request, audit).await? {
        Changed::Task(task) => Ok(task),
        Changed::Build(_) => Err(Error::internal("a task's change came back as a build")),
    }
}
