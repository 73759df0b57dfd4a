//! The Raft state machine: committed entries are applied by `state::apply` in
//! one transaction together with the last applied log id; snapshots are
//! consistent copies of the whole database, versioned by a header line, kept
//! on disk as one file with their metadata; a database left behind the
//! purged log (a power cut took its unsynced tail) is restored from that
//! file at startup.

// openraft's storage traits dictate `StorageError`, which is large; boxing it
// here would only move the allocation.
#![allow(clippy::result_large_err)]

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::kv;
use super::types::{
    Entry, LogId, NodeId, Response, StorageError, StoredMembership, TypeConfig, storage_error,
};
use crate::state::{Effects, apply};
use crate::store::Store;

/// First line of every snapshot: a format marker and its version. A snapshot
/// of another version is refused rather than misread.
const SNAPSHOT_HEADER: &[u8] = b"SKYCLAW-SNAPSHOT 1\n";
/// The state database's table of Raft bookkeeping (schema version 2).
const RAFT_TABLE: &str = "raft_state";
/// The latest snapshot, in the data directory: [`SNAPSHOT_FILE_HEADER`], its
/// metadata as one line of JSON, then its data. One file, replaced by one
/// rename, so metadata and data never come from two snapshots.
const SNAPSHOT_FILE: &str = "raft.snapshot";
/// First line of [`SNAPSHOT_FILE`].
const SNAPSHOT_FILE_HEADER: &[u8] = b"SKYCLAW-SNAPSHOT-FILE 1\n";
/// Where versions before the one-file layout kept a snapshot's data and its
/// metadata; read when there is no [`SNAPSHOT_FILE`], removed once there is.
const LEGACY_DATA_FILE: &str = "snapshot.bin";
const LEGACY_META_FILE: &str = "snapshot.meta.json";
/// Prefixes of the temp files snapshots are written through (saved, built,
/// installed); each is made unique by a random suffix. One a crash left
/// behind is removed at start.
const SAVE_TEMP_PREFIX: &str = "raft.snapshot.tmp";
const BUILD_TEMP_PREFIX: &str = "snapshot-build";
const INSTALL_TEMP_PREFIX: &str = "snapshot-install";

/// The state machine; clones share the store.
#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct SavedMeta {
    last_log_id: Option<LogId>,
    last_membership: StoredMembership,
    snapshot_id: String,
}

impl StateMachine {
    pub fn new(store: Arc<Store>, dir: &Path) -> StateMachine {
        StateMachine {
            store,
            dir: dir.to_path_buf(),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&StateMachine) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .expect("state machine task panicked")
    }

