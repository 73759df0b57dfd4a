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
            .prefix(SNAPSHOT_FILE)
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
            .prefix("snapshot-install")
            .tempfile_in(&self.dir)
            .map_err(|e| e.to_string())?;
        tmp.write_all(db).map_err(|e| e.to_string())?;
        self.store
            .replace_with(tmp.path())
            .map_err(|e| e.to_string())
    }

    /// Restores the state database from the kept snapshot when it has not
    /// applied the entries the log purged: `synchronous=NORMAL` lets a
    /// power cut take the database's last commits, which the log no longer
    /// holds once purged. Runs before Raft starts.
    pub async fn catch_up_with_log(&self, purged: Option<LogId>) -> Result<(), StorageError> {
        self.blocking(move |sm| {
            let fail = |e: String| {
                storage_error(
                    StorageIOError::read_state_machine,
                    &std::io::Error::other(e),
                )
            };
            let (applied, _) = sm
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
            let snapshot = sm.load_snapshot().map_err(|e| fail(e.to_string()))?;
            let covers = |s: &Snapshot<TypeConfig>| {
                index(s.meta.last_log_id).is_some_and(|i| i >= purged_index)
            };
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
            sm.install_data(snapshot.snapshot.get_ref()).map_err(fail)
        })
        .await
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
                .prefix("snapshot-build")
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
