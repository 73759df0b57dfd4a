//! The node commands: `coordinator`, `host`, `gateway`, and `dev` (one of
//! each in one process). They parse flags into the libraries' configs, bind the listener,
//! and stop cleanly on Ctrl-C or SIGTERM.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::builder::TypedValueParser as _;
use skyclaw_api::jobs::{MAX_OUTPUT_BYTES_LIMIT, MAX_WASI_MEMORY_MB};
use skyclaw_api::serve;
use skyclaw_api::url::parse_base_url;
use skyclaw_coordinator::{
    DEFAULT_HOST_TTL, DEFAULT_LEASE_DURATION, DEFAULT_MAX_ARTIFACT_BYTES, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_SNAPSHOT_LOGS, DEFAULT_VOTERS, MAX_BODY_BYTES_LIMIT, MAX_VOTERS,
};
use skyclaw_runtime::{
    DEFAULT_ARTIFACT_CACHE_BYTES, DEFAULT_JOB_MAX_PROCESSES, DEFAULT_JOB_MEMORY_MB,
    DEFAULT_JOB_UIDS, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_PARALLEL, DEFAULT_OPENCLAW_COMMAND,
    DEFAULT_SHUTDOWN_GRACE, DEFAULT_WASI_MAX_FUEL, DEFAULT_WASI_MAX_MEMORY_MB,
    DEFAULT_WASI_MAX_TIMEOUT_MS, HostConfig, JobUsers, PortRange, UidRange,
};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::{DEFAULT_COORDINATOR_URL, between, devtoken, non_empty, positive_u32, positive_u64};

/// Where a coordinator listens unless told otherwise: loopback only, so nothing
/// is exposed by accident, on the port client commands try first.
const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// The port `skyclaw dev` listens on (loopback only): the one client commands
/// try first.
const DEFAULT_DEV_PORT: u16 = 8787;
/// Commands the dev host allows: harmless tools plus `sh` for trying things on
/// one's own machine (`sh` runs anything, confined like every job; `env` is
/// left out: it would be a second way to run anything).
const DEV_ALLOWED_COMMANDS: &str = "echo,true,false,sh,cat,ls,uname,date,sleep,node";
/// The ports the dev host gives service instances unless told otherwise:
/// below Linux's ephemeral range (32768 and up), so that outgoing
/// connections do not take them.
const DEV_SERVICE_PORTS: PortRange = PortRange {
    first: 20_000,
    last: 20_099,
};
/// Where a gateway serves service traffic unless told otherwise: loopback,
/// on the port after the coordinator's (the one `skyclaw dev` uses too).
const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:8788";
/// Where a gateway serves `/health` and `/metrics` unless told otherwise:
/// loopback only, apart from service traffic.
const DEFAULT_GATEWAY_ADMIN_LISTEN: &str = "127.0.0.1:8789";
/// The port `skyclaw dev`'s gateway listens on (loopback only).
const DEFAULT_DEV_GATEWAY_PORT: u16 = 8788;
/// The domain `skyclaw dev`'s gateway routes by: `<service>.localhost`
/// resolves to loopback on most systems.
const DEV_GATEWAY_DOMAIN: &str = "localhost";
/// Mode bits node processes clear on every file they create: their files
/// (databases, logs, artifacts, job output) are for their own user only.
const NODE_UMASK: u32 = 0o077;
/// The dev coordinator's data, under the dev data directory.
const DEV_COORDINATOR_DIR: &str = "coordinator";
/// The dev host's data, under the dev data directory.
const DEV_HOST_DIR: &str = "host";

#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// Address to listen on, `IP:PORT` (port 0 picks a free one).
    #[arg(long, env = "SKYCLAW_LISTEN", default_value = DEFAULT_LISTEN, value_name = "ADDR")]
    listen: String,
    /// Directory for the coordinator's database; created if missing.
    #[arg(long, env = "SKYCLAW_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// The cluster's shared token, required: it guards the private routes
    /// (hosts, API keys). Prefer the environment variable.
    #[arg(long, env = "SKYCLAW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A host silent for this many milliseconds is marked down and its jobs
    /// are requeued.
    #[arg(long, env = "SKYCLAW_HOST_TTL_MS", default_value_t = millis(DEFAULT_HOST_TTL), value_parser = positive_u64(), value_name = "N")]
    host_ttl_ms: u64,
    /// How long a job lease lasts, in milliseconds, unless the host renews it
    /// by heartbeat.
    #[arg(long = "lease-ms", env = "SKYCLAW_LEASE_MS", default_value_t = millis(DEFAULT_LEASE_DURATION), value_parser = positive_u64(), value_name = "N")]
    lease_ms: u64,
    #[arg(long, env = "SKYCLAW_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES, value_name = "N", help = format!(
        "Largest request body accepted, in bytes, at most {MAX_BODY_BYTES_LIMIT} ({} MiB): a \
         request travels between coordinators as one Raft log entry",
        MAX_BODY_BYTES_LIMIT as u64 / MIB,
    ))]
    max_body_bytes: usize,
    /// Largest artifact an upload may store, in bytes.
    #[arg(long, env = "SKYCLAW_MAX_ARTIFACT_BYTES", default_value_t = DEFAULT_MAX_ARTIFACT_BYTES, value_parser = positive_u64(), value_name = "N")]
    max_artifact_bytes: u64,
    /// This coordinator's id in the cluster, a positive integer no other
    /// coordinator uses [default: a random id chosen on first start and kept in
    /// the data directory, so a restart rejoins as the same node].
    #[arg(long, env = "SKYCLAW_COORDINATOR_NODE_ID", value_parser = positive_u64(), value_name = "ID")]
    node_id: Option<u64>,
    /// The URL other coordinators, hosts and clients reach this one at, such
    /// as `http://coord-a:8787` [default: http:// and the listen address].
    /// Needed when listening on 0.0.0.0 or [::], which no one can connect to.
    #[arg(long, env = "SKYCLAW_ADVERTISE_URL", value_parser = parse_base_url, value_name = "URL")]
    advertise: Option<String>,
    /// Coordinators of an existing cluster to join, comma-separated; the first
    /// that answers adds this one. Without any, an empty data directory starts
    /// a new cluster. A restart with the same data directory rejoins as the
    /// same node.
    #[arg(
        long,
        env = "SKYCLAW_BOOTSTRAP_PEERS",
        value_delimiter = ',',
        value_name = "URL[,URL...]"
    )]
    bootstrap: Vec<String>,
    /// Voters the cluster grows to as coordinators join (odd counts tolerate
    /// the most failures for their size: 3 survive one, 5 two). Coordinators
    /// beyond it join as learners that serve reads and forward writes.
    #[arg(long, env = "SKYCLAW_VOTERS", default_value_t = DEFAULT_VOTERS, value_parser = voter_count(), value_name = "N")]
    voters: usize,
    /// Raft log entries between snapshots; a coordinator further behind than
    /// the kept log catches up from a snapshot instead.
    #[arg(long, env = "SKYCLAW_SNAPSHOT_LOGS", default_value_t = DEFAULT_SNAPSHOT_LOGS, value_parser = positive_u64(), value_name = "N")]
    snapshot_logs: u64,
    #[command(flatten)]
    listener: ListenerArgs,
}

