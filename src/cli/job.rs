//! `skyclaw job`: submit shell, openclaw and WASI jobs, list and inspect them,
//! wait for them to end, cancel them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use clap::builder::PossibleValuesParser;
use skyclaw_api::apikeys::{Scope, Whoami};
use skyclaw_api::artifacts::Digest;
use skyclaw_api::jobs::{
    CodeSource, DEFAULT_AGENT, DEFAULT_OPENCLAW_ATTEMPTS, DEFAULT_OPENCLAW_TIMEOUT_MS,
    DEFAULT_PAGE, DEFAULT_SHELL_ATTEMPTS, DEFAULT_SHELL_TIMEOUT_MS, DEFAULT_WASI_ATTEMPTS,
    DEFAULT_WASI_MAX_FUEL, DEFAULT_WASI_MAX_MEMORY_MB, DEFAULT_WASI_MAX_TIMEOUT_MS, Job, JobList,
    JobQuery, JobResult, JobSpec, JobStatus, MAX_ATTEMPTS_LIMIT, MAX_PAGE, MAX_QUEUE_TIMEOUT_MS,
    MAX_TIMEOUT_MS, MAX_WASI_MEMORY_MB, OpenclawSpec, OutputEncoding, Requirements, ShellSpec,
    THINKING_LEVELS, WasiLimits, WasiSpec, validate_program_name,
};
use skyclaw_api::{Client, ErrorCode, Millis, now_ms};
use tokio::time::Instant;

use super::output::{self, Layout, NONE};
use super::{EXIT_JOB_FAILED, between, positive_u64};

/// Longest single long-poll while waiting: short enough that a dead connection
/// is noticed, long enough to cost nothing.
const WAIT_POLL: Duration = Duration::from_secs(30);
/// Consecutive failed polls tolerated while waiting (a coordinator restarting).
const WAIT_RETRIES: u32 = 5;
/// Pause before polling again after a failed poll.
const WAIT_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Characters of a job's command or message shown in tables.
const SUMMARY_WIDTH: usize = 48;
/// Characters of a failure or waiting reason shown in tables.
const REASON_WIDTH: usize = 48;
/// Lines of each output stream `job get` shows: the end, where errors are;
/// `job logs` prints it all.
const GET_OUTPUT_LINES: usize = 20;
/// Bytes of each output stream `job get` shows at most, for output with
/// long lines or none.
const GET_OUTPUT_BYTES: usize = 4096;
/// Hex digits of a digest shown for a WASI program that has no name.
const DIGEST_PREFIX_HEX: usize = 12;

#[derive(Debug, clap::Args)]
pub struct JobArgs {
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Run an allowlisted command on some host: `skyclaw job shell [--wait] -- CMD ARGS...`.
    ///
    /// Prints the job id; with --wait, prints the command's output instead and
    /// exits 0 if the job succeeded, 1 if it failed or was cancelled.
    Shell(ShellArgs),
    /// Run a turn of an OpenClaw agent on some host that has OpenClaw.
    Openclaw(OpenclawArgs),
    /// Run a WASI program in a sandbox on some host:
    /// `skyclaw job wasi FILE.wasm|sha256:HEX [--wait] -- ARGS...`.
    ///
    /// The program is a WASI preview 2 command component or a preview 1 module.
    /// Given a file, it is pushed first (only if the coordinators lack it).
    /// Limits left out take the running host's defaults; limits above a host's
    /// maxima are capped there, or refused when no live host grants them.
    Wasi(WasiArgs),
    /// Show one job: what it runs, where, how it ended and why, and the end
    /// of its output (`job logs` prints all of it).
    Get {
        /// The job's id.
        id: String,
    },
    /// Print a job's output as the job wrote it: its stdout on stdout, its
    /// stderr on stderr, byte for byte. Output is reported when the job ends;
    /// --follow waits for that.
    Logs(LogsArgs),
    /// List jobs, oldest first, one page at a time unless --all.
    Ls(LsArgs),
    /// Wait for a job to end and print its output; exit 0 if it succeeded, 1 if
    /// it failed or was cancelled, 2 on errors or when --timeout-ms runs out.
    Wait(WaitArgs),
    /// Cancel a job that has not ended.
    Cancel {
        /// The job's id.
        id: String,
    },
}

