//! The Skyclaw coordinator: tracks hosts, jobs, artifacts and API keys, hands
//! jobs to hosts under leases, stores artifact blobs, and serves the HTTP API.
//! State changes are typed commands applied by one deterministic function to
//! SQLite (see [`state`]).

#![forbid(unsafe_code)]

mod artifacts;
mod checkpoint;
mod cluster;
mod error;
mod http;
mod liveness;
mod node;
mod reconcile;
mod scheduler;
mod state;
mod store;
mod sweep;
mod waiting;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use error::ApiError;
pub use http::{Access, Route, routes};
use skyclaw_api::url::{BASE_URL_FORM, is_http_url};
use store::Store;
pub use store::StoreError;

/// A host silent this long is marked down and its jobs requeued.
pub const DEFAULT_HOST_TTL: Duration = Duration::from_secs(10);
/// A lease not renewed for this long ends and its job is requeued; hosts renew
/// with every heartbeat, so this only matters when a host loses contact.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(30);
/// Largest request body: a job spec with its stdin fits with room to spare.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Largest request body limit a coordinator accepts: a request becomes one
/// proposal, and the log entry that carries it must fit a Raft RPC
/// ([`cluster::network::RAFT_BODY_LIMIT`]) with room to spare.
pub const MAX_BODY_BYTES_LIMIT: usize = 64 * 1024 * 1024;
const _: () = assert!(
    MAX_BODY_BYTES_LIMIT <= cluster::network::RAFT_BODY_LIMIT / 4
        && http::COMPLETION_BODY_LIMIT <= cluster::network::RAFT_BODY_LIMIT / 4,
    "one proposal must fit a raft append with room to spare"
);
/// Largest artifact accepted: a big WASI component or a bundled service fits;
/// a runaway upload cannot fill the coordinators' disks.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 256 * 1024 * 1024;
/// The state machine's database file inside the data directory.
pub const DB_FILE: &str = "coordinator.db";
/// Voters a cluster grows to by default; further coordinators stay learners.
pub const DEFAULT_VOTERS: usize = 3;
/// Largest voter count accepted: every write waits for a majority of voters.
pub const MAX_VOTERS: usize = 7;
/// Log entries between snapshots; a lagging node further behind than the kept
/// log catches up from a snapshot.
pub const DEFAULT_SNAPSHOT_LOGS: u64 = 20_000;
/// How long connecting to a peer coordinator may take.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Where `run` writes the URL it serves on, once bound (tests and tools read it).
pub const URL_FILE: &str = "coordinator.url";

/// How a coordinator runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The cluster's shared token, required on private routes.
    pub token: String,
    pub host_ttl: Duration,
    pub lease_duration: Duration,
    pub max_body_bytes: usize,
    /// Largest artifact blob an upload may store.
    pub max_artifact_bytes: u64,
    /// This coordinator's id in the cluster; chosen at random and kept in the
    /// data directory when not given.
    pub node_id: Option<u64>,
    /// The URL peers, hosts and clients reach this coordinator at; defaults to
    /// `http://` and the listener's address.
    pub advertise_url: Option<String>,
    /// Coordinators of an existing cluster to join; empty starts a new cluster
    /// (or resumes the one in the data directory).
    pub bootstrap: Vec<String>,
    /// Voters the cluster grows to as coordinators join.
    pub voters: usize,
    /// Log entries between snapshots.
    pub snapshot_logs: u64,
    /// The HTTP listener's connection cap and timeouts.
    pub listener: skyclaw_api::serve::Limits,
}

impl Config {
    /// A configuration with the default limits.
    pub fn new(data_dir: PathBuf, token: String) -> Config {
        Config {
            data_dir,
            token,
            host_ttl: DEFAULT_HOST_TTL,
            lease_duration: DEFAULT_LEASE_DURATION,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            node_id: None,
            advertise_url: None,
            bootstrap: Vec::new(),
            voters: DEFAULT_VOTERS,
            snapshot_logs: DEFAULT_SNAPSHOT_LOGS,
            listener: skyclaw_api::serve::Limits::default(),
        }
    }
}

/// Why a coordinator could not start or stopped with a fault.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("serving http: {0}")]
    Serve(std::io::Error),
    #[error("raft: {0}")]
    Raft(String),
}

