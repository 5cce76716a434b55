//! The app mode's picture of the channel, without I/O: for each build, its message and one reply
//! per task, what each should show, what Slack shows, and which call to make next.
//!
//! A delivery records its event with [`Board::ingest`], which names the message that must show
//! it and the version to wait for; the sender takes the next call from [`Board::next`] and
//! reports how it went to [`Board::done`]; the delivery is answered once [`Board::progress`]
//! says Slack shows that version or a later one.
//!
//! Coalescing falls out of rendering at send time: a message is rendered from the latest state
//! when its turn comes, so states that arrived while it waited (paced or rate limited) are never
//! sent, and the deliveries that brought them are all answered by the one call.

mod entries;

use std::collections::{HashMap, VecDeque};

use serde_json::Value as Json;

use super::slack_api::{Call, Posted};
use crate::domain::status::{BuildStatus, TaskStatus};
use crate::slack::{self, Event};
use entries::{Build, Slot};

/// How many delivery keys the board remembers to know repeats.
const REMEMBERED: usize = 16_384;

/// Which message: a build's, or the reply of one of its tasks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SlotId {
    pub build: String,
    pub task: Option<String>,
}

/// Where a state stands among the states of one build or task, to tell an older one that
/// arrives late (Cirrus CI does not promise order).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Order {
    /// The event's time (`X-Cirrus-Timestamp`, ms), when the sender gave one.
    pub at: Option<i64>,
    pub is_final: bool,
}

impl Order {
    /// Whether a state at `self` may replace one at `current`: by event time when both have
    /// one (the later wins, so a re-run shows), else a final status is never replaced by one
    /// that is not.
    pub fn replaces(self, current: Option<Order>) -> bool {
        let Some(current) = current else {
            return true;
        };
        match (self.at, current.at) {
            (Some(new), Some(old)) => new >= old,
            _ => self.is_final || !current.is_final,
        }
    }
}

/// A build or task event, as the board needs it.
pub struct Fact<'a> {
    pub repository: &'a Json,
    pub build: &'a Json,
    /// Null for build events.
    pub task: &'a Json,
    /// `X-Cirrus-Timestamp`, ms.
    pub at: Option<i64>,
}

/// Why an event cannot have a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unplaceable {
    NoBuildId,
    NoTaskId,
}

/// How a delivery's state fares.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Slack shows it, or a later state.
    Shown,
    /// Slack refused the call that would have shown it (one sentence).
    Refused(String),
    Waiting,
}

/// How a call went, as the board needs it.
#[derive(Debug)]
pub enum Outcome {
    Shown(Posted),
    /// The message was deleted: post it anew.
    Gone,
    /// Slack is busy or failing: the message goes again when the pacer lets it.
    Busy,
    Refused(String),
}

/// The next call, and the version of its message it shows.
#[derive(Debug)]
pub struct Send {
    pub slot: SlotId,
    pub version: u64,
    pub call: Call,
}

/// The builds of one channel (see the module header).
pub struct Board {
    channel: String,
    public_url: Option<String>,
    capacity: usize,
    builds: HashMap<String, Build>,
    /// Build ids, oldest first: past `capacity`, the oldest idle build is forgotten.
    age: VecDeque<String>,
    /// Messages to send, in the order they became due.
    queue: VecDeque<SlotId>,
    /// Deliveries recorded: their message and version.
    seen: HashMap<String, (SlotId, u64)>,
    seen_age: VecDeque<String>,
}

impl Board {
    /// A board posting to `channel` (an id or `#name`) that keeps at most `capacity` builds.
    pub fn new(channel: &str, public_url: Option<&str>, capacity: usize) -> Self {
        Self {
            channel: channel.to_owned(),
            public_url: public_url.map(str::to_owned),
            capacity: capacity.max(1),
            builds: HashMap::new(),
            age: VecDeque::new(),
            queue: VecDeque::new(),
            seen: HashMap::new(),
            seen_age: VecDeque::new(),
        }
    }

    fn slot(&self, id: &SlotId) -> Option<&Slot> {
        self.builds.get(&id.build)?.slot(id.task.as_deref())
    }

    /// The message and version of a delivery recorded before, while its build is known.
    pub fn repeat(&self, key: &str) -> Option<(SlotId, u64)> {
        let (id, version) = self.seen.get(key)?;
        self.slot(id)?;
        Some((id.clone(), *version))
    }

