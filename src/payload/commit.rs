//! Group commit: the changes that record events are written by one task of the process, as
//! many as are waiting in one transaction.
//!
//! A change is a few statements of its own (read the build or task, write it) and the outbox's
//! (the event, the endpoints, the payloads' reads, the deliveries), each a round trip to the
//! database made while holding, on SQLite, its one write lock. Written one transaction per
//! change, clients queue for that lock; written together, a batch pays for the transaction and
//! the outbox's statements once (see [`Outbox::record`]). A lone change is not delayed: the
//! batch is whatever waited while the previous one was written.
//!
//! A batch holds at most one change per build: a build's events then reach its endpoints in the
//! order of their changes (each event's deliveries are queued behind the build's unfinished
//! ones, and one statement does not see its own rows), and a payload shows its build as its own
//! change left it. A change whose build is taken waits for the next batch, ahead of the changes
//! that came after it.
//!
//! A change fails on its own (the task does not exist, the input is wrong) before it writes
//! anything, and the rest of the batch goes on. Any other failure before the commit rolls the
//! batch back, and each of its changes is then written in a transaction of its own, so that one
//! change's failure is never another's.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use sea_orm::{DatabaseConnection, DatabaseTransaction};
use tokio::sync::{mpsc, oneshot};

use super::audit::AuditDraft;
use super::outbox::{Change, Outbox};
use crate::domain::{BuildStatus, Notification, TaskStatus};
use crate::store::audit::UserKey;
use crate::store::entities::{build, task};
use crate::store::{self, ci::NewBuild, ci::NewTask};
use crate::{Error, Result};

/// The most changes one transaction writes.
const MAX_BATCH: usize = 64;

/// How many changes may wait for the writer before callers wait to hand theirs over.
const QUEUE: usize = 1024;

/// A change to a build or task that records an event.
#[derive(Clone, Debug)]
pub enum ChangeRequest {
    CreateBuild {
        org_id: i64,
        repository_id: i64,
        new: NewBuild,
    },
    UpdateBuildStatus {
        org_id: i64,
        build_id: i64,
        status: BuildStatus,
    },
    CreateTask {
        org_id: i64,
        build_id: i64,
        new: NewTask,
    },
    UpdateTaskStatus {
        org_id: i64,
        task_id: i64,
        status: TaskStatus,
        notifications: Vec<Notification>,
    },
}

impl ChangeRequest {
    /// The organization whose build or task the change concerns.
    pub fn org_id(&self) -> i64 {
        match self {
            Self::CreateBuild { org_id, .. }
            | Self::UpdateBuildStatus { org_id, .. }
            | Self::CreateTask { org_id, .. }
            | Self::UpdateTaskStatus { org_id, .. } => *org_id,
        }
    }
}

/// The build or task as a change left it.
#[derive(Clone, Debug)]
pub enum Changed {
    Build(build::Model),
    Task(task::Model),
}

impl Changed {
    fn repository_id(&self) -> i64 {
        match self {
            Self::Build(build) => build.repository_id,
            Self::Task(task) => task.repository_id,
        }
    }
}

/// Hands changes to the process's writer and waits for their commit.
#[derive(Clone)]
pub struct Changes {
    queue: mpsc::Sender<Job>,
}

struct Job {
    request: ChangeRequest,
    /// The mutation's audit event, recorded with the change when it succeeds.
    audit: AuditDraft,
    reply: oneshot::Sender<Result<Changed>>,
}

impl Job {
    fn parts(&self) -> (&ChangeRequest, &AuditDraft) {
        (&self.request, &self.audit)
    }
}

impl Changes {
    /// Starts the writer of this process's changes on `writer` (see
    /// [`store::connect_writer`]); it runs while a handle is left.
    pub fn start(writer: DatabaseConnection, outbox: Outbox) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(write_changes(writer, outbox, jobs));
        Self { queue }
    }

    /// Writes `request` with its event and deliveries, and its mutation's `audit` event; the
    /// build or task as it left it once it is committed. A change whose build or task already
    /// has the status is not written and records no event (its audit event is recorded): the
    /// row comes back as it is.
    pub async fn submit(&self, request: ChangeRequest, audit: AuditDraft) -> Result<Changed> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job {
                request,
                audit,
                reply,
            })
            .await
            .map_err(|_| Error::internal("the writer of changes stopped"))?;
        answer
            .await
            .map_err(|_| Error::internal("the writer of changes dropped a change"))?
    }
}

