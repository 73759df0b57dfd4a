//! The coordinator cluster: a Raft group (openraft) whose state machine is
//! `state::apply` over SQLite. Starting, initialising or joining it, proposing
//! commands through it, changing membership, and the peers view.
//!
//! Architecture invariant: a single coordinator is a one-voter cluster. Every
//! write goes through `Cluster::write`; there is no path around the log.

mod error;
mod kv;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, ChangeMembers, ServerState};
use skyclaw_api::network::{Join, Peer, PeerList, PeerRole};
use skyclaw_api::url::{BASE_URL_FORM, is_http_url};
use skyclaw_api::{Client, ClientError, Credentials, ErrorCode};
use tokio::sync::{mpsc, oneshot};

use crate::state::Proposal;
use crate::store::Store;
use crate::{Config, CoordinatorError};
pub use error::ClusterError;
use log_store::LogStore;
use network::{Contacts, Network};
use state_machine::StateMachine;
use types::{Batch, NodeId, Raft, Response};

/// A write that has not committed in this time answers 503 `no_quorum`: a
/// majority of voters did not acknowledge it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write waits to learn who leads (an election takes about one
/// election timeout) before it answers 503 `no_quorum`.
pub const LEADER_WAIT: Duration = Duration::from_secs(3);
/// Most proposals gathered into one log entry: bounds an entry's size and the
/// latency one batch adds to the proposals in it.
const MAX_BATCH: usize = 1024;
/// Encoded bytes past which a batch takes no more proposals: an entry then
/// fits one append ([`network::APPEND_BYTES`]) even when concurrent
/// completions carry megabytes of output each. A single proposal larger
/// than this travels alone; request body limits keep it far below the Raft
/// body limit (`MAX_BODY_BYTES_LIMIT`, `COMPLETION_BODY_LIMIT`).
const MAX_BATCH_BYTES: usize = network::APPEND_BYTES;
/// Proposals waiting for a batch; past this, proposers wait (backpressure)
/// instead of growing memory without bound.
const PROPOSAL_QUEUE: usize = 16 * 1024;
/// Raft heartbeats between coordinators, in milliseconds: coordinators are
/// expected to be near each other.
const HEARTBEAT_MS: u64 = 100;
/// Election timeout range, in milliseconds: a dead leader is replaced within
/// about a second.
const ELECTION_MIN_MS: u64 = 500;
const ELECTION_MAX_MS: u64 = 1000;
/// A leader whose followers have not acknowledged it for this long has lost
/// its quorum: it answers writes with `no_quorum` at once instead of timing out.
const QUORUM_ACK_STALE_MS: u64 = 2 * ELECTION_MAX_MS;
/// Log entries kept after a snapshot, so a briefly lagging follower catches up
/// from the log rather than a whole snapshot.
const LOG_KEPT_AFTER_SNAPSHOT: u64 = 1000;
/// Entries sent in one append request.
const MAX_PAYLOAD_ENTRIES: u64 = 512;
/// Snapshot bytes sent per install request.
const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// Pauses between attempts to join through the bootstrap peers.
const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(3);
/// The file in the data directory that remembers this node's id.
const NODE_ID_FILE: &str = "node-id";
/// The Raft log's database file in the data directory.
const LOG_FILE: &str = "raft-log.db";
/// Largest generated node id: ids stay exact in JSON numbers.
const MAX_GENERATED_ID: u64 = (1 << 53) - 1;

/// This coordinator's membership in the cluster.
pub struct Cluster {
    pub raft: Raft,
    pub id: NodeId,
    pub url: String,
    /// Voters the cluster grows to as coordinators join.
    voters: usize,
    contacts: Arc<Contacts>,
    proposals: mpsc::Sender<Pending>,
}

/// A proposal waiting to be batched, with its encoded size and where its
/// answer goes.
struct Pending {
    proposal: Proposal,
    bytes: usize,
    reply: oneshot::Sender<Result<Response, ClusterError>>,
}

