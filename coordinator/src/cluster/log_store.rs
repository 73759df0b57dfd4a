//! The Raft log and vote in their own SQLite database, every write fsynced
//! (`synchronous=FULL`) before openraft is told it is durable.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError, Vote};
use rusqlite::{Connection, OptionalExtension, params};

use super::kv;
use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig, storage_error};

/// Version of the log database's layout, kept in `PRAGMA user_version`.
const LOG_SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    idx   INTEGER PRIMARY KEY,
    entry TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
";

/// The log database's key/value table (vote, last purged log id).
const STATE_TABLE: &str = "state";

/// Newest entries kept in memory as well: replication to followers reads
/// what was just appended, and decoding it from disk again costs more than
/// the copy. Older entries are read from the database.
const CACHED_ENTRIES: usize = 1024;

/// The log store; clones share one connection and one cache.
#[derive(Clone)]
pub struct LogStore {
    conn: Arc<Mutex<Connection>>,
    recent: Arc<Mutex<BTreeMap<u64, Entry>>>,
}

impl LogStore {
    pub fn open(path: &Path) -> Result<LogStore, rusqlite::Error> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: an entry acknowledged to openraft survives power loss.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > LOG_SCHEMA_VERSION {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "raft log schema version {version} is newer than this build's {LOG_SCHEMA_VERSION}"
            )));
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", LOG_SCHEMA_VERSION)?;
        Ok(LogStore {
            conn: Arc::new(Mutex::new(conn)),
            recent: Arc::new(Mutex::new(BTreeMap::new())),
        })
    }

    /// Runs `f` on the connection on a blocking thread: writes wait for fsync.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> rusqlite::Result<T> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || f(&mut conn.lock().expect("log lock")))
            .await
            .expect("log store task panicked")
    }
}

impl LogStore {
    /// The entries `start..=end` if the cache holds all of them that exist.
    fn cached(&self, start: i64, end: i64) -> Option<Vec<Entry>> {
        let recent = self.recent.lock().expect("log cache lock");
        let (&first, _) = recent.first_key_value()?;
        if start < first as i64 {
            return None;
        }
        if end < start {
            return Some(Vec::new());
        }
        Some(
            recent
                .range(start as u64..=end as u64)
                .map(|(_, e)| e.clone())
                .collect(),
        )
    }

    fn remember(&self, entries: &[Entry]) {
        let mut recent = self.recent.lock().expect("log cache lock");
        for entry in entries {
            recent.insert(entry.log_id.index, entry.clone());
        }
        while recent.len() > CACHED_ENTRIES {
            recent.pop_first();
        }
    }

    /// Drops cached entries at or after `from` (truncate) or up to `upto` (purge).
    fn forget(&self, from: Option<u64>, upto: Option<u64>) {
        let mut recent = self.recent.lock().expect("log cache lock");
        if let Some(from) = from {
            recent.split_off(&from);
        }
        if let Some(upto) = upto {
            *recent = recent.split_off(&(upto + 1));
        }
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (i64, i64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s as i64,
        Bound::Excluded(&s) => s as i64 + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e as i64,
        Bound::Excluded(&e) => e as i64 - 1,
        Bound::Unbounded => i64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        if let Some(cached) = self.cached(start, end) {
            return Ok(cached);
        }
        let conn = self.conn.lock().expect("log lock");
        let read = || -> rusqlite::Result<Vec<Entry>> {
            let mut stmt = conn.prepare_cached(
                "SELECT entry FROM log WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx",
            )?;
            let rows = stmt.query_map([start, end], |r| r.get::<_, String>(0))?;
            rows.map(|row| {
                let text = row?;
                serde_json::from_str(&text).map_err(kv::decode_error)
            })
            .collect()
        };
        read().map_err(|e| storage_error(StorageIOError::read_logs, &e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let conn = self.conn.lock().expect("log lock");
        let read = || -> rusqlite::Result<LogState<TypeConfig>> {
            let purged: Option<LogId> = kv::get(&conn, STATE_TABLE, "last_purged")?;
            let last: Option<String> = conn
                .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
                    r.get(0)
                })
                .optional()?;
            let last = match last {
                Some(text) => Some(
                    serde_json::from_str::<Entry>(&text)
                        .map_err(kv::decode_error)?
                        .log_id,
                ),
                None => purged,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        };
        read().map_err(|e| storage_error(StorageIOError::read_logs, &e))
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(move |conn| kv::put(conn, STATE_TABLE, "vote", &vote))
            .await
            .map_err(|e| storage_error(StorageIOError::write_vote, &e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        let conn = self.conn.lock().expect("log lock");
        kv::get(&conn, STATE_TABLE, "vote")
            .map_err(|e| storage_error(StorageIOError::read_vote, &e))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let rows: Vec<(u64, String)> = entries
            .iter()
            .map(|e| {
                (
                    e.log_id.index,
                    serde_json::to_string(e).expect("entries serialise"),
                )
            })
            .collect();
        let written = self
            .blocking(move |conn| {
                let tx = conn.transaction()?;
                {
                    let mut stmt = tx.prepare_cached(
                        "INSERT INTO log (idx, entry) VALUES (?1, ?2)
                         ON CONFLICT (idx) DO UPDATE SET entry = ?2",
                    )?;
                    for (idx, entry) in &rows {
                        stmt.execute(params![*idx as i64, entry])?;
                    }
                }
                tx.commit()
            })
            .await;
        // Durable now (FULL sync): only then may openraft count the entries.
        match written {
            Ok(()) => {
                self.remember(&entries);
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(storage_error(StorageIOError::write_logs, &e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.forget(Some(log_id.index), None);
        self.blocking(move |conn| {
            conn.execute("DELETE FROM log WHERE idx >= ?1", [log_id.index as i64])
                .map(drop)
        })
        .await
        .map_err(|e| storage_error(StorageIOError::write_logs, &e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.forget(None, Some(log_id.index));
        self.blocking(move |conn| {
            let tx = conn.transaction()?;
            kv::put(&tx, STATE_TABLE, "last_purged", &log_id)?;
            tx.execute("DELETE FROM log WHERE idx <= ?1", [log_id.index as i64])?;
            tx.commit()
        })
        .await
        .map_err(|e| storage_error(StorageIOError::write_logs, &e))
    }
}
