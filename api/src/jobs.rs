//! Jobs on the wire: what a user submits ([`JobSpec`]), what the coordinator
//! reports ([`Job`], [`JobResult`]), and the validation every submission passes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Millis;

/// More arguments than this is almost certainly a mistake, and each is stored.
pub const MAX_ARGS: usize = 1024;
/// Bytes in one argument, environment value or the command name.
pub const MAX_ARG_BYTES: usize = 64 * 1024;
/// Environment variables one job may set.
pub const MAX_ENV_VARS: usize = 256;
/// Bytes of stdin a job may carry; it lives in the job record.
pub const MAX_STDIN_BYTES: usize = 256 * 1024;
/// A job's timeout may not exceed a day: leases, waits and hosts plan around it.
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;
/// Default timeout of a shell job.
pub const DEFAULT_SHELL_TIMEOUT_MS: u64 = 60_000;
/// Default timeout of an openclaw-run job: an agent turn can take minutes.
pub const DEFAULT_OPENCLAW_TIMEOUT_MS: u64 = 600_000;
/// Upper bound on `max_attempts`: retries only cover lost hosts, not failures.
pub const MAX_ATTEMPTS_LIMIT: u32 = 10;
/// Bytes in an openclaw message.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Capabilities one job may require.
pub const MAX_CAPABILITIES: usize = 32;

/// The capability a host advertises to run shell jobs.
pub const CAP_SHELL: &str = "shell";
/// The capability a host advertises when its OpenClaw command answers.
pub const CAP_OPENCLAW: &str = "openclaw";

/// Thinking levels `openclaw agent --thinking` accepts.
pub const THINKING_LEVELS: &[&str] = &["off", "minimal", "low", "medium", "high"];

/// What a user asks the network to run. The `kind` field selects the variant;
/// unknown kinds and unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum JobSpec {
    /// An allowlisted native command.
    Shell(ShellSpec),
    /// A turn of the host's OpenClaw agent.
    OpenclawRun(OpenclawSpec),
}

/// A native command run in its own process group on a host that allows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellSpec {
    /// The program: a bare name looked up on the host's PATH, or an absolute path.
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub stdin: String,
    #[serde(default = "default_shell_timeout")]
    pub timeout_ms: u64,
    /// How many hosts may try the job when one is lost mid-run.
    #[serde(default = "default_shell_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub requirements: Requirements,
}

/// `openclaw agent --message M --agent A --json …` on a host that has OpenClaw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenclawSpec {
    pub message: String,
    #[serde(default = "default_agent")]
    pub agent: String,
    #[serde(default)]
    pub thinking: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub local: bool,
    #[serde(default = "default_openclaw_timeout")]
    pub timeout_ms: u64,
    /// Defaults to 1: an agent turn may have side effects, so it is not rerun
    /// on another host unless the submitter says so.
    #[serde(default = "default_openclaw_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub requirements: Requirements,
}

/// What a host must offer to be given the job, beyond what its kind implies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    #[serde(default)]
    pub capabilities: Vec<String>,
}

fn default_shell_timeout() -> u64 {
    DEFAULT_SHELL_TIMEOUT_MS
}
fn default_openclaw_timeout() -> u64 {
    DEFAULT_OPENCLAW_TIMEOUT_MS
}
fn default_shell_attempts() -> u32 {
    3
}
fn default_openclaw_attempts() -> u32 {
    1
}
fn default_agent() -> String {
    "main".to_string()
}

/// A submission that fails validation; the message names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

fn invalid(msg: impl Into<String>) -> Result<(), InvalidSpec> {
    Err(InvalidSpec(msg.into()))
}