#[derive(Debug, clap::Args)]
// A group, not `required_unless_present`, so that a usage line can leave the
// pair out when SKYCLAW_ALLOWED_COMMANDS provides it (see `command_line`).
#[command(group = clap::ArgGroup::new("work").required(true).args(["allow_commands", "sandbox_only"]))]
pub struct HostArgs {
    /// Coordinator URLs, comma-separated; the host fails over between them.
    #[arg(
        long = "coordinator",
        env = "SKYCLAW_COORDINATOR_URLS",
        default_value = DEFAULT_COORDINATOR_URL,
        value_name = "URL[,URL...]"
    )]
    coordinators: String,
    /// The cluster's shared token, required to register. Prefer the
    /// environment variable.
    #[arg(long, env = "SKYCLAW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Directory for the host's id and working files; created if missing.
    #[arg(long, env = "SKYCLAW_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// The only commands shell jobs may run, comma-separated: bare names
    /// looked up on PATH, or absolute paths. Required unless --sandbox-only.
    #[arg(
        long,
        env = "SKYCLAW_ALLOWED_COMMANDS",
        value_delimiter = ',',
        value_name = "CMD[,CMD...]"
    )]
    allow_commands: Vec<String>,
    /// Run only sandboxed work (WASI jobs in wasmtime): the host registers as
    /// sandbox-only, is never offered shell or openclaw-run jobs, and refuses
    /// any it receives.
    #[arg(long, env = "SKYCLAW_SANDBOX_ONLY")]
    sandbox_only: bool,
    #[command(flatten)]
    wasi: WasiArgs,
    #[command(flatten)]
    jobs: JobArgs,
    /// Jobs run at once.
    #[arg(long, env = "SKYCLAW_MAX_PARALLEL", default_value_t = DEFAULT_MAX_PARALLEL, value_parser = positive_u32(), value_name = "N")]
    max_parallel: u32,
    /// The name the host registers under [default: the machine's host name].
    #[arg(long, env = "SKYCLAW_HOST_NAME", value_name = "NAME")]
    name: Option<String>,
    #[arg(long, env = "SKYCLAW_MAX_OUTPUT_BYTES", default_value_t = DEFAULT_MAX_OUTPUT_BYTES, value_name = "N", help = format!(
        "Bytes of a job's stdout and of its stderr kept, at most {MAX_OUTPUT_BYTES_LIMIT} \
         ({} MiB: results travel between coordinators in one Raft entry); the rest is \
         dropped and counted",
        MAX_OUTPUT_BYTES_LIMIT as u64 / MIB,
    ))]
    max_output_bytes: usize,
    /// The OpenClaw command openclaw-run jobs use.
    #[arg(long, env = "SKYCLAW_OPENCLAW_COMMAND", default_value = DEFAULT_OPENCLAW_COMMAND, value_name = "CMD")]
    openclaw_command: String,
    /// A variable of the host's environment passed to jobs (repeatable, or
    /// comma-separated); jobs otherwise start with a clean environment.
    #[arg(
        long,
        env = "SKYCLAW_PASS_ENV",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pass_env: Vec<String>,
    /// On shutdown, how many milliseconds running jobs get to finish before
    /// they are killed and handed back; also how long a stopping service
    /// instance gets to finish its requests.
    #[arg(long, env = "SKYCLAW_SHUTDOWN_GRACE_MS", default_value_t = millis(DEFAULT_SHUTDOWN_GRACE), value_name = "N")]
    shutdown_grace_ms: u64,
    #[command(flatten)]
    services: ServiceArgs,
}

/// Where a host's service instances listen, how other machines reach them,
/// and where the host serves its own `/health` and `/metrics`.
#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    /// Ports service instances listen on, START-END, one port each; the host
    /// runs services only when given a range (it bounds how many), and the
    /// ports must be open to whoever routes to them (gateways).
    #[arg(long, env = "SKYCLAW_SERVICE_PORTS", value_name = "START-END")]
    service_ports: Option<PortRange>,
    /// The host name or IP address other machines reach this host by: service
    /// endpoints and the host's listener are published under it. Instances
    /// listen on every address unless it is a loopback address.
    #[arg(long, env = "SKYCLAW_ADVERTISE_HOST", default_value = skyclaw_runtime::DEFAULT_ADVERTISE_HOST, value_name = "HOST")]
    advertise_host: String,
    /// Where the host serves GET /health, GET /metrics (Prometheus text) and,
    /// for coordinators, instance logs; port 0 picks a free one (logged).
    #[arg(long = "listen", env = "SKYCLAW_HOST_LISTEN", default_value_t = skyclaw_runtime::DEFAULT_LISTEN, value_name = "ADDR")]
    listen: SocketAddr,
}

impl ServiceArgs {
    fn apply(&self, config: &mut HostConfig, default_ports: Option<PortRange>) {
        config.service_ports = self.service_ports.or(default_ports);
        config.advertise_host = self.advertise_host.trim().to_string();
        config.listen = self.listen;
    }
}