#[derive(Debug, clap::Args)]
struct ShellArgs {
    /// Kill the command (its whole process group) after this many milliseconds.
    #[arg(long, env = "SKYCLAW_JOB_TIMEOUT_MS", default_value_t = DEFAULT_SHELL_TIMEOUT_MS, value_parser = between(1, MAX_TIMEOUT_MS), value_name = "N")]
    timeout_ms: u64,
    /// Set an environment variable for the command (repeatable); jobs otherwise
    /// start with a clean environment.
    #[arg(long = "env", env = "SKYCLAW_JOB_ENV", value_name = "K=V", value_parser = parse_env_pair)]
    env: Vec<(String, String)>,
    /// Text given to the command on standard input.
    #[arg(long, env = "SKYCLAW_JOB_STDIN", value_name = "TEXT")]
    stdin: Option<String>,
    /// How many hosts may try the job when one is lost while running it.
    #[arg(long, env = "SKYCLAW_JOB_MAX_ATTEMPTS", default_value_t = DEFAULT_SHELL_ATTEMPTS, value_parser = between(1, MAX_ATTEMPTS_LIMIT), value_name = "N")]
    max_attempts: u32,
    #[command(flatten)]
    submit: SubmitArgs,
    /// The command (on the host's allowlist) and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct OpenclawArgs {
    /// What to tell the agent.
    #[arg(long, env = "SKYCLAW_OPENCLAW_MESSAGE", value_name = "TEXT")]
    message: String,
    /// The agent to run.
    #[arg(long, env = "SKYCLAW_OPENCLAW_AGENT", default_value = DEFAULT_AGENT, value_name = "NAME")]
    agent: String,
    /// How much the agent thinks.
    #[arg(
        long,
        env = "SKYCLAW_OPENCLAW_THINKING",
        value_parser = PossibleValuesParser::new(THINKING_LEVELS.iter().copied()),
        value_name = "LEVEL"
    )]
    thinking: Option<String>,
    /// The model to use instead of the agent's default.
    #[arg(long, env = "SKYCLAW_OPENCLAW_MODEL", value_name = "MODEL")]
    model: Option<String>,
    /// Run the agent embedded on the host (`openclaw agent --local`).
    #[arg(long, env = "SKYCLAW_OPENCLAW_LOCAL")]
    local: bool,
    /// Stop the agent after this many milliseconds.
    #[arg(long, env = "SKYCLAW_JOB_TIMEOUT_MS", default_value_t = DEFAULT_OPENCLAW_TIMEOUT_MS, value_parser = between(1, MAX_TIMEOUT_MS), value_name = "N")]
    timeout_ms: u64,
    /// How many hosts may try the job when one is lost while running it.
    #[arg(long, env = "SKYCLAW_JOB_MAX_ATTEMPTS", default_value_t = DEFAULT_OPENCLAW_ATTEMPTS, value_parser = between(1, MAX_ATTEMPTS_LIMIT), value_name = "N")]
    max_attempts: u32,
    #[command(flatten)]
    submit: SubmitArgs,
}

#[derive(Debug, clap::Args)]
struct WasiArgs {
    #[arg(long, env = "SKYCLAW_WASI_FUEL", value_parser = positive_u64(), value_name = "N", help = limit_help(
        "Fuel the program may burn (about one unit per wasm instruction)",
        &DEFAULT_WASI_MAX_FUEL.to_string(),
        "--wasi-max-fuel",
    ))]
    fuel: Option<u64>,
    #[arg(long, env = "SKYCLAW_WASI_MEMORY_MB", value_parser = between(1, MAX_WASI_MEMORY_MB), value_name = "MIB", help = limit_help(
        &format!("Largest size, in MiB, a linear memory of the program may grow to (1 to {MAX_WASI_MEMORY_MB})"),
        &format!("{DEFAULT_WASI_MAX_MEMORY_MB} MiB"),
        "--wasi-max-memory-mb",
    ))]
    memory_mb: Option<u32>,
    #[arg(long, env = "SKYCLAW_JOB_TIMEOUT_MS", value_parser = between(1, MAX_TIMEOUT_MS), value_name = "MS", help = limit_help(
        "Stop the program after this many milliseconds",
        &format!("{DEFAULT_WASI_MAX_TIMEOUT_MS} ms"),
        "--wasi-max-timeout-ms",
    ))]
    timeout_ms: Option<u64>,
    /// Set an environment variable for the program (repeatable); it sees no other.
    #[arg(long = "env", env = "SKYCLAW_JOB_ENV", value_name = "K=V", value_parser = parse_env_pair)]
    env: Vec<(String, String)>,
    /// Text given to the program on standard input.
    #[arg(long, env = "SKYCLAW_JOB_STDIN", value_name = "TEXT")]
    stdin: Option<String>,
    /// How many hosts may try the job when one is lost while running it.
    #[arg(long, env = "SKYCLAW_JOB_MAX_ATTEMPTS", default_value_t = DEFAULT_WASI_ATTEMPTS, value_parser = between(1, MAX_ATTEMPTS_LIMIT), value_name = "N")]
    max_attempts: u32,
    #[command(flatten)]
    submit: SubmitArgs,
    /// A `.wasm` file, or the digest (sha256:...) of an artifact already pushed.
    #[arg(value_name = "FILE.wasm|sha256:HEX")]
    program: String,
    /// Arguments for the program (after `--`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<String>,
}

