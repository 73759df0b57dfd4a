//! Hosts on the wire: registration, heartbeats, claiming jobs under a lease and
//! reporting their completion.

use serde::{Deserialize, Serialize};

use crate::Millis;
use crate::artifacts::Digest;
use crate::error::ErrorBody;
use crate::jobs::{Job, JobResult, WasiCaps};
use crate::services::ServiceCaps;

/// Most jobs one claim may hand out; a host asks for its free slots.
pub const MAX_CLAIM_JOBS: u32 = 256;
/// Longest a claim long-poll waits for work before answering empty.
pub const MAX_CLAIM_WAIT_MS: u64 = 10_000;
/// Most entries in a host's allowlist or capability list.
pub const MAX_HOST_LIST: usize = 256;
/// Most artifact digests a heartbeat reports: a host holding more reports its
/// most recently used ones (each digest is 71 bytes, so a beat stays < 1 MiB).
pub const MAX_REPORTED_ARTIFACTS: usize = 8192;

/// `POST /v1/hosts/register`. Registering again with the same id updates the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterHost {
    /// Chosen by the host and kept in its data directory, so it survives restarts.
    pub host_id: String,
    /// Chosen afresh each time the daemon starts: a registration with the
    /// incarnation the coordinators know comes from the same running daemon
    /// (which lost touch, or saw a leader change) and keeps its running
    /// jobs; any other is a restart, whose jobs are gone. Empty in
    /// registrations from before incarnations, which count as restarts.
    #[serde(default)]
    pub incarnation: String,
    pub name: String,
    pub capabilities: Vec<String>,
    pub max_parallel: u32,
    pub allowed_commands: Vec<String>,
    #[serde(default)]
    pub openclaw_version: Option<String>,
    /// The skyclaw version the host runs.
    pub version: String,
    /// The owner allows only sandboxed (WASI) work on this host: it is never
    /// offered native jobs and refuses any it receives.
    #[serde(default)]
    pub sandbox_only: bool,
    /// What the host grants WASI jobs; `None` when it runs none.
    #[serde(default)]
    pub wasi: Option<WasiCaps>,
    /// What the host grants services; `None` when it runs none.
    #[serde(default)]
    pub services: Option<ServiceCaps>,
}

/// What a coordinator tells a host on registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub host_id: String,
    /// How often the host should heartbeat.
    pub heartbeat_interval_ms: u64,
    /// A host silent for this long is marked down and its jobs requeued.
    pub ttl_ms: u64,
}

/// Whether a host is taking work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    Up,
    Down,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Up => "up",
            HostStatus::Down => "down",
        }
    }
}

/// A host as `GET /v1/hosts` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Host {
    pub id: String,
    pub name: String,
    pub status: HostStatus,
    pub capabilities: Vec<String>,
    pub max_parallel: u32,
    pub allowed_commands: Vec<String>,
    pub openclaw_version: Option<String>,
    pub version: String,
    pub registered_at: Millis,
    pub updated_at: Millis,
    /// Milliseconds since the coordinator last heard from the host, if it has.
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Jobs currently leased to the host.
    pub running_jobs: u32,
    pub sandbox_only: bool,
    pub wasi: Option<WasiCaps>,
    /// What the host grants services; `None` when it runs none.
    #[serde(default)]
    pub services: Option<ServiceCaps>,
    /// Artifacts the host last reported holding in its cache.
    pub artifacts: Vec<Digest>,
}

/// `GET /v1/hosts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostList {
    pub hosts: Vec<Host>,
}

/// A lease the host holds, reported with each heartbeat so it is renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldLease {
    pub job_id: String,
    pub lease_token: String,
}

/// `POST /v1/hosts/{id}/heartbeat`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default)]
    pub running: Vec<HeldLease>,
    /// Every artifact the host holds (up to [`MAX_REPORTED_ARTIFACTS`]), so
    /// the scheduler can send jobs where their artifact already is.
    #[serde(default)]
    pub artifacts: Vec<Digest>,
    /// The host is shutting down: it takes no new service instances (those
    /// it runs drain), so placement looks elsewhere.
    #[serde(default)]
    pub draining: bool,
}

/// The coordinator's answer to a heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Jobs the host must stop: cancelled, or leased elsewhere now.
    pub stop: Vec<String>,
}

/// `POST /v1/hosts/{id}/claim`: wait up to `wait_ms` for up to `max_jobs` jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    pub max_jobs: u32,
    #[serde(default)]
    pub wait_ms: u64,
}

/// A job handed to a host, with the lease that proves the host holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeasedJob {
    pub job: Job,
    /// The fencing token: completion must carry it.
    pub lease_token: String,
    pub lease_expires_at: Millis,
}

/// The answer to a claim: possibly empty when the wait ran out.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Claimed {
    pub jobs: Vec<LeasedJob>,
}

/// How a host ended a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    /// The host gave the job up (it is shutting down): run it elsewhere if
    /// attempts remain.
    Abandoned,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Abandoned => "abandoned",
        }
    }
}

/// How one job ended, under the lease it ends. Idempotent by its lease: the
/// first completion under a lease is recorded, and the same lease reported
/// again is answered as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Complete {
    pub lease_token: String,
    pub outcome: Outcome,
    pub result: JobResult,
}

/// Most completions one `POST /v1/hosts/{id}/complete` carries: a host sends
/// what finished since its last report, and a busy host stays well below.
pub const MAX_COMPLETE_BATCH: usize = 512;

/// `POST /v1/hosts/{id}/complete`: the ends of several jobs, reported at once
/// so a busy host needs one request, not one per job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteMany {
    pub completions: Vec<Completion>,
}

/// One job's end within a [`CompleteMany`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    pub job_id: String,
    /// Carries the lease it ends: sent again, it is recorded once.
    pub complete: Complete,
}

/// What became of each completion of a [`CompleteMany`], in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletedMany {
    pub results: Vec<CompletionResult>,
}

/// One completion's fate: recorded (no error), or refused or not (yet)
/// applied, with the error a single completion would have answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResult {
    pub job_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}