/// `skyclaw gateway`: routes HTTP to the network's services.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Coordinator URLs, comma-separated; the rest of the cluster is learnt
    /// from them, and the gateway fails over between them.
    #[arg(
        long = "coordinator",
        env = "SKYCLAW_COORDINATOR_URLS",
        default_value = DEFAULT_COORDINATOR_URL,
        value_name = "URL[,URL...]"
    )]
    coordinators: String,
    /// An API key with the `gateway` scope: reads endpoints and registers the
    /// gateway, nothing else. Operators not trusted with the cluster token
    /// use this.
    #[arg(
        long,
        env = "SKYCLAW_API_KEY",
        hide_env_values = true,
        conflicts_with = "token"
    )]
    api_key: Option<String>,
    /// The cluster token, for gateways run by the cluster's own operators.
    #[arg(long, env = "SKYCLAW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Address service traffic is served on, `IP:PORT`.
    #[arg(long, env = "SKYCLAW_GATEWAY_LISTEN", default_value = DEFAULT_GATEWAY_LISTEN, value_name = "ADDR")]
    listen: String,
    /// Address `/health` and `/metrics` are served on, `IP:PORT`.
    #[arg(long, env = "SKYCLAW_GATEWAY_ADMIN_LISTEN", default_value = DEFAULT_GATEWAY_ADMIN_LISTEN, value_name = "ADDR")]
    admin_listen: String,
    /// Route `Host: <service>.DOMAIN` to the service (besides the path
    /// prefix `/s/<service>/`, which always works).
    #[arg(long, env = "SKYCLAW_GATEWAY_DOMAIN", value_name = "DOMAIN")]
    domain: Option<String>,
    /// The URL clients reach this gateway at; registered with the
    /// coordinators so that `GET /v1/gateways` (and `skyclaw call`) find it.
    /// Without it the gateway routes but is not listed.
    #[arg(long, env = "SKYCLAW_GATEWAY_PUBLIC_URL", value_parser = parse_base_url, value_name = "URL")]
    public_url: Option<String>,
    /// PEM certificate chain: serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN).
    #[arg(
        long,
        env = "SKYCLAW_TLS_CERT",
        requires = "tls_key",
        value_name = "PEM"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "SKYCLAW_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM"
    )]
    tls_key: Option<PathBuf>,
    /// Largest request body forwarded, in bytes (413 past it).
    #[arg(long, env = "SKYCLAW_GATEWAY_MAX_BODY_BYTES", default_value_t = skyclaw_gateway::DEFAULT_MAX_BODY_BYTES, value_parser = positive_u64(), value_name = "N")]
    max_body_bytes: u64,
    /// Milliseconds an endpoint may take to accept a connection.
    #[arg(long, env = "SKYCLAW_GATEWAY_CONNECT_TIMEOUT_MS", default_value_t = millis(skyclaw_gateway::Timeouts::default().connect), value_parser = positive_u64(), value_name = "MS")]
    connect_timeout_ms: u64,
    /// Milliseconds an endpoint may take to send its response head.
    #[arg(long, env = "SKYCLAW_GATEWAY_RESPONSE_TIMEOUT_MS", default_value_t = millis(skyclaw_gateway::Timeouts::default().response_header), value_parser = positive_u64(), value_name = "MS")]
    response_timeout_ms: u64,
    /// Milliseconds a request or response body may go without a byte moving.
    #[arg(long, env = "SKYCLAW_GATEWAY_BODY_IDLE_TIMEOUT_MS", default_value_t = millis(skyclaw_gateway::Timeouts::default().idle), value_parser = positive_u64(), value_name = "MS")]
    body_idle_timeout_ms: u64,
    /// Milliseconds a whole exchange may take, bodies included.
    #[arg(long, env = "SKYCLAW_GATEWAY_TOTAL_TIMEOUT_MS", default_value_t = millis(skyclaw_gateway::Timeouts::default().total), value_parser = positive_u64(), value_name = "MS")]
    total_timeout_ms: u64,
    /// Milliseconds between active probes of each endpoint's health path.
    #[arg(long, env = "SKYCLAW_GATEWAY_PROBE_INTERVAL_MS", default_value_t = millis(skyclaw_gateway::ProbeSettings::default().interval), value_parser = positive_u64(), value_name = "MS")]
    probe_interval_ms: u64,
    /// Passing probes in a row that make a down endpoint usable again.
    #[arg(long, env = "SKYCLAW_GATEWAY_PROBE_RISE", default_value_t = skyclaw_gateway::ProbeSettings::default().rise, value_parser = positive_u32(), value_name = "N")]
    probe_rise: u32,
    /// Failing probes in a row that take an endpoint out of use.
    #[arg(long, env = "SKYCLAW_GATEWAY_PROBE_FALL", default_value_t = skyclaw_gateway::ProbeSettings::default().fall, value_parser = positive_u32(), value_name = "N")]
    probe_fall: u32,
    /// Milliseconds an endpoint is ejected after failing requests in a row
    /// the first time; each further ejection adds as much again.
    #[arg(long, env = "SKYCLAW_GATEWAY_EJECTION_MS", default_value_t = millis(skyclaw_gateway::OutlierSettings::default().base_ejection), value_parser = positive_u64(), value_name = "MS")]
    ejection_ms: u64,
    /// Further endpoints one request may be tried on.
    #[arg(long, env = "SKYCLAW_GATEWAY_MAX_RETRIES", default_value_t = skyclaw_gateway::RetrySettings::default().max_retries, value_name = "N")]
    max_retries: u32,
    /// Milliseconds requests in progress may take to finish once the gateway
    /// is told to stop.
    #[arg(long, env = "SKYCLAW_SHUTDOWN_GRACE_MS", default_value_t = millis(skyclaw_gateway::DEFAULT_SHUTDOWN_GRACE), value_parser = positive_u64(), value_name = "MS")]
    shutdown_grace_ms: u64,
    /// Threads that serve connections; by default one per CPU core. A
    /// gateway sharing its machine with its endpoints (or a load test)
    /// does better with fewer: like nginx's `worker_processes`. With 1 the
    /// gateway runs on a single thread, with no work-stealing scheduler.
    #[arg(long, env = "SKYCLAW_GATEWAY_WORKERS", value_parser = worker_count(), value_name = "N")]
    workers: Option<usize>,
    #[command(flatten)]
    listener: ListenerArgs,
}

/// Most gateway worker threads: far more than any machine's cores, so a
/// typo does not start thousands of threads.
const MAX_GATEWAY_WORKERS: u64 = 1024;

fn worker_count() -> impl clap::builder::TypedValueParser<Value = usize> {
    super::parse_within(1, Some(MAX_GATEWAY_WORKERS))
}

impl GatewayArgs {
    /// The runtime threads asked for, if not one per core.
    pub fn workers(&self) -> Option<usize> {
        self.workers
    }

