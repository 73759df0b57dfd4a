//! The coordinator cluster on the wire: who the peers are, joining, removing.

use serde::{Deserialize, Serialize};

/// A coordinator's place in the Raft cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerRole {
    Leader,
    Voter,
    Learner,
}

impl PeerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Leader => "leader",
            PeerRole::Voter => "voter",
            PeerRole::Learner => "learner",
        }
    }
}

/// One coordinator as `GET /v1/network/peers` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    pub id: u64,
    /// The URL the coordinator advertises: where hosts, clients and peers reach it.
    pub url: String,
    pub role: PeerRole,
    /// Milliseconds since the leader last heard from this peer (0 for the leader
    /// itself); absent when unknown, such as while there is no leader.
    pub last_contact_ms: Option<u64>,
    /// The highest log index known to be applied (leader) or replicated to the peer.
    pub applied_index: Option<u64>,
}

/// `GET /v1/network/peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerList {
    pub leader_id: Option<u64>,
    pub peers: Vec<Peer>,
}

/// `POST /v1/network/join`: a coordinator asks to be added to the cluster, or
/// announces a new address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Join {
    pub node_id: u64,
    pub url: String,
    /// The node already holds this cluster's state (it restarted with its data
    /// directory) and only announces its address. A new node whose id is taken
    /// by another address is refused; a rejoining one updates its address.
    #[serde(default)]
    pub rejoin: bool,
}
