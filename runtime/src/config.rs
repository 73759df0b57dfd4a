//! The host daemon's configuration: what the CLI parses into [`HostConfig`], its
//! defaults, and the checks made before the daemon starts.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use skyclaw_api::hosts::MAX_HOST_LIST;
// What a host grants WASI jobs by default lives with the wire types: the CLI
// tells submitters about it too.
pub use skyclaw_api::jobs::{
    DEFAULT_WASI_FUEL, DEFAULT_WASI_MAX_FUEL, DEFAULT_WASI_MAX_MEMORY_MB,
    DEFAULT_WASI_MAX_TIMEOUT_MS, DEFAULT_WASI_MEMORY_MB, DEFAULT_WASI_TIMEOUT_MS,
};
use skyclaw_api::jobs::{MAX_OUTPUT_BYTES_LIMIT, WasiCaps, is_loader_variable};

use crate::HostError;
use crate::confine::{DEFAULT_JOB_MAX_PROCESSES, DEFAULT_JOB_MEMORY_MB, JobUsers};
use crate::services::PortRange;

/// Jobs run at once by default: a few keeps a shared machine responsive.
pub const DEFAULT_MAX_PARALLEL: u32 = 4;
/// Bytes kept of each output stream by default: enough for logs and JSON
/// answers, small enough that a chatty job cannot exhaust the host or the
/// coordinator's job records.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// How long running jobs may go on after the host is told to stop: long enough
/// for short jobs to finish, short enough for service managers' stop timeouts.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The OpenClaw CLI as it is installed by default.
pub const DEFAULT_OPENCLAW_COMMAND: &str = "openclaw";
/// The PATH jobs get when the host has none: the standard system directories.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// The name a host goes by when its hostname cannot be read.
pub const FALLBACK_HOST_NAME: &str = "skyclaw-host";
/// Disk the host's artifact cache may use by default; the least recently used
/// artifacts are removed past it.
pub const DEFAULT_ARTIFACT_CACHE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The address the host's own listener (`/health`, `/metrics`, instance
/// logs) binds by default: loopback, on a port the kernel picks (logged).
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
/// The address endpoints name by default: this machine only, which is what a
/// laptop or a single-machine network wants; hosts others reach set it.
pub const DEFAULT_ADVERTISE_HOST: &str = "127.0.0.1";

/// Everything the host daemon needs; built by the CLI from flags, `SKYCLAW_*`
/// variables and the defaults above.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Coordinator base URLs to start from, tried in this order when one
    /// fails; the rest of the cluster is learned from them once registered.
    pub coordinators: Vec<String>,
    /// The cluster token, sent as `x-skyclaw-token`.
    pub token: String,
    /// Holds the `host-id` file and the jobs' working directories.
    pub data_dir: PathBuf,
    /// The host's human name; the hostname by default.
    pub name: String,
    /// Commands shell jobs may run, each matched exactly against a job's command.
    pub allowed_commands: Vec<String>,
    pub max_parallel: u32,
    /// Bytes kept of each output stream (stdout, stderr) of a job.
    pub max_output_bytes: usize,
    /// The program `openclaw-run` jobs invoke.
    pub openclaw_command: String,
    /// Names of host environment variables passed on to every job.
    pub pass_env: Vec<String>,
    /// How long running jobs may go on after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// Run only sandboxed (WASI) work: no shell or openclaw-run jobs.
    pub sandbox_only: bool,
    /// The most fuel, memory (MiB) and time (ms) one WASI job is granted.
    pub wasi_max_fuel: u64,
    pub wasi_max_memory_mb: u32,
    pub wasi_max_timeout_ms: u64,
    /// Disk the artifact cache may use, in bytes.
    pub artifact_cache_bytes: u64,
    /// Who native jobs run as; `None` runs none (a host that is not root,
    /// whose owner did not allow same-user jobs).
    pub job_users: Option<JobUsers>,
    /// Memory each process of a native job may allocate, in MiB.
    pub job_memory_mb: u64,
    /// Processes and threads a native job may have at once.
    pub job_max_processes: u64,
    /// Directories native jobs must not see, besides the data directory
    /// (always hidden): covered by an empty file system in their view.
    pub hidden_paths: Vec<PathBuf>,
    /// Ports service instances listen on, one each; `None` runs no services.
    pub service_ports: Option<PortRange>,
    /// The host name or address other machines reach this host's instances
    /// (and its listener) by.
    pub advertise_host: String,
    /// Where the host's own listener binds.
    pub listen: SocketAddr,
}