impl Cluster {
    /// Opens the log and state machine and starts Raft. The cluster is formed
    /// (or joined) by [`Cluster::bootstrap`], once the RPC routes are served.
    pub async fn start(
        config: &Config,
        store: Arc<Store>,
        url: String,
        http: reqwest::Client,
    ) -> Result<Cluster, CoordinatorError> {
        let id = node_id(&config.data_dir, config.node_id)?;
        let raft_config = openraft::Config {
            cluster_name: "skyclaw".into(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_MIN_MS,
            election_timeout_max: ELECTION_MAX_MS,
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
            max_in_snapshot_log_to_keep: LOG_KEPT_AFTER_SNAPSHOT,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            ..Default::default()
        }
        .validate()
        .map_err(|e| CoordinatorError::Config(format!("raft: {e}")))?;
        let mut log = LogStore::open(&config.data_dir.join(LOG_FILE))
            .map_err(|e| CoordinatorError::Store(e.into()))?;
        let state_machine = StateMachine::new(store, &config.data_dir);
        let purged = log
            .get_log_state()
            .await
            .map_err(|e| CoordinatorError::Raft(e.to_string()))?
            .last_purged_log_id;
        state_machine
            .recover(purged)
            .await
            .map_err(|e| CoordinatorError::Raft(e.to_string()))?;
        let contacts = Arc::new(Contacts::default());
        let network = Network::new(http, config.token.clone(), contacts.clone());
        let raft = Raft::new(id, Arc::new(raft_config), network, log, state_machine)
            .await
            .map_err(|e| CoordinatorError::Raft(e.to_string()))?;
        let (proposals, queue) = mpsc::channel(PROPOSAL_QUEUE);
        tokio::spawn(batch_loop(raft.clone(), queue));
        Ok(Cluster {
            raft,
            id,
            url,
            voters: config.voters,
            contacts,
            proposals,
        })
    }

    /// Forms a new cluster, joins one through `bootstrap`, or (on restart)
    /// announces this node's address if it changed. Retries until a peer
    /// answers; a refusal (such as a node id taken by another address) is final.
    pub async fn bootstrap(
        &self,
        bootstrap: &[String],
        token: &str,
    ) -> Result<(), CoordinatorError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| CoordinatorError::Raft(e.to_string()))?;
        if initialized {
            let known = self.membership_url(self.id);
            if known.as_deref() == Some(self.url.as_str()) {
                return Ok(());
            }
            // Announce the new address through any peer; this node's own URL
            // comes last, for a cluster of one (it forwards to itself once
            // elected).
            let peers: Vec<String> = self
                .member_urls()
                .into_iter()
                .chain(bootstrap.iter().cloned())
                .chain([self.url.clone()])
                .collect();
            return self.join_through(&peers, token, true).await;
        }
        if bootstrap.is_empty() {
            let members = BTreeMap::from([(self.id, BasicNode::new(&self.url))]);
            self.raft
                .initialize(members)
                .await
                .map_err(|e| CoordinatorError::Raft(e.to_string()))?;
            tracing::info!(node = self.id, "initialised a new cluster");
            return Ok(());
        }
        self.join_through(bootstrap, token, false).await
    }

    async fn join_through(
        &self,
        peers: &[String],
        token: &str,
        rejoin: bool,
    ) -> Result<(), CoordinatorError> {
        let client = Client::new(peers, Credentials::Token(token.to_string()))
            .map_err(|e| CoordinatorError::Config(format!("bootstrap peers: {e}")))?;
        let join = Join {
            node_id: self.id,
            url: self.url.clone(),
            rejoin,
        };
        let mut delay = JOIN_BACKOFF_MIN;
        loop {
            match client.join(&join).await {
                Ok(_) => {
                    tracing::info!(node = self.id, url = %self.url, rejoin, "joined the cluster");
                    return Ok(());
                }
                Err(e) if is_final(&e) => {
                    return Err(CoordinatorError::Config(format!(
                        "joining the cluster was refused: {e}"
                    )));
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot join yet")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(JOIN_BACKOFF_MAX);
        }
    }

    fn metrics(&self) -> openraft::RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    fn membership_url(&self, id: NodeId) -> Option<String> {
        self.metrics()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// The URLs of the other coordinators in the cluster.
    pub fn member_urls(&self) -> Vec<String> {
        self.metrics()
            .membership_config
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(_, n)| n.addr.clone())
            .collect()
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Waits, up to [`LEADER_WAIT`], until this node has applied every entry
    /// its log holds now: for a new leader, its predecessor's last entries
    /// and its own first one.
    pub async fn wait_applied_own_log(&self) -> Result<(), ClusterError> {
        let last = self.raft.metrics().borrow().last_log_index;
        self.raft
            .wait(Some(LEADER_WAIT))
            .applied_index_at_least(last, "applied its log")
            .await
            .map(|_| ())
            .map_err(|e| ClusterError::Unavailable(format!("the log is not applied yet: {e}")))
    }

    /// The leader's id and URL, if one is known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow().clone();
        let id = metrics.current_leader?;
        let url = metrics
            .membership_config
            .membership()
            .get_node(&id)?
            .addr
            .clone();
        Some((id, url))
    }

    /// Waits up to `timeout` for a leader to be known.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<(NodeId, String)> {
        let mut metrics = self.raft.metrics();
        let found = tokio::time::timeout(timeout, async {
            loop {
                if let Some(leader) = self.leader() {
                    return leader;
                }
                if metrics.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        found.ok()
    }

    /// Commits a proposal through the log, batched with concurrent ones, and
    /// returns what applying it answered. Only the leader can; others forward
    /// writes to it.
    pub async fn write(&self, proposal: Proposal) -> Result<Response, ClusterError> {
        if self.quorum_lost() {
            return Err(no_quorum());
        }
        let stopping = || ClusterError::Unavailable("the coordinator is shutting down".into());
        let (reply, answer) = oneshot::channel();
        // Measured here, on the proposer's task, so the one batching task
        // does not encode every proposal twice.
        let bytes = types::encoded_len(&proposal);
        self.proposals
            .send(Pending {
                proposal,
                bytes,
                reply,
            })
            .await
            .map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }

    /// True when this leader has not heard from a majority for a while.
    fn quorum_lost(&self) -> bool {
        // Borrowed, not cloned: this runs for every write.
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let voters = metrics.membership_config.membership().voter_ids().count();
        metrics.state == ServerState::Leader
            && voters > 1
            && metrics
                .millis_since_quorum_ack
                .is_some_and(|ms| ms > QUORUM_ACK_STALE_MS)
    }

    /// Adds a coordinator (as a learner, promoted while voters are missing),
    /// or updates the address of one that rejoins. Leader only.
    pub async fn join(&self, join: Join) -> Result<(), ClusterError> {
        if !is_http_url(&join.url) {
            return Err(ClusterError::InvalidPeer(format!(
                "url must be {BASE_URL_FORM}, not {:?}",
                join.url
            )));
        }
        let node = BasicNode::new(&join.url);
        match self.membership_url(join.node_id) {
            Some(url) if url == join.url => {}
            Some(url) if !join.rejoin => {
                return Err(ClusterError::Conflict(format!(
                    "node id {} is already taken by the coordinator at {url}; give this one another --node-id",
                    join.node_id
                )));
            }
            Some(_) => {
                let change = ChangeMembers::SetNodes(BTreeMap::from([(join.node_id, node)]));
                self.change(change).await?;
            }
            None => {
                self.raft
                    .add_learner(join.node_id, node, true)
                    .await
                    .map_err(membership_error)?;
                tracing::info!(node = join.node_id, url = %join.url, "coordinator added as a learner");
            }
        }
        self.promote_learners().await
    }

    /// Removes a coordinator for good and promotes a learner in its place.
    pub async fn remove(&self, id: NodeId) -> Result<(), ClusterError> {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(ClusterError::UnknownPeer(format!(
                "no coordinator {id} in the cluster"
            )));
        }
        if membership.voter_ids().any(|v| v == id) {
            self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                .await?;
        }
        // A voter removed without `retain` is gone already; a learner is not.
        if self.membership_url(id).is_some() {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await?;
        }
        tracing::info!(node = id, "coordinator removed");
        self.promote_learners().await
    }

    /// Makes learners voters, lowest id first, until the cluster has the
    /// configured number of voters.
    async fn promote_learners(&self) -> Result<(), ClusterError> {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters = membership.voter_ids().count();
        let wanted = self.voters.saturating_sub(voters);
        let promote: BTreeSet<NodeId> = membership.learner_ids().take(wanted).collect();
        if promote.is_empty() {
            return Ok(());
        }
        tracing::info!(nodes = ?promote, "promoting learners to voters");
        self.change(ChangeMembers::AddVoterIds(promote)).await
    }

    async fn change(&self, change: ChangeMembers<NodeId, BasicNode>) -> Result<(), ClusterError> {
        self.raft
            .change_membership(change, false)
            .await
            .map(drop)
            .map_err(membership_error)
    }

    /// Every coordinator with its role; progress figures come from the leader.
    pub fn peers(&self) -> PeerList {
        let metrics = self.metrics();
        let leading = metrics.state == ServerState::Leader;
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let peers = membership
            .nodes()
            .map(|(&id, node)| {
                let role = if metrics.current_leader == Some(id) {
                    PeerRole::Leader
                } else if voters.contains(&id) {
                    PeerRole::Voter
                } else {
                    PeerRole::Learner
                };
                let (last_contact_ms, applied_index) = if id == self.id {
                    (leading.then_some(0), metrics.last_applied.map(|l| l.index))
                } else if leading {
                    let matched = metrics
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&id).copied().flatten())
                        .map(|l| l.index);
                    (
                        self.contacts.since(id).map(|d| d.as_millis() as u64),
                        matched,
                    )
                } else {
                    (None, None)
                };
                Peer {
                    id,
                    url: node.addr.clone(),
                    role,
                    last_contact_ms,
                    applied_index,
                }
            })
            .collect();
        PeerList {
            leader_id: metrics.current_leader,
            peers,
        }
    }
}