    fn config(&self) -> Result<skyclaw_gateway::GatewayConfig> {
        let credentials = match (non_empty(&self.api_key), non_empty(&self.token)) {
            (Some(key), _) => skyclaw_api::Credentials::ApiKey(key),
            (None, Some(token)) => skyclaw_api::Credentials::Token(token),
            (None, None) => bail!(
                "a gateway needs an API key with the gateway scope (--api-key or \
                 SKYCLAW_API_KEY), or the cluster token"
            ),
        };
        let coordinators = skyclaw_api::Client::split_urls(&self.coordinators);
        let mut config = skyclaw_gateway::GatewayConfig::new(coordinators, credentials);
        config.domain = self.domain.clone().filter(|d| !d.is_empty());
        config.public_url = self.public_url.clone();
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(skyclaw_gateway::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        config.limits = self.listener.limits();
        config.max_body_bytes = self.max_body_bytes;
        config.timeouts = skyclaw_gateway::Timeouts {
            connect: Duration::from_millis(self.connect_timeout_ms),
            response_header: Duration::from_millis(self.response_timeout_ms),
            idle: Duration::from_millis(self.body_idle_timeout_ms),
            total: Duration::from_millis(self.total_timeout_ms),
        };
        config.probes.interval = Duration::from_millis(self.probe_interval_ms);
        config.probes.timeout = config.probes.timeout.min(config.probes.interval);
        config.probes.rise = self.probe_rise;
        config.probes.fall = self.probe_fall;
        config.outliers.base_ejection = Duration::from_millis(self.ejection_ms);
        config.retries.max_retries = self.max_retries;
        config.shutdown_grace = Duration::from_millis(self.shutdown_grace_ms);
        Ok(config)
    }
}

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Directory for the dev cluster's data, token and URL; kept between runs.
    #[arg(long, env = "SKYCLAW_DEV_DIR", default_value = devtoken::DEFAULT_DEV_DIR, value_name = "DIR")]
    data_dir: PathBuf,
    /// Port the coordinator listens on, on 127.0.0.1 only (0 picks a free one).
    #[arg(long, env = "SKYCLAW_DEV_PORT", default_value_t = DEFAULT_DEV_PORT, value_name = "PORT")]
    port: u16,
    /// Port the gateway listens on, on 127.0.0.1 only (0 picks a free one):
    /// services answer at http://127.0.0.1:PORT/s/<service>/ and
    /// http://<service>.localhost:PORT/.
    #[arg(long, env = "SKYCLAW_DEV_GATEWAY_PORT", default_value_t = DEFAULT_DEV_GATEWAY_PORT, value_name = "PORT")]
    gateway_port: u16,
    /// The only commands the dev host runs, comma-separated.
    #[arg(
        long,
        env = "SKYCLAW_ALLOWED_COMMANDS",
        value_delimiter = ',',
        default_value = DEV_ALLOWED_COMMANDS,
        value_name = "CMD[,CMD...]"
    )]
    allow_commands: Vec<String>,
    /// Jobs the dev host runs at once.
    #[arg(long, env = "SKYCLAW_MAX_PARALLEL", default_value_t = DEFAULT_MAX_PARALLEL, value_parser = positive_u32(), value_name = "N")]
    max_parallel: u32,
    /// The OpenClaw command openclaw-run jobs use.
    #[arg(long, env = "SKYCLAW_OPENCLAW_COMMAND", default_value = DEFAULT_OPENCLAW_COMMAND, value_name = "CMD")]
    openclaw_command: String,
    /// Largest artifact an upload may store, in bytes.
    #[arg(long, env = "SKYCLAW_MAX_ARTIFACT_BYTES", default_value_t = DEFAULT_MAX_ARTIFACT_BYTES, value_parser = positive_u64(), value_name = "N")]
    max_artifact_bytes: u64,
    #[command(flatten)]
    listener: ListenerArgs,
    #[command(flatten)]
    wasi: WasiArgs,
    #[command(flatten)]
    jobs: JobArgs,
    /// Service ports default to 20000-20099 under dev.
    #[command(flatten)]
    services: ServiceArgs,
}

/// How a host confines native jobs (shell, openclaw-run). Each runs in PID,
/// mount and IPC namespaces of its own, sees its own empty /tmp (also its
/// HOME) and /proc, never the host's data directory, and has no capabilities.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    #[arg(
        long,
        env = "SKYCLAW_JOB_UIDS",
        value_name = "FIRST-LAST",
        conflicts_with = "allow_same_user_jobs",
        help = format!(
            "The uids (and gids) a root host gives its jobs, FIRST-LAST: each running job \
             gets one of its own, so jobs cannot touch the host or each other. No account \
             may use them [default: {DEFAULT_JOB_UIDS} when run as root]"
        )
    )]
    job_uids: Option<UidRange>,
    /// Let a host that is not root run native jobs as its own user, in a user
    /// namespace. Such jobs can read and change everything that user can,
    /// outside the data directory and --hide-path: only for a user that owns
    /// nothing else. Without it, such a host runs WASI jobs only.
    #[arg(long, env = "SKYCLAW_ALLOW_SAME_USER_JOBS")]
    allow_same_user_jobs: bool,
    /// Memory each process of a native job may allocate, in MiB (RLIMIT_DATA).
    #[arg(long, env = "SKYCLAW_JOB_MEMORY_MB", default_value_t = DEFAULT_JOB_MEMORY_MB, value_parser = positive_u64(), value_name = "MIB")]
    job_memory_mb: u64,
    /// Processes and threads a native job may have at once (RLIMIT_NPROC).
    #[arg(long, env = "SKYCLAW_JOB_MAX_PROCS", default_value_t = DEFAULT_JOB_MAX_PROCESSES, value_parser = positive_u64(), value_name = "N")]
    job_max_procs: u64,
    /// A directory native jobs must not see (repeatable, or comma-separated),
    /// such as the home of a same-user host; the data directory is always
    /// hidden.
    #[arg(
        long,
        env = "SKYCLAW_HIDE_PATHS",
        value_delimiter = ',',
        value_name = "DIR"
    )]
    hide_path: Vec<PathBuf>,
}

impl HostArgs {
    /// The coordinator URLs and token the host was given, for tests.
    #[cfg(test)]
    pub(super) fn coordinators(&self) -> (&str, Option<&str>) {
        (&self.coordinators, self.token.as_deref())
    }
}

