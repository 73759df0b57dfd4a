//! Every change to shared state as a typed command, and what applying one yields.

use serde::{Deserialize, Serialize};
use skyclaw_api::Millis;
use skyclaw_api::apikeys::{ApiKey, Scope};
use skyclaw_api::artifacts::{ArtifactInfo, ArtifactKind, Digest};
use skyclaw_api::gateways::Gateway;
use skyclaw_api::hosts::{HeldLease, LeasedJob, Outcome, RegisterHost};
use skyclaw_api::jobs::{Job, JobResult, JobSpec, JobStatus};
use skyclaw_api::services::{DeployOutcome, DeployStatus, InstanceReport, ServiceSpec};

/// The version of how commands and their outcomes are encoded where they are
/// kept: in Raft log entries and in idempotency records. Raise it when a
/// change would make older builds misread them; an older build then stops
/// on them with [`check_encoding`]'s reason instead of misapplying them.
pub const COMMAND_ENCODING: u32 = 1;

/// Refuses what a newer build wrote in an encoding this one does not know.
pub fn check_encoding(version: u32) -> Result<(), String> {
    if version > COMMAND_ENCODING {
        return Err(format!(
            "written by a newer skyclaw (command encoding {version}; this build reads up to \
             {COMMAND_ENCODING}); upgrade this coordinator"
        ));
    }
    Ok(())
}

/// Who a job belongs to: the cluster token's holder, or one API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    Token,
    ApiKey(String),
}

impl Owner {
    /// The owner as stored in the jobs table.
    pub fn as_column(&self) -> String {
        match self {
            Owner::Token => "token".to_string(),
            Owner::ApiKey(id) => format!("key:{id}"),
        }
    }
}

/// One change to shared state. Times, ids and tokens are chosen by the proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// A host joins or rejoins; leases it held before are given up.
    RegisterHost {
        host: RegisterHost,
        now: Millis,
    },
    /// A host missed its heartbeats: mark it down and requeue its jobs,
    /// unless it registered as another incarnation since the verdict.
    HostDown {
        host_id: String,
        /// The incarnation found silent; empty in entries from before
        /// incarnations, which mark any incarnation down.
        #[serde(default)]
        incarnation: String,
        now: Millis,
    },
    EnqueueJob {
        id: String,
        spec: JobSpec,
        owner: Owner,
        now: Millis,
        /// Why no live host can run the job, as the proposer saw the hosts.
        #[serde(default)]
        waiting_reason: Option<String>,
    },
    /// Records why queued jobs wait, as the leader sees the live hosts now
    /// (`None`: some live host can run it); jobs no longer queued are skipped.
    SetWaitingReasons {
        reasons: Vec<(String, Option<String>)>,
    },
    /// Fails queued jobs whose queue deadline is not after `now`, each with
    /// the proposer's sentence; jobs leased or requeued since are skipped.
    FailQueued {
        /// `(job id, reason)` pairs.
        jobs: Vec<(String, String)>,
        now: Millis,
    },
    /// Leases queued jobs to a host; jobs no longer queued are skipped.
    LeaseJobs {
        host_id: String,
        /// `(job id, lease token)` pairs.
        leases: Vec<(String, String)>,
        expires_at: Millis,
        now: Millis,
    },
    /// Extends the leases a host reports holding.
    RenewLeases {
        host_id: String,
        leases: Vec<HeldLease>,
        expires_at: Millis,
    },
    CompleteJob {
        job_id: String,
        lease_token: String,
        outcome: Outcome,
        result: JobResult,
        now: Millis,
    },
    /// Cancels a job on behalf of `owner` (who must own it, unless the token holder).
    CancelJob {
        job_id: String,
        owner: Owner,
        now: Millis,
    },
    /// Requeues (or fails) every running job whose lease ended before `now`.
    ExpireLeases {
        now: Millis,
    },
    CreateApiKey {
        id: String,
        name: String,
        scopes: Vec<Scope>,
        key_hash: String,
        now: Millis,
    },
    RevokeApiKey {
        id: String,
        now: Millis,
    },
    /// Forgets idempotency records created before `before`.
    PruneIdempotency {
        before: Millis,
    },
    /// Records an artifact whose blob a coordinator stored and verified; an
    /// artifact already recorded is left as it is.
    AddArtifact {
        digest: Digest,
        size: u64,
        kind: ArtifactKind,
        now: Millis,
    },
    /// Creates a service or deploys a new version of it (the same spec
    /// again changes nothing; another replica count alone scales it).
    PutService {
        name: String,
        spec: ServiceSpec,
        owner: Owner,
        now: Millis,
    },
    ScaleService {
        name: String,
        replicas: u32,
        owner: Owner,
        now: Millis,
    },
    /// Removes a service: its instances are asked to stop.
    DeleteService {
        name: String,
        owner: Owner,
        now: Millis,
    },
    /// Places new instances of a service's version, `(instance id, host id)`
    /// each; skipped when the service no longer runs that version.
    PlaceInstances {
        service: String,
        version: u64,
        placements: Vec<(String, String)>,
        now: Millis,
    },
    /// Asks the instances' hosts to drain and stop them.
    StopInstances {
        ids: Vec<String>,
        now: Millis,
    },
    /// A host's reports on its instances' states.
    ReportInstances {
        host_id: String,
        reports: Vec<InstanceReport>,
        now: Millis,
    },
    /// Ends a rollout as done, or as failed with why.
    FinishDeploy {
        service: String,
        version: u64,
        status: DeployStatus,
        reason: Option<String>,
        now: Millis,
    },
    /// Records why services wait for hosts (`None`: they do not).
    SetServiceWaiting {
        reasons: Vec<(String, Option<String>)>,
    },
    /// Registers or renews a gateway on behalf of `owner`, until
    /// [`Gateway::expiry`] of `now`; gateways expired at `now` are
    /// forgotten first.
    GatewayHeartbeat {
        id: String,
        public_url: String,
        owner: Owner,
        now: Millis,
    },
}

