//! The state machine's database: one writer connection that applies committed
//! log entries in transactions, a pool of read connections that serve queries
//! concurrently (SQLite WAL), checkpoints on a thread of their own, consistent
//! copies for snapshots, and the events that wake waiters once a change is
//! committed.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, DatabaseName, OpenFlags, Transaction, TransactionBehavior};
use tokio::sync::{Notify, oneshot, watch};

use crate::checkpoint::{Checkpointer, WRITER_CHECKPOINT_PAGES};
use crate::state::Effects;
use crate::state::schema::{self, SchemaError};

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
}

/// The coordinator's state on disk.
pub struct Store {
    writer: Mutex<Connection>,
    /// Copies the WAL into the database off the writer's path.
    _checkpointer: Checkpointer,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    events: Events,
}

impl Store {
    /// Opens (creating if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut writer = open_connection(path, false)?;
        schema::migrate(&mut writer)?;
        Ok(Store {
            writer: Mutex::new(writer),
            _checkpointer: Checkpointer::start(path)?,
            readers: Mutex::new(Vec::new()),
            path: path.to_path_buf(),
            events: Events::default(),
        })
    }

    /// Runs `f` in one write transaction, commits it, then wakes what waits on
    /// the effects `f` reports. Blocking: call it off the async runtime.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<(T, Effects)>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer.lock().expect("writer lock");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (value, effects) = f(&tx)?;
        tx.commit()?;
        drop(conn);
        self.events.publish(effects);
        Ok(value)
    }

    /// Copies the whole database to `dst` while no write runs, and returns
    /// what `f` read in the same moment. Blocking.
    pub fn copy_to<T>(
        &self,
        dst: &Path,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let conn = self.writer.lock().expect("writer lock");
        let value = f(&conn)?;
        conn.backup(DatabaseName::Main, dst, None)?;
        Ok(value)
    }

    /// Replaces the whole database with the copy at `src`, then wakes every
    /// waiter: anything may have changed. Blocking.
    pub fn replace_with(&self, src: &Path) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().expect("writer lock");
        conn.restore(
            DatabaseName::Main,
            src,
            None::<fn(rusqlite::backup::Progress)>,
        )?;
        schema::migrate(&mut conn)?;
        drop(conn);
        self.events.wake_all();
        Ok(())
    }

    /// [`Store::read`] on a blocking thread, for reads that scan or decode
    /// many rows (the claim scan, lists, counts), which must not hold an
    /// async worker.
    pub async fn scan<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = Arc::clone(self);
        tokio::task::spawn_blocking(move || store.read(f))
            .await
            .expect("store read panicked")
    }

    /// A long-poll over a version index: runs `read` (a scan) until the
    /// index it returns passes `seen` (at once when `seen` is `None`),
    /// waiting for committed changes to services in between, until `until`
    /// resolves; then answers what it read last.
    pub async fn scan_past<T: Send + 'static>(
        self: &Arc<Self>,
        seen: Option<u64>,
        until: impl Future<Output = ()>,
        read: impl Fn(&Connection) -> rusqlite::Result<(u64, T)> + Clone + Send + 'static,
    ) -> Result<T, StoreError> {
        let mut changes = self.events.watch_services();
        let mut until = std::pin::pin!(until);
        loop {
            let (index, value) = self.scan(read.clone()).await?;
            if seen.is_none_or(|seen| index > seen) {
                return Ok(value);
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return Ok(value) },
                _ = &mut until => return Ok(value),
            }
        }
    }

    /// Runs a read on a pooled connection, in place: for point lookups by
    /// key, which take microseconds; see [`Store::scan`] for the rest.
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
        // NORMAL: the Raft log is fsynced before an entry commits; what a
        // power cut takes from here is applied again from the log, and the
        // applied log id commits with the effects, so nothing applies twice.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // The checkpoint thread copies the WAL; the writer only past this.
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Wakes what waits on state changes, once they are committed.
#[derive(Default)]
pub struct Events {
    /// Notified when jobs become claimable.
    pub jobs_queued: Notify,
    finished: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    /// Bumped when services or instances change (or every watcher must
    /// look again): assignment and endpoint long-polls, and the leader's
    /// placement, watch it.
    services: watch::Sender<u64>,
}

impl Events {
    /// A watch that fires when the job reaches a terminal status. Register
    /// before reading the job, so a change between the two is not missed.
    /// Dropping the watch unregisters it, however its waiter ends.
    pub fn watch_job(&self, job_id: &str) -> JobWatch<'_> {
        let (tx, rx) = oneshot::channel();
        self.finished
            .lock()
            .expect("waiters lock")
            .entry(job_id.to_string())
            .or_default()
            .push(tx);
        JobWatch {
            events: self,
            job_id: job_id.to_string(),
            finished: Some(rx),
        }
    }

    /// A watch that sees every change to services and instances committed
    /// after it was taken. Take it before reading, so none is missed.
    pub fn watch_services(&self) -> watch::Receiver<u64> {
        self.services.subscribe()
    }

    /// Watches registered and not yet fired or dropped.
    pub fn job_watches(&self) -> usize {
        self.finished
            .lock()
            .expect("waiters lock")
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Drops the watches on a job whose waiters gave up.
    fn forget_closed(&self, job_id: &str) {
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
        if effects.services_changed {
            self.services.send_modify(|n| *n += 1);
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

    /// Wakes every waiter so each looks again (after a snapshot was installed).
    fn wake_all(&self) {
        self.jobs_queued.notify_waiters();
        self.services.send_modify(|n| *n += 1);
        for (_, list) in self.finished.lock().expect("waiters lock").drain() {
            for tx in list {
                let _ = tx.send(());
            }
        }
    }
}

/// One waiter's watch on a job; see [`Events::watch_job`].
pub struct JobWatch<'a> {
    events: &'a Events,
    job_id: String,
    /// `None` once fired.
    finished: Option<oneshot::Receiver<()>>,
}

impl JobWatch<'_> {
    /// Resolves when the job reaches a terminal status (or every waiter is
    /// told to look again).
    pub async fn finished(&mut self) {
        if let Some(rx) = self.finished.as_mut() {
            let _ = rx.await;
            self.finished = None;
        }
    }
}

impl Drop for JobWatch<'_> {
    fn drop(&mut self) {
        // Closes this watch's channel first, so it is among those forgotten.
        let unfired = self.finished.take();
        if unfired.is_some() {
            drop(unfired);
            self.events.forget_closed(&self.job_id);
        }
    }
}
