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
//! change left it. A change whose build is taken waits for a later batch, and so do the later
//! changes of its build: a build's changes are written in the order they came.
//!
//! Batches are fair: the changes wait in one queue per organization, and a batch takes one
//! change of each organization in turn, looking past the changes whose build it already holds
//! (a task's build, which never changes, is remembered once a batch has read it; a change of a
//! task not known yet counts as a build of its own, and the batch's own check defers it). A
//! flood of one build's changes, which can only be written one per transaction, then takes
//! one place in each batch, and the other builds and organizations the others.
//!
//! A change fails on its own (the task does not exist, the input is wrong) before it writes
//! anything, and the rest of the batch goes on. Any other failure before the commit rolls the
//! batch back, and each of its changes is then written in a transaction of its own, so that one
//! change's failure is never another's.

mod apply;
mod waiting;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use super::audit::AuditDraft;
use super::{Change, Outbox};
use crate::domain::{BuildId, BuildStatus, Notification, OrgId, RepositoryId, TaskId, TaskStatus};
use crate::store::deliveries::Numbers;
use crate::store::entities::{build, task};
use crate::store::{self, ci::NewBuild, ci::NewTask};
use crate::{Error, Result};

use apply::{Step, Taken, apply};
use waiting::{TaskBuild, Waiting};

/// The most changes one transaction writes.
pub(super) const MAX_BATCH: usize = 64;

/// How many changes may wait for the writer before callers wait to hand theirs over.
pub(super) const QUEUE: usize = 1024;

/// The most waiting changes of one organization that a batch passes over, their build being
/// taken, while it looks for one it can take: the rest wait for a later batch.
pub(super) const LOOK_PAST: usize = 1024;

/// How many tasks' builds the writer remembers before it starts over.
pub(super) const KNOWN_TASKS: usize = 100_000;

/// A change to a build or task that records an event.
#[derive(Clone, Debug)]
pub enum ChangeRequest {
    CreateBuild {
        org_id: OrgId,
        repository_id: RepositoryId,
        new: NewBuild,
    },
    UpdateBuildStatus {
        org_id: OrgId,
        build_id: BuildId,
        status: BuildStatus,
        /// The status the build must have for the change to apply (a decision on a held
        /// build applies to a build still `NEEDS_APPROVAL`, once); any when `None`.
        only_from: Option<BuildStatus>,
    },
    CreateTask {
        org_id: OrgId,
        build_id: BuildId,
        new: NewTask,
    },
    UpdateTaskStatus {
        org_id: OrgId,
        task_id: TaskId,
        status: TaskStatus,
        notifications: Vec<Notification>,
    },
}

