//! Jobs on the wire: what a user submits ([`JobSpec`]), what the coordinator
//! reports ([`Job`], [`JobResult`]), and the validation every submission passes.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::Millis;
use crate::artifacts::Digest;

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
/// Default attempts of a shell job: it is rerun on another host when its
/// host is lost.
pub const DEFAULT_SHELL_ATTEMPTS: u32 = 3;
/// Default attempts of an openclaw-run job: an agent turn may have side
/// effects, so it is not rerun unless the submitter says so.
pub const DEFAULT_OPENCLAW_ATTEMPTS: u32 = 1;
/// The OpenClaw agent a job talks to unless it names another.
pub const DEFAULT_AGENT: &str = "main";
/// Upper bound on `max_attempts`: retries only cover lost hosts, not failures.
pub const MAX_ATTEMPTS_LIMIT: u32 = 10;
/// Bytes in an openclaw message.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most output a host may keep per stream of a job. A result travels between
/// coordinators in one Raft log entry, which a lagging follower must receive
/// and fsync within one heartbeat interval (openraft 0.9 times appends out
/// there); at 8 MiB a stream, entries took longer on a test machine's
/// loopback and leadership churned. Bigger outputs belong in artifacts.
pub const MAX_OUTPUT_BYTES_LIMIT: usize = 1024 * 1024;
/// Capabilities one job may require.
pub const MAX_CAPABILITIES: usize = 32;
/// Longest a job may wait in the queue for a host, when it sets a queue
/// timeout: a week outlasts any planned host outage, and keeps the deadline
/// (a time in milliseconds since the epoch) far from overflowing.
pub const MAX_QUEUE_TIMEOUT_MS: u64 = 7 * 24 * 60 * 60 * 1000;
/// Prefixes of the environment variables a dynamic loader acts on (glibc and
/// musl read `LD_*`, macOS `DYLD_*`): set for an allowlisted command, they
/// make it load and run code of the job's choosing, so native jobs may not
/// set them and hosts may not pass them on.
pub const LOADER_VARIABLE_PREFIXES: &[&str] = &["LD_", "DYLD_"];

/// The capability a host advertises to run shell jobs.
pub const CAP_SHELL: &str = "shell";
/// The capability a host advertises when its OpenClaw command answers.
pub const CAP_OPENCLAW: &str = "openclaw";
/// The capability every host advertises: it runs WASI jobs in wasmtime.
pub const CAP_WASI: &str = "wasi";

/// Largest memory a WASI job may ask for: a 32-bit linear memory holds 4 GiB.
/// Hosts grant less unless their owners allow more
/// ([`DEFAULT_WASI_MAX_MEMORY_MB`]).
pub const MAX_WASI_MEMORY_MB: u32 = 4096;
/// Fuel a host gives a WASI job that names none, by default: about ten
/// seconds of busy compute, plenty for a job and a bound on a runaway loop.
pub const DEFAULT_WASI_FUEL: u64 = 10_000_000_000;
/// Most fuel a host grants one WASI job by default: about half an hour of compute.
pub const DEFAULT_WASI_MAX_FUEL: u64 = 1_000_000_000_000;
/// Memory a host gives a WASI job that names none, by default.
pub const DEFAULT_WASI_MEMORY_MB: u32 = 256;
/// Most memory a host grants one WASI job by default: leaves room for
/// several jobs at once on a small machine.
pub const DEFAULT_WASI_MAX_MEMORY_MB: u32 = 1024;
/// Wall-clock time a host gives a WASI job that names none, by default.
pub const DEFAULT_WASI_TIMEOUT_MS: u64 = 60_000;
/// Longest a host lets one WASI job run by default.
pub const DEFAULT_WASI_MAX_TIMEOUT_MS: u64 = 600_000;
/// Default attempts of a WASI job: a sandboxed job has no effects outside its
/// own output, so running it again on another host is safe.
pub const DEFAULT_WASI_ATTEMPTS: u32 = 3;
/// A WASI program's `argv[0]` when its job names none, as `wasmtime run`
/// gives a program read from stdin.
pub const DEFAULT_PROGRAM_NAME: &str = "main.wasm";
/// Longest program name: the longest file name Linux allows (`NAME_MAX`),
/// so any file the CLI pushes keeps its name.
pub const MAX_PROGRAM_NAME_BYTES: usize = 255;

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
    /// A WASI command (component or preview 1 module) run in wasmtime.
    Wasi(WasiSpec),
}