impl HostConfig {
    /// A configuration with every optional field at its default and an empty
    /// allowlist (no shell jobs).
    pub fn new(coordinators: Vec<String>, token: String, data_dir: PathBuf) -> HostConfig {
        HostConfig {
            coordinators,
            token,
            data_dir,
            name: default_host_name(),
            allowed_commands: Vec::new(),
            max_parallel: DEFAULT_MAX_PARALLEL,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            openclaw_command: DEFAULT_OPENCLAW_COMMAND.to_string(),
            pass_env: Vec::new(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            sandbox_only: false,
            wasi_max_fuel: DEFAULT_WASI_MAX_FUEL,
            wasi_max_memory_mb: DEFAULT_WASI_MAX_MEMORY_MB,
            wasi_max_timeout_ms: DEFAULT_WASI_MAX_TIMEOUT_MS,
            artifact_cache_bytes: DEFAULT_ARTIFACT_CACHE_BYTES,
            job_users: JobUsers::default_for_this_process(),
            job_memory_mb: DEFAULT_JOB_MEMORY_MB,
            job_max_processes: DEFAULT_JOB_MAX_PROCESSES,
            hidden_paths: Vec::new(),
            service_ports: None,
            advertise_host: DEFAULT_ADVERTISE_HOST.to_string(),
            listen: DEFAULT_LISTEN,
        }
    }

    /// What WASI jobs are granted here: the built-in defaults, lowered to the
    /// host's maxima where those are smaller.
    pub fn wasi_caps(&self) -> WasiCaps {
        WasiCaps {
            default_fuel: DEFAULT_WASI_FUEL.min(self.wasi_max_fuel),
            default_memory_mb: DEFAULT_WASI_MEMORY_MB.min(self.wasi_max_memory_mb),
            default_timeout_ms: DEFAULT_WASI_TIMEOUT_MS.min(self.wasi_max_timeout_ms),
            max_fuel: self.wasi_max_fuel,
            max_memory_mb: self.wasi_max_memory_mb,
            max_timeout_ms: self.wasi_max_timeout_ms,
        }
    }

    /// Refuses configurations the daemon could not honour; the message names the field.
    pub(crate) fn validate(&self) -> Result<(), HostError> {
        let invalid = |msg: String| Err(HostError::Config(msg));
        if self.coordinators.is_empty() {
            return invalid("at least one coordinator url is needed".into());
        }
        if self.name.trim().is_empty() {
            return invalid("name must not be empty".into());
        }
        if self.max_parallel == 0 {
            return invalid("max_parallel must be at least 1".into());
        }
        if self.allowed_commands.len() > MAX_HOST_LIST {
            return invalid(format!(
                "allowed_commands has {} entries; the limit is {MAX_HOST_LIST}",
                self.allowed_commands.len()
            ));
        }
        if self.allowed_commands.iter().any(|c| c.trim().is_empty()) {
            return invalid("allowed_commands must not contain an empty command".into());
        }
        if self.max_output_bytes > MAX_OUTPUT_BYTES_LIMIT {
            return invalid(format!(
                "max_output_bytes must be at most {MAX_OUTPUT_BYTES_LIMIT}, so results fit one coordinator log entry"
            ));
        }
        if self.sandbox_only && !self.allowed_commands.is_empty() {
            return invalid(
                "sandbox_only runs no native commands: leave allowed_commands (--allow) empty"
                    .into(),
            );
        }
        if !self.allowed_commands.is_empty() && self.job_users.is_none() {
            return invalid(format!(
                "native jobs need a user of their own and this host is not root (uid {}): \
                 run it as root (each job then gets a uid from --job-uids), or pass \
                 --allow-same-user-jobs to run them as this user, who they can then act as",
                nix::unistd::Uid::effective()
            ));
        }
        if self.job_memory_mb == 0 || self.job_max_processes == 0 {
            return invalid("job_memory_mb and job_max_processes must be at least 1".into());
        }
        if let Err(e) = self.wasi_caps().validate() {
            return invalid(format!("wasi limits: {e}"));
        }
        if self.artifact_cache_bytes == 0 {
            return invalid("artifact_cache_bytes must be at least 1".into());
        }
        if self.openclaw_command.trim().is_empty() {
            return invalid("openclaw_command must not be empty".into());
        }
        if !is_host_name(&self.advertise_host) {
            return invalid(format!(
                "advertise_host {:?} is not a host name or IP address (no scheme, port or path)",
                self.advertise_host
            ));
        }
        if let Some(bad) = self
            .pass_env
            .iter()
            .find(|n| n.is_empty() || n.contains('=') || n.contains('\0'))
        {
            return invalid(format!("pass_env name {bad:?} is not a variable name"));
        }
        let loader: Vec<&str> = self
            .pass_env
            .iter()
            .map(String::as_str)
            .filter(|n| is_loader_variable(n))
            .collect();
        if !loader.is_empty() {
            return invalid(format!(
                "pass_env may not pass loader variables (LD_*, DYLD_*) to jobs: {}",
                loader.join(", ")
            ));
        }
        Ok(())
    }
}

/// A DNS name or an IP address, as an endpoint URL names a host.
fn is_host_name(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The machine's hostname, or [`FALLBACK_HOST_NAME`] when it cannot be read.
pub fn default_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| FALLBACK_HOST_NAME.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HostConfig {
        HostConfig::new(
            vec!["http://127.0.0.1:1".into()],
            "t".into(),
            PathBuf::from("/tmp/x"),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let c = config();
        c.validate().unwrap();
        assert!(!c.name.is_empty());
        assert_eq!(c.max_output_bytes, 1024 * 1024);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut c = config();
        c.max_parallel = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_parallel")
        );
        let mut c = config();
        c.pass_env = vec!["A=B".into()];
        assert!(c.validate().unwrap_err().to_string().contains("pass_env"));
        let mut c = config();
        c.pass_env = vec!["HOME".into(), "LD_LIBRARY_PATH".into(), "DYLD_X".into()];
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("LD_LIBRARY_PATH, DYLD_X"), "{err}");
        let mut c = config();
        c.sandbox_only = true;
        c.allowed_commands = vec!["echo".into()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("sandbox_only")
        );
        let mut c = config();
        c.wasi_max_memory_mb = 0;
        assert!(c.validate().unwrap_err().to_string().contains("memory_mb"));
        let mut c = config();
        c.wasi_max_fuel = 5;
        assert_eq!(c.wasi_caps().default_fuel, 5);
        c.validate().unwrap();
        let mut c = config();
        c.allowed_commands = vec!["echo".into()];
        c.job_users = None;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--allow-same-user-jobs"), "{err}");
        for bad in ["http://x", "a b", "x:80", ""] {
            let mut c = config();
            c.advertise_host = bad.into();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains("advertise_host"), "{bad}: {err}");
        }
        for good in ["10.0.0.7", "::1", "host-1.example.org"] {
            let mut c = config();
            c.advertise_host = good.into();
            c.validate().unwrap();
        }
        let mut c = config();
        c.allowed_commands = vec![" ".into()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("allowed_commands")
        );
    }
}