/// Gathers waiting proposals into batches and commits one batch at a time:
/// one log entry, one fsync and one state-machine transaction per batch.
/// While a batch commits, the next one gathers everything proposed meanwhile.
/// Committing several batches at once was measured slower, both on one node
/// and on three (`skyclaw-bench wasi`, `bench/cluster.sh`): each entry costs
/// openraft, the log and the state machine a fixed amount, and smaller
/// batches pay it more often.
async fn batch_loop(raft: Raft, mut queue: mpsc::Receiver<Pending>) {
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut waiting, MAX_BATCH).await > 0 {
        for batch in by_bytes(std::mem::take(&mut waiting), MAX_BATCH_BYTES) {
            commit(&raft, batch).await;
        }
    }
}

/// Splits waiting proposals, in order, into batches of at most `limit`
/// encoded bytes; a proposal larger than `limit` makes a batch of its own.
fn by_bytes(waiting: Vec<Pending>, limit: usize) -> Vec<Vec<Pending>> {
    let mut batches: Vec<Vec<Pending>> = Vec::new();
    let mut bytes = 0;
    for pending in waiting {
        match batches.last_mut() {
            Some(batch) if bytes + pending.bytes <= limit => {
                bytes += pending.bytes;
                batch.push(pending);
            }
            _ => {
                bytes = pending.bytes;
                batches.push(vec![pending]);
            }
        }
    }
    batches
}