    /// Replaces the kept snapshot: written to a temp file of its own,
    /// fsynced, renamed over the old one, and the directory fsynced.
    fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: &[u8],
    ) -> std::io::Result<()> {
        let saved = SavedMeta {
            last_log_id: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            snapshot_id: meta.snapshot_id.clone(),
        };
        let mut file = tempfile::Builder::new()
            .prefix(SAVE_TEMP_PREFIX)
            .tempfile_in(&self.dir)?;
        file.write_all(SNAPSHOT_FILE_HEADER)?;
        serde_json::to_writer(&mut file, &saved).map_err(std::io::Error::other)?;
        file.write_all(b"\n")?;
        file.write_all(data)?;
        file.as_file().sync_all()?;
        file.persist(self.dir.join(SNAPSHOT_FILE))
            .map_err(|e| e.error)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        for legacy in [LEGACY_DATA_FILE, LEGACY_META_FILE] {
            match std::fs::remove_file(self.dir.join(legacy)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The kept snapshot, if any. Blocking.
    fn load_snapshot(&self) -> std::io::Result<Option<Snapshot<TypeConfig>>> {
        let file = match std::fs::read(self.dir.join(SNAPSHOT_FILE)) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.load_legacy(),
            Err(e) => return Err(e),
        };
        let bad = |what: &str| {
            std::io::Error::other(format!("{SNAPSHOT_FILE} is not a snapshot file: {what}"))
        };
        let rest = file
            .strip_prefix(SNAPSHOT_FILE_HEADER)
            .ok_or_else(|| bad("no header of a version this build reads"))?;
        let line = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("no metadata line"))?;
        let saved: SavedMeta =
            serde_json::from_slice(&rest[..line]).map_err(|e| bad(&e.to_string()))?;
        Ok(Some(snapshot(saved, rest[line + 1..].to_vec())))
    }

    /// The snapshot as versions before the one-file layout kept it.
    fn load_legacy(&self) -> std::io::Result<Option<Snapshot<TypeConfig>>> {
        let meta = match std::fs::read(self.dir.join(LEGACY_META_FILE)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let saved: SavedMeta = serde_json::from_slice(&meta).map_err(std::io::Error::other)?;
        let data = std::fs::read(self.dir.join(LEGACY_DATA_FILE))?;
        Ok(Some(snapshot(saved, data)))
    }

    /// Replaces the state database with the one in snapshot `data`. Blocking.
    fn install_data(&self, data: &[u8]) -> Result<(), String> {
        let db = data
            .strip_prefix(SNAPSHOT_HEADER)
            .ok_or("not a skyclaw snapshot of a version this build reads")?;
        let mut tmp = tempfile::Builder::new()
            .prefix(INSTALL_TEMP_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(|e| e.to_string())?;
        tmp.write_all(db).map_err(|e| e.to_string())?;
        self.store
            .replace_with(tmp.path())
            .map_err(|e| e.to_string())
    }

    /// Readies the state machine before Raft starts: removes the temp files
    /// of snapshot writes a crash interrupted, and restores the state
    /// database from the kept snapshot when it has not applied the entries
    /// the log purged (`synchronous=NORMAL` lets a power cut take the
    /// database's last commits, which the log no longer holds once purged).
    pub async fn recover(&self, purged: Option<LogId>) -> Result<(), StorageError> {
        self.blocking(move |sm| {
            sm.remove_leftovers()
                .map_err(|e| storage_error(StorageIOError::write_state_machine, &e))?;
            sm.catch_up_with_log(purged)
        })
        .await
    }

    /// Removes temp files of snapshot writes that never finished. Blocking.
    fn remove_leftovers(&self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let leftover = [SAVE_TEMP_PREFIX, BUILD_TEMP_PREFIX, INSTALL_TEMP_PREFIX]
                .iter()
                .any(|prefix| name.starts_with(prefix));
            if leftover && entry.file_type()?.is_file() {
                tracing::info!(file = %name, "removing a snapshot write a crash interrupted");
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// The restore half of [`StateMachine::recover`]. Blocking.
    fn catch_up_with_log(&self, purged: Option<LogId>) -> Result<(), StorageError> {
        let fail = |e: String| {
            storage_error(
                StorageIOError::read_state_machine,
                &std::io::Error::other(e),
            )
        };
        let (applied, _) = self
            .store
            .read(applied_state)
            .map_err(|e| fail(e.to_string()))?;
        let index = |id: Option<LogId>| id.map(|id| id.index);
        let Some(purged_index) = index(purged) else {
            return Ok(());
        };
        if index(applied).is_some_and(|applied| applied >= purged_index) {
            return Ok(());
        }
        let snapshot = self.load_snapshot().map_err(|e| fail(e.to_string()))?;
        let covers =
            |s: &Snapshot<TypeConfig>| index(s.meta.last_log_id).is_some_and(|i| i >= purged_index);
        let Some(snapshot) = snapshot.filter(covers) else {
            return Err(fail(format!(
                "the state database applied the log up to {:?} but the log was purged \
                 through {purged_index}, and no snapshot covers the gap: restore the data \
                 directory from a backup, or remove it and join the cluster anew",
                index(applied)
            )));
        };
        tracing::warn!(
            applied = ?index(applied),
            purged = purged_index,
            snapshot = %snapshot.meta.snapshot_id,
            "the state database is behind the purged log; restoring it from the snapshot"
        );
        self.install_data(snapshot.snapshot.get_ref()).map_err(fail)
    }
}

/// A snapshot as openraft takes it.
fn snapshot(saved: SavedMeta, data: Vec<u8>) -> Snapshot<TypeConfig> {
    Snapshot {
        meta: SnapshotMeta {
            last_log_id: saved.last_log_id,
            last_membership: saved.last_membership,
            snapshot_id: saved.snapshot_id,
        },
        snapshot: Box::new(Cursor::new(data)),
    }
}

/// The last applied log id and membership, as committed in the database.
fn applied_state(conn: &Connection) -> rusqlite::Result<(Option<LogId>, StoredMembership)> {
    Ok((
        kv::get(conn, RAFT_TABLE, "last_applied")?,
        kv::get(conn, RAFT_TABLE, "membership")?.unwrap_or_default(),
    ))
}

/// Applies a batch of committed entries in one transaction.
fn apply_entries(
    conn: &Connection,
    entries: &[Entry],
) -> rusqlite::Result<(Vec<Vec<Response>>, Effects)> {
    let mut responses = Vec::with_capacity(entries.len());
    let mut effects = Effects::default();
    for entry in entries {
        let response = match &entry.payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Normal(batch) => {
                let mut answers = Vec::with_capacity(batch.0.len());
                for proposal in &batch.0 {
                    let applied = apply(conn, proposal)?;
                    effects.merge(applied.effects);
                    answers.push(Response {
                        outcome: applied.outcome,
                        replayed: applied.replayed,
                    });
                }
                answers
            }
            EntryPayload::Membership(membership) => {
                let stored = StoredMembership::new(Some(entry.log_id), membership.clone());
                kv::put(conn, RAFT_TABLE, "membership", &stored)?;
                Vec::new()
            }
        };
        responses.push(response);
    }
    if let Some(last) = entries.last() {
        kv::put(conn, RAFT_TABLE, "last_applied", &last.log_id)?;
        conn.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'applied_index'")?
            .execute([last.log_id.index as i64])?;
    }
    Ok((responses, effects))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        self.store
            .read(applied_state)
            .map_err(|e| storage_error(StorageIOError::read_state_machine, &e))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.blocking(move |sm| {
            sm.store
                .write(|tx| apply_entries(tx, &entries))
                .map_err(|e| storage_error(StorageIOError::write_state_machine, &e))
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let meta = meta.clone();
        let data = snapshot.into_inner();
        self.blocking(move |sm| {
            let fail = |e: &dyn std::fmt::Display| {
                storage_error(
                    StorageIOError::write_state_machine,
                    &std::io::Error::other(format!(
                        "installing snapshot {}: {e}",
                        meta.snapshot_id
                    )),
                )
            };
            sm.install_data(&data).map_err(|e| fail(&e))?;
            sm.save_snapshot(&meta, &data).map_err(|e| fail(&e))
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.blocking(|sm| {
            sm.load_snapshot()
                .map_err(|e| storage_error(StorageIOError::read, &e))
        })
        .await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.blocking(|sm| {
            let tmp = tempfile::Builder::new()
                .prefix(BUILD_TEMP_PREFIX)
                .tempfile_in(&sm.dir)
                .map_err(|e| storage_error(StorageIOError::read_state_machine, &e))?
                .into_temp_path();
            let fail = |e: &dyn std::fmt::Display| {
                storage_error(
                    StorageIOError::read_state_machine,
                    &std::io::Error::other(e.to_string()),
                )
            };
            let (last_log_id, last_membership) = sm
                .store
                .copy_to(&tmp, applied_state)
                .map_err(|e| fail(&e))?;
            let db = std::fs::read(&tmp).map_err(|e| fail(&e))?;
            drop(tmp);
            let mut data = Vec::with_capacity(SNAPSHOT_HEADER.len() + db.len());
            data.extend_from_slice(SNAPSHOT_HEADER);
            data.extend_from_slice(&db);
            let snapshot_id = match last_log_id {
                Some(id) => format!("{}-{}", id.leader_id.term, id.index),
                None => "empty".to_string(),
            };
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            };
            sm.save_snapshot(&meta, &data).map_err(|e| fail(&e))?;
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> (tempfile::TempDir, StateMachine) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(&dir.path().join("state.db")).expect("state db"));
        let sm = StateMachine::new(store, dir.path());
        (dir, sm)
    }

    fn meta(id: &str) -> SnapshotMeta<NodeId, openraft::BasicNode> {
        SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: id.to_string(),
        }
    }

    /// Names in `dir` other than the state database's own files.
    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("state.db"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_snapshot_is_one_file_holding_its_metadata_and_data() {
        let (dir, sm) = machine();
        sm.save_snapshot(&meta("one"), b"first").unwrap();
        sm.save_snapshot(&meta("two"), b"second data").unwrap();
        assert_eq!(snapshot_files(dir.path()), [SNAPSHOT_FILE]);
        let loaded = sm.load_snapshot().unwrap().expect("a snapshot");
        assert_eq!(loaded.meta.snapshot_id, "two");
        assert_eq!(loaded.snapshot.get_ref(), b"second data");
    }

    #[test]
    fn a_snapshot_of_the_two_file_layout_is_read_and_then_replaced() {
        let (dir, sm) = machine();
        let saved = SavedMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: "legacy".into(),
        };
        std::fs::write(
            dir.path().join(LEGACY_META_FILE),
            serde_json::to_vec(&saved).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join(LEGACY_DATA_FILE), b"old data").unwrap();
        let loaded = sm.load_snapshot().unwrap().expect("the legacy snapshot");
        assert_eq!(loaded.meta.snapshot_id, "legacy");
        assert_eq!(loaded.snapshot.get_ref(), b"old data");
        sm.save_snapshot(&meta("new"), b"new data").unwrap();
        assert_eq!(snapshot_files(dir.path()), [SNAPSHOT_FILE]);
    }

    #[test]
    fn a_damaged_snapshot_file_is_refused_with_its_name() {
        let (dir, sm) = machine();
        std::fs::write(dir.path().join(SNAPSHOT_FILE), b"not a snapshot").unwrap();
        let err = sm.load_snapshot().unwrap_err().to_string();
        assert!(err.contains(SNAPSHOT_FILE), "{err}");
    }

    #[tokio::test]
    async fn writes_a_crash_interrupted_are_removed_at_start_and_the_snapshot_kept() {
        let (dir, sm) = machine();
        sm.save_snapshot(&meta("kept"), b"data").unwrap();
        for leftover in [SAVE_TEMP_PREFIX, BUILD_TEMP_PREFIX, INSTALL_TEMP_PREFIX] {
            std::fs::write(dir.path().join(format!("{leftover}Xy12ab")), b"torn").unwrap();
        }
        sm.recover(None).await.unwrap();
        assert_eq!(snapshot_files(dir.path()), [SNAPSHOT_FILE]);
        let loaded = sm.load_snapshot().unwrap().expect("the snapshot");
        assert_eq!(loaded.meta.snapshot_id, "kept");
    }
}
