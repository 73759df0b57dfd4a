//! What the cluster layer (and the leader's background duties built on it)
//! can fail with, in its own terms; the HTTP edge maps each to an answer
//! (`error.rs`).

use std::sync::Arc;

use crate::store::StoreError;

/// Why a write, a membership change or a duty did not happen (or may not
/// have). Cloned: one failed batch answers every proposal in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// A majority did not acknowledge this leader lately: nothing was written.
    #[error("{0}")]
    NoQuorum(String),
    /// The write is in the log but did not commit in time: it may still.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// Not now (leadership moved, shutting down, a change in progress): retry.
    #[error("{0}")]
    Unavailable(String),
    /// A join that names no usable address.
    #[error("{0}")]
    InvalidPeer(String),
    /// A removal of a coordinator the cluster does not have.
    #[error("{0}")]
    UnknownPeer(String),
    /// A membership change Raft refuses, such as a node id already taken.
    #[error("{0}")]
    Conflict(String),
    /// The local store failed under a duty.
    #[error("storage fault: {0}")]
    Storage(Arc<StoreError>),
    /// A broken promise inside the cluster layer: a bug.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ClusterError {
    fn from(e: StoreError) -> ClusterError {
        ClusterError::Storage(Arc::new(e))
    }
}
