//! Raft RPC between coordinators over HTTP: the receiving side. Token only;
//! answers carry openraft's `Result` as JSON.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::auth::ClusterToken;
use crate::cluster::types::{NodeId, TypeConfig};
use crate::node::Node;

pub async fn append(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    Json(rpc): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(node.cluster.raft.append_entries(rpc).await)
}

pub async fn vote(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    Json(rpc): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(node.cluster.raft.vote(rpc).await)
}

pub async fn snapshot(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    Json(rpc): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(node.cluster.raft.install_snapshot(rpc).await)
}