impl ChangeRequest {
    /// The organization whose build or task the change concerns.
    pub fn org_id(&self) -> OrgId {
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
pub struct Writer {
    queue: mpsc::Sender<Job>,
}

pub(super) struct Job {
    /// The order in which the writer received it.
    pub(super) seq: u64,
    pub(super) request: ChangeRequest,
    /// The mutation's audit event, recorded with the change when it succeeds.
    pub(super) audit: AuditDraft,
    pub(super) reply: oneshot::Sender<Result<Changed>>,
}

impl Job {
    fn parts(&self) -> (&ChangeRequest, &AuditDraft) {
        (&self.request, &self.audit)
    }
}

impl Writer {
    /// Starts the writer of this process's changes on the outbox's writing connection (see
    /// [`store::connect_writer`]); it runs while a handle is left.
    pub fn start(outbox: Outbox) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(write_changes(outbox, jobs));
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
                seq: 0,
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

/// The writer: takes a fair batch of what is waiting (see [`Waiting::batch`]) and writes it in
/// one transaction.
async fn write_changes(outbox: Outbox, mut jobs: mpsc::Receiver<Job>) {
    let mut waiting = Waiting::default();
    loop {
        if waiting.len == 0 {
            match jobs.recv().await {
                Some(job) => waiting.push(job),
                None => return,
            }
        }
        // What was handed over is taken in, so that a batch sees every organization's changes
        // and not only those of the one that sent the most; up to a bound, past which callers
        // wait to hand theirs over (a caller that gave up waiting leaves its change queued).
        while waiting.len < QUEUE {
            let Ok(job) = jobs.try_recv() else { break };
            waiting.push(job);
        }
        let batch = waiting.batch();
        // A batch runs as a task of its own: should it panic, its changes' callers get an
        // error (their answers are dropped) and the writer goes on with the next ones.
        let span = tracing::info_span!("change_batch", changes = batch.len());
        let written = tokio::spawn({
            let outbox = outbox.clone();
            async move { write_batch(&outbox, batch).await }.instrument(span)
        });
        match written.await {
            Ok(Answered { deferred, tasks }) => {
                waiting.learn(tasks);
                for job in deferred {
                    waiting.put(job);
                }
            }
            Err(err) => tracing::error!(error = %err, "a batch of changes failed"),
        }
    }
}

/// What a batch came to for the writer: the changes it deferred, to be written later, and the
/// builds of the tasks it read.
struct Answered {
    deferred: Vec<Job>,
    tasks: Vec<TaskBuild>,
}

/// Writes a batch and answers its changes; the changes whose build was taken, to be written in
/// a later batch.
async fn write_batch(outbox: &Outbox, batch: Vec<Job>) -> Answered {
    let requests: Vec<_> = batch.iter().map(Job::parts).collect();
    let mut tasks = Vec::new();
    match write(outbox, &requests, &mut tasks).await {
        Ok(results) => {
            let mut deferred = Vec::new();
            for (job, result) in batch.into_iter().zip(results) {
                match result {
                    Some(result) => {
                        if let Ok(Changed::Task(task)) = &result {
                            tasks
                                .push((task.id.into(), (task.org_id.into(), task.build_id.into())));
                        }
                        let _ = job.reply.send(result);
                    }
                    None => deferred.push(job),
                }
            }
            Answered { deferred, tasks }
        }
        Err(Failed::Commit) => {
            // Whether a failed commit took effect is unknown: the changes are not written
            // again, and their clients learn that they may have been recorded.
            for job in batch {
                let _ = job.reply.send(Err(Error::Unconfirmed));
            }
            Answered {
                deferred: Vec::new(),
                tasks,
            }
        }
        Err(Failed::Before(err)) if batch.len() == 1 => {
            if let Some(job) = batch.into_iter().next() {
                let _ = job.reply.send(Err(err));
            }
            Answered {
                deferred: Vec::new(),
                tasks,
            }
        }
        Err(Failed::Before(_)) => {
            // The cause was logged where it became an [`Error`].
            tracing::warn!(
                changes = batch.len(),
                "a batch of changes failed before its commit; writing its changes one at a time"
            );
            outbox.metrics().change_batches_split.inc();
            for job in batch {
                let result = match write(outbox, &[job.parts()], &mut tasks).await {
                    Ok(mut results) => results
                        .pop()
                        .flatten()
                        .unwrap_or_else(|| Err(Error::internal("a lone change was deferred"))),
                    Err(Failed::Before(err)) => Err(err),
                    Err(Failed::Commit) => Err(Error::Unconfirmed),
                };
                let _ = job.reply.send(result);
            }
            Answered {
                deferred: Vec::new(),
                tasks,
            }
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
/// one's result, or `None` for a change deferred to a later batch because its build was taken.
/// The builds of the existing tasks it reads are added to `tasks`, whatever becomes of the
/// transaction.
async fn write(
    outbox: &Outbox,
    requests: &[(&ChangeRequest, &AuditDraft)],
    tasks: &mut Vec<TaskBuild>,
) -> Result<Vec<Option<Result<Changed>>>, Failed> {
    let _turn = outbox.writes().turn().await;
    let tx = Arc::new(
        store::begin_change(outbox.writes().conn())
            .await
            .map_err(Failed::Before)?,
    );
    let now = crate::now_ms();
    let mut taken = Taken::read(&tx, requests).await.map_err(Failed::Before)?;
    tasks.extend(
        taken
            .known_tasks
            .values()
            .map(|task| (task.id.into(), (task.org_id.into(), task.build_id.into()))),
    );
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
    taken.branches.write(&*tx).await.map_err(Failed::Before)?;
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
    orgs.extend(changes.iter().map(|change| change.org_id.get()));
    orgs.sort_unstable();
    orgs.dedup();
    let endpoints = store::endpoints::enabled_of(&*tx, &orgs)
        .await
        .map_err(Failed::Before)?;
    // The events' deliveries first: their payloads are rendered before the endpoints'
    // counters are taken, which stay locked until the commit.
    let mut numbers = Numbers::of(&endpoints);
    let events = changes.len() as u64;
    let due = outbox
        .record(&tx, changes, &endpoints, &mut numbers)
        .await
        .map_err(Failed::Before)?;
    let audits_due = outbox
        .record_audits(&*tx, audits, &users, &endpoints, &mut numbers)
        .await
        .map_err(Failed::Before)?;
    numbers.write(&*tx).await.map_err(Failed::Before)?;
    outbox
        .commit(tx, events, due || audits_due)
        .await
        .map_err(|_| Failed::Commit)?;
    outbox.learn_users(users);
    Ok(results)
}
