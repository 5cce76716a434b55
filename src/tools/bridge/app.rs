//! The app mode: one Slack message per build, edited in place, and one reply per task in its
//! thread, through Slack's Web API with a bot token.
//!
//! Deliveries record their state on the [`Board`] and wait. One sender task makes the calls,
//! one at a time, paced by the channel's interval and Slack's `Retry-After`, rendering each
//! message from the latest state when its turn comes, so states that wait coalesce. A delivery
//! is answered 2xx once Slack shows its state or a later one; 502 when Slack refuses the call;
//! 503 with `Retry-After` when Slack is busy past `max_wait`. Its state then stays on the board
//! and lands when Slack lets it, and the sender's own retry finds it shown: the sender's durable
//! retry, not the bridge's memory, is what survives a restart.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::board::{Board, Fact, Outcome, Progress, SlotId, Unplaceable};
use super::pacer::Pacer;
use super::slack_api::{Call, Failure, SlackApi};
use super::{AppOptions, Recent, Reply};
use crate::slack;

/// How many builds the bridge keeps a message for; past it, the oldest idle one is forgotten
/// (a later event of it posts a new message).
pub const BUILDS: usize = 10_000;

/// The app mode's handle; dropping it stops its sender.
pub(super) struct App {
    shared: Arc<Shared>,
    _stop: DropGuard,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the sender when there may be a call to make.
    work: Notify,
    /// Bumped after each call, to wake the waiting deliveries.
    progress: watch::Sender<u64>,
    /// One call to Slack at a time, the sender's or a ping's, so that the pace holds.
    line: tokio::sync::Mutex<()>,
    api: SlackApi,
    channel: String,
    interval: Duration,
    max_wait: Duration,
    pinged: Recent,
}

struct State {
    board: Board,
    pacer: Pacer,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; go on with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What to tell a sender whose delivery is not shown in time: when the calls queued now
    /// should be made, so that its retry does not come back (and spend an attempt) too early.
    fn retry_after(&self) -> Duration {
        let state = self.state();
        let queue = self
            .interval
            .saturating_mul(u32::try_from(state.board.queued()).unwrap_or(u32::MAX));
        state.pacer.retry_after(Instant::now()).max(queue)
    }
}

