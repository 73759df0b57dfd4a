//! The Raft type configuration: what goes through the log (a [`Batch`] of
//! proposals: one entry, one fsync, for many concurrent writes) and what
//! applying it answers (a [`Response`] per proposal).

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::state::{CommandError, Output, Proposal};

openraft::declare_raft_types!(
    /// Skyclaw's Raft: proposals in, responses out, nodes named by URL.
    pub TypeConfig:
        D = Batch,
        R = Vec<Response>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type Entry = openraft::Entry<TypeConfig>;

/// Proposals that travel in one log entry, applied in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Proposal>);

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} proposals", self.0.len())
    }
}

/// What applying one proposal answered. Entries that carry no proposal (blank
/// and membership entries) answer `outcome: None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub outcome: Result<Output, CommandError>,
    /// The outcome was recorded earlier under the same idempotency key.
    pub replayed: bool,
}

/// Wraps any error as the error type openraft's storage traits return.
pub fn storage_error(
    make: fn(openraft::AnyError) -> openraft::StorageIOError<NodeId>,
    e: &(impl std::error::Error + 'static),
) -> StorageError {
    make(openraft::AnyError::new(e)).into()
}