/// The writer: takes what is waiting, up to [`MAX_BATCH`], and writes it in one transaction.
async fn write_changes(writer: DatabaseConnection, outbox: Outbox, mut jobs: mpsc::Receiver<Job>) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            match jobs.recv().await {
                Some(job) => waiting.push_back(job),
                None => return,
            }
        }
        while waiting.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => waiting.push_back(job),
                Err(_) => break,
            }
        }
        let take = waiting.len().min(MAX_BATCH);
        let batch: Vec<Job> = waiting.drain(..take).collect();
        // A batch runs as a task of its own: should it panic, its changes' callers get an
        // error (their answers are dropped) and the writer goes on with the next ones.
        let written = tokio::spawn({
            let (writer, outbox) = (writer.clone(), outbox.clone());
            async move { write_batch(&writer, &outbox, batch).await }
        });
        match written.await {
            Ok(deferred) => {
                for job in deferred.into_iter().rev() {
                    waiting.push_front(job);
                }
            }
            Err(err) => tracing::error!(error = %err, "a batch of changes failed"),
        }
    }
}

/// Writes a batch and answers its changes; the changes whose build was taken, to go first in
/// the next batch.
async fn write_batch(writer: &DatabaseConnection, outbox: &Outbox, batch: Vec<Job>) -> Vec<Job> {
    let requests: Vec<_> = batch.iter().map(Job::parts).collect();
    match write(writer, outbox, &requests).await {
        Ok(results) => {
            let mut deferred = Vec::new();
            for (job, result) in batch.into_iter().zip(results) {
                match result {
                    Some(result) => {
                        let _ = job.reply.send(result);
                    }
                    None => deferred.push(job),
                }
            }
            deferred
        }
        Err(Failed::Commit) => {
            // Whether a failed commit took effect is unknown: the changes are not written
            // again, and their clients learn that they may have been recorded.
            for job in batch {
                let _ = job.reply.send(Err(Error::Unconfirmed));
            }
            Vec::new()
        }
        Err(Failed::Before(err)) if batch.len() == 1 => {
            if let Some(job) = batch.into_iter().next() {
                let _ = job.reply.send(Err(err));
            }
            Vec::new()
        }
        Err(Failed::Before(_)) => {
            // The cause was logged where it became an [`Error`].
            tracing::warn!(
                changes = batch.len(),
                "a batch of changes failed before its commit; writing its changes one at a time"
            );
            outbox.metrics().change_batches_split.inc();
            for job in batch {
                let result = match write(writer, outbox, &[job.parts()]).await {
                    Ok(mut results) => results
                        .pop()
                        .flatten()
                        .unwrap_or_else(|| Err(Error::internal("a lone change was deferred"))),
                    Err(Failed::Before(err)) => Err(err),
                    Err(Failed::Commit) => Err(Error::Unconfirmed),
                };
                let _ = job.reply.send(result);
            }
            Vec::new()
        }
    }
}

/// Why a batch was not written.
enum Failed {
    /// Before the commit: nothing was written.
    Before(Error),
    /// The commit failed: whether it took effect is unknown (the cause was logged where it
    /// became an [`Error`]).
    Commit,
}

/// Whether a change failing with `err` wrote nothing, so the batch goes on without it.
fn is_the_changes_own(err: &Error) -> bool {
    matches!(
        err,
        Error::NotFound { .. } | Error::Invalid(_) | Error::Conflict(_)
    )
}

