//! The process's writes: its one writing connection, the turn SQLite's single writer needs,
//! and [`WriteTx`], a transaction that holds its turn until it ends and, when it queued a
//! delivery due now, wakes the delivery worker as it commits.
//!
//! SQLite takes one writing transaction at a time. In one process the API's writes, the batches
//! of changes and the delivery worker's claims and outcomes take turns through a read-write
//! lock: the API and the batches take it shared (the database serialises them anyway), the
//! worker takes it exclusively so that a stream of changes cannot starve it. PostgreSQL needs
//! no turn.

use std::ops::Deref;
use std::sync::Arc;

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbBackend};
use tokio::sync::{Notify, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::Result;

/// The process's writing connection with its turn and the delivery worker's wake-up.
#[derive(Clone)]
pub struct Writes {
    conn: DatabaseConnection,
    /// On SQLite: how writers take turns (see the module header).
    gate: Option<Arc<RwLock<()>>>,
    /// Woken when deliveries are committed.
    wake: Arc<Notify>,
    /// See [`Writes::announcer`].
    announcer: Arc<str>,
}

/// A writer's shared turn; the transaction must end before it is dropped.
pub struct Turn {
    _held: Option<OwnedRwLockReadGuard<()>>,
}

/// The delivery worker's exclusive turn (SQLite only); hold it until the transaction ends.
pub type WorkerTurn = Option<OwnedRwLockWriteGuard<()>>;

impl Writes {
    /// Writes through `conn` (see [`super::connect_writer`]).
    pub fn new(conn: DatabaseConnection) -> Self {
        let one_writer = conn.get_database_backend() == DbBackend::Sqlite;
        Self {
            conn,
            gate: one_writer.then(|| Arc::new(RwLock::new(()))),
            wake: Arc::new(Notify::new()),
            announcer: uuid::Uuid::new_v4().simple().to_string().into(),
        }
    }

    /// The writing connection.
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// The name this process's announcements of due deliveries carry on PostgreSQL's channel
    /// ([`super::deliveries::announce`]). A commit here wakes this process's worker directly,
    /// and that worker's listener skips them: woken twice for one commit, the worker would claim
    /// twice, and the second claim would find nothing.
    pub fn announcer(&self) -> &str {
        &self.announcer
    }

    /// Waits for a shared turn to write; hold it until the transaction ends.
    pub async fn turn(&self) -> Turn {
        Turn {
            _held: match &self.gate {
                Some(gate) => Some(gate.clone().read_owned().await),
                None => None,
            },
        }
    }

    /// On SQLite, the delivery worker's turn to write (a claim, a batch of outcomes): it waits
    /// for the write under way, if any, and the next waits for it. Under a stream of changes the
    /// worker would otherwise get the write lock only now and then, and deliveries would fall
    /// behind.
    pub async fn worker_turn(&self) -> WorkerTurn {
        match &self.gate {
            Some(gate) => Some(gate.clone().write_owned().await),
            None => None,
        }
    }

    /// Begins a write of the API in its turn; its commit waits for the disk (see
    /// [`super::wait_for_disk`]).
    pub async fn begin(&self) -> Result<WriteTx> {
        let turn = self.turn().await;
        let tx = super::begin_write(&self.conn).await?;
        Ok(WriteTx {
            tx,
            _turn: turn,
            wake: self.wake.clone(),
            due: false,
        })
    }

    /// Wakes the worker: deliveries are due.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Waits until [`Writes::wake`] is called (or was, since the last wait).
    pub async fn woken(&self) {
        self.wake.notified().await
    }
}

/// A transaction of the API's that holds its write turn until it ends. Dropping it rolls back.
pub struct WriteTx {
    tx: DatabaseTransaction,
    _turn: Turn,
    wake: Arc<Notify>,
    /// Whether the write queued a delivery that is due now.
    due: bool,
}

impl WriteTx {
    /// Notes that the write queued a delivery due now: the commit wakes the worker for it. A
    /// write that queues nothing wakes no one, since each wake is a claim (on SQLite, a turn
    /// at the one write lock) that would find nothing.
    pub fn queued_due(&mut self) {
        self.due = true;
    }

    /// Commits, and wakes the worker if a delivery it queued is due (see
    /// [`WriteTx::queued_due`]). A delivery queued without it waits at most for the worker's
    /// poll.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        if self.due {
            self.wake.notify_one();
        }
        Ok(())
    }
}

impl Deref for WriteTx {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.tx
    }
}
