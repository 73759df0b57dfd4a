//! The native runner: runs a job's program confined (see [`crate::confine`]:
//! a user, PID and mount namespace of its own, caps), in a fresh working
//! directory, with a clean environment, under a timeout, keeping a bounded
//! amount of its output, and turns how it ended into the job's result. Shell
//! jobs are checked against the host's allowlist here, before anything is
//! spawned; starting, feeding, capturing and stopping the process is
//! [`crate::spawned`]'s.

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
use tracing::debug;

use crate::captured::{Bounded, output_result};
use crate::confine::{Confiner, JOB_HOME, Launch};
use crate::spawned::Spawned;
use crate::workdir::WorkDirs;
use crate::workload::{Run, StopReason, StopSignal, stop_order};

/// The locale jobs get: UTF-8 without depending on the host's installed locales.
const JOB_LANG: &str = "C.UTF-8";

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
        let limit = self.max_output_bytes;
        let spawned = Spawned::start(
            confiner,
            &launch,
            work_dir,
            invocation.stdin.to_vec(),
            Bounded::new(limit),
            Bounded::new(limit),
        )
        .await;
        let mut child = match spawned {
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

        let timeout = invocation.timeout;
        let ending = tokio::select! {
            status = child.wait() => Ending::Exited(status),
            () = tokio::time::sleep(timeout) => Ending::TimedOut,
            reason = stop_order(stop) => Ending::Stopped(reason),
        };
        // A job that exited took every process it started with it (its PID
        // namespace is gone by the time its init is reaped); one that timed
        // out or was stopped is killed as a whole.
        if !matches!(ending, Ending::Exited(_)) {
            child.stop().await;
        }
        let (stdout, stderr) = child.output().await;

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
                ..output_result(stdout.into_captured(), stderr.into_captured())
            },
            stopped,
        }
    }

    /// The whole environment of a job: nothing of the host's but PATH and the
    /// `pass_env` names. Later entries win, so `pass_env` may set HOME and the
    /// job may set anything; the program was resolved already, so a PATH the
    /// job sets changes only what that program looks up itself.
    pub(crate) fn job_env(&self, own: &BTreeMap<String, String>) -> BTreeMap<String, OsString> {
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

pub(crate) fn describe_exit(status: ExitStatus) -> (Option<i32>, Option<String>) {
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

#[cfg(test)]
mod tests;
