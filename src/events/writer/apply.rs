//! One batch's changes applied inside its transaction: what each reads, writes and defers.

use std::collections::{HashMap, HashSet};

use sea_orm::DatabaseTransaction;

use super::{ChangeRequest, Changed};
use crate::domain::transition::Verdict;
use crate::events::audit::AuditDraft;
use crate::events::{Change, Outbox};
use crate::store::audit::UserKey;
use crate::store::branches::{BranchKey, Branches, Decided};
use crate::store::entities::{build, task};
use crate::{Error, Result, store};

/// The builds and tasks a batch has reached so far.
#[derive(Default)]
pub(super) struct Taken {
    pub(super) builds: HashSet<i64>,
    /// Tasks of deferred changes: a later change of the same task waits too.
    pub(super) tasks: HashSet<i64>,
    /// The tasks whose status the batch changes, as read at its start.
    pub(super) known_tasks: HashMap<i64, task::Model>,
    /// Their builds, and those of the tasks the batch creates, as read at its start.
    pub(super) known_builds: HashMap<i64, build::Model>,
    /// The builds whose status the batch changes, as read and locked at its start.
    pub(super) changed_builds: HashMap<i64, build::Model>,
    /// How many tasks the builds the batch adds tasks to have, as read at its start (one new
    /// task per build and batch at most).
    pub(super) task_counts: HashMap<i64, usize>,
    /// The tasks' new statuses, written after the batch's other changes.
    pub(super) task_statuses: Vec<task::Model>,
    /// The new tasks, each with its build, inserted after the batch's other changes.
    pub(super) new_tasks: Vec<(build::Model, task::ActiveModel)>,
    /// The branches the batch's changes may finish a build or task on (see
    /// [`store::branches`]).
    pub(super) branches: Branches,
}

impl Taken {
    /// Reads, in three statements at most, the tasks whose status the batch changes, the
    /// builds whose status it changes (both locked until the commit, see
    /// [`store::ci::tasks_of`]), and the builds of those tasks and of the tasks it creates. A
    /// change is the batch's only change of its build, so no other change of the batch writes
    /// these rows, and the tasks' own writes wait until every change of the batch has been
    /// applied.
    pub(super) async fn read(
        tx: &DatabaseTransaction,
        requests: &[(&ChangeRequest, &AuditDraft)],
    ) -> Result<Self> {
        let (mut task_keys, mut build_changes, mut build_keys) =
            (Vec::new(), Vec::new(), Vec::new());
        let mut new_task_builds = Vec::new();
        for (request, _) in requests {
            match request {
                ChangeRequest::UpdateTaskStatus {
                    org_id, task_id, ..
                } => task_keys.push((org_id.get(), task_id.get())),
                ChangeRequest::UpdateBuildStatus {
                    org_id, build_id, ..
                } => build_changes.push((org_id.get(), build_id.get())),
                ChangeRequest::CreateTask {
                    org_id, build_id, ..
                } => {
                    build_keys.push((org_id.get(), build_id.get()));
                    new_task_builds.push(build_id.get());
                }
                ChangeRequest::CreateBuild { .. } => {}
            }
        }
        let task_counts = store::ci::task_counts(tx, &new_task_builds).await?;
        let known_tasks = store::ci::tasks_of(tx, &task_keys).await?;
        let changed_builds = store::ci::builds_to_change(tx, &build_changes).await?;
        build_keys.extend(
            known_tasks
                .values()
                .map(|task| (task.org_id, task.build_id)),
        );
        let known_builds = if build_keys.is_empty() {
            HashMap::new()
        } else {
            store::ci::builds_of(tx, &build_keys)
                .await?
                .into_iter()
                .map(|build| (build.id, build))
                .collect()
        };
        // The branches of the builds and tasks that may finish, locked in this batch.
        let mut finishing = std::collections::BTreeSet::new();
        for (request, _) in requests {
            match request {
                ChangeRequest::UpdateBuildStatus {
                    build_id, status, ..
                } if Verdict::of_build(*status).is_some() => {
                    finishing.extend(changed_builds.get(&build_id.get()).map(build_branch));
                }
                ChangeRequest::UpdateTaskStatus {
                    task_id, status, ..
                } if Verdict::of_task(*status).is_some() => {
                    let task = known_tasks.get(&task_id.get());
                    let build = task.and_then(|task| known_builds.get(&task.build_id));
                    finishing.extend(
                        task.zip(build)
                            .map(|(task, build)| task_branch(build, task)),
                    );
                }
                _ => {}
            }
        }
        let branches = Branches::read(tx, finishing).await?;
        Ok(Self {
            known_tasks,
            known_builds,
            changed_builds,
            task_counts,
            branches,
            ..Self::default()
        })
    }

    /// Takes `build` for a change; false when an earlier change of the batch has it.
    pub(super) fn build(&mut self, build: i64) -> bool {
        self.builds.insert(build)
    }
}

/// The branch whose history a build's transitions follow.
fn build_branch(build: &build::Model) -> BranchKey {
    BranchKey {
        repository_id: build.repository_id,
        branch: build.branch.clone(),
        task_name: String::new(),
    }
}

/// The branch, and name, whose history a task's transitions follow.
fn task_branch(build: &build::Model, task: &task::Model) -> BranchKey {
    BranchKey {
        task_name: task.name.clone(),
        ..build_branch(build)
    }
}