impl JobSpec {
    /// The wire name of the spec's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::Shell(_) => "shell",
            JobSpec::OpenclawRun(_) => "openclaw-run",
        }
    }

    pub fn timeout_ms(&self) -> u64 {
        match self {
            JobSpec::Shell(s) => s.timeout_ms,
            JobSpec::OpenclawRun(s) => s.timeout_ms,
        }
    }

    pub fn max_attempts(&self) -> u32 {
        match self {
            JobSpec::Shell(s) => s.max_attempts,
            JobSpec::OpenclawRun(s) => s.max_attempts,
        }
    }

    /// Every capability a host needs for this job: the kind's own plus any extra.
    pub fn required_capabilities(&self) -> Vec<String> {
        let (own, extra) = match self {
            JobSpec::Shell(s) => (CAP_SHELL, &s.requirements.capabilities),
            JobSpec::OpenclawRun(s) => (CAP_OPENCLAW, &s.requirements.capabilities),
        };
        let mut caps = vec![own.to_string()];
        for cap in extra {
            if !caps.contains(cap) {
                caps.push(cap.clone());
            }
        }
        caps
    }

    /// Checks every bound; the first violation is returned, naming its field.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        validate_timeout(self.timeout_ms())?;
        validate_attempts(self.max_attempts())?;
        match self {
            JobSpec::Shell(s) => {
                validate_command(&s.command)?;
                validate_args(&s.args)?;
                validate_env(&s.env)?;
                if s.stdin.len() > MAX_STDIN_BYTES {
                    return invalid(format!(
                        "stdin is {} bytes; the limit is {MAX_STDIN_BYTES}",
                        s.stdin.len()
                    ));
                }
                validate_requirements(&s.requirements)
            }
            JobSpec::OpenclawRun(s) => {
                if s.message.trim().is_empty() {
                    return invalid("message must not be empty");
                }
                if s.message.len() > MAX_MESSAGE_BYTES {
                    return invalid(format!(
                        "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                        s.message.len()
                    ));
                }
                validate_word("agent", &s.agent)?;
                if let Some(model) = &s.model {
                    validate_word("model", model)?;
                }
                if let Some(level) = &s.thinking
                    && !THINKING_LEVELS.contains(&level.as_str())
                {
                    return invalid(format!(
                        "thinking must be one of {}, not {level:?}",
                        THINKING_LEVELS.join(", ")
                    ));
                }
                validate_requirements(&s.requirements)
            }
        }
    }
}

fn validate_timeout(timeout_ms: u64) -> Result<(), InvalidSpec> {
    if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
        return invalid(format!(
            "timeout_ms must be between 1 and {MAX_TIMEOUT_MS} (24 h), not {timeout_ms}"
        ));
    }
    Ok(())
}

fn validate_attempts(max_attempts: u32) -> Result<(), InvalidSpec> {
    if max_attempts == 0 || max_attempts > MAX_ATTEMPTS_LIMIT {
        return invalid(format!(
            "max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, not {max_attempts}"
        ));
    }
    Ok(())
}

fn validate_command(command: &str) -> Result<(), InvalidSpec> {
    if command.trim().is_empty() {
        return invalid("command must not be empty");
    }
    if command.len() > MAX_ARG_BYTES || command.contains('\0') {
        return invalid("command must be at most 64 KiB without NUL bytes");
    }
    Ok(())
}

fn validate_args(args: &[String]) -> Result<(), InvalidSpec> {
    if args.len() > MAX_ARGS {
        return invalid(format!(
            "too many args: {}; the limit is {MAX_ARGS}",
            args.len()
        ));
    }
    for (i, arg) in args.iter().enumerate() {
        if arg.len() > MAX_ARG_BYTES || arg.contains('\0') {
            return invalid(format!(
                "args[{i}] must be at most {MAX_ARG_BYTES} bytes without NUL bytes"
            ));
        }
    }
    Ok(())
}

fn validate_env(env: &BTreeMap<String, String>) -> Result<(), InvalidSpec> {
    if env.len() > MAX_ENV_VARS {
        return invalid(format!(
            "too many env variables: {}; the limit is {MAX_ENV_VARS}",
            env.len()
        ));
    }
    for (name, value) in env {
        let name_ok =
            !name.is_empty() && !name.contains('=') && !name.contains('\0') && name.len() <= 256;
        if !name_ok {
            return invalid(format!("env name {name:?} is not a valid variable name"));
        }
        if value.len() > MAX_ARG_BYTES || value.contains('\0') {
            return invalid(format!(
                "env {name} must be at most {MAX_ARG_BYTES} bytes without NUL bytes"
            ));
        }
    }
    Ok(())
}