/// Binds a command to the idempotency key it was sent with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// Keys are per caller: one caller can never replay another's answer.
    pub principal: String,
    pub key: String,
    /// sha256 of method, path and body: the same key with another request is refused.
    pub request_hash: String,
    pub now: Millis,
}

/// What goes through the log: a command and, optionally, its idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub command: Command,
    pub idempotency: Option<IdempotencyRecord>,
}

impl Proposal {
    pub fn new(command: Command) -> Proposal {
        Proposal {
            command,
            idempotency: None,
        }
    }

    pub fn with_idempotency(mut self, record: Option<IdempotencyRecord>) -> Proposal {
        self.idempotency = record;
        self
    }
}

/// What a successfully applied command returns to its proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    Done,
    Job(Box<Job>),
    Leased(Leases),
    /// Jobs a host reported that it must stop.
    Stop(Vec<String>),
    ApiKey(ApiKey),
    Count(u64),
    /// The artifact as recorded, and whether this command recorded it.
    Artifact {
        info: ArtifactInfo,
        created: bool,
    },
    /// What a `PutService` did.
    Deployed(DeployOutcome),
    /// A gateway as a heartbeat left it.
    Gateway(Gateway),
}

impl Output {
    /// The variant's name, for errors that must not print a whole job.
    pub fn kind(&self) -> &'static str {
        match self {
            Output::Done => "done",
            Output::Job(_) => "job",
            Output::Leased(_) => "leased",
            Output::Stop(_) => "stop",
            Output::ApiKey(_) => "api_key",
            Output::Count(_) => "count",
            Output::Artifact { .. } => "artifact",
            Output::Deployed(_) => "deployed",
            Output::Gateway(_) => "gateway",
        }
    }
}

/// A command's answer as the type its proposer wants. [`Output`] is how every
/// answer travels (back from `apply`, in idempotency records); proposers get
/// it unpacked here, in one place, instead of each matching on it.
pub trait Answer: Sized {
    /// The answer, or the output back when it is of another kind.
    fn from_output(output: Output) -> Result<Self, Output>;
}