/// Commits one batch and hands each proposer its answer.
async fn commit(raft: &Raft, batch: Vec<Pending>) {
    let (proposals, replies): (Vec<Proposal>, Vec<_>) =
        batch.into_iter().map(|p| (p.proposal, p.reply)).unzip();
    let count = proposals.len();
    let written = match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(Batch(proposals)))
        .await
    {
        Err(_) => Err(outcome_unknown()),
        Ok(Ok(written)) if written.data.len() == count => Ok(written.data),
        Ok(Ok(written)) => Err(ClusterError::Internal(format!(
            "a batch of {count} proposals answered {} times",
            written.data.len()
        ))),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(
            ClusterError::Unavailable("leadership moved while writing; retry the request".into()),
        ),
        Ok(Err(e)) => Err(ClusterError::Unavailable(format!("cannot write: {e}"))),
    };
    match written {
        Ok(responses) => {
            for (reply, response) in replies.into_iter().zip(responses) {
                let _ = reply.send(Ok(response));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// A write that is in the log but did not commit in time may still commit
/// once a quorum returns: its outcome is unknown, which `no_quorum` (never
/// written) would misstate.
fn outcome_unknown() -> ClusterError {
    ClusterError::OutcomeUnknown(format!(
        "the write was not committed within {} s (no quorum answered) and may still commit \
         when one returns; retry with the same idempotency key to learn its outcome",
        WRITE_TIMEOUT.as_secs()
    ))
}

fn no_quorum() -> ClusterError {
    ClusterError::NoQuorum(
        "no quorum: a majority of coordinators has not acknowledged this leader lately; \
         the write was not made"
            .into(),
    )
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> ClusterError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            ClusterError::Unavailable("leadership moved during the membership change; retry".into())
        }
        // Another change is still committing (coordinators joining at once):
        // worth retrying, unlike the other refusals.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            openraft::error::ChangeMembershipError::InProgress(e),
        )) => ClusterError::Unavailable(format!("{e}; retry")),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ClusterError::Conflict(e.to_string())
        }
        other => ClusterError::Unavailable(other.to_string()),
    }
}

