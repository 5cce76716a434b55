//! The changes waiting for the writer, and how a fair batch is taken from them.

use std::collections::{HashMap, HashSet, VecDeque};

use super::{ChangeRequest, Job, KNOWN_TASKS, LOOK_PAST, MAX_BATCH};
use crate::domain::{BuildId, OrgId, TaskId};

/// What no two changes of a batch may share: a build (or, until its build is known, a task).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Key {
    Build(BuildId),
    Task(TaskId),
}

/// A task's organization and build.
pub(super) type TaskBuild = (TaskId, (OrgId, BuildId));

/// The changes waiting for the writer: one queue per organization, each in the order its
/// changes came, and the organizations in the order they are served.
#[derive(Default)]
pub(super) struct Waiting {
    pub(super) by_org: HashMap<OrgId, VecDeque<Job>>,
    pub(super) turns: VecDeque<OrgId>,
    pub(super) len: usize,
    pub(super) received: u64,
    /// Each task's organization and build, as batches read them: neither ever changes.
    pub(super) tasks: HashMap<TaskId, (OrgId, BuildId)>,
}

impl Waiting {
    /// A change just received.
    pub(super) fn push(&mut self, mut job: Job) {
        job.seq = self.received;
        self.received += 1;
        self.put(job);
    }

    /// A change back in its organization's queue, at its place by the order it came in: one
    /// deferred by its batch goes ahead of the later changes of its build.
    pub(super) fn put(&mut self, job: Job) {
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
    pub(super) fn learn(&mut self, tasks: Vec<TaskBuild>) {
        if self.tasks.len() + tasks.len() > KNOWN_TASKS {
            self.tasks.clear();
        }
        self.tasks.extend(tasks);
    }

    /// What `request` may not share a batch with; none for a new build, which no other change
    /// can name yet.
    pub(super) fn key(
        tasks: &HashMap<TaskId, (OrgId, BuildId)>,
        request: &ChangeRequest,
    ) -> Option<Key> {
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
    pub(super) fn batch(&mut self) -> Vec<Job> {
        #[derive(Default)]
        struct Scan {
            at: usize,
            taken: HashSet<Key>,
            /// Whether a change passed over names a task whose build is not known: any later
            /// change may be of that build.
            passed_unknown: bool,
        }
        let mut batch = Vec::new();
        let mut scans: HashMap<OrgId, Scan> = HashMap::new();
        let mut open: Vec<OrgId> = self.turns.iter().copied().collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BuildStatus, TaskStatus};
    use crate::events::audit::Actor;
    use crate::events::audit::AuditDraft;
    use tokio::sync::oneshot;

    fn job(request: ChangeRequest) -> Job {
        let audit = AuditDraft::new(
            request.org_id().get(),
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
            org_id: org_id.into(),
            task_id: task_id.into(),
            status: TaskStatus::Executing,
            notifications: Vec::new(),
        })
    }

    fn build(org_id: i64, build_id: i64) -> Job {
        job(ChangeRequest::UpdateBuildStatus {
            org_id: org_id.into(),
            build_id: build_id.into(),
            status: BuildStatus::Executing,
            only_from: None,
        })
    }

    /// That task `task` of organization `org` is of build `build`.
    fn known(task: i64, org: i64, build: i64) -> TaskBuild {
        (task.into(), (org.into(), build.into()))
    }

    /// The organization and the task or build of each change.
    fn named(batch: &[Job]) -> Vec<(i64, i64)> {
        batch
            .iter()
            .map(|job| match &job.request {
                ChangeRequest::UpdateTaskStatus {
                    org_id, task_id, ..
                } => (org_id.get(), task_id.get()),
                ChangeRequest::UpdateBuildStatus {
                    org_id, build_id, ..
                } => (org_id.get(), build_id.get()),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn a_flood_of_one_builds_changes_takes_one_place_in_a_batch() {
        let mut waiting = Waiting::default();
        // Organization 1's tasks 1 to 500 are of its build 7.
        waiting.learn((1..=500).map(|task| known(task, 1, 7)).collect());
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
        waiting.learn(vec![known(1, 1, 7), known(2, 1, 7)]);
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
        waiting.learn(vec![known(3, 1, 7)]);
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
        waiting.learn(vec![known(1, 1, 7), known(2, 1, 7)]);
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
        waiting.learn(vec![known(1, 1, 7), known(2, 1, 7)]);
        waiting.push(task(2, 1));
        waiting.push(task(1, 2));
        let mut got = named(&waiting.batch());
        got.sort_unstable();
        assert_eq!(got, [(1, 2), (2, 1)]);
    }
}