/// A WASI program, named by the digest of an uploaded artifact, run in a
/// sandbox: no filesystem, no network, only its args, env and stdin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasiSpec {
    pub artifact: Digest,
    /// The program's file name, its `argv[0]` ([`DEFAULT_PROGRAM_NAME`] when
    /// absent): the CLI sends the name of the file it pushed. A plain file
    /// name: no `/`, no control characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Arguments after the program name.
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub stdin: String,
    #[serde(default)]
    pub limits: WasiLimits,
    #[serde(default = "default_wasi_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub requirements: Requirements,
    /// Fail the job if it waits in the queue longer than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u64>,
}

impl WasiSpec {
    /// The program's `argv[0]`: its name, or [`DEFAULT_PROGRAM_NAME`].
    pub fn program_name(&self) -> &str {
        self.program.as_deref().unwrap_or(DEFAULT_PROGRAM_NAME)
    }
}

/// Resource limits of one WASI job. Each one left out takes the running host's
/// default; each one given is capped at the host's maximum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasiLimits {
    /// Units of wasmtime fuel (roughly one per wasm instruction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Largest size any one linear memory may grow to, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u32>,
    /// Wall-clock limit of the run, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl WasiLimits {
    /// True when every limit given is within `caps` (absent ones always are:
    /// they take the host's default, which is within its caps).
    pub fn within(&self, caps: &WasiCaps) -> bool {
        self.fuel.is_none_or(|f| f <= caps.max_fuel)
            && self.memory_mb.is_none_or(|m| m <= caps.max_memory_mb)
            && self.timeout_ms.is_none_or(|t| t <= caps.max_timeout_ms)
    }

    /// The first limit above `caps`, described for an error message.
    pub fn excess(&self, caps: &WasiCaps) -> Option<String> {
        if let Some(f) = self.fuel.filter(|f| *f > caps.max_fuel) {
            return Some(format!("fuel {f} is above {}", caps.max_fuel));
        }
        if let Some(m) = self.memory_mb.filter(|m| *m > caps.max_memory_mb) {
            return Some(format!("memory_mb {m} is above {}", caps.max_memory_mb));
        }
        if let Some(t) = self.timeout_ms.filter(|t| *t > caps.max_timeout_ms) {
            return Some(format!("timeout_ms {t} is above {}", caps.max_timeout_ms));
        }
        None
    }
}

/// What a host allows WASI jobs: its defaults for limits a job leaves out, and
/// the most it grants any job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasiCaps {
    pub default_fuel: u64,
    pub default_memory_mb: u32,
    pub default_timeout_ms: u64,
    pub max_fuel: u64,
    pub max_memory_mb: u32,
    pub max_timeout_ms: u64,
}

impl WasiCaps {
    /// The limits a job gets on this host: its own, or the defaults, each
    /// capped at the maximum.
    pub fn apply(&self, limits: &WasiLimits) -> EffectiveLimits {
        EffectiveLimits {
            fuel: limits.fuel.unwrap_or(self.default_fuel).min(self.max_fuel),
            memory_mb: limits
                .memory_mb
                .unwrap_or(self.default_memory_mb)
                .min(self.max_memory_mb),
            timeout_ms: limits
                .timeout_ms
                .unwrap_or(self.default_timeout_ms)
                .min(self.max_timeout_ms),
        }
    }

