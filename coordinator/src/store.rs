//! The durable store: one writer thread applies proposals in batches (group
//! commit: many proposals, one transaction, one fsync) and a pool of read
//! connections serves queries concurrently (SQLite WAL).
//!
//! A proposal's answer is sent only after its transaction committed with
//! `synchronous=FULL`, so a 2xx built from it means the change is on disk.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::state::schema::{self, SchemaError};
use crate::state::{Applied, Effects, Proposal, apply};

/// Most proposals committed in one transaction: bounds the latency a proposal
/// can add to the others in its batch.
pub const MAX_BATCH: usize = 1024;
/// Proposals waiting for the writer; past this, proposers wait (backpressure)
/// instead of growing memory without bound.
pub const PROPOSAL_QUEUE: usize = 16 * 1024;
/// Read connections kept open; more are opened on demand and dropped after.
const READ_POOL: usize = 8;
/// How long a connection waits on a lock before SQLite reports busy.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Faults of the store itself, never of a request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the store is shutting down")]
    Closed,
}

struct Pending {
    proposal: Proposal,
    reply: oneshot::Sender<Result<Applied, StoreError>>,
}

/// The coordinator's state on disk.
pub struct Store {
    proposals: mpsc::Sender<Pending>,
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
    events: Arc<Events>,
}

impl Store {
    /// Opens (creating if needed) and migrates the database, and starts the writer.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut writer = open_connection(path, false)?;
        schema::migrate(&mut writer)?;
        let (proposals, queue) = mpsc::channel(PROPOSAL_QUEUE);
        let events = Arc::new(Events::default());
        let writer_events = events.clone();
        std::thread::Builder::new()
            .name("skyclaw-writer".into())
            .spawn(move || write_loop(writer, queue, &writer_events))
            .map_err(|e| StoreError::Commit(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            proposals,
            readers: Mutex::new(Vec::new()),
            path: path.to_path_buf(),
            events,
        })
    }

    /// Applies a proposal and returns once it is durable.
    pub async fn propose(&self, proposal: Proposal) -> Result<Applied, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.proposals
            .send(Pending { proposal, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a read on a pooled connection. Reads are short index lookups, so
    /// they run in place rather than on a blocking thread.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().expect("reader pool lock").pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.path, true)?,
        };
        let result = f(&conn);
        let mut pool = self.readers.lock().expect("reader pool lock");
        if pool.len() < READ_POOL {
            pool.push(conn);
        }
        Ok(result?)
    }

    pub fn events(&self) -> &Events {
        &self.events
    }
}

fn open_connection(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a commit is fsynced before its proposers are answered.
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Takes whatever proposals are waiting (up to [`MAX_BATCH`]), applies them in
/// one transaction with the applied index, commits, then answers them.
fn write_loop(mut conn: Connection, mut queue: mpsc::Receiver<Pending>, events: &Events) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        match commit_batch(&mut conn, &batch) {
            Ok(applied) => {
                let mut effects = Effects::default();
                for a in &applied {
                    effects.merge(a.effects.clone());
                }
                events.publish(effects);
                for (pending, applied) in batch.drain(..).zip(applied) {
                    let _ = pending.reply.send(Ok(applied));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, proposals = batch.len(), "commit failed");
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(StoreError::Commit(e.to_string())));
                }
            }
        }
    }
}

fn commit_batch(conn: &mut Connection, batch: &[Pending]) -> rusqlite::Result<Vec<Applied>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut applied = Vec::with_capacity(batch.len());
    for pending in batch {
        applied.push(apply(&tx, &pending.proposal)?);
    }
    tx.prepare_cached("UPDATE meta SET value = value + ?1 WHERE key = 'applied_index'")?
        .execute([batch.len() as i64])?;
    tx.commit()?;
    Ok(applied)
}

/// Wakes what waits on state changes, once they are durable.
#[derive(Default)]
pub struct Events {
    /// Notified when jobs become claimable.
    pub jobs_queued: Notify,
    finished: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
}

impl Events {
    /// A receiver that fires when the job reaches a terminal status. Register
    /// before reading the job, so a change between the two is not missed.
    pub fn watch_job(&self, job_id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.finished
            .lock()
            .expect("waiters lock")
            .entry(job_id.to_string())
            .or_default()
            .push(tx);
        rx
    }

    /// Drops the watches on a job whose waiters gave up.
    pub fn forget_closed(&self, job_id: &str) {
        let mut waiters = self.finished.lock().expect("waiters lock");
        if let Some(list) = waiters.get_mut(job_id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiters.remove(job_id);
            }
        }
    }

    fn publish(&self, effects: Effects) {
        if effects.jobs_queued {
            self.jobs_queued.notify_waiters();
        }
        if effects.finished.is_empty() {
            return;
        }
        let mut waiters = self.finished.lock().expect("waiters lock");
        for id in effects.finished {
            for tx in waiters.remove(&id).unwrap_or_default() {
                let _ = tx.send(());
            }
        }
    }
}
