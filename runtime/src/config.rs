//! The host daemon's configuration: what the CLI parses into [`HostConfig`], its
//! defaults, and the checks made before the daemon starts.

use std::path::PathBuf;
use std::time::Duration;

use skyclaw_api::hosts::MAX_HOST_LIST;

use crate::HostError;

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
        if self.openclaw_command.trim().is_empty() {
            return invalid("openclaw_command must not be empty".into());
        }
        if let Some(bad) = self
            .pass_env
            .iter()
            .find(|n| n.is_empty() || n.contains('=') || n.contains('\0'))
        {
            return invalid(format!("pass_env name {bad:?} is not a variable name"));
        }
        Ok(())
    }
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
        c.allowed_commands = vec![" ".into()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("allowed_commands")
        );
    }
}