    /// Checks that defaults are within maxima and every value is usable.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        if self.max_fuel == 0 || self.default_fuel == 0 || self.default_fuel > self.max_fuel {
            return invalid("fuel: the default must be at least 1 and at most the maximum");
        }
        if self.max_memory_mb == 0
            || self.max_memory_mb > MAX_WASI_MEMORY_MB
            || self.default_memory_mb == 0
            || self.default_memory_mb > self.max_memory_mb
        {
            return invalid(format!(
                "memory_mb: the maximum must be 1 to {MAX_WASI_MEMORY_MB} and the default at least 1 and at most the maximum"
            ));
        }
        if self.max_timeout_ms == 0
            || self.max_timeout_ms > MAX_TIMEOUT_MS
            || self.default_timeout_ms == 0
            || self.default_timeout_ms > self.max_timeout_ms
        {
            return invalid(format!(
                "timeout_ms: the maximum must be 1 to {MAX_TIMEOUT_MS} and the default at least 1 and at most the maximum"
            ));
        }
        Ok(())
    }
}

/// The limits a WASI job actually runs under on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveLimits {
    pub fuel: u64,
    pub memory_mb: u32,
    pub timeout_ms: u64,
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
    /// Fail the job if it waits in the queue longer than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u64>,
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
    /// Fail the job if it waits in the queue longer than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u64>,
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
    DEFAULT_SHELL_ATTEMPTS
}
fn default_openclaw_attempts() -> u32 {
    DEFAULT_OPENCLAW_ATTEMPTS
}
fn default_wasi_attempts() -> u32 {
    DEFAULT_WASI_ATTEMPTS
}
fn default_agent() -> String {
    DEFAULT_AGENT.to_string()
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
            JobSpec::Wasi(_) => "wasi",
        }
    }

    /// True for kinds that run as native processes on the host, which
    /// sandbox-only hosts never take.
    pub fn is_native(&self) -> bool {
        !matches!(self, JobSpec::Wasi(_))
    }

    /// The artifact the job runs, for kinds that run one.
    pub fn artifact(&self) -> Option<&Digest> {
        match self {
            JobSpec::Wasi(w) => Some(&w.artifact),
            JobSpec::Shell(_) | JobSpec::OpenclawRun(_) => None,
        }
    }

    pub fn max_attempts(&self) -> u32 {
        match self {
            JobSpec::Shell(s) => s.max_attempts,
            JobSpec::OpenclawRun(s) => s.max_attempts,
            JobSpec::Wasi(s) => s.max_attempts,
        }
    }

    /// How long the job may wait in the queue each time it is queued.
    pub fn queue_timeout_ms(&self) -> Option<u64> {
        match self {
            JobSpec::Shell(s) => s.queue_timeout_ms,
            JobSpec::OpenclawRun(s) => s.queue_timeout_ms,
            JobSpec::Wasi(s) => s.queue_timeout_ms,
        }
    }

    /// Every capability a host needs for this job: the kind's own plus any extra.
    pub fn required_capabilities(&self) -> Vec<String> {
        let (own, extra) = match self {
            JobSpec::Shell(s) => (CAP_SHELL, &s.requirements.capabilities),
            JobSpec::OpenclawRun(s) => (CAP_OPENCLAW, &s.requirements.capabilities),
            JobSpec::Wasi(s) => (CAP_WASI, &s.requirements.capabilities),
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
        validate_attempts(self.max_attempts())?;
        validate_queue_timeout(self.queue_timeout_ms())?;
        match self {
            JobSpec::Shell(s) => {
                validate_timeout(s.timeout_ms)?;
                validate_command(&s.command)?;
                validate_args(&s.args)?;
                validate_env(&s.env)?;
                validate_no_loader_variables(&s.env)?;
                validate_stdin(&s.stdin)?;
                validate_requirements(&s.requirements)
            }
            JobSpec::OpenclawRun(s) => {
                validate_timeout(s.timeout_ms)?;
                if s.message.trim().is_empty() {
                    return invalid("message must not be empty");
                }
                if s.message.len() > MAX_MESSAGE_BYTES {
                    return invalid(format!(
                        "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                        s.message.len()
                    ));
                }
                validate_option_value("agent", &s.agent)?;
                if let Some(model) = &s.model {
                    validate_option_value("model", model)?;
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
            // Loader variables are allowed here: a WASI job's environment is
            // a list of strings its guest reads, and no loader runs in the
            // sandbox to act on them.
            JobSpec::Wasi(s) => {
                if let Some(program) = &s.program {
                    validate_program_name(program)?;
                }
                validate_args(&s.args)?;
                validate_env(&s.env)?;
                validate_stdin(&s.stdin)?;
                validate_wasi_limits(&s.limits)?;
                validate_requirements(&s.requirements)
            }
        }
    }
}

/// A program name is what a file in a directory could be called: the guest
/// sees it as `argv[0]` and people see it in listings.
pub fn validate_program_name(name: &str) -> Result<(), InvalidSpec> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PROGRAM_NAME_BYTES
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(char::is_control);
    if !ok {
        return invalid(format!(
            "program must be a file name of 1 to {MAX_PROGRAM_NAME_BYTES} bytes without '/' \
             or control characters, not {name:?}"
        ));
    }
    Ok(())
}

fn validate_stdin(stdin: &str) -> Result<(), InvalidSpec> {
    if stdin.len() > MAX_STDIN_BYTES {
        return invalid(format!(
            "stdin is {} bytes; the limit is {MAX_STDIN_BYTES}",
            stdin.len()
        ));
    }
    Ok(())
}

pub(crate) fn validate_wasi_limits(limits: &WasiLimits) -> Result<(), InvalidSpec> {
    if limits.fuel == Some(0) {
        return invalid("limits.fuel must be at least 1");
    }
    if let Some(m) = limits.memory_mb
        && (m == 0 || m > MAX_WASI_MEMORY_MB)
    {
        return invalid(format!(
            "limits.memory_mb must be between 1 and {MAX_WASI_MEMORY_MB}, not {m}"
        ));
    }
    if let Some(t) = limits.timeout_ms {
        validate_timeout(t).map_err(|e| InvalidSpec(format!("limits.{}", e.0)))?;
    }
    Ok(())
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

pub(crate) fn validate_command(command: &str) -> Result<(), InvalidSpec> {
    if command.trim().is_empty() {
        return invalid("command must not be empty");
    }
    if command.len() > MAX_ARG_BYTES || command.contains('\0') {
        return invalid("command must be at most 64 KiB without NUL bytes");
    }
    Ok(())
}

pub(crate) fn validate_args(args: &[String]) -> Result<(), InvalidSpec> {
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

pub(crate) fn validate_env(env: &BTreeMap<String, String>) -> Result<(), InvalidSpec> {
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

fn validate_queue_timeout(queue_timeout_ms: Option<u64>) -> Result<(), InvalidSpec> {
    if let Some(t) = queue_timeout_ms
        && (t == 0 || t > MAX_QUEUE_TIMEOUT_MS)
    {
        return invalid(format!(
            "queue_timeout_ms must be between 1 and {MAX_QUEUE_TIMEOUT_MS} (7 days), not {t}"
        ));
    }
    Ok(())
}

/// True for a variable a dynamic loader acts on (see [`LOADER_VARIABLE_PREFIXES`]).
pub fn is_loader_variable(name: &str) -> bool {
    LOADER_VARIABLE_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Refuses loader variables in a native job's env, naming every one.
pub(crate) fn validate_no_loader_variables(
    env: &BTreeMap<String, String>,
) -> Result<(), InvalidSpec> {
    let named: Vec<&str> = env
        .keys()
        .map(String::as_str)
        .filter(|name| is_loader_variable(name))
        .collect();
    if named.is_empty() {
        return Ok(());
    }
    invalid(format!(
        "env may not set loader variables (LD_*, DYLD_*): {}; they would make the host's command load code of the job's choosing",
        named.join(", ")
    ))
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

/// A name passed to a command as the value of an option (`--agent NAME`):
/// one that began with `-` would be read as an option of its own.
fn validate_option_value(field: &str, value: &str) -> Result<(), InvalidSpec> {
    validate_word(field, value)?;
    if value.starts_with('-') {
        return invalid(format!(
            "{field} is a name and may not begin with '-', not {value:?}"
        ));
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

    /// "already …" as a sentence about a job says it: the answer to acting
    /// on a job that is past it ("job j-1 already succeeded").
    pub fn already(self) -> &'static str {
        match self {
            JobStatus::Queued => "is already queued",
            JobStatus::Running => "is already running",
            JobStatus::Succeeded => "already succeeded",
            JobStatus::Failed => "already failed",
            JobStatus::Cancelled => "was already cancelled",
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
    /// Why no live host can run the job, while it is queued and none can:
    /// such as "no live host offers capability gpu".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,
}

/// What running a job produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub exit_code: Option<i32>,
    /// The job's stdout as text, or base64 when `stdout_encoding` says so.
    pub stdout: String,
    pub stderr: String,
    /// How `stdout` carries the bytes: absent (UTF-8) unless they are not
    /// valid UTF-8, which JSON text cannot hold unaltered.
    #[serde(default, skip_serializing_if = "OutputEncoding::is_utf8")]
    pub stdout_encoding: OutputEncoding,
    #[serde(default, skip_serializing_if = "OutputEncoding::is_utf8")]
    pub stderr_encoding: OutputEncoding,
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
    /// Fuel a WASI job burned, also when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_consumed: Option<u64>,
    /// Where a WASI job's machine code came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<CodeSource>,
    /// The limits a WASI job ran under on its host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<EffectiveLimits>,
}

/// Where the machine code of a WASI job came from on its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeSource {
    /// Compiled from the artifact for this job.
    Compiled,
    /// Loaded from the host's on-disk cache of compiled code.
    DiskCache,
    /// Already loaded by an earlier job on the same host.
    Memory,
}

impl JobResult {
    /// A result that carries only an error sentence: nothing ran, or it was lost.
    pub fn error(message: impl Into<String>) -> Self {
        JobResult {
            error: Some(message.into()),
            ..JobResult::default()
        }
    }

    /// The bytes the job wrote to stdout (those kept), exactly.
    pub fn stdout_bytes(&self) -> Result<Cow<'_, [u8]>, OutputDecodeError> {
        self.stdout_encoding.decode("stdout", &self.stdout)
    }

    /// The bytes the job wrote to stderr (those kept), exactly.
    pub fn stderr_bytes(&self) -> Result<Cow<'_, [u8]>, OutputDecodeError> {
        self.stderr_encoding.decode("stderr", &self.stderr)
    }
}

/// How an output stream's bytes are carried in a JSON string.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputEncoding {
    /// The string is the output itself.
    #[default]
    Utf8,
    /// The output is not valid UTF-8; the string is its standard base64.
    Base64,
}

impl OutputEncoding {
    pub fn is_utf8(&self) -> bool {
        *self == OutputEncoding::Utf8
    }

    /// `bytes` as a JSON string can carry them unaltered: themselves when
    /// they are UTF-8, else their base64.
    pub fn encode(bytes: Vec<u8>) -> (String, OutputEncoding) {
        match String::from_utf8(bytes) {
            Ok(text) => (text, OutputEncoding::Utf8),
            Err(e) => (BASE64.encode(e.as_bytes()), OutputEncoding::Base64),
        }
    }

    /// The bytes `text` carries in this encoding.
    fn decode<'a>(
        self,
        stream: &'static str,
        text: &'a str,
    ) -> Result<Cow<'a, [u8]>, OutputDecodeError> {
        match self {
            OutputEncoding::Utf8 => Ok(Cow::Borrowed(text.as_bytes())),
            OutputEncoding::Base64 => BASE64
                .decode(text)
                .map(Cow::Owned)
                .map_err(|e| OutputDecodeError(format!("{stream} is not valid base64: {e}"))),
        }
    }
}

/// A result whose base64 output does not decode: it was not written by a host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OutputDecodeError(String);

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
    fn wasi_spec_parses_and_checks_limits() {
        let digest = format!("sha256:{}", "0".repeat(64));
        let spec: JobSpec = serde_json::from_str(&format!(
            r#"{{"kind":"wasi","artifact":"{digest}","args":["a"],"limits":{{"fuel":10}}}}"#
        ))
        .unwrap();
        spec.validate().unwrap();
        assert!(!spec.is_native());
        assert_eq!(spec.required_capabilities(), vec![CAP_WASI.to_string()]);
        assert_eq!(spec.artifact().unwrap().as_str(), digest);
        let bad: JobSpec = serde_json::from_str(&format!(
            r#"{{"kind":"wasi","artifact":"{digest}","limits":{{"memory_mb":0}}}}"#
        ))
        .unwrap();
        assert!(bad.validate().unwrap_err().0.contains("memory_mb"));
        let err = serde_json::from_str::<JobSpec>(r#"{"kind":"wasi","artifact":"sha256:zz"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("digest"), "{err}");
    }

    #[test]
    fn host_caps_default_and_cap_limits() {
        let caps = WasiCaps {
            default_fuel: 100,
            default_memory_mb: 16,
            default_timeout_ms: 1000,
            max_fuel: 1000,
            max_memory_mb: 64,
            max_timeout_ms: 5000,
        };
        caps.validate().unwrap();
        let asked = WasiLimits {
            fuel: Some(5000),
            memory_mb: None,
            timeout_ms: Some(10),
        };
        assert!(!asked.within(&caps));
        assert!(asked.excess(&caps).unwrap().contains("fuel 5000"));
        let got = caps.apply(&asked);
        assert_eq!((got.fuel, got.memory_mb, got.timeout_ms), (1000, 16, 10));
    }

    #[test]
    fn native_env_may_not_set_loader_variables() {
        let err = serde_json::from_str::<JobSpec>(
            r#"{"kind":"shell","command":"echo","env":{"LD_PRELOAD":"/tmp/x.so","DYLD_INSERT_LIBRARIES":"y","OK":"1"}}"#,
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(
            err.0.contains("DYLD_INSERT_LIBRARIES, LD_PRELOAD"),
            "every one is named: {err}"
        );
        let lowercase: JobSpec =
            serde_json::from_str(r#"{"kind":"shell","command":"echo","env":{"ld_preload":"x"}}"#)
                .unwrap();
        lowercase
            .validate()
            .expect("the loader reads upper-case names only");
        let digest = format!("sha256:{}", "0".repeat(64));
        let wasi: JobSpec = serde_json::from_str(&format!(
            r#"{{"kind":"wasi","artifact":"{digest}","env":{{"LD_PRELOAD":"x"}}}}"#
        ))
        .unwrap();
        wasi.validate()
            .expect("no loader runs in the sandbox to act on it");
    }

    #[test]
    fn openclaw_names_may_not_look_like_options() {
        for field in ["agent", "model"] {
            let spec: JobSpec = serde_json::from_value(serde_json::json!({
                "kind": "openclaw-run", "message": "hi", field: "-x"
            }))
            .unwrap();
            let err = spec.validate().unwrap_err();
            assert!(err.0.starts_with(field) && err.0.contains("'-'"), "{err}");
        }
        let ok: JobSpec = serde_json::from_str(
            r#"{"kind":"openclaw-run","message":"hi","agent":"ops-1","model":"a/b-c"}"#,
        )
        .unwrap();
        ok.validate().unwrap();
    }

    #[test]
    fn queue_timeout_is_bounded() {
        let spec = |t: u64| -> JobSpec {
            serde_json::from_str(&format!(
                r#"{{"kind":"shell","command":"echo","queue_timeout_ms":{t}}}"#
            ))
            .unwrap()
        };
        assert_eq!(spec(5).queue_timeout_ms(), Some(5));
        spec(MAX_QUEUE_TIMEOUT_MS).validate().unwrap();
        for bad in [0, MAX_QUEUE_TIMEOUT_MS + 1] {
            let err = spec(bad).validate().unwrap_err();
            assert!(err.0.contains("queue_timeout_ms"), "{err}");
        }
        let none: JobSpec = serde_json::from_str(r#"{"kind":"shell","command":"echo"}"#).unwrap();
        let text = serde_json::to_string(&none).unwrap();
        assert!(!text.contains("queue_timeout_ms"), "{text}");
    }

    #[test]
    fn output_that_is_not_utf8_travels_as_base64() {
        let (text, encoding) = OutputEncoding::encode(b"plain\n".to_vec());
        assert_eq!((text.as_str(), encoding), ("plain\n", OutputEncoding::Utf8));
        let (stdout, stdout_encoding) = OutputEncoding::encode(vec![0xff, 0xfe]);
        let result = JobResult {
            stdout,
            stdout_encoding,
            stderr: text,
            ..JobResult::default()
        };
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["stdout"], "//4=");
        assert_eq!(json["stdout_encoding"], "base64");
        assert!(
            json.get("stderr_encoding").is_none(),
            "UTF-8 is the default"
        );
        let back: JobResult = serde_json::from_value(json).unwrap();
        assert_eq!(back.stdout_bytes().unwrap().as_ref(), [0xff, 0xfe]);
        assert_eq!(back.stderr_bytes().unwrap().as_ref(), b"plain\n");
        let old: JobResult = serde_json::from_str(
            r#"{"exit_code":0,"stdout":"hi","stderr":"","stdout_truncated":false,
                "stderr_truncated":false,"duration_ms":1,"error":null}"#,
        )
        .unwrap();
        assert_eq!(
            old.stdout_bytes().unwrap().as_ref(),
            b"hi",
            "records from before"
        );
        let forged = JobResult {
            stdout: "not base64!".into(),
            stdout_encoding: OutputEncoding::Base64,
            ..JobResult::default()
        };
        assert!(
            forged
                .stdout_bytes()
                .unwrap_err()
                .to_string()
                .contains("stdout")
        );
    }

    #[test]
    fn program_names_are_plain_file_names() {
        let digest = format!("sha256:{}", "0".repeat(64));
        let spec = |program: &str| -> JobSpec {
            serde_json::from_value(serde_json::json!({
                "kind": "wasi", "artifact": digest, "program": program
            }))
            .unwrap()
        };
        for good in [
            "hello-job.wasm",
            "a b.wasm",
            "é.wasm",
            &"x".repeat(MAX_PROGRAM_NAME_BYTES),
        ] {
            spec(good)
                .validate()
                .unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        for bad in [
            "",
            ".",
            "..",
            "dir/x.wasm",
            "/x",
            "a\nb",
            "a\u{1b}[2J",
            &"x".repeat(256),
        ] {
            let err = spec(bad).validate().unwrap_err();
            assert!(err.0.starts_with("program must be"), "{bad:?}: {err}");
        }
        let JobSpec::Wasi(unnamed) =
            serde_json::from_value(serde_json::json!({"kind": "wasi", "artifact": digest}))
                .unwrap()
        else {
            panic!("not wasi")
        };
        assert_eq!(unnamed.program_name(), DEFAULT_PROGRAM_NAME);
        let text = serde_json::to_string(&unnamed).unwrap();
        assert!(!text.contains("program"), "absent when unnamed: {text}");
    }

    #[test]
    fn openclaw_spec_checks_thinking() {
        let spec: JobSpec =
            serde_json::from_str(r#"{"kind":"openclaw-run","message":"hi","thinking":"loud"}"#)
                .unwrap();
        assert!(spec.validate().unwrap_err().0.contains("thinking"));
    }
}