impl JobArgs {
    /// Sets the job fields of `config`; `same_user_by_default` lets a host
    /// that is not root run same-user jobs unless told otherwise (dev only).
    fn apply(&self, config: &mut HostConfig, same_user_by_default: bool) {
        if let Some(range) = self.job_uids {
            config.job_users = Some(JobUsers::Range(range));
        } else if self.allow_same_user_jobs || (same_user_by_default && config.job_users.is_none())
        {
            config.job_users = Some(JobUsers::SameUser);
        }
        config.job_memory_mb = self.job_memory_mb;
        config.job_max_processes = self.job_max_procs;
        config.hidden_paths.extend(
            self.hide_path
                .iter()
                .filter(|p| !p.as_os_str().is_empty())
                .cloned(),
        );
    }
}

/// How the coordinator's HTTP listener bounds its connections.
#[derive(Debug, clap::Args)]
pub struct ListenerArgs {
    /// Connections served at once; past it new connections are closed at
    /// once. Lowered at start to fit under the open-file limit.
    #[arg(long, env = "SKYCLAW_MAX_CONNECTIONS", default_value_t = serve::DEFAULT_MAX_CONNECTIONS, value_parser = positive_u32(), value_name = "N")]
    max_connections: u32,
    /// Milliseconds a client may take to send a request head, from the
    /// connection's start or the first byte of a later request.
    #[arg(long, env = "SKYCLAW_HEADER_READ_TIMEOUT_MS", default_value_t = millis(serve::DEFAULT_HEADER_READ_TIMEOUT), value_parser = positive_u64(), value_name = "MS")]
    header_read_timeout_ms: u64,
    /// Milliseconds a keep-alive connection may wait for its next request.
    /// Requests in progress (long-polls, transfers) are never cut by it.
    #[arg(long, env = "SKYCLAW_IDLE_TIMEOUT_MS", default_value_t = millis(serve::DEFAULT_IDLE_TIMEOUT), value_parser = positive_u64(), value_name = "MS")]
    idle_timeout_ms: u64,
}

impl ListenerArgs {
    fn limits(&self) -> serve::Limits {
        serve::Limits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
        }
    }
}

/// What a host grants WASI jobs. A job's own limits are capped at these; one
/// that names none gets the built-in default (`DEFAULT_WASI_FUEL`,
/// `DEFAULT_WASI_MEMORY_MB` and `DEFAULT_WASI_TIMEOUT_MS` in
/// `skyclaw_api::jobs`) or the maximum when that is lower.
#[derive(Debug, clap::Args)]
pub struct WasiArgs {
    /// Most fuel one WASI job may burn (about one unit per wasm instruction).
    #[arg(long, env = "SKYCLAW_WASI_MAX_FUEL", default_value_t = DEFAULT_WASI_MAX_FUEL, value_parser = positive_u64(), value_name = "N")]
    wasi_max_fuel: u64,
    /// Most memory one WASI job may grow a linear memory to, in MiB.
    #[arg(long, env = "SKYCLAW_WASI_MAX_MEMORY_MB", default_value_t = DEFAULT_WASI_MAX_MEMORY_MB, value_parser = between(1, MAX_WASI_MEMORY_MB), value_name = "MIB")]
    wasi_max_memory_mb: u32,
    /// Longest one WASI job may run, in milliseconds of wall-clock time.
    #[arg(long, env = "SKYCLAW_WASI_MAX_TIMEOUT_MS", default_value_t = DEFAULT_WASI_MAX_TIMEOUT_MS, value_parser = positive_u64(), value_name = "MS")]
    wasi_max_timeout_ms: u64,
    /// Disk the host's artifact cache may use, in MiB; the least recently used
    /// artifacts are deleted past it.
    #[arg(long, env = "SKYCLAW_ARTIFACT_CACHE_MB", default_value_t = DEFAULT_ARTIFACT_CACHE_BYTES / MIB, value_parser = positive_u64(), value_name = "MIB")]
    artifact_cache_mb: u64,
}

/// Bytes in a mebibyte, for flags given in MiB.
const MIB: u64 = 1024 * 1024;

impl WasiArgs {
    fn apply(&self, config: &mut HostConfig) {
        config.wasi_max_fuel = self.wasi_max_fuel;
        config.wasi_max_memory_mb = self.wasi_max_memory_mb;
        config.wasi_max_timeout_ms = self.wasi_max_timeout_ms;
        config.artifact_cache_bytes = self.artifact_cache_mb.saturating_mul(MIB);
    }
}

/// `skyclaw coordinator`: serves until Ctrl-C or SIGTERM.
pub async fn coordinator(args: CoordinatorArgs) -> Result<ExitCode> {
    let Some(token) = non_empty(&args.token) else {
        bail!(
            "a coordinator needs the cluster token (--token or SKYCLAW_TOKEN): \
             without it anyone could register hosts and create API keys"
        );
    };
    restrict_new_files();
    skyclaw_runtime::protect_process().context("cannot make the coordinator non-dumpable")?;
    let bootstrap = bootstrap_urls(args.bootstrap)?;
    let listener = serve::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    check_reachable(args.advertise.as_deref(), listener.local_addr()?)?;
    let mut config = skyclaw_coordinator::Config::new(args.data_dir, token);
    config.host_ttl = Duration::from_millis(args.host_ttl_ms);
    config.lease_duration = Duration::from_millis(args.lease_ms);
    config.max_body_bytes = args.max_body_bytes;
    config.max_artifact_bytes = args.max_artifact_bytes;
    config.node_id = args.node_id;
    config.advertise_url = args.advertise;
    config.bootstrap = bootstrap;
    config.voters = args.voters;
    config.snapshot_logs = args.snapshot_logs;
    config.listener = args.listener.limits();
    skyclaw_coordinator::run(config, listener, shutdown_signal()?)
        .await
        .context("coordinator failed")?;
    Ok(ExitCode::SUCCESS)
}