/// Writes `requests` in one transaction, each with its audit event when it succeeds; each
/// one's result, or `None` for a change deferred to the next batch because its build was taken.
async fn write(
    writer: &DatabaseConnection,
    outbox: &Outbox,
    requests: &[(&ChangeRequest, &AuditDraft)],
) -> Result<Vec<Option<Result<Changed>>>, Failed> {
    let _turn = outbox.turn().await;
    let tx = Arc::new(store::begin_change(writer).await.map_err(Failed::Before)?);
    let now = crate::now_ms();
    let mut taken = Taken::read(&tx, requests).await.map_err(Failed::Before)?;
    // The users the batch's changes and audit events name, as they are learned.
    let mut users = HashMap::new();
    let mut results = Vec::with_capacity(requests.len());
    let mut changes = Vec::new();
    // The new tasks' places in `results`, filled once they are inserted together after the
    // loop.
    let mut later = Vec::new();
    for (request, _) in requests {
        match apply(&tx, outbox, request, now, &mut taken, &mut users).await {
            Ok(Step::Deferred) => results.push(None),
            Ok(Step::Done(done)) => {
                let (changed, change) = *done;
                changes.extend(change);
                results.push(Some(Ok(changed)));
            }
            Ok(Step::Later) => {
                results.push(None);
                later.push(results.len() - 1);
            }
            Err(err) if is_the_changes_own(&err) => results.push(Some(Err(err))),
            Err(err) => return Err(Failed::Before(err)),
        }
    }
    store::ci::write_task_statuses(&*tx, &taken.task_statuses)
        .await
        .map_err(Failed::Before)?;
    let new_rows = taken.new_tasks.iter().map(|(_, row)| row.clone()).collect();
    let mut created: HashMap<i64, task::Model> = store::ci::insert_tasks(&*tx, new_rows)
        .await
        .map_err(Failed::Before)?
        .into_iter()
        .map(|task| (task.build_id, task))
        .collect();
    for (index, (build, _)) in later.into_iter().zip(&taken.new_tasks) {
        let task = created.remove(&build.id).ok_or_else(|| {
            Failed::Before(Error::internal(
                "a new task did not come back from its insert",
            ))
        })?;
        changes.push(Change::task_created(&task).with_build(build));
        results[index] = Some(Ok(Changed::Task(task)));
    }
    // The audit events of the changes that succeeded: a failed one records none, and creates
    // no user.
    let audits: Vec<AuditDraft> = requests
        .iter()
        .zip(&results)
        .filter_map(|((_, audit), result)| match result {
            Some(Ok(changed)) => Some(AuditDraft {
                repository_id: Some(changed.repository_id()),
                ..(*audit).clone()
            }),
            _ => None,
        })
        .collect();
    let actors = audits
        .iter()
        .map(AuditDraft::actor_key)
        .filter(|key| !users.contains_key(key))
        .collect();
    users.extend(outbox.users(&*tx, actors).await.map_err(Failed::Before)?);
    let mut orgs: Vec<i64> = audits.iter().map(|audit| audit.org_id).collect();
    orgs.extend(changes.iter().map(|change| change.org_id));
    orgs.sort_unstable();
    orgs.dedup();
    let endpoints = store::endpoints::enabled_of(&*tx, &orgs)
        .await
        .map_err(Failed::Before)?;
    let audits_due = outbox
        .record_audits(&*tx, audits, &users, &endpoints)
        .await
        .map_err(Failed::Before)?;
    let events = changes.len() as u64;
    let due = outbox
        .record(&tx, changes, &endpoints)
        .await
        .map_err(Failed::Before)?;
    outbox
        .commit(tx, events, due || audits_due)
        .await
        .map_err(|_| Failed::Commit)?;
    outbox.learn_users(users);
    Ok(results)
}