/// Serves the coordinator on an already bound listener until `shutdown` fires:
/// starts Raft, serves HTTP, then forms or joins the cluster.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CoordinatorError> {
    validate(&config)?;
    let data_dir_error = |source| CoordinatorError::DataDir {
        path: config.data_dir.clone(),
        source,
    };
    skyclaw_api::datadir::create_private(&config.data_dir).map_err(data_dir_error)?;
    let local = listener.local_addr().map_err(CoordinatorError::Serve)?;
    let url = match &config.advertise_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => format!("http://{local}"),
    };
    let store = Arc::new(Store::open(&config.data_dir.join(DB_FILE))?);
    let blobs = artifacts::BlobStore::open(&config.data_dir).map_err(data_dir_error)?;
    let http = reqwest::Client::builder()
        .connect_timeout(PEER_CONNECT_TIMEOUT)
        .pool_idle_timeout(skyclaw_api::client::POOL_IDLE_TIMEOUT)
        .build()
        .map_err(|e| CoordinatorError::Config(format!("http client: {e}")))?;
    let cluster =
        cluster::Cluster::start(&config, store.clone(), url.clone(), http.clone()).await?;
    let connections = Arc::new(skyclaw_api::serve::Stats::default());
    let node = Arc::new(node::Node::new(
        config.clone(),
        store,
        blobs,
        cluster,
        http,
        connections.clone(),
    ));
    write_url_file(&config.data_dir, &format!("http://{local}")).map_err(data_dir_error)?;
    tracing::info!(%url, node_id = node.cluster.id, data_dir = %config.data_dir.display(), "coordinator listening");

    let sweeper = tokio::spawn(sweep::run(node.clone()));
    let stopping = node.clone();
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<CoordinatorError>();
    let server = tokio::spawn(skyclaw_api::serve::serve(
        listener,
        http::router(node.clone(), config.max_body_bytes),
        config.listener,
        connections,
        async move {
            tokio::select! {
                () = shutdown => {}
                () = stopping.shutting_down() => {}
            }
            stopping.begin_shutdown();
        },
    ));
    let joiner = {
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = node
                .cluster
                .bootstrap(&node.config.bootstrap, &node.config.token)
                .await
            {
                node.begin_shutdown();
                let _ = fatal_tx.send(e);
            }
        })
    };
    let served = server
        .await
        .map_err(|e| CoordinatorError::Serve(std::io::Error::other(e)));
    joiner.abort();
    sweeper.abort();
    let _ = node.cluster.raft.shutdown().await;
    tracing::info!("coordinator stopped");
    if let Ok(fatal) = fatal_rx.await {
        return Err(fatal);
    }
    served
}

fn validate(config: &Config) -> Result<(), CoordinatorError> {
    if config.token.len() < 16 {
        return Err(CoordinatorError::Config(
            "the cluster token must be at least 16 characters".into(),
        ));
    }
    if config.max_body_bytes == 0 || config.max_body_bytes > MAX_BODY_BYTES_LIMIT {
        return Err(CoordinatorError::Config(format!(
            "the request body limit must be between 1 and {MAX_BODY_BYTES_LIMIT} bytes, not {}",
            config.max_body_bytes
        )));
    }
    if config.voters == 0 || config.voters > MAX_VOTERS {
        return Err(CoordinatorError::Config(format!(
            "voters must be between 1 and {MAX_VOTERS}"
        )));
    }
    if let Some(url) = &config.advertise_url
        && !is_http_url(url)
    {
        return Err(CoordinatorError::Config(format!(
            "the advertised url must be {BASE_URL_FORM}, not {url:?}"
        )));
    }
    if config.host_ttl < Duration::from_millis(100) || config.lease_duration < config.host_ttl {
        return Err(CoordinatorError::Config(
            "host ttl must be at least 100 ms and the lease duration at least the host ttl".into(),
        ));
    }
    Ok(())
}

/// Writes the URL file atomically, so a reader never sees half of it.
fn write_url_file(dir: &std::path::Path, url: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!("{URL_FILE}.tmp"));
    std::fs::write(&tmp, url)?;
    std::fs::rename(tmp, dir.join(URL_FILE))
}