/// What every submission takes besides its spec.
#[derive(Debug, clap::Args)]
struct SubmitArgs {
    /// A capability the host must offer beyond what the job's kind needs
    /// (repeatable, or comma-separated).
    #[arg(
        long = "require",
        env = "SKYCLAW_JOB_REQUIRE",
        value_delimiter = ',',
        value_name = "CAP"
    )]
    require: Vec<String>,
    /// Fail the job if no host has taken it this many milliseconds after it
    /// was queued (again, after a lost host) [default: wait as long as it takes].
    #[arg(
        long,
        env = "SKYCLAW_JOB_QUEUE_TIMEOUT_MS",
        value_parser = between(1, MAX_QUEUE_TIMEOUT_MS),
        value_name = "N"
    )]
    queue_timeout_ms: Option<u64>,
    /// Names this submission: submitting again with the same key returns the
    /// first job instead of starting another.
    #[arg(long, env = "SKYCLAW_IDEMPOTENCY_KEY", value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Wait for the job to end, print its output as the command would, and exit
    /// 0 if it succeeded, 1 if it failed or was cancelled. While no live host
    /// can run it, says why on stderr (`waiting: …`), once.
    #[arg(long, env = "SKYCLAW_WAIT")]
    wait: bool,
}

#[derive(Debug, clap::Args)]
struct LsArgs {
    /// Only jobs with this status: queued, running, succeeded, failed or cancelled.
    #[arg(long, env = "SKYCLAW_JOB_STATUS", value_name = "STATUS")]
    status: Option<JobStatus>,
    #[arg(
        long,
        env = "SKYCLAW_JOB_LIMIT",
        value_parser = between(1, MAX_PAGE),
        value_name = "N",
        help = format!("Jobs per page [default: the coordinator's, {DEFAULT_PAGE}]")
    )]
    limit: Option<u32>,
    /// Start after this job id (the last one of the previous page).
    #[arg(long, env = "SKYCLAW_JOB_AFTER", value_name = "ID")]
    after: Option<String>,
    /// Follow the pages to the end.
    #[arg(long, env = "SKYCLAW_JOB_ALL")]
    all: bool,
}

#[derive(Debug, clap::Args)]
struct LogsArgs {
    /// The job's id.
    id: String,
    /// Wait for the job to end first, when it has not.
    #[arg(long, short, env = "SKYCLAW_FOLLOW")]
    follow: bool,
}

/// The help of a WASI limit: what it bounds, and what hosts grant.
fn limit_help(what: &str, default_max: &str, host_flag: &str) -> String {
    format!(
        "{what}. Hosts grant at most their {host_flag} ({default_max} unless their owner \
         set it); a job asking more than every live host grants is refused [default: the \
         host's]"
    )
}

#[derive(Debug, clap::Args)]
struct WaitArgs {
    /// The job's id.
    id: String,
    /// Give up after this many milliseconds [default: wait as long as it takes].
    #[arg(long, env = "SKYCLAW_WAIT_TIMEOUT_MS", value_name = "N")]
    timeout_ms: Option<u64>,
}

