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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use sea_orm::DatabaseTransaction;
use tokio::sync::{mpsc, oneshot};

use super::audit::AuditDraft;
use super::{Change, Outbox};
use crate::domain::{BuildStatus, Notification, TaskStatus};
use crate::store::audit::UserKey;
use crate::store::entities::{build, task};
use crate::store::{self, ci::NewBuild, ci::NewTask};
use crate::{Error, Result};

/// The most changes one transaction writes.
const MAX_BATCH: usize = 64;

/// How many changes may wait for the writer before callers wait to hand theirs over.
const QUEUE: usize = 1024;

/// The most waiting changes of one organization that a batch passes over, their build being
/// taken, while it looks for one it can take: the rest wait for a later batch.
const LOOK_PAST: usize = 1024;

/// How many tasks' builds the writer remembers before it starts over.
const KNOWN_TASKS: usize = 100_000;

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
pub struct Writer {
    queue: mpsc::Sender<Job>,
}

struct Job {
    /// The order in which the writer received it.
    seq: u64,
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
        let written = tokio::spawn({
            let outbox = outbox.clone();
            async move { write_batch(&outbox, batch).await }
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

/// What no two changes of a batch may share: a build (or, until its build is known, a task).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Build(i64),
    Task(i64),
}

/// A task's organization and build.
type TaskBuild = (i64, (i64, i64));

/// The changes waiting for the writer: one queue per organization, each in the order its
/// changes came, and the organizations in the order they are served.
#[derive(Default)]
struct Waiting {
    by_org: HashMap<i64, VecDeque<Job>>,
    turns: VecDeque<i64>,
    len: usize,
    received: u64,
    /// Each task's organization and build, as batches read them: neither ever changes.
    tasks: HashMap<i64, (i64, i64)>,
}

impl Waiting {
    /// A change just received.
    fn push(&mut self, mut job: Job) {
        job.seq = self.received;
        self.received += 1;
        self.put(job);
    }

    /// A change back in its organization's queue, at its place by the order it came in: one
    /// deferred by its batch goes ahead of the later changes of its build.
    fn put(&mut self, job: Job) {
        let org = job.request.org_id();
        let queue = match self.by_org.entry(org) {
            std::collections::hash_map::Entry::Occupied(queue) => queue.into_mut(),
            std::collections::hash_map::Entry::Vacant(empty) => {
                self.turns.push_back(org);
                empty.insert(VecDeque::new())
            }
        };
        let at = queue.partition_point(|waiting| waiting.seq < job.seq);
        queue.insert(at, job);
        self.len += 1;
    }

    /// Remembers the builds of tasks a batch read.
    fn learn(&mut self, tasks: Vec<TaskBuild>) {
        if self.tasks.len() + tasks.len() > KNOWN_TASKS {
            self.tasks.clear();
        }
        self.tasks.extend(tasks);
    }

    /// What `request` may not share a batch with; none for a new build, which no other change
    /// can name yet.
    fn key(tasks: &HashMap<i64, (i64, i64)>, request: &ChangeRequest) -> Option<Key> {
        match request {
            ChangeRequest::CreateBuild { .. } => None,
            ChangeRequest::UpdateBuildStatus { build_id, .. }
            | ChangeRequest::CreateTask { build_id, .. } => Some(Key::Build(*build_id)),
            ChangeRequest::UpdateTaskStatus {
                org_id, task_id, ..
            } => Some(match tasks.get(task_id) {
                Some((org, build)) if org == org_id => Key::Build(*build),
                _ => Key::Task(*task_id),
            }),
        }
    }

    /// The next batch: up to [`MAX_BATCH`] changes, one of each organization in turn, each the
    /// first of its organization's queue whose build (or task) the batch does not hold yet.
    /// Keys are per organization: a change naming another organization's task fails on its
    /// own, so it holds up none of that organization's changes.
    ///
    /// A build's changes stay in order: one is passed over only when its key is taken, and
    /// then so are the later ones of the same key. A change of a task whose build is not known
    /// yet may enter a batch behind a change of the same build; the batch then defers it (and
    /// any later change of the build, whose key the earlier one took), and [`Waiting::put`]
    /// gives them back their places.
    fn batch(&mut self) -> Vec<Job> {
        #[derive(Default)]
        struct Scan {
            at: usize,
            taken: HashSet<Key>,
            /// Whether a change passed over names a task whose build is not known: any later
            /// change may be of that build.
            passed_unknown: bool,
        }
        let mut batch = Vec::new();
        let mut scans: HashMap<i64, Scan> = HashMap::new();
        let mut open: Vec<i64> = self.turns.iter().copied().collect();
        while !open.is_empty() && batch.len() < MAX_BATCH {
            let mut still = Vec::with_capacity(open.len());
            for org in open {
                if batch.len() == MAX_BATCH {
                    break;
                }
                let Some(queue) = self.by_org.get_mut(&org) else {
                    continue;
                };
                let scan = scans.entry(org).or_default();
                while scan.at < queue.len() && scan.at <= LOOK_PAST {
                    // A change passed over must not be overtaken by a later one of its build,
                    // not even when a failed batch is written again one change at a time: past
                    // a change whose build is unknown only new builds may go, and a change
                    // whose build is unknown only goes when nothing was passed over.
                    let key = Self::key(&self.tasks, &queue[scan.at].request);
                    let free = match key {
                        None => true,
                        Some(Key::Build(_)) if scan.passed_unknown => false,
                        Some(Key::Task(_)) if scan.at > 0 => false,
                        Some(key) => !scan.taken.contains(&key),
                    };
                    if let Some(key) = key {
                        scan.taken.insert(key);
                        scan.passed_unknown |= !free && matches!(key, Key::Task(_));
                    }
                    if free {
                        batch.extend(queue.remove(scan.at));
                        still.push(org);
                        break;
                    }
                    scan.at += 1;
                }
            }
            open = still;
        }
        self.len -= batch.len();
        self.by_org.retain(|_, queue| !queue.is_empty());
        let by_org = &self.by_org;
        self.turns.retain(|org| by_org.contains_key(org));
        // The organization served first this time is served last next time.
        self.turns.rotate_left(1.min(self.turns.len()));
        batch
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
                            tasks.push((task.id, (task.org_id, task.build_id)));
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
            .map(|task| (task.id, (task.org_id, task.build_id))),
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
    /// Its build was taken: it goes in a later batch.
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
            // Another organization's build is not found before it is taken, so that naming it
            // holds up none of that organization's changes.
            let before = build_of(&taken.changed_builds, *org_id, *build_id)?;
            if !taken.build(*build_id) {
                return Ok(Step::Deferred);
            }
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
            let build = build_of(&taken.known_builds, *org_id, *build_id)?;
            if !taken.build(*build_id) {
                return Ok(Step::Deferred);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::audit::Actor;

    fn job(request: ChangeRequest) -> Job {
        let audit = AuditDraft::new(
            request.org_id(),
            Actor {
                username: "test".into(),
                ip: None,
            },
            "updateTaskStatus",
            serde_json::Value::Null,
        );
        Job {
            seq: 0,
            request,
            audit,
            reply: oneshot::channel().0,
        }
    }

    fn task(org_id: i64, task_id: i64) -> Job {
        job(ChangeRequest::UpdateTaskStatus {
            org_id,
            task_id,
            status: TaskStatus::Executing,
            notifications: Vec::new(),
        })
    }

    fn build(org_id: i64, build_id: i64) -> Job {
        job(ChangeRequest::UpdateBuildStatus {
            org_id,
            build_id,
            status: BuildStatus::Executing,
        })
    }

    /// The organization and the task or build of each change.
    fn named(batch: &[Job]) -> Vec<(i64, i64)> {
        batch
            .iter()
            .map(|job| match &job.request {
                ChangeRequest::UpdateTaskStatus {
                    org_id, task_id, ..
                } => (*org_id, *task_id),
                ChangeRequest::UpdateBuildStatus {
                    org_id, build_id, ..
                } => (*org_id, *build_id),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn a_flood_of_one_builds_changes_takes_one_place_in_a_batch() {
        let mut waiting = Waiting::default();
        // Organization 1's tasks 1 to 500 are of its build 7.
        waiting.learn((1..=500).map(|task| (task, (1, 7))).collect());
        for id in 1..=500 {
            waiting.push(task(1, id));
        }
        for id in 100..110 {
            waiting.push(build(2, id));
        }
        let batch = waiting.batch();
        let mut expected = vec![(1, 1)];
        expected.extend((100..110).map(|id| (2, id)));
        let mut got = named(&batch);
        got.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!(waiting.len, 499);
        assert_eq!(named(&waiting.batch()), [(1, 2)]);
    }

    #[test]
    fn organizations_take_turns_in_a_full_batch() {
        let mut waiting = Waiting::default();
        for org in 1..=3 {
            for id in 0..100 {
                waiting.push(build(org, org * 1000 + id));
            }
        }
        let batch = waiting.batch();
        assert_eq!(batch.len(), MAX_BATCH);
        for org in 1..=3 {
            let of_org = named(&batch).iter().filter(|(o, _)| *o == org).count();
            assert!((21..=22).contains(&of_org), "organization {org}: {of_org}");
        }
    }

    /// Changes of one build are taken in the order they came, across batches, also when a
    /// batch defers one whose task's build it did not know and gives it back.
    #[test]
    fn a_builds_changes_are_taken_in_the_order_they_came() {
        let mut waiting = Waiting::default();
        // Tasks 1 and 2 are known to be of build 7; task 3 is of build 7 too, not known yet.
        waiting.learn(vec![(1, (1, 7)), (2, (1, 7))]);
        waiting.push(task(1, 1));
        waiting.push(task(1, 2));
        waiting.push(build(1, 8));
        waiting.push(task(1, 3));
        waiting.push(task(1, 1));
        // Past the second change of build 7, passed over, no change whose build is not known
        // may go: it could be of build 7 (it is), and a failed batch is written again one
        // change at a time, without the checks that would defer it.
        assert_eq!(named(&waiting.batch()), [(1, 1), (1, 8)]);
        let second = waiting.batch();
        assert_eq!(named(&second), [(1, 2), (1, 3)]);
        // The batch defers the change of task 3, whose build it held, and learns the build.
        let deferred = second.into_iter().nth(1).unwrap();
        waiting.learn(vec![(3, (1, 7))]);
        waiting.put(deferred);
        assert_eq!(named(&waiting.batch()), [(1, 3)]);
        assert_eq!(named(&waiting.batch()), [(1, 1)]);
        assert_eq!(waiting.len, 0);
        assert!(waiting.batch().is_empty());
    }

    /// A change whose build is not known never enters a batch past a change it may follow: the
    /// batch holds the first change of build 7 and nothing of the organization after it.
    #[test]
    fn an_unknown_tasks_change_does_not_pass_a_change_passed_over() {
        let mut waiting = Waiting::default();
        waiting.learn(vec![(1, (1, 7)), (2, (1, 7))]);
        waiting.push(task(1, 1));
        waiting.push(task(1, 2));
        waiting.push(task(1, 3));
        waiting.push(build(1, 9));
        assert_eq!(named(&waiting.batch()), [(1, 1)]);
        assert_eq!(waiting.len, 3);
    }

    /// A change naming another organization's task takes no key of that organization's.
    #[test]
    fn a_change_naming_another_organizations_task_holds_up_none_of_its_changes() {
        let mut waiting = Waiting::default();
        waiting.learn(vec![(1, (1, 7)), (2, (1, 7))]);
        waiting.push(task(2, 1));
        waiting.push(task(1, 2));
        let mut got = named(&waiting.batch());
        got.sort_unstable();
        assert_eq!(got, [(1, 2), (2, 1)]);
    }
}