/// A join answer that retrying cannot change.
fn is_final(e: &ClientError) -> bool {
    matches!(
        e.code(),
        Some(
            ErrorCode::Conflict
                | ErrorCode::BadRequest
                | ErrorCode::Unauthorized
                | ErrorCode::Forbidden
        )
    )
}

/// This node's id: the one given, or the one kept in the data directory, or a
/// new random one, which is then kept. A data directory never changes owner.
fn node_id(data_dir: &Path, given: Option<NodeId>) -> Result<NodeId, CoordinatorError> {
    let path = data_dir.join(NODE_ID_FILE);
    let kept = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().parse::<NodeId>().map_err(|_| {
            CoordinatorError::Config(format!("{} does not hold a node id", path.display()))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(CoordinatorError::DataDir { path, source }),
    };
    let id = match (kept, given) {
        (Some(kept), Some(given)) if kept != given => {
            return Err(CoordinatorError::Config(format!(
                "the data directory {} belongs to node {kept}, not {given}",
                data_dir.display()
            )));
        }
        (Some(kept), _) => return Ok(kept),
        (None, Some(0)) => return Err(CoordinatorError::Config("node id 0 is reserved".into())),
        (None, Some(given)) => given,
        (None, None) => rand::random::<u64>() % MAX_GENERATED_ID + 1,
    };
    std::fs::write(&path, id.to_string())
        .map_err(|source| CoordinatorError::DataDir { path, source })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;
    use crate::cluster::types::{StorageError, TypeConfig};

    /// Fresh log and state machine databases in a temp dir per case.
    struct TempStores;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for TempStores {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Arc::new(Store::open(&dir.path().join("state.db")).expect("state db"));
            let log = LogStore::open(&dir.path().join("log.db")).expect("log db");
            let state_machine = StateMachine::new(store, dir.path());
            Ok((dir, log, state_machine))
        }
    }

    /// openraft's own conformance suite for log and state machine storage.
    #[test]
    fn storage_passes_the_openraft_suite() {
        Suite::test_all(TempStores).expect("storage suite");
    }

    fn pending(bytes: usize) -> Pending {
        let command = crate::state::Command::RevokeApiKey {
            id: format!("k-{bytes}"),
            now: 0,
        };
        Pending {
            proposal: Proposal::new(command),
            bytes,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn batches_are_bounded_by_bytes_and_keep_the_order() {
        let sizes = [4, 3, 3, 12, 1, 9, 1];
        let waiting = sizes.iter().map(|&b| pending(b)).collect();
        let batches: Vec<Vec<usize>> = by_bytes(waiting, 10)
            .into_iter()
            .map(|batch| batch.iter().map(|p| p.bytes).collect())
            .collect();
        // 12 is over the limit alone and travels alone.
        assert_eq!(batches, [vec![4, 3, 3], vec![12], vec![1, 9], vec![1]]);
    }

    #[test]
    fn a_data_directory_keeps_its_node_id() {
        let dir = tempfile::tempdir().unwrap();
        let first = node_id(dir.path(), None).unwrap();
        assert_eq!(node_id(dir.path(), None).unwrap(), first);
        assert_eq!(node_id(dir.path(), Some(first)).unwrap(), first);
        let err = node_id(dir.path(), Some(first + 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("belongs to node {first}")), "{err}");
    }
}
