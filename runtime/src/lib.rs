//! The Skyclaw host daemon: registers with the coordinators, heartbeats, claims
//! jobs into free slots and runs them (allowlisted native commands, OpenClaw
//! agent turns and WASI programs), reports every result, runs the service
//! instances it is assigned, and serves `/health` and `/metrics`.
//!
//! The CLI builds a [`HostConfig`] and calls [`run`] with a shutdown future.
//!
//! Architecture invariant: every native process is started through
//! `confine`, which gives it a user, PID and mount namespace of its own; the
//! daemon is non-dumpable. No job can read the daemon's memory, environment,
//! token or data directory.
//!
//! Architecture invariant: the runner (`native`, `openclaw`) never reads
//! the host's environment or configuration on its own; everything it may use
//! is handed to it, so a job can see nothing of the host that was not passed
//! on deliberately.

mod artifacts;
mod backoff;
pub mod bundle;
mod captured;
mod config;
mod confine;
mod control;
mod discovery;
mod error;
mod host;
mod identity;
mod leases;
mod metrics;
mod native;
mod openclaw;
mod report;
mod services;
mod spawned;
mod turns;
pub mod wasi;
mod workdir;
mod workload;

pub use config::{
    DEFAULT_ADVERTISE_HOST, DEFAULT_ARTIFACT_CACHE_BYTES, DEFAULT_LISTEN, DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_MAX_PARALLEL, DEFAULT_OPENCLAW_COMMAND, DEFAULT_PATH, DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_WASI_MAX_FUEL, DEFAULT_WASI_MAX_MEMORY_MB, DEFAULT_WASI_MAX_TIMEOUT_MS,
    FALLBACK_HOST_NAME, HostConfig, default_host_name,
};
pub use confine::{
    DEFAULT_JOB_MAX_PROCESSES, DEFAULT_JOB_MEMORY_MB, DEFAULT_JOB_UIDS, JOB_HOME, JobUsers,
    UidRange, protect_process,
};
pub use error::HostError;
pub use host::{CLAIM_WAIT_MS, SHUTDOWN_REPORT_WINDOW, run};
pub use identity::HOST_ID_FILE;
pub use openclaw::OPENCLAW_PROBE_TIMEOUT;
pub use report::REPORT_DEADLINE;
pub use services::PortRange;
pub use workload::{Run, StopReason, StopSignal};
