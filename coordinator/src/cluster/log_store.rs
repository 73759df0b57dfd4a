//! The Raft log and vote in their own SQLite database, every write fsynced
//! (`synchronous=FULL`) before openraft is told it is durable. Reads use a
//! connection of their own, on blocking threads, so replication never waits
//! behind an append's fsync; the newest entries are also kept in memory, up
//! to a count and a size.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageIOError, Vote};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::kv;
use super::network::APPEND_BYTES;
use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig, storage_error};
use crate::state::corrupt;

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
/// Most bytes (of their encoding) the cached entries may take: entries that
/// carry jobs' outputs can be megabytes each, and 1,024 of them must not
/// hold gigabytes.
const CACHED_BYTES: usize = 64 * 1024 * 1024;

/// The log store; clones share the connections and the cache.
#[derive(Clone)]
pub struct LogStore {
    /// Writes: appends, truncation, purges, the vote.
    conn: Arc<Mutex<Connection>>,
    /// Reads, beside the writer (WAL), so none waits for a write's fsync.
    reader: Arc<Mutex<Connection>>,
    recent: Arc<Mutex<Cache>>,
}

/// The newest entries, each with the size of its encoding.
#[derive(Default)]
struct Cache {
    entries: BTreeMap<u64, (Entry, usize)>,
    bytes: usize,
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
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Ok(LogStore {
            conn: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
            recent: Arc::new(Mutex::new(Cache::default())),
        })
    }

    /// Runs the read `f` on the reading connection on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> rusqlite::Result<T> {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || f(&reader.lock().expect("log reader lock")))
            .await
            .expect("log store task panicked")
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
    /// The entries `start..=end`, up to `budget` encoded bytes (always at
    /// least one), if the cache holds all of them that exist.
    fn cached(&self, start: i64, end: i64, budget: usize) -> Option<Vec<Entry>> {
        let recent = self.recent.lock().expect("log cache lock");
        let (&first, _) = recent.entries.first_key_value()?;
        if start < first as i64 {
            return None;
        }
        if end < start {
            return Some(Vec::new());
        }
        let mut taken = Budget::new(budget);
        Some(
            recent
                .entries
                .range(start as u64..=end as u64)
                .take_while(|(_, (_, size))| taken.admits(*size))
                .map(|(_, (e, _))| e.clone())
                .collect(),
        )
    }

    /// The entries `start..=end` that exist, up to `budget` encoded bytes
    /// (always at least one).
    async fn entries(
        &self,
        start: i64,
        end: i64,
        budget: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        if let Some(cached) = self.cached(start, end, budget) {
            return Ok(cached);
        }
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT entry FROM log WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx",
            )?;
            let mut rows = stmt.query([start, end])?;
            let mut taken = Budget::new(budget);
            let mut entries = Vec::new();
            while let Some(row) = rows.next()? {
                let text = row.get_ref(0)?.as_str()?;
                if !taken.admits(text.len()) {
                    break;
                }
                entries.push(serde_json::from_str(text).map_err(|e| corrupt(0, e))?);
            }
            Ok(entries)
        })
        .await
        .map_err(|e| storage_error(StorageIOError::read_logs, &e))
    }

    /// Caches `entries` (each with its encoded size), then drops the oldest
    /// past [`CACHED_ENTRIES`] or [`CACHED_BYTES`].
    fn remember(&self, entries: &[Entry], sizes: &[usize]) {
        let mut recent = self.recent.lock().expect("log cache lock");
        for (entry, &size) in entries.iter().zip(sizes) {
            let old = recent
                .entries
                .insert(entry.log_id.index, (entry.clone(), size));
            recent.bytes = recent.bytes + size - old.map_or(0, |(_, s)| s);
        }
        while recent.entries.len() > CACHED_ENTRIES || recent.bytes > CACHED_BYTES {
            let Some((_, (_, size))) = recent.entries.pop_first() else {
                break;
            };
            recent.bytes -= size;
        }
    }

    /// Drops cached entries at or after `from` (truncate) or up to `upto` (purge).
    fn forget(&self, from: Option<u64>, upto: Option<u64>) {
        let mut recent = self.recent.lock().expect("log cache lock");
        if let Some(from) = from {
            recent.entries.split_off(&from);
        }
        if let Some(upto) = upto {
            recent.entries = recent.entries.split_off(&(upto + 1));
        }
        recent.bytes = recent.entries.values().map(|(_, size)| size).sum();
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
        self.entries(start, end, usize::MAX).await
    }

    /// What replication sends in one append: entries from `start` up to
    /// [`APPEND_BYTES`] of their encoding, so that a follower far behind gets
    /// appends it can take within openraft's append timeout, however big
    /// the entries are.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&(start..end));
        self.entries(start, end, APPEND_BYTES).await
    }
}