/// `skyclaw gateway`: routes until Ctrl-C or SIGTERM, then drains.
pub async fn gateway(args: GatewayArgs) -> Result<ExitCode> {
    let config = args.config()?;
    let listener = serve::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin = serve::bind(&args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--admin-listen)", args.admin_listen))?;
    // One line on stdout, so whoever started the gateway on port 0 (a
    // supervisor, a script, a test) learns where it listens.
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    super::output::out(&format!(
        "gateway routing on {scheme}://{listen}; /health and /metrics on http://{admin}\n",
        listen = listener.local_addr()?,
        admin = admin.local_addr()?,
    ))?;
    skyclaw_gateway::run(config, listener, admin, shutdown_signal()?)
        .await
        .context("gateway failed")?;
    Ok(ExitCode::SUCCESS)
}

/// Refuses to advertise an address no one can connect to: without
/// `--advertise`, peers, hosts and clients are told the listen address, and a
/// wildcard one (0.0.0.0, [::]) would send them nowhere.
fn check_reachable(advertise: Option<&str>, listening: SocketAddr) -> Result<()> {
    if advertise.is_none() && listening.ip().is_unspecified() {
        bail!(
            "listening on {listening} needs --advertise URL (SKYCLAW_ADVERTISE_URL): \
             other coordinators, hosts and clients cannot connect to {ip}; pass the URL \
             they reach this machine at, such as http://coord-a:{port}",
            ip = listening.ip(),
            port = listening.port(),
        );
    }
    Ok(())
}

/// The `--bootstrap` list, checked; empty items are dropped, so an empty
/// `SKYCLAW_BOOTSTRAP_PEERS` means "start a new cluster".
fn bootstrap_urls(items: Vec<String>) -> Result<Vec<String>> {
    without_empty(items)
        .iter()
        .map(|item| parse_base_url(item).map_err(|e| anyhow!("--bootstrap: {e}")))
        .collect()
}

/// `skyclaw host`: runs jobs until Ctrl-C or SIGTERM, then hands back what it
/// could not finish within the grace period.
pub async fn host(args: HostArgs) -> Result<ExitCode> {
    let Some(token) = non_empty(&args.token) else {
        bail!("a host needs the cluster token (--token or SKYCLAW_TOKEN) to register");
    };
    restrict_new_files();
    create_dir(&args.data_dir)?;
    let coordinators = skyclaw_api::Client::split_urls(&args.coordinators);
    let mut config = HostConfig::new(coordinators, token, args.data_dir);
    if let Some(name) = non_empty(&args.name) {
        config.name = name;
    }
    config.allowed_commands = without_empty(args.allow_commands);
    config.max_parallel = args.max_parallel;
    config.max_output_bytes = args.max_output_bytes;
    config.openclaw_command = args.openclaw_command;
    config.pass_env = without_empty(args.pass_env);
    config.shutdown_grace = Duration::from_millis(args.shutdown_grace_ms);
    config.sandbox_only = args.sandbox_only;
    args.wasi.apply(&mut config);
    args.jobs.apply(&mut config, false);
    args.services.apply(&mut config, None);
    skyclaw_runtime::run(config, shutdown_signal()?)
        .await
        .context("host failed")?;
    Ok(ExitCode::SUCCESS)
}

