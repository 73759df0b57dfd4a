//! A running coordinator's shared state: the store, the blob store, its place
//! in the cluster, host liveness (kept by the leader), scheduling reservations
//! and the shutdown signal, with the operations handlers share.

use std::sync::Arc;
use std::time::Instant;

use skyclaw_api::hosts::HostStatus;
use tokio::sync::watch;

use crate::Config;
use crate::artifacts::BlobStore;
use crate::cluster::types::Response;
use crate::cluster::{Cluster, ClusterError, LEADER_WAIT};
use crate::error::ApiError;
use crate::liveness::Liveness;
use crate::scheduler::claims::Reservations;
use crate::state::{self, JobRow};
use crate::state::{Answer, Command, IdempotencyRecord, Output, Proposal};
use crate::store::{Store, StoreError};

pub struct Node {
    pub config: Config,
    pub store: Arc<Store>,
    /// Artifact bytes held by this coordinator.
    pub blobs: BlobStore,
    pub cluster: Cluster,
    /// Host liveness: meaningful on the leader, which alone receives heartbeats.
    pub liveness: Liveness,
    /// sha256 of the cluster token; compared in constant time.
    pub token_hash: [u8; 32],
    /// For forwarding writes to the leader and fetching blobs from peers.
    pub http: reqwest::Client,
    /// What the HTTP listener did with its connections.
    pub connections: Arc<skyclaw_api::serve::Stats>,
    /// Jobs being leased by claims in flight on this leader.
    pub reservations: Reservations,
    shutdown: watch::Sender<bool>,
}

impl Node {
    pub fn new(
        config: Config,
        store: Arc<Store>,
        blobs: BlobStore,
        cluster: Cluster,
        http: reqwest::Client,
        connections: Arc<skyclaw_api::serve::Stats>,
    ) -> Node {
        Node {
            token_hash: crate::http::auth::sha256(config.token.as_bytes()),
            liveness: Liveness::new(config.host_ttl),
            config,
            store,
            blobs,
            cluster,
            http,
            connections,
            reservations: Reservations::default(),
            shutdown: watch::channel(false).0,
        }
    }

    /// Starts tracking every host that is up as if just heard: a new leader
    /// gives each host one full TTL of grace.
    pub async fn take_over_liveness(&self) -> Result<(), StoreError> {
        let up = self
            .store
            .scan(state::hosts::list)
            .await?
            .into_iter()
            .filter(|h| h.status == HostStatus::Up)
            .map(|h| h.registration)
            .collect();
        self.liveness.reset(up, Instant::now());
        Ok(())
    }

    /// Waits until this leader tracks host liveness (a new leader takes over
    /// once it has applied its predecessor's log), so that a host is never
    /// told it is unknown by a leader that has not looked yet.
    pub async fn hosts_tracked(&self) -> Result<(), ApiError> {
        if self.liveness.tracking(LEADER_WAIT).await {
            Ok(())
        } else {
            Err(ApiError::Unavailable(
                "this coordinator is taking over as leader and does not track hosts yet; retry"
                    .into(),
            ))
        }
    }

    /// Commits a command through the cluster log and returns what applying it
    /// answered.
    pub async fn propose(
        &self,
        command: Command,
        idempotency: Option<IdempotencyRecord>,
    ) -> Result<Response, ClusterError> {
        let proposal = Proposal::new(command).with_idempotency(idempotency);
        self.cluster.write(proposal).await
    }

    /// Commits a command and returns its answer, or the reason it was refused.
    pub async fn execute<A: Answer>(
        &self,
        command: Command,
        idempotency: Option<IdempotencyRecord>,
    ) -> Result<A, ApiError> {
        answer(self.propose(command, idempotency).await?.outcome?)
    }

    pub fn job(&self, id: &str) -> Result<Option<JobRow>, ApiError> {
        Ok(self.store.read(|c| state::jobs::get(c, id))?)
    }

    /// Tells long-polls to answer now: the server is stopping.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub async fn shutting_down(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }
}

/// A command's output as the answer its proposer expects; another kind of
/// output is a bug (a command answered as another would).
pub fn answer<A: Answer>(output: Output) -> Result<A, ApiError> {
    A::from_output(output).map_err(|other| {
        ApiError::Internal(format!(
            "the state machine answered {}, not {}",
            other.kind(),
            std::any::type_name::<A>()
        ))
    })
}
