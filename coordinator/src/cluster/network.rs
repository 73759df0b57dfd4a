//! Raft RPC between coordinators over HTTP: the client side. Every request
//! carries the cluster token; the peer answers with the JSON of openraft's
//! `Result`, so remote Raft errors come back typed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use skyclaw_api::headers;

use super::types::{NodeId, TypeConfig};

/// Paths of the Raft RPC routes every coordinator serves.
pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";

/// Largest Raft RPC body a coordinator accepts: an append or one snapshot
/// chunk (JSON spells snapshot bytes as numbers, several characters a byte).
/// One log entry never comes near it: batches are bounded by bytes far below.
pub const RAFT_BODY_LIMIT: usize = 256 * 1024 * 1024;

/// Most encoded bytes of entries one append carries (the log store's
/// `limited_get_log_entries` reads no more). openraft 0.9 gives an append
/// one heartbeat interval to be answered and then sends the same entries
/// again, so an append must be small enough for a follower to receive,
/// decode and fsync in that time. A single entry larger than this still goes
/// alone.
pub const APPEND_BYTES: usize = 4 * 1024 * 1024;
const _: () = assert!(APPEND_BYTES < RAFT_BODY_LIMIT);

/// When this node last heard back from each peer: the leader's view of its
/// followers, for `/v1/network/peers`.
#[derive(Default)]
pub struct Contacts {
    last: Mutex<HashMap<NodeId, Instant>>,
}

impl Contacts {
    fn heard(&self, peer: NodeId) {
        self.last
            .lock()
            .expect("contacts lock")
            .insert(peer, Instant::now());
    }

    pub fn since(&self, peer: NodeId) -> Option<Duration> {
        self.last
            .lock()
            .expect("contacts lock")
            .get(&peer)
            .map(Instant::elapsed)
    }
}

/// Makes one [`PeerClient`] per peer; they share the HTTP connection pool.
#[derive(Clone)]
pub struct Network {
    http: reqwest::Client,
    token: String,
    contacts: Arc<Contacts>,
}

impl Network {
    pub fn new(http: reqwest::Client, token: String, contacts: Arc<Contacts>) -> Network {
        Network {
            http,
            token,
            contacts,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            url: node.addr.trim_end_matches('/').to_string(),
            network: self.clone(),
        }
    }
}

/// Sends Raft RPCs to one peer.
pub struct PeerClient {
    target: NodeId,
    url: String,
    network: Network,
}

impl PeerClient {
    /// Posts an encoded RPC and decodes the peer's Raft answer. A peer that
    /// refuses an append of `entries` entries as too large gets it again in
    /// smaller pieces: openraft shrinks its next appends on [`PayloadTooLarge`].
    async fn send<Resp, E>(
        &self,
        path: &str,
        body: Vec<u8>,
        entries: u64,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let response = self
            .network
            .http
            .post(format!("{}{path}", self.url))
            .header(headers::TOKEN, &self.network.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let status = response.status();
        if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE && entries > 1 {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            ));
        }
        if !status.is_success() {
            let detail = response.text().await.unwrap_or_default();
            let error = std::io::Error::other(format!("{} answered {status}: {detail}", self.url));
            return Err(RPCError::Network(NetworkError::new(&error)));
        }
        let answer: Result<Resp, RaftError<NodeId, E>> = response
            .json()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.network.contacts.heard(self.target);
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// Encodes an RPC body as JSON, the form the peer's routes read.
fn encode(request: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(request).expect("raft RPCs serialise")
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        let body = encode(&rpc);
        self.send(APPEND_PATH, body, entries, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(SNAPSHOT_PATH, encode(&rpc), 0, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(VOTE_PATH, encode(&rpc), 0, option.hard_ttl())
            .await
    }
}
