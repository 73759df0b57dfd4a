//! The Raft state machine: committed entries are applied by `state::apply` in
//! one transaction together with the last applied log id; snapshots are
//! consistent copies of the whole database, versioned by a header line.

// openraft's storage traits dictate `StorageError`, which is large; boxing it
// here would only move the allocation.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
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
/// The latest snapshot's data, in the data directory.
const SNAPSHOT_FILE: &str = "snapshot.bin";
/// The latest snapshot's metadata, beside it.
const SNAPSHOT_META_FILE: &str = "snapshot.meta.json";

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
        write_atomically(&self.dir.join(SNAPSHOT_FILE), data)?;
        write_atomically(
            &self.dir.join(SNAPSHOT_META_FILE),
            &serde_json::to_vec(&saved).expect("snapshot meta serialises"),
        )
    }

    fn load_snapshot(&self) -> std::io::Result<Option<Snapshot<TypeConfig>>> {
        let meta = match std::fs::read(self.dir.join(SNAPSHOT_META_FILE)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let saved: SavedMeta = serde_json::from_slice(&meta).map_err(std::io::Error::other)?;
        let data = std::fs::read(self.dir.join(SNAPSHOT_FILE))?;
        Ok(Some(Snapshot {
            meta: SnapshotMeta {
                last_log_id: saved.last_log_id,
                last_membership: saved.last_membership,
                snapshot_id: saved.snapshot_id,
            },
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(tmp, path)
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
            let Some(db) = data.strip_prefix(SNAPSHOT_HEADER) else {
                return Err(fail(
                    &"not a skyclaw snapshot of a version this build reads",
                ));
            };
            let tmp = sm.dir.join("snapshot-install.db");
            std::fs::write(&tmp, db).map_err(|e| fail(&e))?;
            let replaced = sm.store.replace_with(&tmp);
            let _ = std::fs::remove_file(&tmp);
            replaced.map_err(|e| fail(&e))?;
            sm.save_snapshot(&meta, &data).map_err(|e| fail(&e))
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.load_snapshot()
            .map_err(|e| storage_error(StorageIOError::read, &e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        self.blocking(|sm| {
            let tmp = sm.dir.join("snapshot-build.db");
            let _ = std::fs::remove_file(&tmp);
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
            let _ = std::fs::remove_file(&tmp);
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
