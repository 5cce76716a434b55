//! What the board keeps of each build: its message, its tasks' replies, and the states they
//! show.

use std::collections::HashMap;

use serde_json::Value as Json;

use super::Order;
use crate::slack::TaskCounts;
use crate::tools::bridge::slack_api::Posted;

/// One message in Slack: a build's, or a task's reply in its thread.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) posted: Option<Posted>,
    /// Bumped by each change the message should show.
    pub(super) wanted: u64,
    /// The latest version Slack shows.
    pub(super) shown: u64,
    /// The latest version Slack refused, and why.
    pub(super) refused: Option<(u64, String)>,
    /// Deliveries waiting for this message.
    pub(super) waiting: usize,
    /// Whether it is in the queue.
    pub(super) queued: bool,
}

impl Slot {
    /// Whether a call or a delivery still needs it: it must not be forgotten.
    pub(super) fn busy(&self) -> bool {
        self.queued || self.waiting > 0
    }
}

/// A task: its latest state and its reply.
#[derive(Default)]
pub(super) struct Task {
    pub(super) json: Json,
    pub(super) order: Option<Order>,
    pub(super) slot: Slot,
}

/// A build: its latest state, its message, and its tasks.
#[derive(Default)]
pub(super) struct Build {
    pub(super) repository: Json,
    pub(super) json: Json,
    pub(super) order: Option<Order>,
    pub(super) top: Slot,
    pub(super) tasks: HashMap<String, Task>,
    /// Task ids in the order they came, so a thread posted anew keeps it.
    pub(super) task_ids: Vec<String>,
}

impl Build {
    /// How its tasks stand, for its message's summary.
    pub(super) fn counts(&self) -> TaskCounts {
        let mut counts = TaskCounts::default();
        for task in self.tasks.values() {
            counts.add(task.json["status"].as_str());
        }
        counts
    }

    pub(super) fn slot(&self, task: Option<&str>) -> Option<&Slot> {
        match task {
            None => Some(&self.top),
            Some(id) => self.tasks.get(id).map(|task| &task.slot),
        }
    }

    pub(super) fn slot_mut(&mut self, task: Option<&str>) -> Option<&mut Slot> {
        match task {
            None => Some(&mut self.top),
            Some(id) => self.tasks.get_mut(id).map(|task| &mut task.slot),
        }
    }

    /// Whether nothing needs it any more, so that it may be forgotten.
    pub(super) fn idle(&self) -> bool {
        !self.top.busy() && self.tasks.values().all(|task| !task.slot.busy())
    }
}
