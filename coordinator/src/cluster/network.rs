//! Raft RPC between coordinators over HTTP: the client side. Every request
//! carries the cluster token; the peer answers with the JSON of openraft's
//! `Result`, so remote Raft errors come back typed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
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
    async fn send<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let response = self
            .network
            .http
            .post(format!("{}{path}", self.url))
            .header(headers::TOKEN, &self.network.token)
            .json(request)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let status = response.status();
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

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(APPEND_PATH, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(SNAPSHOT_PATH, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(VOTE_PATH, &rpc, option.hard_ttl()).await
    }
}