impl App {
    /// Starts the sender; needs a Tokio runtime.
    pub fn start(
        api: SlackApi,
        options: &AppOptions,
        public_url: Option<&str>,
        max_wait: Duration,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                board: Board::new(&options.channel, public_url, BUILDS),
                pacer: Pacer::new(options.channel_interval, Instant::now()),
            }),
            work: Notify::new(),
            progress: watch::Sender::new(0),
            line: tokio::sync::Mutex::new(()),
            api,
            channel: options.channel.clone(),
            interval: options.channel_interval,
            max_wait,
            pinged: Recent::default(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(send_loop(shared.clone(), stop.clone()));
        Self {
            shared,
            _stop: stop.drop_guard(),
        }
    }

    /// Shows a build or task event delivered as `key`, and answers once Slack shows it.
    pub async fn deliver(&self, key: &str, fact: &Fact<'_>) -> Reply {
        let shared = &self.shared;
        let (id, version, repeat) = {
            let mut state = shared.state();
            let recorded = match state.board.repeat(key) {
                Some((id, version)) => {
                    state.board.rearm(&id);
                    Ok((id, version, true))
                }
                None => (state.board.ingest(key, fact)).map(|(id, version)| (id, version, false)),
            };
            match recorded {
                Ok(recorded) => {
                    state.board.wait(&recorded.0, true);
                    recorded
                }
                Err(Unplaceable::NoBuildId) => {
                    return Reply::Unprocessable(
                        "The delivery has no build id; the Slack app mode needs build { id } to keep one message per build.",
                    );
                }
                Err(Unplaceable::NoTaskId) => {
                    return Reply::Unprocessable(
                        "The task event has no task id; the Slack app mode needs task { id } to keep one reply per task.",
                    );
                }
            }
        };
        let _waiting = Waiting { shared, id: &id };
        shared.work.notify_one();
        let deadline = Instant::now() + shared.max_wait;
        let mut progress = shared.progress.subscribe();
        let mut first = true;
        loop {
            let (fare, ready_at) = {
                let state = shared.state();
                (state.board.progress(&id, version), state.pacer.ready_at())
            };
            match fare {
                Progress::Shown if repeat && first => return Reply::Done("already shown"),
                Progress::Shown => return Reply::Done("shown"),
                Progress::Refused(reason) => return Reply::Refused(reason),
                Progress::Waiting => {}
            }
            first = false;
            // Slack said it takes nothing before the deadline: hand the retry back now.
            if ready_at > deadline {
                return Reply::Later(shared.retry_after());
            }
            tokio::select! {
                changed = progress.changed() => {
                    if changed.is_err() {
                        return Reply::Later(Duration::from_secs(1));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    tracing::info!(build = %id.build, task = ?id.task, "Slack did not show the state in time; answering 503");
                    return Reply::Later(shared.retry_after());
                }
            }
        }
    }

    /// Posts the ping's message (a test delivery) to the channel, in the channel's pace.
    pub async fn ping(&self, key: &str) -> Reply {
        let shared = &self.shared;
        if shared.pinged.contains(key) {
            return Reply::Done("already forwarded");
        }
        let deadline = Instant::now() + shared.max_wait;
        let later = || Reply::Later(shared.retry_after());
        let Ok(_line) = tokio::time::timeout_at(deadline, shared.line.lock()).await else {
            return later();
        };
        let ready_at = shared.state().pacer.ready_at();
        if ready_at > deadline {
            return later();
        }
        tokio::time::sleep_until(ready_at).await;
        let call = Call::Post {
            channel: shared.channel.clone(),
            thread_ts: None,
            message: slack::ping_message(),
        };
        let sent_at = Instant::now();
        let answer = shared.api.send(&call).await;
        shared.state().pacer.after(sent_at, Instant::now(), &answer);
        match answer {
            Ok(_) => {
                shared.pinged.insert(key);
                Reply::Done("forwarded")
            }
            Err(Failure::RateLimited(_) | Failure::Unavailable(_)) => later(),
            Err(Failure::MessageNotFound) => {
                Reply::Refused("Slack answered message_not_found to a new message.".into())
            }
            Err(Failure::Refused(reason)) => Reply::Refused(reason),
        }
    }
}

/// A delivery waiting for a message, counted on the board while it waits.
struct Waiting<'a> {
    shared: &'a Shared,
    id: &'a SlotId,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.shared.state().board.wait(self.id, false);
    }
}

/// The sender: takes the board's next call when the pacer lets it, makes it, and records how
/// it went, until `stop`.
async fn send_loop(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let notified = shared.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !shared.state().board.has_work() {
            tokio::select! {
                () = notified => continue,
                () = stop.cancelled() => return,
            }
        }
        let _line = shared.line.lock().await;
        let ready_at = shared.state().pacer.ready_at();
        tokio::select! {
            () = tokio::time::sleep_until(ready_at) => {}
            () = stop.cancelled() => return,
        }
        // Taken only now, so that it shows whatever arrived during the wait.
        let Some(send) = shared.state().board.next() else {
            continue;
        };
        let sent_at = Instant::now();
        let answer = shared.api.send(&send.call).await;
        let outcome = match &answer {
            Ok(posted) => Outcome::Shown(posted.clone()),
            Err(Failure::MessageNotFound) => {
                tracing::info!(build = %send.slot.build, task = ?send.slot.task, "the message was deleted in Slack; posting it anew");
                Outcome::Gone
            }
            Err(Failure::RateLimited(wait)) => {
                tracing::info!(wait = ?wait, "Slack rate-limits the bot; waiting as its Retry-After says");
                Outcome::Busy
            }
            Err(Failure::Unavailable(detail)) => {
                tracing::warn!(%detail, "Slack's Web API did not answer; trying again");
                Outcome::Busy
            }
            Err(Failure::Refused(reason)) => {
                tracing::warn!(%reason, build = %send.slot.build, "Slack refused a call");
                Outcome::Refused(reason.clone())
            }
        };
        {
            let mut state = shared.state();
            state.pacer.after(sent_at, Instant::now(), &answer);
            state.board.done(&send, outcome);
        }
        shared.progress.send_modify(|calls| *calls += 1);
    }
}
