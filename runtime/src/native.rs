//! The native runner: runs a job's program confined (see [`crate::confine`]:
//! a user, PID and mount namespace of its own, caps), in a fresh working
//! directory, with a clean environment, under a timeout, keeping a bounded
//! amount of its output. Shell jobs are checked against the host's allowlist
//! here, before anything is spawned.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use skyclaw_api::jobs::{JobResult, ShellSpec};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::captured::{Captured, output_result};
use crate::confine::{Confiner, JOB_HOME, Launch, Process};
use crate::workdir::WorkDirs;

/// Bytes read from an output pipe at a time.
const READ_CHUNK: usize = 16 * 1024;
/// How long output pipes may stay open after the job's process group is
/// killed: its PID namespace is torn down by then, so this only bounds the
/// kernel's teardown, and a stuck pipe must not keep the job from ending.
const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Spawn attempts while the program file is busy (ETXTBSY): another thread may
/// be between fork and exec holding the file's just-closed write descriptor.
const SPAWN_ATTEMPTS: u32 = 5;
/// Pause between those attempts; the window it waits out is microseconds long.
const SPAWN_RETRY_DELAY: Duration = Duration::from_millis(20);
/// The locale jobs get: UTF-8 without depending on the host's installed locales.
const JOB_LANG: &str = "C.UTF-8";

/// Why the host stopped a job before it ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A coordinator said so: the job was cancelled or is leased elsewhere now.
    Revoked,
    /// The host is shutting down and the job's grace period is over.
    ShuttingDown,
}

impl StopReason {
    pub fn message(self) -> &'static str {
        match self {
            StopReason::Revoked => "stopped: the job was cancelled or leased to another host",
            StopReason::ShuttingDown => "host shutting down",
        }
    }
}

/// Carries the order to stop a job; `None` while it may run.
pub type StopSignal = watch::Receiver<Option<StopReason>>;

/// What running a job gave: the result to report and, when the host stopped
/// the job itself, why.
#[derive(Debug)]
pub struct Run {
    pub result: JobResult,
    pub stopped: Option<StopReason>,
}

impl Run {
    /// A job that failed before any process started.
    pub(crate) fn refused(error: String) -> Run {
        Run {
            result: JobResult::error(error),
            stopped: None,
        }
    }
}

/// Everything the runner needs from the host, given explicitly so that the
/// process environment is read once, at the edge, and tests can inject it.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    pub(crate) host_name: String,
    /// Commands shell jobs may name, matched exactly.
    pub(crate) allowed_commands: Vec<String>,
    /// Where bare command names are looked up; also the jobs' PATH.
    pub(crate) path: String,
    /// The host's environment: only the `pass_env` names are taken from it.
    pub(crate) host_env: BTreeMap<String, String>,
    pub(crate) pass_env: Vec<String>,
    /// Bytes kept of each of stdout and stderr.
    pub(crate) max_output_bytes: usize,
    /// Parent of the jobs' working directories.
    pub(crate) work_dirs: Arc<WorkDirs>,
    /// Puts every process the runner starts in its confinement; `None` on a
    /// host that runs no native processes.
    pub(crate) confiner: Option<Arc<Confiner>>,
    pub(crate) openclaw_command: String,
    /// What `openclaw --version` answered; `None` when OpenClaw is unavailable.
    pub(crate) openclaw_version: Option<String>,
}

/// One process to run: the program (already resolved) and what it is given.
#[derive(Debug)]
pub(crate) struct Invocation<'a> {
    pub(crate) program: &'a Path,
    pub(crate) args: &'a [String],
    /// The job's own variables, set last.
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) stdin: &'a [u8],
    pub(crate) timeout: Duration,
}

/// How the job's main process came to an end.
enum Ending {
    Exited(io::Result<ExitStatus>),
    TimedOut,
    Stopped(StopReason),
}