/// Counts encoded bytes against a budget; the first item is always admitted.
struct Budget {
    left: usize,
    first: bool,
}

impl Budget {
    fn new(bytes: usize) -> Budget {
        Budget {
            left: bytes,
            first: true,
        }
    }

    fn admits(&mut self, size: usize) -> bool {
        let first = std::mem::take(&mut self.first);
        if first || size <= self.left {
            self.left = self.left.saturating_sub(size);
            true
        } else {
            false
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        self.read(|conn| {
            let purged: Option<LogId> = kv::get(conn, STATE_TABLE, "last_purged")?;
            let last: Option<String> = conn
                .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
                    r.get(0)
                })
                .optional()?;
            let last = match last {
                Some(text) => Some(
                    serde_json::from_str::<Entry>(&text)
                        .map_err(|e| corrupt(0, e))?
                        .log_id,
                ),
                None => purged,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        })
        .await
        .map_err(|e| storage_error(StorageIOError::read_logs, &e))
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
        self.read(|conn| kv::get(conn, STATE_TABLE, "vote"))
            .await
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
        let sizes: Vec<usize> = rows.iter().map(|(_, entry)| entry.len()).collect();
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
                self.remember(&entries, &sizes);
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[test]
    fn the_cache_is_bounded_by_bytes_as_well_as_by_entries() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(&dir.path().join("log.db")).unwrap();
        // Entries as big as a batch of completions with large outputs.
        let big = 20 * 1024 * 1024;
        let entries: Vec<Entry> = (1..=10).map(blank).collect();
        log.remember(&entries, &[big; 10]);
        let cache = log.recent.lock().unwrap();
        assert!(cache.bytes <= CACHED_BYTES, "{} bytes cached", cache.bytes);
        assert_eq!(cache.bytes, cache.entries.len() * big);
        assert_eq!(cache.entries.keys().last(), Some(&10), "the newest stay");
        drop(cache);
        assert!(
            log.cached(1, 10, usize::MAX).is_none(),
            "the oldest are read from disk"
        );
        assert_eq!(log.cached(10, 10, usize::MAX).unwrap(), vec![blank(10)]);
    }

    /// An entry whose encoding is `bytes` long, give or take its framing.
    fn sized(index: u64, bytes: usize) -> Entry {
        let command = crate::state::Command::RevokeApiKey {
            id: "x".repeat(bytes),
            now: 0,
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(super::super::types::Batch(vec![
                crate::state::Proposal::new(command),
            ])),
        }
    }

    #[tokio::test]
    async fn replication_reads_one_appends_worth_of_entries_from_disk_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(&dir.path().join("log.db")).unwrap();
        let third = APPEND_BYTES / 3;
        let entries: Vec<Entry> = (1..=6).map(|i| sized(i, third)).collect();
        {
            let conn = log.conn.lock().unwrap();
            for entry in &entries {
                conn.execute(
                    "INSERT INTO log (idx, entry) VALUES (?1, ?2)",
                    params![
                        entry.log_id.index as i64,
                        serde_json::to_string(entry).unwrap()
                    ],
                )
                .unwrap();
            }
        }
        // A third of the budget and a little more each: two fit, not three.
        let limited = log.limited_get_log_entries(1, 7).await.unwrap();
        assert_eq!(limited, entries[..2]);
        assert_eq!(log.try_get_log_entries(1..7).await.unwrap(), entries);

        // The same from the cache, and an entry over the budget goes alone.
        let sizes: Vec<usize> = entries
            .iter()
            .map(|e| serde_json::to_string(e).unwrap().len())
            .collect();
        log.remember(&entries, &sizes);
        assert_eq!(
            log.limited_get_log_entries(3, 7).await.unwrap(),
            entries[2..4]
        );
        let huge = sized(7, 2 * APPEND_BYTES);
        log.remember(std::slice::from_ref(&huge), &[2 * APPEND_BYTES + 100]);
        assert_eq!(log.limited_get_log_entries(7, 8).await.unwrap(), vec![huge]);
    }
}