/// `skyclaw dev`: a coordinator on loopback and a host using it, sharing a
/// token kept in the data directory. On Ctrl-C the host stops first, so it can
/// hand its jobs back while the coordinator still listens.
pub async fn dev(args: DevArgs) -> Result<ExitCode> {
    restrict_new_files();
    // Bound before anything is created: a taken port leaves no directory.
    let listener = serve::bind((Ipv4Addr::LOCALHOST, args.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{} (is another `skyclaw dev` running? \
                 --port 0 picks a free port)",
                args.port
            )
        })?;
    let gateway_listener = serve::bind((Ipv4Addr::LOCALHOST, args.gateway_port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{} for the gateway (--gateway-port 0 picks a free port)",
                args.gateway_port
            )
        })?;
    let gateway_admin = serve::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let url = format!("http://{}", listener.local_addr()?);
    let gateway_url = format!("http://{}", gateway_listener.local_addr()?);
    let coordinator_dir = args.data_dir.join(DEV_COORDINATOR_DIR);
    let host_dir = args.data_dir.join(DEV_HOST_DIR);
    create_dir(&args.data_dir)?;
    create_dir(&coordinator_dir)?;
    create_dir(&host_dir)?;
    let token = devtoken::load_or_create_token(&args.data_dir)?;
    devtoken::write_url(&args.data_dir, &url)?;
    // However dev ends (short of being killed), clients stop being sent here.
    let _url_file = UrlFile {
        dir: args.data_dir.clone(),
        url: url.clone(),
    };

    let mut coordinator_config = skyclaw_coordinator::Config::new(coordinator_dir, token.clone());
    coordinator_config.max_artifact_bytes = args.max_artifact_bytes;
    coordinator_config.listener = args.listener.limits();
    let mut gateway_config = skyclaw_gateway::GatewayConfig::new(
        vec![url.clone()],
        skyclaw_api::Credentials::Token(token.clone()),
    );
    gateway_config.domain = Some(DEV_GATEWAY_DOMAIN.to_string());
    gateway_config.public_url = Some(gateway_url.clone());
    let mut host_config = HostConfig::new(vec![url.clone()], token, host_dir);
    host_config.allowed_commands = without_empty(args.allow_commands);
    host_config.max_parallel = args.max_parallel;
    host_config.openclaw_command = args.openclaw_command;
    args.wasi.apply(&mut host_config);
    // The whole dev directory: the token and the coordinator's database too.
    host_config.hidden_paths.push(args.data_dir.clone());
    args.jobs.apply(&mut host_config, true);
    args.services
        .apply(&mut host_config, Some(DEV_SERVICE_PORTS));
    super::output::out(&dev_banner(
        &url,
        &gateway_url,
        &args.data_dir,
        &host_config,
    ))?;

    let (stop_coordinator, coordinator_stop) = watch::channel(false);
    let coordinator_stop_for_gateway = coordinator_stop.clone();
    let mut coordinator = tokio::spawn(skyclaw_coordinator::run(
        coordinator_config,
        listener,
        until_true(coordinator_stop),
    ));
    let gateway = tokio::spawn(skyclaw_gateway::run(
        gateway_config,
        gateway_listener,
        gateway_admin,
        until_true(coordinator_stop_for_gateway),
    ));
    let host = skyclaw_runtime::run(host_config, shutdown_signal()?);
    tokio::select! {
        host = host => {
            // Ignored send error: the coordinator has already stopped, which
            // awaiting it reports.
            let _ = stop_coordinator.send(true);
            gateway.await.context("gateway task failed")?.context("gateway failed")?;
            let coordinator = coordinator.await.context("coordinator task failed")?;
            host.context("host failed")?;
            coordinator.context("coordinator failed")?;
        }
        coordinator = &mut coordinator => {
            coordinator.context("coordinator task failed")?.context("coordinator failed")?;
            bail!("the coordinator stopped on its own");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The URL file of a running `dev`, removed when dev returns.
struct UrlFile {
    dir: PathBuf,
    url: String,
}

impl Drop for UrlFile {
    fn drop(&mut self) {
        devtoken::remove_url(&self.dir, &self.url);
    }
}

/// What `skyclaw dev` prints once it is up: where things are and what to try.
fn dev_banner(url: &str, gateway_url: &str, data_dir: &Path, host: &HostConfig) -> String {
    let program = program_name();
    // Commands below the data directory find its URL and token; elsewhere
    // they need to be told where it is. The URL needs no export either way.
    let mut setup = String::new();
    if data_dir != Path::new(devtoken::DEFAULT_DEV_DIR) {
        let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        setup.push_str(&format!(
            "  export SKYCLAW_DEV_DIR={}\n",
            absolute.display()
        ));
    }
    format!(
        "skyclaw dev is running\n\
         \x20 coordinator  {url} (data in {coordinator})\n\
         \x20 host         {name}: runs {allowed} and WASI programs; {parallel} jobs at once\n\
         \x20 native jobs  {users}\n\
         \x20 services     instances at {advertise}, ports {ports}\n\
         \x20 gateway      {gateway_url}/s/<service>/ and http://<service>.{domain}:{gateway_port}/\n\
         \x20 url, token   {url_file}, {token}: used by commands run in this directory or below\n\
         \n\
         Try, in another terminal in this directory:\n\
         {setup}\
         \x20 {program} job shell --wait -- echo hello\n\
         \x20 {program} job shell --wait -- sh -c 'echo oops >&2; exit 3'\n\
         \x20 {program} job shell -- sleep 30 && {program} job ls\n\
         \x20 {program} job wasi --wait PROGRAM.wasm -- ARGS   (see README: write a job)\n\
         \x20 {program} hosts ls\n\
         \x20 {program} deploy examples/ts-api && curl {gateway_url}/s/ts-api/\n\
         \x20 {program} apikey create --name ci --scope jobs:submit --scope jobs:read\n\
         \n\
         Ctrl-C stops; running dev again keeps the jobs and the token.\n",
        coordinator = data_dir.join(DEV_COORDINATOR_DIR).display(),
        name = host.name,
        allowed = host.allowed_commands.join(", "),
        parallel = host.max_parallel,
        users = job_users_line(host.job_users),
        advertise = host.advertise_host,
        ports = host
            .service_ports
            .map_or_else(|| "none".to_string(), |range| range.to_string()),
        domain = DEV_GATEWAY_DOMAIN,
        gateway_port = gateway_url.rsplit(':').next().unwrap_or_default(),
        url_file = devtoken::url_path(data_dir).display(),
        token = devtoken::token_path(data_dir).display(),
    )
}

/// Who the dev host's native jobs run as, for the banner.
fn job_users_line(users: Option<JobUsers>) -> String {
    match users {
        Some(JobUsers::Range(range)) => {
            format!("each as a user of its own (uids {range}), in namespaces of its own")
        }
        Some(JobUsers::SameUser) => "as you, in namespaces of their own; they can read what you \
             can outside this directory (run dev as root to give each job a user of its own)"
            .to_string(),
        None => "none".to_string(),
    }
}

/// How this program was invoked, relative to the current directory when it
/// lies below it (`target/release/skyclaw` under `cargo run`).
fn program_name() -> String {
    let argv0 = std::env::args()
        .next()
        .unwrap_or_else(|| "skyclaw".to_string());
    let relative = std::env::current_dir().ok().and_then(|cwd| {
        Path::new(&argv0)
            .strip_prefix(cwd)
            .ok()
            .map(Path::to_path_buf)
    });
    relative.map_or(argv0.clone(), |p| p.display().to_string())
}

/// Resolves on the first Ctrl-C (SIGINT) or SIGTERM.
fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

/// Resolves once the flag is set, or its sender is gone.
async fn until_true(mut flag: watch::Receiver<bool>) {
    // An error means the sender was dropped: stopping is then right too.
    let _ = flag.wait_for(|stop| *stop).await;
}

/// Drops empty items, so `--allow-commands ''` means "none".
fn without_empty(items: Vec<String>) -> Vec<String> {
    items
        .into_iter()
        .map(|i| i.trim().to_string())
        .filter(|i| !i.is_empty())
        .collect()
}

/// Creates a data directory, private to this user (0700).
fn create_dir(dir: &Path) -> Result<()> {
    skyclaw_api::datadir::create_private(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Makes every file this node process creates private to its user.
fn restrict_new_files() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(NODE_UMASK));
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn voter_count() -> impl clap::builder::TypedValueParser<Value = usize> {
    between(1u64, MAX_VOTERS as u64).map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(subcommand)]
        command: Node,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Node {
        Coordinator(CoordinatorArgs),
        Host(HostArgs),
        Dev(DevArgs),
    }

    fn coordinator(flags: &[&str]) -> Result<CoordinatorArgs, clap::Error> {
        let args = ["x", "coordinator", "--data-dir", "d"].iter().chain(flags);
        match Harness::try_parse_from(args)?.command {
            Node::Coordinator(args) => Ok(args),
            _ => panic!("not coordinator"),
        }
    }

    #[test]
    fn coordinator_cluster_flags_default_to_a_new_cluster() {
        let args = coordinator(&[]).unwrap();
        assert_eq!(args.node_id, None);
        assert_eq!(args.advertise, None);
        assert!(args.bootstrap.is_empty());
        assert_eq!(args.voters, DEFAULT_VOTERS);
        assert_eq!(args.snapshot_logs, DEFAULT_SNAPSHOT_LOGS);
    }

    #[test]
    fn coordinator_cluster_flags_are_validated() {
        let args = coordinator(&[
            "--node-id",
            "2",
            "--advertise",
            "http://coord-b:8787/",
            "--bootstrap",
            "http://coord-a:8787, https://coord-c:8787",
            "--voters",
            "5",
            "--snapshot-logs",
            "100",
        ])
        .unwrap();
        assert_eq!(args.node_id, Some(2));
        assert_eq!(args.advertise.as_deref(), Some("http://coord-b:8787"));
        assert_eq!(
            bootstrap_urls(args.bootstrap).unwrap(),
            ["http://coord-a:8787", "https://coord-c:8787"]
        );
        assert_eq!(args.voters, 5);
        assert_eq!(args.snapshot_logs, 100);
        let max = MAX_VOTERS.to_string();
        assert!(coordinator(&["--voters", &max]).is_ok());
        let too_many = (MAX_VOTERS + 1).to_string();
        for bad in [
            ["--node-id", "0"],
            ["--voters", "0"],
            ["--voters", too_many.as_str()],
            ["--snapshot-logs", "0"],
            ["--advertise", "coord-b:8787"],
            ["--advertise", "http://"],
        ] {
            assert!(coordinator(&bad).is_err(), "{bad:?} accepted");
        }
        let bootstrap =
            |list: &str| bootstrap_urls(coordinator(&["--bootstrap", list]).unwrap().bootstrap);
        assert!(bootstrap("http://a:1,ftp://b:2").is_err());
        assert_eq!(bootstrap("http://a:1/,").unwrap(), ["http://a:1"]);
        assert!(bootstrap("").unwrap().is_empty());
    }

    #[test]
    fn listener_flags_default_to_the_serving_defaults_and_are_validated() {
        assert_eq!(
            coordinator(&[]).unwrap().listener.limits(),
            serve::Limits::default()
        );
        let args = coordinator(&[
            "--max-connections",
            "100",
            "--header-read-timeout-ms",
            "2000",
            "--idle-timeout-ms",
            "3000",
        ])
        .unwrap();
        let limits = args.listener.limits();
        assert_eq!(limits.max_connections, 100);
        assert_eq!(limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(limits.idle_timeout, Duration::from_secs(3));
        for bad in [
            ["--max-connections", "0"],
            ["--header-read-timeout-ms", "0"],
            ["--idle-timeout-ms", "0"],
        ] {
            assert!(coordinator(&bad).is_err(), "{bad:?} accepted");
        }
        let Node::Dev(dev) = Harness::try_parse_from(["x", "dev", "--max-connections", "7"])
            .unwrap()
            .command
        else {
            panic!("not dev")
        };
        assert_eq!(dev.listener.limits().max_connections, 7);
    }

    #[test]
    fn a_wildcard_listen_address_needs_an_advertised_url() {
        let any: SocketAddr = "0.0.0.0:8787".parse().unwrap();
        let err = check_reachable(None, any).unwrap_err().to_string();
        assert!(err.contains("--advertise"), "{err}");
        assert!(check_reachable(None, "[::]:8787".parse().unwrap()).is_err());
        assert!(check_reachable(Some("http://coord-a:8787"), any).is_ok());
        assert!(check_reachable(None, "127.0.0.1:8787".parse().unwrap()).is_ok());
    }

    #[test]
    fn dev_allows_the_default_commands() {
        let Node::Dev(dev) = Harness::try_parse_from(["x", "dev"]).unwrap().command else {
            panic!("not dev")
        };
        assert_eq!(dev.allow_commands.join(","), DEV_ALLOWED_COMMANDS);
        assert_eq!(dev.data_dir, Path::new(devtoken::DEFAULT_DEV_DIR));
    }

    #[test]
    fn host_needs_an_allowlist() {
        assert!(Harness::try_parse_from(["x", "host", "--data-dir", "d"]).is_err());
        let Node::Host(host) = Harness::try_parse_from([
            "x",
            "host",
            "--data-dir",
            "d",
            "--allow-commands",
            "echo, true,",
            "--max-parallel",
            "2",
            "--pass-env",
            "HOME",
            "--pass-env",
            "LANG",
        ])
        .unwrap()
        .command
        else {
            panic!("not host")
        };
        assert_eq!(without_empty(host.allow_commands), ["echo", "true"]);
        assert_eq!(host.pass_env, ["HOME", "LANG"]);
        assert!(
            Harness::try_parse_from([
                "x",
                "host",
                "--data-dir",
                "d",
                "--allow-commands",
                "echo",
                "--max-parallel",
                "0"
            ])
            .is_err()
        );
    }

    #[test]
    fn sandbox_only_hosts_need_no_allowlist_and_take_none() {
        let Node::Host(host) =
            Harness::try_parse_from(["x", "host", "--data-dir", "d", "--sandbox-only"])
                .unwrap()
                .command
        else {
            panic!("not host")
        };
        assert!(host.sandbox_only);
        assert_eq!(host.wasi.wasi_max_memory_mb, DEFAULT_WASI_MAX_MEMORY_MB);
        let both = [
            "x",
            "host",
            "--data-dir",
            "d",
            "--sandbox-only",
            "--allow-commands",
            "echo",
        ];
        assert!(Harness::try_parse_from(both).is_err());
        let too_big = [
            "x",
            "host",
            "--data-dir",
            "d",
            "--sandbox-only",
            "--wasi-max-memory-mb",
            "5000",
        ];
        assert!(Harness::try_parse_from(too_big).is_err());
    }

    #[test]
    fn banner_mentions_non_default_places() {
        let mut host = HostConfig::new(vec![], String::new(), PathBuf::new());
        host.allowed_commands = vec!["echo".into()];
        let gateway = "http://127.0.0.1:8788";
        let plain = dev_banner(
            DEFAULT_COORDINATOR_URL,
            gateway,
            Path::new(".skyclaw"),
            &host,
        );
        assert!(!plain.contains("export"), "{plain}");
        assert!(
            plain.contains("http://127.0.0.1:8788/s/<service>/"),
            "{plain}"
        );
        assert!(
            plain.contains("http://<service>.localhost:8788/"),
            "{plain}"
        );
        assert!(plain.contains("job shell --wait -- echo hello"), "{plain}");
        let moved = dev_banner("http://127.0.0.1:4000", gateway, Path::new("/tmp/d"), &host);
        assert!(
            !moved.contains("SKYCLAW_COORDINATOR_URLS"),
            "clients read the URL from the dev directory: {moved}"
        );
        assert!(moved.contains("/tmp/d/url"), "{moved}");
        assert!(moved.contains("SKYCLAW_DEV_DIR=/tmp/d"));
    }
}