    /// Records an event delivered as `key`: the message that must show it and the version to
    /// wait for (the current one, when the event is older than what the board has).
    pub fn ingest(&mut self, key: &str, fact: &Fact<'_>) -> Result<(SlotId, u64), Unplaceable> {
        let build_id = slack::text(&fact.build["id"]).ok_or(Unplaceable::NoBuildId)?;
        let task_id = match fact.task.is_null() {
            true => None,
            false => Some(slack::text(&fact.task["id"]).ok_or(Unplaceable::NoTaskId)?),
        };
        if !self.builds.contains_key(&build_id) {
            self.forget_oldest();
            self.age.push_back(build_id.clone());
        }
        let build = self.builds.entry(build_id.clone()).or_default();
        let counts = build.counts();
        let mut top_changed = build.top.posted.is_none() && build.top.wanted == 0;
        if !fact.repository.is_null() && build.repository != *fact.repository {
            build.repository = fact.repository.clone();
            top_changed = true;
        }
        // A task event carries the build as it was then; without a status it says too little.
        let status = fact.build["status"].as_str();
        if task_id.is_none() || status.is_some() || build.json.is_null() {
            let order = Order {
                at: fact.at,
                is_final: status
                    .and_then(BuildStatus::parse)
                    .is_some_and(BuildStatus::is_final),
            };
            if order.replaces(build.order) {
                build.order = Some(order);
                if build.json != *fact.build {
                    build.json = fact.build.clone();
                    top_changed = true;
                }
            }
        }
        if let Some(task_id) = &task_id {
            if !build.tasks.contains_key(task_id) {
                build.task_ids.push(task_id.clone());
            }
            let task = build.tasks.entry(task_id.clone()).or_default();
            let order = Order {
                at: fact.at,
                is_final: fact.task["status"]
                    .as_str()
                    .and_then(TaskStatus::parse)
                    .is_some_and(TaskStatus::is_final),
            };
            if order.replaces(task.order) {
                task.order = Some(order);
                if task.json != *fact.task {
                    task.json = fact.task.clone();
                    task.slot.wanted += 1;
                }
            }
        }
        if top_changed || build.counts() != counts {
            build.top.wanted += 1;
        }
        let id = SlotId {
            build: build_id,
            task: task_id,
        };
        self.rearm(&id);
        let version = self.slot(&id).map_or(0, |slot| slot.wanted);
        self.remember(key, &id, version);
        Ok((id, version))
    }

    /// Queues the message `id` (and its build's, which its thread needs) again when Slack
    /// does not show its latest version and nothing is on the way: after a refusal, a repeat
    /// tries again.
    pub fn rearm(&mut self, id: &SlotId) {
        let top = SlotId {
            build: id.build.clone(),
            task: None,
        };
        for id in [top, id.clone()] {
            let Some(build) = self.builds.get_mut(&id.build) else {
                return;
            };
            let Some(slot) = build.slot_mut(id.task.as_deref()) else {
                continue;
            };
            if slot.shown < slot.wanted && !slot.queued {
                slot.queued = true;
                slot.refused = None;
                self.queue.push_back(id);
            }
        }
    }

    fn remember(&mut self, key: &str, id: &SlotId, version: u64) {
        if self
            .seen
            .insert(key.to_owned(), (id.clone(), version))
            .is_none()
        {
            self.seen_age.push_back(key.to_owned());
        }
        while self.seen_age.len() > REMEMBERED {
            if let Some(oldest) = self.seen_age.pop_front() {
                self.seen.remove(&oldest);
            }
        }
    }

    /// Makes room for one more build: forgets the oldest builds nothing waits for.
    fn forget_oldest(&mut self) {
        while self.builds.len() >= self.capacity {
            let Some(at) = self
                .age
                .iter()
                .position(|id| self.builds.get(id).is_none_or(Build::idle))
            else {
                return;
            };
            if let Some(id) = self.age.remove(at) {
                self.builds.remove(&id);
            }
        }
    }

    /// Counts a delivery as waiting for `id` (or no longer): waited-for messages go first.
    pub fn wait(&mut self, id: &SlotId, waiting: bool) {
        if let Some(slot) = self
            .builds
            .get_mut(&id.build)
            .and_then(|build| build.slot_mut(id.task.as_deref()))
        {
            match waiting {
                true => slot.waiting += 1,
                false => slot.waiting = slot.waiting.saturating_sub(1),
            }
        }
    }

    /// How version `version` of `id` fares.
    pub fn progress(&self, id: &SlotId, version: u64) -> Progress {
        // A build is forgotten only once nothing waits for it.
        let Some(slot) = self.slot(id) else {
            return Progress::Shown;
        };
        match &slot.refused {
            _ if slot.shown >= version => Progress::Shown,
            Some((refused, reason)) if *refused >= version => Progress::Refused(reason.clone()),
            _ => Progress::Waiting,
        }
    }

    /// How many messages wait for a call.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Whether a call can be made now.
    pub fn has_work(&self) -> bool {
        self.pick().is_some()
    }

