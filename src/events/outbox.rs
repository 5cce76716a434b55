//! The transactional outbox: an event and its deliveries are written in the transaction of the
//! change they describe, and the worker is woken once it commits.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sea_orm::{ConnectionTrait, DatabaseTransaction};

use super::audit::{AuditDraft, KnownUsers};
use super::change::Change;
use super::{Rendered, Renderer};
use crate::domain::PayloadFormat;
use crate::metrics::Metrics;
use crate::store::audit::UserKey;
use crate::store::deliveries::{EventDeliveries, FailedDelivery, NewDelivery, NewEvent, Numbers};
use crate::store::entities::{build, task, webhook_endpoint};
use crate::store::{self, Db};
use crate::{Error, Result};

/// Records events with their deliveries and wakes the worker after commit when some are due.
#[derive(Clone)]
pub struct Outbox {
    renderer: Arc<Renderer>,
    metrics: Metrics,
    /// The process's writing connection, its write turn and the worker's wake-up.
    writes: store::Writes,
    /// Users whose ids this process has recorded (see [`Outbox::users`]).
    users: Arc<KnownUsers>,
}

impl Outbox {
    /// An outbox writing through `writes`, whose Slack messages link to `public_url`, when
    /// given.
    pub fn new(writes: store::Writes, metrics: Metrics, public_url: Option<String>) -> Self {
        Self {
            renderer: Arc::new(Renderer::new(public_url)),
            metrics,
            writes,
            users: Arc::default(),
        }
    }

    /// The process's writes.
    pub fn writes(&self) -> &store::Writes {
        &self.writes
    }

    /// The ids of these users, each created if it is new. Hand them to
    /// [`Outbox::learn_users`] once the transaction commits.
    pub async fn users(
        &self,
        conn: &impl ConnectionTrait,
        keys: Vec<UserKey>,
    ) -> Result<HashMap<UserKey, i64>> {
        self.users.ids(conn, keys).await
    }

    /// Remembers users that a committed transaction holds.
    pub fn learn_users(&self, users: HashMap<UserKey, i64>) {
        self.users.learn(users);
    }

    /// Records audit events and queues their deliveries (see [`super::audit::record`]);
    /// whether it queued any.
    pub async fn record_audits(
        &self,
        conn: &impl ConnectionTrait,
        drafts: Vec<AuditDraft>,
        users: &HashMap<UserKey, i64>,
        endpoints: &[webhook_endpoint::Model],
        numbers: &mut Numbers,
    ) -> Result<bool> {
        let announcer = self.writes.announcer();
        super::audit::record(conn, announcer, drafts, users, endpoints, numbers).await
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
    /// kind (and, if it filters on status, to the new status; if it names conditions, to the
    /// change's transition), each body rendered inside `tx`. Endpoints sharing a selection and format share
    /// one rendering of an event. Every step is one statement for all the changes: the events,
    /// the endpoints, the builds and tasks the payloads read, and the deliveries.
    ///
    /// Each delivery is numbered in its endpoint's sequence by `numbers`, whose counters are
    /// taken only once the bodies are rendered.
    ///
    /// Returns whether a delivery queued is due now (see [`Outbox::commit`]).
    pub async fn record(
        &self,
        tx: &Arc<DatabaseTransaction>,
        changes: Vec<Change>,
        endpoints: &[webhook_endpoint::Model],
        numbers: &mut Numbers,
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
            for endpoint in endpoints.iter().filter(|e| e.org_id == change.org_id.get()) {
                let transition = change.transition();
                if store::endpoints::subscribes(endpoint, change.kind, &change.status, transition)?
                {
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
            let event_id = *event_ids.get(&change.build_id.get()).ok_or_else(|| {
                Error::internal("an event's id did not come back from its insert")
            })?;
            for endpoint in to {
                let format = endpoint.payload_format;
                // A Slack message ignores the stored selection, so all Slack endpoints share one.
                let query = match format {
                    PayloadFormat::Slack => None,
                    PayloadFormat::Data | PayloadFormat::Flat | PayloadFormat::Raw => {
                        endpoint.payload_query.as_deref()
                    }
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
                            org = %change.org_id,
                            endpoint = endpoint.id,
                            reason = %reason,
                            "a payload was refused; its delivery is recorded as failed"
                        );
                        refused.push(FailedDelivery {
                            delivery: NewDelivery {
                                org_id: change.org_id,
                                endpoint_id: endpoint.id.into(),
                                event: change.kind.header_value().into(),
                                action: change.action,
                                body: String::new(),
                                timestamp: change.timestamp,
                            },
                            event_id: Some(event_id),
                            build_id: Some(change.build_id),
                            reason,
                        });
                    }
                }
            }
            // A task's own work id, else its build's (an approval hook's answer gave them).
            let work_id = change
                .task_row
                .as_ref()
                .and_then(|task| task.work_id.as_deref())
                .or_else(|| change.build_row.as_ref()?.work_id.as_deref());
            queued.push(EventDeliveries {
                org_id: change.org_id,
                event_id: Some(event_id),
                chain: change.build_id.get(),
                work_id,
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
        let builds: Vec<i64> = queued.iter().map(|event| event.chain).collect();
        store::deliveries::insert_failed(conn, refused).await?;
        store::deliveries::lock_chains(conn, &builds).await?;
        let announcer = self.writes.announcer();
        store::deliveries::queue_events(conn, &queued, numbers, announcer).await
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
                let format = endpoint.payload_format;
                if super::render::reads_build_tasks(endpoint.payload_query.as_deref(), format) {
                    builds.push((change.org_id.get(), change.build_id.get()));
                    break;
                }
            }
        }
        let missing: Vec<(i64, i64)> = addressed
            .iter()
            .filter(|(change, _)| change.build_row.is_none())
            .map(|(change, _)| (change.org_id.get(), change.build_id.get()))
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
                change.build_row = rows.remove(&change.build_id.get());
            }
            if read.contains(&change.build_id.get()) {
                let own = tasks.remove(&change.build_id.get()).unwrap_or_default();
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
            self.writes.wake();
        }
        Ok(())
    }
}