impl Runner {
    /// Runs an allowlisted command. A command off the allowlist is never spawned.
    pub(crate) async fn run_shell(&self, job_id: &str, spec: &ShellSpec, stop: StopSignal) -> Run {
        if !self.allowed_commands.contains(&spec.command) {
            return Run::refused(format!(
                "command not allowed on host {}: {}",
                self.host_name, spec.command
            ));
        }
        let Some(program) = self.resolve(&spec.command) else {
            return Run::refused(format!(
                "command not found on host {}: {}",
                self.host_name, spec.command
            ));
        };
        let invocation = Invocation {
            program: &program,
            args: &spec.args,
            env: &spec.env,
            stdin: spec.stdin.as_bytes(),
            timeout: Duration::from_millis(spec.timeout_ms),
        };
        self.execute(job_id, invocation, stop).await
    }

    /// The executable a command names: an absolute path as it is, a bare name
    /// looked up on the host's PATH. Relative paths are not resolved: jobs run
    /// in a fresh, empty directory.
    pub(crate) fn resolve(&self, command: &str) -> Option<PathBuf> {
        if command.contains('/') {
            let path = Path::new(command);
            return (path.is_absolute() && is_executable(path)).then(|| path.to_path_buf());
        }
        self.path
            .split(':')
            .map(Path::new)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(command))
            .find(|candidate| is_executable(candidate))
    }

    /// Runs one process to its end, timeout or stop, in a working directory
    /// made for it and removed afterwards. Every way of running a job goes
    /// through here.
    pub(crate) async fn execute(
        &self,
        job_id: &str,
        invocation: Invocation<'_>,
        mut stop: StopSignal,
    ) -> Run {
        let started = Instant::now();
        let work_dir = match self.work_dirs.take() {
            Ok(dir) => dir,
            Err(e) => {
                return Run::refused(format!(
                    "cannot create a working directory on host {}: {e}",
                    self.host_name
                ));
            }
        };
        debug!(job_id, dir = %work_dir.display(), "job working directory");
        let run = self
            .execute_in(&work_dir, &invocation, &mut stop, started)
            .await;
        let work_dirs = Arc::clone(&self.work_dirs);
        // Emptying may remove many files; it must not stall the runtime.
        let _ = tokio::task::spawn_blocking(move || work_dirs.give_back(work_dir)).await;
        run
    }

    async fn execute_in(
        &self,
        work_dir: &Path,
        invocation: &Invocation<'_>,
        stop: &mut StopSignal,
        started: Instant,
    ) -> Run {
        let Some(confiner) = &self.confiner else {
            return Run::refused(format!(
                "host {} runs no native processes: it has no user to run them as",
                self.host_name
            ));
        };
        let env = self.job_env(invocation.env);
        let launch = Launch {
            program: invocation.program,
            args: invocation.args,
            env: &env,
            stdin: !invocation.stdin.is_empty(),
        };
        let mut child = match spawn(confiner, &launch, work_dir).await {
            Ok(child) => child,
            Err(e) => {
                return Run::refused(format!(
                    "cannot start {} on host {}: {e}",
                    invocation.program.display(),
                    self.host_name
                ));
            }
        };
        debug!(program = %invocation.program.display(), pid = child.pid().as_raw(), "job process started");

        // Written from a task so that a child that never reads its stdin
        // cannot block us; a child that exits early closes the pipe (EPIPE),
        // which is no error of ours.
        let writer = child.stdin.take().map(|mut pipe| {
            let data = invocation.stdin.to_vec();
            tokio::spawn(async move {
                if let Err(e) = pipe.write_all(&data).await
                    && e.kind() != io::ErrorKind::BrokenPipe
                {
                    debug!(error = %e, "cannot write job stdin");
                }
            })
        });

        let (exited_tx, exited_rx) = watch::channel(false);
        let stdout = capture(
            child.stdout.take(),
            self.max_output_bytes,
            exited_rx.clone(),
        );
        let stderr = capture(child.stderr.take(), self.max_output_bytes, exited_rx);
        let timeout = invocation.timeout;
        let waiting = async move {
            let ending = tokio::select! {
                status = child.wait() => Ending::Exited(status),
                () = tokio::time::sleep(timeout) => Ending::TimedOut,
                reason = stop_requested(stop) => Ending::Stopped(reason),
            };
            // A job that exited took every process it started with it (its
            // PID namespace is gone by the time its init is reaped); one that
            // timed out or was stopped is killed as a whole.
            if !matches!(ending, Ending::Exited(_)) {
                child.kill();
                if let Err(e) = child.wait().await {
                    warn!(error = %e, "cannot reap killed job process");
                }
            }
            exited_tx.send_replace(true);
            ending
        };
        let (ending, stdout, stderr) = tokio::join!(waiting, stdout, stderr);
        if let Some(writer) = writer {
            writer.abort();
        }

        let (exit_code, error, stopped) = match ending {
            Ending::Exited(Ok(status)) => {
                let (code, error) = describe_exit(status);
                (code, error, None)
            }
            Ending::Exited(Err(e)) => (
                None,
                Some(format!("lost track of the job's process: {e}")),
                None,
            ),
            Ending::TimedOut => (
                None,
                Some(format!("timed out after {} ms", timeout.as_millis())),
                None,
            ),
            Ending::Stopped(reason) => (None, Some(reason.message().to_string()), Some(reason)),
        };
        Run {
            result: JobResult {
                exit_code,
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                error,
                ..output_result(stdout, stderr)
            },
            stopped,
        }
    }

    /// The whole environment of a job: nothing of the host's but PATH and the
    /// `pass_env` names. Later entries win, so `pass_env` may set HOME and the
    /// job may set anything; the program was resolved already, so a PATH the
    /// job sets changes only what that program looks up itself.
    fn job_env(&self, own: &BTreeMap<String, String>) -> BTreeMap<String, OsString> {
        let mut env = BTreeMap::new();
        env.insert("PATH".to_string(), OsString::from(&self.path));
        env.insert("HOME".to_string(), OsString::from(JOB_HOME));
        env.insert("TMPDIR".to_string(), OsString::from(JOB_HOME));
        env.insert("LANG".to_string(), OsString::from(JOB_LANG));
        for name in &self.pass_env {
            if let Some(value) = self.host_env.get(name) {
                env.insert(name.clone(), OsString::from(value));
            }
        }
        for (name, value) in own {
            env.insert(name.clone(), OsString::from(value));
        }
        env
    }
}