    /// The queue's next message: the first one a delivery waits for, else the first; a reply
    /// waits until its build's message is posted.
    fn pick(&self) -> Option<usize> {
        let ready = |id: &SlotId| {
            id.task.is_none()
                || self
                    .builds
                    .get(&id.build)
                    .is_some_and(|b| b.top.posted.is_some())
        };
        let awaited = |id: &SlotId| {
            let Some(build) = self.builds.get(&id.build) else {
                return false;
            };
            match &id.task {
                Some(task) => build.tasks.get(task).is_some_and(|t| t.slot.waiting > 0),
                None => {
                    build.top.waiting > 0
                        || (build.top.posted.is_none()
                            && build.tasks.values().any(|t| t.slot.waiting > 0))
                }
            }
        };
        let ready_ones = || self.queue.iter().enumerate().filter(|(_, id)| ready(id));
        ready_ones()
            .find(|(_, id)| awaited(id))
            .or_else(|| ready_ones().next())
            .map(|(at, _)| at)
    }

    /// Takes the next call off the queue, its message rendered from the latest state.
    pub fn next(&mut self) -> Option<Send> {
        let at = self.pick()?;
        let id = self.queue.remove(at)?;
        let build = self.builds.get_mut(&id.build)?;
        let public_url = self.public_url.as_deref();
        let thread = build.top.posted.clone();
        let (message, slot) = match &id.task {
            None => {
                let event = Event {
                    kind: "build",
                    action: "updated",
                    old_status: None,
                    repository: &build.repository,
                    build: &build.json,
                    task: &Json::Null,
                };
                let message = slack::build_message(&event, public_url, &build.counts());
                (message, &mut build.top)
            }
            Some(task_id) => {
                let task = build.tasks.get_mut(task_id)?;
                let event = Event {
                    kind: "task",
                    action: "updated",
                    old_status: None,
                    repository: &build.repository,
                    build: &build.json,
                    task: &task.json,
                };
                (slack::thread_reply(&event, public_url), &mut task.slot)
            }
        };
        slot.queued = false;
        let call = match (&slot.posted, &id.task) {
            (Some(posted), _) => Call::Update {
                channel: posted.channel.clone(),
                ts: posted.ts.clone(),
                message,
            },
            (None, None) => Call::Post {
                channel: self.channel.clone(),
                thread_ts: None,
                message,
            },
            (None, Some(_)) => {
                let thread = thread?;
                Call::Post {
                    channel: thread.channel,
                    thread_ts: Some(thread.ts),
                    message,
                }
            }
        };
        Some(Send {
            version: slot.wanted,
            slot: id,
            call,
        })
    }

    /// Records how `send` went.
    pub fn done(&mut self, send: &Send, outcome: Outcome) {
        let id = &send.slot;
        let Some(build) = self.builds.get_mut(&id.build) else {
            return;
        };
        let Some(slot) = build.slot_mut(id.task.as_deref()) else {
            return;
        };
        let mut again_first = false;
        match outcome {
            Outcome::Shown(posted) => {
                slot.posted = Some(posted);
                slot.shown = slot.shown.max(send.version);
                if id.task.is_none() && matches!(send.call, Call::Post { .. }) {
                    // A build's message posted anew starts a new thread: every reply goes
                    // again, in it.
                    for task_id in &build.task_ids {
                        let Some(task) = build.tasks.get_mut(task_id) else {
                            continue;
                        };
                        if task.slot.posted.take().is_some() {
                            task.slot.wanted += 1;
                            if !task.slot.queued {
                                task.slot.queued = true;
                                self.queue.push_back(SlotId {
                                    build: id.build.clone(),
                                    task: Some(task_id.clone()),
                                });
                            }
                        }
                    }
                }
            }
            Outcome::Gone => {
                slot.posted = None;
                again_first = true;
            }
            Outcome::Busy => again_first = true,
            Outcome::Refused(reason) => {
                slot.refused = Some((send.version, reason.clone()));
                if id.task.is_none() && slot.posted.is_none() {
                    // Its replies cannot go without it: they fail with it.
                    for (task_id, task) in &mut build.tasks {
                        if task.slot.queued {
                            task.slot.queued = false;
                            task.slot.refused = Some((task.slot.wanted, reason.clone()));
                            self.queue.retain(|queued| {
                                queued.task.as_ref() != Some(task_id) || queued.build != id.build
                            });
                        }
                    }
                }
                return;
            }
        }
        let Some(slot) = build.slot_mut(id.task.as_deref()) else {
            return;
        };
        if (again_first || slot.shown < slot.wanted) && !slot.queued {
            slot.queued = true;
            match again_first {
                true => self.queue.push_front(id.clone()),
                false => self.queue.push_back(id.clone()),
            }
        }
    }
}

#[cfg(test)]
mod tests;