/// The builds and tasks a batch has reached so far.
#[derive(Default)]
struct Taken {
    builds: HashSet<i64>,
    /// Tasks of deferred changes: a later change of the same task waits too.
    tasks: HashSet<i64>,
    /// The tasks whose status the batch changes, as read at its start.
    known_tasks: HashMap<i64, task::Model>,
    /// Their builds, and those of the tasks the batch creates, as read at its start.
    known_builds: HashMap<i64, build::Model>,
    /// The builds whose status the batch changes, as read and locked at its start.
    changed_builds: HashMap<i64, build::Model>,
    /// How many tasks the builds the batch adds tasks to have, as read at its start (one new
    /// task per build and batch at most).
    task_counts: HashMap<i64, usize>,
    /// The tasks' new statuses, written after the batch's other changes.
    task_statuses: Vec<task::Model>,
    /// The new tasks, each with its build, inserted after the batch's other changes.
    new_tasks: Vec<(build::Model, task::ActiveModel)>,
}

impl Taken {
    /// Reads, in three statements at most, the tasks whose status the batch changes, the
    /// builds whose status it changes (both locked until the commit, see
    /// [`store::ci::tasks_of`]), and the builds of those tasks and of the tasks it creates. A
    /// change is the batch's only change of its build, so no other change of the batch writes
    /// these rows, and the tasks' own writes wait until every change of the batch has been
    /// applied.
    async fn read(
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
                } => task_keys.push((*org_id, *task_id)),
                ChangeRequest::UpdateBuildStatus {
                    org_id, build_id, ..
                } => build_changes.push((*org_id, *build_id)),
                ChangeRequest::CreateTask {
                    org_id, build_id, ..
                } => {
                    build_keys.push((*org_id, *build_id));
                    new_task_builds.push(*build_id);
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
        Ok(Self {
            known_tasks,
            known_builds,
            changed_builds,
            task_counts,
            ..Self::default()
        })
    }

    /// Takes `build` for a change; false when an earlier change of the batch has it.
    fn build(&mut self, build: i64) -> bool {
        self.builds.insert(build)
    }
}

/// The organization's build with this id among the builds a batch read.
fn build_of(builds: &HashMap<i64, build::Model>, org_id: i64, id: i64) -> Result<build::Model> {
    builds
        .get(&id)
        .filter(|build| build.org_id == org_id)
        .cloned()
        .ok_or_else(|| Error::not_found("build", id))
}

/// What one change of a batch did.
enum Step {
    /// Its build was taken: it goes in the next batch.
    Deferred,
    /// Written (or unchanged), with its event when it records one.
    Done(Box<(Changed, Option<Change>)>),
    /// A new task, inserted with the batch's others after every change has been applied.
    Later,
}

fn done(changed: Changed, change: Option<Change>) -> Result<Step> {
    Ok(Step::Done(Box::new((changed, change))))
}

/// Applies one change inside the batch's transaction. It fails with its own error
/// ([`is_the_changes_own`]) only before it writes.
async fn apply(
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
            let repository = store::ci::repository(tx, *org_id, *repository_id).await?;
            let key = (*org_id, new.initializer.clone());
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
        } => {
            if !taken.build(*build_id) {
                return Ok(Step::Deferred);
            }
            let before = build_of(&taken.changed_builds, *org_id, *build_id)?;
            match store::ci::set_build_status(tx, before.clone(), *status, now).await? {
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
            if !taken.build(*build_id) {
                return Ok(Step::Deferred);
            }
            let build = build_of(&taken.known_builds, *org_id, *build_id)?;
            let tasks = taken.task_counts.get(build_id).copied().unwrap_or(0);
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
            if taken.tasks.contains(task_id) {
                return Ok(Step::Deferred);
            }
            let before = taken
                .known_tasks
                .get(task_id)
                .filter(|task| task.org_id == *org_id)
                .cloned()
                .ok_or_else(|| Error::not_found("task", task_id))?;
            if !taken.build(before.build_id) {
                taken.tasks.insert(*task_id);
                return Ok(Step::Deferred);
            }
            match store::ci::next_task_status(&before, *status, notifications.clone(), now)? {
                None => done(Changed::Task(before), None),
                Some(after) => {
                    let mut change = Change::task_updated(&before, &after)?;
                    if let Some(build) = taken.known_builds.get(&before.build_id) {
                        change = change.with_build(build);
                    }
                    taken.task_statuses.push(after.clone());
                    done(Changed::Task(after), Some(change))
                }
            }
        }
    }
}