async fn spawn(confiner: &Confiner, launch: &Launch<'_>, work_dir: &Path) -> io::Result<Process> {
    let mut attempt = 1;
    loop {
        match confiner.spawn(launch, work_dir) {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && attempt < SPAWN_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(SPAWN_RETRY_DELAY).await;
            }
            other => return other,
        }
    }
}

/// Resolves once the job is asked to stop; never if it cannot be any more.
async fn stop_requested(stop: &mut StopSignal) -> StopReason {
    if let Ok(reason) = stop.wait_for(Option::is_some).await
        && let Some(reason) = *reason
    {
        return reason;
    }
    std::future::pending().await
}

fn describe_exit(status: ExitStatus) -> (Option<i32>, Option<String>) {
    if let Some(code) = status.code() {
        let error = (code != 0).then(|| format!("exited with code {code}"));
        return (Some(code), error);
    }
    let error = match status.signal() {
        Some(number) => match Signal::try_from(number) {
            Ok(signal) => format!("killed by signal {}", signal.as_str()),
            Err(_) => format!("killed by signal {number}"),
        },
        None => "ended without an exit code or signal".to_string(),
    };
    (None, Some(error))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Reads a pipe to its end, keeping at most `limit` bytes and counting the
/// rest, which is read and discarded so the writer never blocks. Gives up
/// [`PIPE_DRAIN_TIMEOUT`] after `exited` turns true.
async fn capture(
    pipe: Option<impl AsyncRead + Unpin>,
    limit: usize,
    mut exited: watch::Receiver<bool>,
) -> Captured {
    let mut captured = Captured::default();
    let Some(mut pipe) = pipe else {
        return captured;
    };
    let give_up = async move {
        if exited.wait_for(|e| *e).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(PIPE_DRAIN_TIMEOUT).await;
    };
    tokio::pin!(give_up);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        tokio::select! {
            read = pipe.read(&mut buf) => match read {
                Ok(0) => break,
                Ok(n) => captured.push(&buf[..n], limit),
                Err(e) => {
                    debug!(error = %e, "cannot read job output");
                    break;
                }
            },
            () = &mut give_up => {
                warn!("job output still open after its process group was killed; a process left the group");
                break;
            }
        }
    }
    captured
}

#[cfg(test)]
mod tests;