pub async fn run(args: JobArgs, client: &Client, json: bool) -> Result<ExitCode> {
    match args.command {
        JobCommand::Shell(shell) => {
            let spec = shell.spec();
            spec.validate().context("invalid job")?;
            check_scopes(client, &shell.submit, &[]).await?;
            submit(client, &spec, &shell.submit, json).await
        }
        JobCommand::Openclaw(openclaw) => {
            let spec = openclaw.spec();
            spec.validate().context("invalid job")?;
            check_scopes(client, &openclaw.submit, &[]).await?;
            submit(client, &spec, &openclaw.submit, json).await
        }
        JobCommand::Wasi(wasi) => {
            let file = (!wasi.program.starts_with("sha256:")).then_some(wasi.program.as_str());
            let push = file.map(|f| (Scope::ArtifactsPush, format!("to push {f}")));
            // Checked before the upload, which would be wasted otherwise.
            check_scopes(client, &wasi.submit, push.as_slice()).await?;
            let (artifact, program) = resolve_program(client, &wasi.program).await?;
            let spec = wasi.spec(artifact, program);
            spec.validate().context("invalid job")?;
            submit(client, &spec, &wasi.submit, json).await
        }
        JobCommand::Get { id } => {
            let job = client.get_job(&id).await?;
            if json {
                output::print_json(&job)?;
            } else {
                let hosts = host_names(client).await;
                output::out(&details(&job, &hosts, now_ms())?)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Logs(logs) => {
            let job = client.get_job(&logs.id).await?;
            let job = if logs.follow {
                wait_until_ended(client, job, None).await?
            } else if !job.status.is_terminal() {
                bail!(
                    "job {} is {}: its output is reported when it ends (add --follow to wait \
                     for that)",
                    job.id,
                    job.status
                );
            } else {
                job
            };
            if json {
                output::print_json(&job)?;
            } else {
                print_streams(&job)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Ls(ls) => list(client, ls, json).await,
        JobCommand::Wait(wait) => {
            let timeout = wait.timeout_ms.map(Duration::from_millis);
            let job = client.get_job(&wait.id).await?;
            let job = wait_until_ended(client, job, timeout).await?;
            report_end(&job, json)
        }
        JobCommand::Cancel { id } => {
            let job = client.cancel_job(&id).await?;
            if json {
                output::print_json(&job)?;
            } else {
                output::out(&format!(
                    "cancelled job {} (it was {})\n",
                    job.id,
                    was(&job)
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What a job was doing when it was cancelled, from the reason the
/// coordinator recorded ("cancelled while running").
fn was(job: &Job) -> String {
    job.result
        .as_ref()
        .and_then(|r| r.error.as_deref())
        .and_then(|e| e.strip_prefix("cancelled while "))
        .map_or_else(
            || "not ended".to_string(),
            |status| output::escape(status, Layout::Line),
        )
}

impl ShellArgs {
    fn spec(&self) -> JobSpec {
        let (command, args) = self.command.split_first().expect("clap requires a command");
        JobSpec::Shell(ShellSpec {
            command: command.clone(),
            args: args.to_vec(),
            env: self.env.iter().cloned().collect::<BTreeMap<_, _>>(),
            stdin: self.stdin.clone().unwrap_or_default(),
            timeout_ms: self.timeout_ms,
            max_attempts: self.max_attempts,
            requirements: self.submit.requirements(),
            queue_timeout_ms: self.submit.queue_timeout_ms,
        })
    }
}

impl OpenclawArgs {
    fn spec(&self) -> JobSpec {
        JobSpec::OpenclawRun(OpenclawSpec {
            message: self.message.clone(),
            agent: self.agent.clone(),
            thinking: self.thinking.clone(),
            model: self.model.clone(),
            local: self.local,
            timeout_ms: self.timeout_ms,
            max_attempts: self.max_attempts,
            requirements: self.submit.requirements(),
            queue_timeout_ms: self.submit.queue_timeout_ms,
        })
    }
}

impl WasiArgs {
    fn spec(&self, artifact: Digest, program: Option<String>) -> JobSpec {
        JobSpec::Wasi(WasiSpec {
            artifact,
            program,
            args: self.args.clone(),
            env: self.env.iter().cloned().collect::<BTreeMap<_, _>>(),
            stdin: self.stdin.clone().unwrap_or_default(),
            limits: WasiLimits {
                fuel: self.fuel,
                memory_mb: self.memory_mb,
                timeout_ms: self.timeout_ms,
            },
            max_attempts: self.max_attempts,
            requirements: self.submit.requirements(),
            queue_timeout_ms: self.submit.queue_timeout_ms,
        })
    }
}

/// The artifact a `job wasi` names, and the program's name: a digest as
/// given (the program then has no name), or a file's digest after pushing the
/// file (unless the coordinators already hold it), named as the file is.
async fn resolve_program(client: &Client, program: &str) -> Result<(Digest, Option<String>)> {
    if program.starts_with("sha256:") {
        let digest = program.parse::<Digest>().map_err(anyhow::Error::msg)?;
        return Ok((digest, None));
    }
    let path = Path::new(program);
    if !path.is_file() {
        bail!("{program} is neither a file nor an artifact digest (sha256:...)");
    }
    let info = super::artifact::push_if_missing(client, path).await?;
    Ok((info.digest, file_name(path)))
}

/// A file's name as a job's program name, when it is one (a name with
/// control characters, say, is left out: the program is then `main.wasm`).
fn file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    match validate_program_name(name) {
        Ok(()) => Some(name.to_string()),
        Err(e) => {
            tracing::warn!(error = %e, "the program goes by the default name");
            None
        }
    }
}

impl SubmitArgs {
    fn requirements(&self) -> Requirements {
        Requirements {
            capabilities: self
                .require
                .iter()
                .filter(|c| !c.is_empty())
                .cloned()
                .collect(),
        }
    }
}

fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, not {text:?}")),
    }
}

/// Submits a job its caller has validated (a clear early error), and either
/// prints the job id or waits for the job and reports how it ended.
async fn submit(
    client: &Client,
    spec: &JobSpec,
    args: &SubmitArgs,
    json: bool,
) -> Result<ExitCode> {
    let job = client
        .submit_job(spec, args.idempotency_key.as_deref())
        .await?;
    if !args.wait {
        if json {
            output::print_json(&job)?;
        } else {
            output::out(&format!("{}\n", job.id))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    tracing::info!(job = %job.id, "submitted, waiting for it to end");
    let job = wait_until_ended(client, job, None).await?;
    report_end(&job, json)
}

/// Refuses, before anything is uploaded or submitted, what the caller's API
/// key could not see through: a job it may not submit, one it could not read
/// back to wait on, a program it may not push (`needs`, each with why). The
/// token may do everything; a coordinator too old to answer `whoami` judges
/// each request by itself.
async fn check_scopes(client: &Client, args: &SubmitArgs, needs: &[(Scope, String)]) -> Result<()> {
    if !client.uses_api_key() {
        return Ok(());
    }
    let key = match client.whoami().await {
        Ok(Whoami::ApiKey { key }) => key,
        Ok(Whoami::Token) => return Ok(()),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => return Ok(()),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot read the API key's scopes")),
    };
    let mut wanted = vec![(Scope::JobsSubmit, "to submit the job".to_string())];
    if args.wait {
        wanted.push((
            Scope::JobsRead,
            "for --wait to read the job back".to_string(),
        ));
    }
    wanted.extend(needs.iter().cloned());
    let wanted: Vec<(Scope, &str)> = wanted.iter().map(|(s, why)| (*s, why.as_str())).collect();
    let Some((missing, has)) = super::apikey::lacking(&key, &wanted) else {
        return Ok(());
    };
    bail!(
        "API key {} ({}) lacks {missing}; it has {has}. Nothing was submitted: use a key with \
         those scopes (skyclaw apikey create --scope …){}",
        key.id,
        output::escape(&key.name, Layout::Line),
        if args.wait {
            ", or leave out --wait"
        } else {
            ""
        }
    )
}

/// Long-polls until the job (as last seen: `job`) is terminal or `timeout`
/// has passed, riding out a few failed polls (a coordinator restarting or
/// failing over). Says on stderr why the job waits, once per reason.
async fn wait_until_ended(client: &Client, job: Job, timeout: Option<Duration>) -> Result<Job> {
    let mut said = None;
    say_why_waiting(&job, &mut said);
    if job.status.is_terminal() {
        return Ok(job);
    }
    let id = job.id.as_str();
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut failures = 0;
    loop {
        let poll = match deadline {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(WAIT_POLL),
            None => WAIT_POLL,
        };
        match client.wait_job_once(id, poll).await {
            Ok(job) if job.status.is_terminal() => return Ok(job),
            Ok(job) => {
                failures = 0;
                say_why_waiting(&job, &mut said);
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    bail!("job {id} is still {} after the wait timeout", job.status);
                }
            }
            Err(e) if e.is_transient() && failures < WAIT_RETRIES => {
                failures += 1;
                tracing::warn!(job = %id, error = %e, "waiting for the job failed; retrying");
                tokio::time::sleep(WAIT_RETRY_PAUSE).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("waiting for job {id}"))),
        }
    }
}

/// `waiting: <reason>` on stderr when the job waits for a reason not said yet.
fn say_why_waiting(job: &Job, said: &mut Option<String>) {
    if let Some(reason) = &job.waiting_reason
        && said.as_ref() != Some(reason)
    {
        eprintln!("waiting: {}", output::escape(reason, Layout::Line));
        *said = Some(reason.clone());
    }
}

/// Prints how an ended job went (its output, or the JSON) and picks the exit code.
fn report_end(job: &Job, json: bool) -> Result<ExitCode> {
    if json {
        output::print_json(job)?;
    } else {
        print_job_output(job)?;
    }
    Ok(match job.status {
        JobStatus::Succeeded => ExitCode::SUCCESS,
        _ => ExitCode::from(EXIT_JOB_FAILED),
    })
}

/// The job's streams (see [`print_streams`]), then on stderr why it did not
/// succeed, if it did not.
fn print_job_output(job: &Job) -> Result<()> {
    print_streams(job)?;
    match job.status {
        JobStatus::Failed => eprintln!(
            "error: job {} failed: {}",
            job.id,
            output::escape(failure_reason(job), Layout::Block)
        ),
        JobStatus::Cancelled => eprintln!("error: job {} was cancelled", job.id),
        _ => {}
    }
    Ok(())
}

/// The job's stdout on stdout and stderr on stderr, byte for byte, as if the
/// command had run here (they are the job's data, for scripts to read), then
/// a line on stderr if output was cut. That line is skyclaw's own.
fn print_streams(job: &Job) -> Result<()> {
    let Some(result) = &job.result else {
        return Ok(());
    };
    output::out_bytes(&result.stdout_bytes()?)?;
    output::err_bytes(&result.stderr_bytes()?)?;
    if result.stdout_truncated {
        eprintln!(
            "skyclaw: job {} stdout was truncated ({} bytes dropped)",
            job.id, result.stdout_dropped_bytes
        );
    }
    if result.stderr_truncated {
        eprintln!(
            "skyclaw: job {} stderr was truncated ({} bytes dropped)",
            job.id, result.stderr_dropped_bytes
        );
    }
    Ok(())
}

/// Why a job failed or was cancelled, as a sentence.
fn failure_reason(job: &Job) -> String {
    let Some(result) = &job.result else {
        return "no result was reported".to_string();
    };
    match (&result.error, result.exit_code) {
        (Some(error), _) => error.clone(),
        (None, Some(code)) => format!("exited with code {code}"),
        (None, None) => "no reason was reported".to_string(),
    }
}

/// Why a job is where it is, when that needs saying: why it failed or was
/// cancelled, or why it waits.
fn reason(job: &Job) -> Option<String> {
    match job.status {
        JobStatus::Failed | JobStatus::Cancelled => Some(failure_reason(job)),
        JobStatus::Queued => job.waiting_reason.clone(),
        JobStatus::Running | JobStatus::Succeeded => None,
    }
}

/// Host names by host id, to show names rather than ids; empty when the
/// caller may not list hosts (an API key) or the list cannot be read, and
/// ids are shown instead.
async fn host_names(client: &Client) -> HashMap<String, String> {
    match client.list_hosts().await {
        Ok(list) => list.hosts.into_iter().map(|h| (h.id, h.name)).collect(),
        Err(e) => {
            tracing::debug!(error = %e, "cannot list hosts; showing their ids");
            HashMap::new()
        }
    }
}

/// The host a job ran (or runs) on: its name when known, else its id.
fn host_cell(job: &Job, hosts: &HashMap<String, String>) -> String {
    match &job.host_id {
        Some(id) => hosts.get(id).unwrap_or(id).clone(),
        None => NONE.to_string(),
    }
}

/// One job as `job get` shows it: what it runs and where, how it ended and
/// why, its limits, and the end of its output, every field escaped.
fn details(job: &Job, hosts: &HashMap<String, String>, now: Millis) -> Result<String> {
    let mut fields: Vec<(&str, String)> =
        vec![("id", job.id.clone()), ("status", job.status.to_string())];
    if let Some(reason) = reason(job) {
        let label = if job.status == JobStatus::Queued {
            "waiting"
        } else {
            "reason"
        };
        fields.push((label, reason));
    }
    fields.push(("kind", job.spec.kind().to_string()));
    fields.push(match &job.spec {
        JobSpec::OpenclawRun(openclaw) => ("message", openclaw.message.clone()),
        spec => ("command", command_line(spec)),
    });
    if let JobSpec::Wasi(wasi) = &job.spec {
        fields.push(("artifact", wasi.artifact.to_string()));
    }
    if let Some(id) = &job.host_id {
        fields.push(match hosts.get(id) {
            Some(name) => ("host", format!("{name} ({id})")),
            None => ("host", id.clone()),
        });
    }
    fields.push((
        "attempts",
        format!("{}/{}", job.attempts, job.spec.max_attempts()),
    ));
    fields.push(("submitted", ago(now, job.created_at)));
    if job.status.is_terminal() {
        fields.push(("ended", ago(now, job.updated_at)));
    }
    let Some(result) = &job.result else {
        return Ok(output::fields(&fields));
    };
    if let Some(code) = result.exit_code {
        fields.push(("exit code", code.to_string()));
    }
    // A result the coordinator made (a cancel, a lost host) ran nothing here.
    if result.exit_code.is_some() || result.duration_ms > 0 {
        fields.push(("ran", format!("{} ms", result.duration_ms)));
    }
    if let Some(limits) = &result.limits {
        fields.push((
            "limits",
            format!(
                "fuel {}, memory {} MiB, timeout {} ms",
                limits.fuel, limits.memory_mb, limits.timeout_ms
            ),
        ));
    }
    if let Some(fuel) = result.fuel_consumed {
        fields.push(("fuel used", fuel.to_string()));
    }
    if let Some(code) = result.code {
        let source = match code {
            CodeSource::Compiled => "compiled for this job",
            CodeSource::DiskCache => "loaded from the host's compiled-code cache",
            CodeSource::Memory => "already loaded on the host",
        };
        fields.push(("code", source.to_string()));
    }
    let mut text = output::fields(&fields);
    output_section(
        &mut text,
        job,
        "stdout",
        &result.stdout_bytes()?,
        result,
        Stream::Stdout,
    );
    output_section(
        &mut text,
        job,
        "stderr",
        &result.stderr_bytes()?,
        result,
        Stream::Stderr,
    );
    Ok(text)
}

fn ago(now: Millis, then: Millis) -> String {
    format!("{} ago", output::age(now.saturating_sub(then)))
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// A stream of a job's output as `job get` shows it: its last lines,
/// escaped, marked when it is not UTF-8, with what was left out and where to
/// read it all; nothing when the job wrote nothing there.
fn output_section(
    text: &mut String,
    job: &Job,
    name: &str,
    bytes: &[u8],
    result: &JobResult,
    stream: Stream,
) {
    let (encoding, dropped) = match stream {
        Stream::Stdout => (result.stdout_encoding, result.stdout_dropped_bytes),
        Stream::Stderr => (result.stderr_encoding, result.stderr_dropped_bytes),
    };
    if bytes.is_empty() && dropped == 0 {
        return;
    }
    let mark = match encoding {
        OutputEncoding::Utf8 => String::new(),
        OutputEncoding::Base64 => {
            " (not UTF-8: base64 in --json, other bytes shown as \\xNN)".to_string()
        }
    };
    let (shown, cut) = output::tail(bytes, GET_OUTPUT_LINES, GET_OUTPUT_BYTES);
    let cut_note = if cut {
        format!(
            " (its last {} of {} bytes; all of it: skyclaw job logs {})",
            shown.len(),
            bytes.len(),
            job.id
        )
    } else {
        String::new()
    };
    text.push_str(&format!("\n{name}{mark}{cut_note}:\n"));
    let mut body = output::escape(shown, Layout::Block);
    if !body.ends_with('\n') {
        body.push('\n');
    }
    text.push_str(&body);
    if dropped > 0 {
        text.push_str(&format!(
            "({dropped} more bytes dropped at the host's output limit)\n"
        ));
    }
}

async fn list(client: &Client, args: LsArgs, json: bool) -> Result<ExitCode> {
    let query = JobQuery {
        status: args.status,
        limit: args.limit,
        after: args.after,
    };
    let page = if args.all {
        list_all(client, query).await?
    } else {
        client.list_jobs(&query).await?
    };
    if json {
        output::print_json(&page)?;
        return Ok(ExitCode::SUCCESS);
    }
    let hosts = host_names(client).await;
    output::out(&jobs_table(&page.jobs, &hosts, now_ms()))?;
    if let Some(after) = &page.next_after {
        eprintln!("more jobs: add --after {after}, or --all");
    }
    Ok(ExitCode::SUCCESS)
}

/// Every page from `query.after` on, as one list.
async fn list_all(client: &Client, mut query: JobQuery) -> Result<JobList> {
    let mut jobs = Vec::new();
    loop {
        let mut page = client.list_jobs(&query).await?;
        jobs.append(&mut page.jobs);
        match page.next_after {
            Some(after) if Some(&after) != query.after.as_ref() => query.after = Some(after),
            Some(after) => bail!("the coordinator returned the same page twice (after {after})"),
            None => {
                return Ok(JobList {
                    jobs,
                    next_after: None,
                });
            }
        }
    }
}

fn jobs_table(jobs: &[Job], hosts: &HashMap<String, String>, now: Millis) -> String {
    let rows: Vec<Vec<String>> = jobs.iter().map(|job| job_row(job, hosts, now)).collect();
    output::table(
        &[
            "ID", "STATUS", "KIND", "COMMAND", "HOST", "ATTEMPTS", "AGE", "REASON",
        ],
        &rows,
    )
}

fn job_row(job: &Job, hosts: &HashMap<String, String>, now: Millis) -> Vec<String> {
    vec![
        job.id.clone(),
        job.status.to_string(),
        job.spec.kind().to_string(),
        summary(&job.spec),
        host_cell(job, hosts),
        format!("{}/{}", job.attempts, job.spec.max_attempts()),
        output::age(now.saturating_sub(job.created_at)),
        reason(job).map_or_else(|| NONE.to_string(), |r| output::ellipsize(&r, REASON_WIDTH)),
    ]
}

/// What the job runs, in a few words: the command line, or the quoted message.
fn summary(spec: &JobSpec) -> String {
    match spec {
        JobSpec::OpenclawRun(openclaw) => {
            format!("{:?}", output::ellipsize(&openclaw.message, SUMMARY_WIDTH))
        }
        spec => output::ellipsize(&command_line(spec), SUMMARY_WIDTH),
    }
}

/// A shell or WASI job's command line as a shell would take it: a WASI
/// program by its name, or by its digest's first digits when it has none.
fn command_line(spec: &JobSpec) -> String {
    match spec {
        JobSpec::Shell(shell) => output::shell_words(
            std::iter::once(shell.command.as_str()).chain(shell.args.iter().map(String::as_str)),
        ),
        JobSpec::Wasi(wasi) => {
            let digest = wasi.artifact.as_str();
            let short = &digest[..digest.len().min("sha256:".len() + DIGEST_PREFIX_HEX)];
            let program = wasi.program.as_deref().unwrap_or(short);
            output::shell_words(
                std::iter::once(program).chain(wasi.args.iter().map(String::as_str)),
            )
        }
        JobSpec::OpenclawRun(openclaw) => openclaw.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Harness {
        #[command(subcommand)]
        command: JobCommand,
    }

    fn parse(args: &[&str]) -> JobCommand {
        Harness::try_parse_from(std::iter::once("job").chain(args.iter().copied()))
            .unwrap()
            .command
    }

    #[test]
    fn shell_takes_everything_after_the_command() {
        let JobCommand::Shell(shell) = parse(&[
            "shell",
            "--wait",
            "--env",
            "A=1=2",
            "--require",
            "gpu",
            "--",
            "ls",
            "-la",
            "--json",
        ]) else {
            panic!("not shell")
        };
        assert!(shell.submit.wait);
        let JobSpec::Shell(spec) = shell.spec() else {
            panic!("not a shell spec")
        };
        assert_eq!(spec.command, "ls");
        assert_eq!(spec.args, ["-la", "--json"]);
        assert_eq!(spec.env.get("A").map(String::as_str), Some("1=2"));
        assert_eq!(spec.timeout_ms, DEFAULT_SHELL_TIMEOUT_MS);
        assert_eq!(spec.requirements.capabilities, ["gpu"]);
    }

    #[test]
    fn defaults_match_the_api() {
        let JobCommand::Shell(shell) = parse(&["shell", "true"]) else {
            panic!("not shell")
        };
        let from_api: JobSpec =
            serde_json::from_str(r#"{"kind":"shell","command":"true"}"#).unwrap();
        assert_eq!(shell.spec(), from_api);
        let JobCommand::Openclaw(openclaw) = parse(&["openclaw", "--message", "hi"]) else {
            panic!("not openclaw")
        };
        let from_api: JobSpec =
            serde_json::from_str(r#"{"kind":"openclaw-run","message":"hi"}"#).unwrap();
        assert_eq!(openclaw.spec(), from_api);
    }

    #[test]
    fn bad_env_pair_and_thinking_level_are_usage_errors() {
        let harness = |args: &[&str]| {
            Harness::try_parse_from(std::iter::once("job").chain(args.iter().copied()))
        };
        assert!(harness(&["shell", "--env", "NOEQUALS", "--", "true"]).is_err());
        assert!(harness(&["openclaw", "--message", "m", "--thinking", "loud"]).is_err());
    }

    #[test]
    fn summary_shows_command_line_or_message() {
        let JobCommand::Shell(shell) = parse(&["shell", "echo", "hello", "world"]) else {
            panic!("not shell")
        };
        assert_eq!(summary(&shell.spec()), "echo hello world");
        let JobCommand::Shell(shell) = parse(&["shell", "--", "sh", "-c", "exit 3"]) else {
            panic!("not shell")
        };
        assert_eq!(summary(&shell.spec()), "sh -c 'exit 3'", "words stay words");
        let JobCommand::Wasi(wasi) = parse(&["wasi", "app.wasm", "--", "a b"]) else {
            panic!("not wasi")
        };
        let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let named = wasi.spec(digest.clone(), Some("app.wasm".into()));
        assert_eq!(summary(&named), "app.wasm 'a b'");
        assert_eq!(
            summary(&wasi.spec(digest, None)),
            "sha256:abababababab 'a b'"
        );
        let JobCommand::Openclaw(openclaw) = parse(&["openclaw", "--message", "hi\nthere"]) else {
            panic!("not openclaw")
        };
        assert_eq!(summary(&openclaw.spec()), "\"hi…\"");
    }
}
