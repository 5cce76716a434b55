//! The transactional outbox: an event and its deliveries are written in the transaction of the
//! change they describe, and the worker is woken once it commits.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sea_orm::{ConnectionTrait, DatabaseTransaction};
use serde_json::json;
use tokio::sync::{Notify, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use super::{Rendered, Renderer};
use crate::domain::status::parse_stored;
use crate::domain::{BuildStatus, EventKind, PayloadFormat, TaskStatus};
use crate::metrics::Metrics;
use crate::store::deliveries::{EventDeliveries, FailedDelivery, NewDelivery, NewEvent};
use crate::store::entities::{build, delivery, task, webhook_endpoint};
use crate::store::{self, Db};
use crate::{Error, Result};

/// A build or task change, as an event.
#[derive(Clone, Debug)]
pub struct Change {
    pub org_id: i64,
    pub kind: EventKind,
    /// `created` or `updated`.
    pub action: &'static str,
    pub old_status: Option<&'static str>,
    /// The build's (build events) or task's (task events) status after the change.
    pub status: String,
    pub repository_id: i64,
    pub build_id: i64,
    pub task_id: Option<i64>,
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
            org_id: build.org_id,
            kind: EventKind::Build,
            action: "created",
            old_status: None,
            status: build.status.clone(),
            repository_id: build.repository_id,
            build_id: build.id,
            task_id: None,
            timestamp: build.created_at,
            build_row: Some(build.clone()),
            task_row: None,
            build_tasks: None,
        }
    }

    pub fn build_updated(before: &build::Model, after: &build::Model) -> Result<Self> {
        Ok(Self {
            action: "updated",
            old_status: Some(parse_stored(&before.status, BuildStatus::parse)?.as_str()),
            timestamp: after.status_timestamp,
            ..Self::build_created(after)
        })
    }

    pub fn task_created(task: &task::Model) -> Self {
        Self {
            org_id: task.org_id,
            kind: EventKind::Task,
            action: "created",
            old_status: None,
            status: task.status.clone(),
            repository_id: task.repository_id,
            build_id: task.build_id,
            task_id: Some(task.id),
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

    pub fn task_updated(before: &task::Model, after: &task::Model) -> Result<Self> {
        Ok(Self {
            action: "updated",
            old_status: Some(parse_stored(&before.status, TaskStatus::parse)?.as_str()),
            timestamp: after.status_timestamp,
            ..Self::task_created(after)
        })
    }
}

/// Records events with their deliveries and wakes the worker after commit when some are due.
#[derive(Clone)]
pub struct Outbox {
    renderer: Arc<Renderer>,
    wake: Arc<Notify>,
    metrics: Metrics,
    /// On SQLite, which takes one writing transaction at a time: how the batches of changes and
    /// the delivery worker take turns.
    gate: Option<Arc<RwLock<()>>>,
    /// See [`Outbox::announcer`].
    announcer: Arc<str>,
    /// Users whose ids this process has recorded (see [`Outbox::users`]).
    users: Arc<super::audit::KnownUsers>,
}

/// A batch of changes' turn to write; the transaction must end before it is dropped.
pub struct Turn {
    _held: Option<OwnedRwLockReadGuard<()>>,
}

impl Outbox {
    /// An outbox whose Slack messages link to `public_url`, when given. `one_writer` (SQLite,
    /// whose database takes one writing transaction at a time) makes the batches of changes and
    /// the delivery worker's writes take turns in this process.
    pub fn new(
        wake: Arc<Notify>,
        metrics: Metrics,
        public_url: Option<String>,
        one_writer: bool,
    ) -> Self {
        Self {
            renderer: Arc::new(Renderer::new(public_url)),
            wake,
            metrics,
            gate: one_writer.then(|| Arc::new(RwLock::new(()))),
            announcer: uuid::Uuid::new_v4().simple().to_string().into(),
            users: Arc::default(),
        }
    }

    /// The name this outbox's announcements of due deliveries carry on PostgreSQL's channel.
    /// It wakes its own worker directly, and that worker's listener skips them: woken twice for
    /// one commit, the worker would claim twice, and the second claim would find nothing.
    pub fn announcer(&self) -> &str {
        &self.announcer
    }

    /// Waits for a batch of changes' turn to write; hold it until the transaction ends. The
    /// process's one writer of changes ([`crate::payload::commit`]) takes it, and on SQLite the
    /// delivery worker's writes go first (see [`Outbox::worker_turn`]).
    pub async fn turn(&self) -> Turn {
        Turn {
            _held: match &self.gate {
                Some(gate) => Some(gate.clone().read_owned().await),
                None => None,
            },
        }
    }

    /// On SQLite, the delivery worker's turn to write (a claim, a batch of outcomes): it waits
    /// for the batch of changes being written, if any, and the next batch waits for it. Under a
    /// stream of changes the worker would otherwise get the write lock only now and then, and
    /// deliveries would fall behind. Hold it until the transaction ends.
    pub async fn worker_turn(&self) -> Option<OwnedRwLockWriteGuard<()>> {
        match &self.gate {
            Some(gate) => Some(gate.clone().write_owned().await),
            None => None,
        }
    }

    pub(super) fn known_users(&self) -> &super::audit::KnownUsers {
        &self.users
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The payload renderer.
    pub fn renderer(&self) -> &Renderer {
        &self.renderer
    }

    /// Writes the events of `changes`, at most one per build, and one delivery per endpoint of
    /// `endpoints` (the enabled endpoints of their organizations) that subscribes to an event's
    /// kind (and, if it filters on status, to the new
    /// status), each body rendered inside `tx`. Endpoints sharing a selection and format share
    /// one rendering of an event. Every step is one statement for all the changes: the events,
    /// the endpoints, the builds and tasks the payloads read, and the deliveries.
    ///
    /// Returns whether a delivery queued is due now (see [`Outbox::commit`]).
    pub async fn record(
        &self,
        tx: &Arc<DatabaseTransaction>,
        changes: Vec<Change>,
        endpoints: &[webhook_endpoint::Model],
    ) -> Result<bool> {
        if changes.is_empty() {
            return Ok(false);
        }
        let conn = &**tx;
        let events: Vec<NewEvent> = changes
            .iter()
            .map(|change| NewEvent {
                org_id: change.org_id,
                kind: change.kind.header_value(),
                action: change.action,
                old_status: change.old_status,
                repository_id: change.repository_id,
                build_id: change.build_id,
                task_id: change.task_id,
                timestamp: change.timestamp,
            })
            .collect();
        let event_ids = store::deliveries::insert_events(conn, &events).await?;
        let mut addressed = Vec::with_capacity(changes.len());
        for change in changes {
            let mut to = Vec::new();
            for endpoint in endpoints.iter().filter(|e| e.org_id == change.org_id) {
                if store::endpoints::subscribes(endpoint, change.kind, &change.status)? {
                    to.push(endpoint);
                }
            }
            if !to.is_empty() {
                addressed.push((change, to));
            }
        }
        if addressed.is_empty() {
            return Ok(false);
        }
        self.read_for_payloads(conn, &mut addressed).await?;
        let mut queued = Vec::with_capacity(addressed.len());
        let mut refused = Vec::new();
        for (change, to) in &addressed {
            let mut bodies: HashMap<(Option<&str>, PayloadFormat), Rendered> = HashMap::new();
            let mut rendered = Vec::with_capacity(to.len());
            let event_id = *event_ids.get(&change.build_id).ok_or_else(|| {
                Error::internal("an event's id did not come back from its insert")
            })?;
            for endpoint in to {
                let format = parse_stored(&endpoint.payload_format, PayloadFormat::parse)?;
                // A Slack message ignores the stored selection, so all Slack endpoints share one.
                let query = match format {
                    PayloadFormat::Slack => None,
                    PayloadFormat::Data | PayloadFormat::Flat => endpoint.payload_query.as_deref(),
                };
                let body = match bodies.get(&(query, format)) {
                    Some(body) => body.clone(),
                    None => {
                        let body = self
                            .renderer
                            .render(Db::Tx(tx.clone()), change, query, format)
                            .await?;
                        bodies.insert((query, format), body.clone());
                        body
                    }
                };
                match body {
                    Rendered::Body(body) => rendered.push((endpoint.id, body)),
                    Rendered::Refused(reason) => {
                        tracing::warn!(
                            org = change.org_id,
                            endpoint = endpoint.id,
                            reason = %reason,
                            "a payload was refused; its delivery is recorded as failed"
                        );
                        refused.push(FailedDelivery {
                            delivery: NewDelivery {
                                org_id: change.org_id,
                                endpoint_id: endpoint.id,
                                event: change.kind.header_value().into(),
                                action: change.action.into(),
                                body: String::new(),
                                timestamp: change.timestamp,
                            },
                            event_id,
                            build_id: change.build_id,
                            reason,
                        });
                    }
                }
            }
            queued.push(EventDeliveries {
                org_id: change.org_id,
                event_id,
                build_id: change.build_id,
                event: change.kind.header_value(),
                action: change.action,
                timestamp: change.timestamp,
                bodies: rendered,
            });
        }
        // A delivery queued behind an unfinished one of its chain waits for it (the insert
        // checks). The chains are locked (on PostgreSQL) only now that the bodies are
        // rendered: the worker's outcome writes that finish a delivery of these builds wait for
        // this commit.
        let builds: Vec<i64> = queued.iter().map(|event| event.build_id).collect();
        store::deliveries::insert_failed(conn, refused).await?;
        store::deliveries::lock_chains(conn, &builds).await?;
        store::deliveries::queue_events(conn, &queued, &self.announcer).await
    }

    /// Hands each change with deliveries to render its build row, if it does not hold it, and
    /// its build's tasks when a selection it renders may read them: one read of each for all
    /// of them.
    async fn read_for_payloads(
        &self,
        conn: &DatabaseTransaction,
        addressed: &mut [(Change, Vec<&webhook_endpoint::Model>)],
    ) -> Result<()> {
        let mut builds: Vec<(i64, i64)> = Vec::new();
        for (change, to) in addressed.iter() {
            for endpoint in to {
                let format = parse_stored(&endpoint.payload_format, PayloadFormat::parse)?;
                if super::render::reads_build_tasks(endpoint.payload_query.as_deref(), format) {
                    builds.push((change.org_id, change.build_id));
                    break;
                }
            }
        }
        let missing: Vec<(i64, i64)> = addressed
            .iter()
            .filter(|(change, _)| change.build_row.is_none())
            .map(|(change, _)| (change.org_id, change.build_id))
            .collect();
        let mut rows: HashMap<i64, build::Model> = HashMap::new();
        if !missing.is_empty() {
            for row in store::ci::builds_of(conn, &missing).await? {
                rows.insert(row.id, row);
            }
        }
        let mut tasks: HashMap<i64, Vec<task::Model>> = HashMap::new();
        if !builds.is_empty() {
            for task in store::ci::tasks_of_builds(conn, &builds).await? {
                tasks.entry(task.build_id).or_default().push(task);
            }
        }
        let read: HashSet<i64> = builds.iter().map(|(_, build)| *build).collect();
        for (change, _) in addressed.iter_mut() {
            if change.build_row.is_none() {
                change.build_row = rows.remove(&change.build_id);
            }
            if read.contains(&change.build_id) {
                let own = tasks.remove(&change.build_id).unwrap_or_default();
                change.build_tasks = Some(Arc::new(own));
            }
        }
        Ok(())
    }

    /// Commits the transaction of `events` recorded events, and wakes the worker if a delivery
    /// they queued is `due`. Deliveries held behind an unfinished one of their chain wake no
    /// one: under a stream of a build's events, nearly all are, and each wake is a claim that
    /// finds nothing.
    pub async fn commit(&self, tx: Arc<DatabaseTransaction>, events: u64, due: bool) -> Result<()> {
        let tx = Arc::try_unwrap(tx)
            .map_err(|_| Error::internal("the event's transaction is still shared at commit"))?;
        tx.commit().await?;
        self.metrics.events_recorded.inc_by(events);
        if due {
            self.wake();
        }
        Ok(())
    }

    /// Wakes the worker: deliveries are due.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Queues a `ping` to one endpoint; a status filter does not hold it back, and a Slack
    /// endpoint gets a Slack message saying the hook works.
    pub async fn queue_ping(
        &self,
        conn: &impl ConnectionTrait,
        endpoint: &webhook_endpoint::Model,
    ) -> Result<delivery::Model> {
        let now = crate::now_ms();
        let body = match parse_stored(&endpoint.payload_format, PayloadFormat::parse)? {
            PayloadFormat::Slack => crate::slack::ping_message(),
            PayloadFormat::Data => json!({
                "action": "ping",
                "data": { "ownerUid": endpoint.org_id.to_string(), "endpointId": endpoint.id.to_string(), "timestamp": now },
            }),
            // FLAT receivers read `repository`, `build` and `task` at the top level, as for any
            // event; the ping's own fields stand beside them, ids as numbers.
            PayloadFormat::Flat => json!({
                "action": "ping",
                "repository": {},
                "build": {},
                "task": {},
                "ownerUid": endpoint.org_id,
                "endpointId": endpoint.id,
                "timestamp": now,
            }),
        };
        let new = NewDelivery {
            org_id: endpoint.org_id,
            endpoint_id: endpoint.id,
            event: "ping".into(),
            action: "ping".into(),
            body: serde_json::to_string(&body).map_err(Error::internal)?,
            timestamp: now,
        };
        let row = store::deliveries::insert_one(conn, new).await?;
        store::deliveries::announce(conn, &self.announcer).await?;
        Ok(row)
    }
}