fn validate_requirements(req: &Requirements) -> Result<(), InvalidSpec> {
    if req.capabilities.len() > MAX_CAPABILITIES {
        return invalid(format!(
            "too many required capabilities; the limit is {MAX_CAPABILITIES}"
        ));
    }
    for cap in &req.capabilities {
        validate_word("requirements.capabilities", cap)?;
    }
    Ok(())
}

/// Names (agents, models, capabilities) are short printable words.
fn validate_word(field: &str, value: &str) -> Result<(), InvalidSpec> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/@+".contains(c));
    if !ok {
        return invalid(format!(
            "{field} must be 1 to 128 characters of letters, digits and -_.:/@+, not {value:?}"
        ));
    }
    Ok(())
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Terminal statuses never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

impl std::str::FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown status {s:?}; expected queued, running, succeeded, failed or cancelled"
                )
            })
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as the coordinator reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub status: JobStatus,
    pub spec: JobSpec,
    /// How many times a host has been given the job.
    pub attempts: u32,
    /// The host that holds or last held the job.
    pub host_id: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Present once the job is terminal (and for cancelled jobs, what is known).
    pub result: Option<JobResult>,
}

/// What running a job produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Bytes of stdout past the host's output limit that were dropped.
    #[serde(default)]
    pub stdout_dropped_bytes: u64,
    #[serde(default)]
    pub stderr_dropped_bytes: u64,
    pub duration_ms: u64,
    /// A human sentence when the job failed, such as "timed out after 1000 ms".
    pub error: Option<String>,
    /// stdout parsed as JSON, for kinds whose output is JSON (openclaw-run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
}

impl JobResult {
    /// A result that carries only an error sentence: nothing ran, or it was lost.
    pub fn error(message: impl Into<String>) -> Self {
        JobResult {
            error: Some(message.into()),
            ..JobResult::default()
        }
    }
}

/// One page of `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// A job id: the page starts after it (jobs are listed oldest first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// Largest page `GET /v1/jobs` returns.
pub const MAX_PAGE: u32 = 1000;
/// Page size when the caller gives none.
pub const DEFAULT_PAGE: u32 = 100;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_spec_parses_with_defaults() {
        let spec: JobSpec =
            serde_json::from_str(r#"{"kind":"shell","command":"echo","args":["hi"]}"#).unwrap();
        let JobSpec::Shell(s) = &spec else {
            panic!("not shell")
        };
        assert_eq!(s.timeout_ms, DEFAULT_SHELL_TIMEOUT_MS);
        assert_eq!(s.max_attempts, 3);
        assert_eq!(spec.required_capabilities(), vec!["shell".to_string()]);
        spec.validate().unwrap();
    }

    #[test]
    fn unknown_field_is_named() {
        let err = serde_json::from_str::<JobSpec>(r#"{"kind":"shell","command":"x","bogus":1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn unknown_kind_is_named() {
        let err = serde_json::from_str::<JobSpec>(r#"{"kind":"teleport"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("teleport"), "{err}");
    }

    #[test]
    fn bounds_are_enforced() {
        let mut s: ShellSpec = serde_json::from_str(r#"{"command":"echo"}"#).unwrap();
        s.timeout_ms = MAX_TIMEOUT_MS + 1;
        assert!(JobSpec::Shell(s.clone()).validate().is_err());
        s.timeout_ms = 10;
        s.command = "  ".into();
        assert!(JobSpec::Shell(s.clone()).validate().is_err());
        s.command = "echo".into();
        s.args = vec![String::new(); MAX_ARGS + 1];
        let err = JobSpec::Shell(s).validate().unwrap_err();
        assert!(err.0.contains("too many args"), "{err}");
    }

    #[test]
    fn openclaw_spec_checks_thinking() {
        let spec: JobSpec =
            serde_json::from_str(r#"{"kind":"openclaw-run","message":"hi","thinking":"loud"}"#)
                .unwrap();
        assert!(spec.validate().unwrap_err().0.contains("thinking"));
    }
}