/// `Done`: the command answers nothing beyond having applied.
impl Answer for () {
    fn from_output(output: Output) -> Result<(), Output> {
        match output {
            Output::Done => Ok(()),
            other => Err(other),
        }
    }
}

impl Answer for Job {
    fn from_output(output: Output) -> Result<Job, Output> {
        match output {
            Output::Job(job) => Ok(*job),
            other => Err(other),
        }
    }
}

impl Answer for Leases {
    fn from_output(output: Output) -> Result<Leases, Output> {
        match output {
            Output::Leased(leases) => Ok(leases),
            other => Err(other),
        }
    }
}

/// `Stop`: the jobs a host reported that it must stop.
impl Answer for Vec<String> {
    fn from_output(output: Output) -> Result<Vec<String>, Output> {
        match output {
            Output::Stop(stop) => Ok(stop),
            other => Err(other),
        }
    }
}

impl Answer for ApiKey {
    fn from_output(output: Output) -> Result<ApiKey, Output> {
        match output {
            Output::ApiKey(key) => Ok(key),
            other => Err(other),
        }
    }
}

/// `Count`: how many rows the command changed.
impl Answer for u64 {
    fn from_output(output: Output) -> Result<u64, Output> {
        match output {
            Output::Count(n) => Ok(n),
            other => Err(other),
        }
    }
}

/// An artifact as recorded, and whether this command recorded it.
impl Answer for (ArtifactInfo, bool) {
    fn from_output(output: Output) -> Result<(ArtifactInfo, bool), Output> {
        match output {
            Output::Artifact { info, created } => Ok((info, created)),
            other => Err(other),
        }
    }
}

impl Answer for DeployOutcome {
    fn from_output(output: Output) -> Result<DeployOutcome, Output> {
        match output {
            Output::Deployed(outcome) => Ok(outcome),
            other => Err(other),
        }
    }
}

impl Answer for Gateway {
    fn from_output(output: Output) -> Result<Gateway, Output> {
        match output {
            Output::Gateway(gateway) => Ok(gateway),
            other => Err(other),
        }
    }
}

/// The leases a `LeaseJobs` granted: jobs taken meanwhile are left out. A
/// job's spec never changes, so the proposer, which read the jobs to pick
/// them, completes the host's answer; the state machine returns only what
/// the lease changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leases {
    pub host_id: String,
    pub expires_at: Millis,
    /// When the leases were granted: the jobs' `updated_at`.
    pub granted_at: Millis,
    pub granted: Vec<Granted>,
}

/// One granted lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Granted {
    pub job_id: String,
    pub lease_token: String,
    /// The job's attempts, this one included.
    pub attempts: u32,
}

impl Leases {
    /// The host's answer, with each job as `job` has it (`None`: skipped)
    /// and as the lease changed it.
    pub fn into_leased(self, mut job: impl FnMut(&str) -> Option<Job>) -> Vec<LeasedJob> {
        let Leases {
            host_id,
            expires_at,
            granted_at,
            granted,
        } = self;
        granted
            .into_iter()
            .filter_map(|g| {
                let mut leased = job(&g.job_id)?;
                leased.status = JobStatus::Running;
                leased.attempts = g.attempts;
                leased.host_id = Some(host_id.clone());
                leased.updated_at = granted_at;
                leased.waiting_reason = None;
                Some(LeasedJob {
                    job: leased,
                    lease_token: g.lease_token,
                    lease_expires_at: expires_at,
                })
            })
            .collect()
    }
}

/// Why a command changed nothing. These are answers, not faults: they are
/// deterministic and recorded against idempotency keys like any output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum CommandError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The caller may not change this (a service another key owns).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    StaleLease(String),
    #[error("{0}")]
    HostNotRegistered(String),
    #[error("idempotency key {0:?} was already used with a different request")]
    IdempotencyConflict(String),
}