/// The organization's build with this id among the builds a batch read.
pub(super) fn build_of(
    builds: &HashMap<i64, build::Model>,
    org_id: i64,
    id: i64,
) -> Result<build::Model> {
    builds
        .get(&id)
        .filter(|build| build.org_id == org_id)
        .cloned()
        .ok_or_else(|| Error::not_found("build", id))
}

/// What one change of a batch did.
pub(super) enum Step {
    /// Its build was taken: it goes in a later batch.
    Deferred,
    /// Written (or unchanged), with its event when it records one.
    Done(Box<(Changed, Option<Change>)>),
    /// A new task, inserted with the batch's others after every change has been applied.
    Later,
}

pub(super) fn done(changed: Changed, change: Option<Change>) -> Result<Step> {
    Ok(Step::Done(Box::new((changed, change))))
}

/// Applies one change inside the batch's transaction. It fails with its own error
/// ([`is_the_changes_own`]) only before it writes.
pub(super) async fn apply(
    tx: &DatabaseTransaction,
    outbox: &Outbox,
    request: &ChangeRequest,
    now: i64,
    taken: &mut Taken,
    users: &mut HashMap<UserKey, i64>,
) -> Result<Step> {
    match request {
        ChangeRequest::CreateBuild {
            org_id,
            repository_id,
            new,
        } => {
            let (org_id, repository_id) = (org_id.get(), repository_id.get());
            let repository = store::ci::repository(tx, org_id, repository_id).await?;
            let key = (org_id, new.initializer.clone());
            if !users.contains_key(&key) {
                users.extend(outbox.users(tx, vec![key.clone()]).await?);
            }
            let initializer = *users
                .get(&key)
                .ok_or_else(|| Error::internal("a build's initializer has no user id"))?;
            let build =
                store::ci::create_build(tx, &repository, new.clone(), initializer, now).await?;
            taken.build(build.id);
            let change = Change::build_created(&build);
            done(Changed::Build(build), Some(change))
        }
        ChangeRequest::UpdateBuildStatus {
            org_id,
            build_id,
            status,
            only_from,
        } => {
            let (org_id, build_id) = (org_id.get(), build_id.get());
            // Another organization's build is not found before it is taken, so that naming it
            // holds up none of that organization's changes.
            let before = build_of(&taken.changed_builds, org_id, build_id)?;
            if !taken.build(build_id) {
                return Ok(Step::Deferred);
            }
            if let Some(from) = only_from
                && before.status != *from
            {
                return Err(Error::Invalid(format!(
                    "Build {build_id} is not waiting for approval; it is {}.",
                    before.status
                )));
            }
            // A build reaching a verdict is decided against its branch; any other change of
            // status leaves it without a transition.
            let decided = match Verdict::of_build(*status) {
                Some(verdict) if before.status != *status => {
                    let key = build_branch(&before);
                    taken
                        .branches
                        .finish(&key, build_id, status.as_str(), verdict)?
                }
                _ => Decided::default(),
            };
            match store::ci::set_build_status(tx, before.clone(), *status, now, decided).await? {
                None => done(Changed::Build(before), None),
                Some(after) => {
                    let change = Change::build_updated(&before, &after)?;
                    done(Changed::Build(after), Some(change))
                }
            }
        }
        ChangeRequest::CreateTask {
            org_id,
            build_id,
            new,
        } => {
            let (org_id, build_id) = (org_id.get(), build_id.get());
            let build = build_of(&taken.known_builds, org_id, build_id)?;
            if !taken.build(build_id) {
                return Ok(Step::Deferred);
            }
            let tasks = taken.task_counts.get(&build_id).copied().unwrap_or(0);
            let row = store::ci::new_task_row(&build, tasks, new.clone(), now)?;
            taken.new_tasks.push((build, row));
            Ok(Step::Later)
        }
        ChangeRequest::UpdateTaskStatus {
            org_id,
            task_id,
            status,
            notifications,
        } => {
            let (org_id, task_id) = (org_id.get(), task_id.get());
            if taken.tasks.contains(&task_id) {
                return Ok(Step::Deferred);
            }
            let before = taken
                .known_tasks
                .get(&task_id)
                .filter(|task| task.org_id == org_id)
                .cloned()
                .ok_or_else(|| Error::not_found("task", task_id))?;
            if !taken.build(before.build_id) {
                taken.tasks.insert(task_id);
                return Ok(Step::Deferred);
            }
            match store::ci::next_task_status(&before, *status, notifications.clone(), now)? {
                None => done(Changed::Task(before), None),
                Some(mut after) => {
                    let build = taken.known_builds.get(&before.build_id);
                    let decided = match (Verdict::of_task(*status), build) {
                        (Some(verdict), Some(build)) => {
                            let key = task_branch(build, &before);
                            taken
                                .branches
                                .finish(&key, task_id, status.as_str(), verdict)?
                        }
                        _ => Decided::default(),
                    };
                    after.transition = decided.transition;
                    after.previous_task_id = decided.previous_id;
                    let mut change = Change::task_updated(&before, &after)?;
                    if let Some(build) = build {
                        change = change.with_build(build);
                    }
                    taken.task_statuses.push(after.clone());
                    done(Changed::Task(after), Some(change))
                }
            }
        }
    }
}
