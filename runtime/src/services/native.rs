//! A native instance: its bundle fetched, verified and unpacked into a
//! directory of its own, its command run there confined (as a native job
//! is) with `PORT` and `HOST` set, probed for health, restarted with backoff
//! when it exits, and on stop asked to exit (SIGTERM) and killed after the
//! grace period.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use skyclaw_api::services::{Assignment, InstanceState, LogStream, MAX_LAST_ERROR_BYTES};
use skyclaw_api::{Millis, now_ms};
use tokio::time::Instant;
use tracing::{info, warn};

use super::logs::Logs;
use super::probe::{self, Watched};
use super::status::Status;
use super::{Shared, StopOrder, stop_ordered};
use crate::backoff::Backoff;
use crate::confine::Launch;
use crate::native::describe_exit;
use crate::spawned::Spawned;

/// First pause before restarting an instance that exited.
const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest pause between restarts: a crash-looping instance costs the host
/// little, and one that recovers (a database back up) is back soon.
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long an instance must stay healthy for its next crash to restart it
/// after the shortest pause again.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// Lines of output a crash report ends with.
const CRASH_TAIL_LINES: usize = 20;

/// How one run of the command ended.
enum Ending {
    Exited(String),
    Stopped,
}

/// Runs the instance until it is told to stop or cannot run.
pub(super) async fn run(
    shared: &Shared,
    assignment: &Assignment,
    status: &Status,
    logs: &Logs,
    stop: &mut StopOrder,
) {
    let dir = shared.instance_dir(&assignment.instance_id);
    let prepared = tokio::select! {
        prepared = prepare(shared, assignment, &dir) => prepared,
        () = stop_ordered(stop) => return,
    };
    match prepared {
        Ok(program) => supervise(shared, assignment, status, logs, stop, &program, &dir).await,
        Err(error) => {
            warn!(instance_id = %assignment.instance_id, %error, "instance cannot run");
            status.fail(error);
        }
    }
}

/// Checks the command against the allowlist and unpacks the bundle; the
/// program to run, or why the instance cannot run.
async fn prepare(shared: &Shared, assignment: &Assignment, dir: &Path) -> Result<PathBuf, String> {
    let runner = &shared.runner;
    let host = &shared.host_name;
    if runner.confiner.is_none() {
        return Err(format!("host {host} runs no native processes"));
    }
    let command = assignment.spec.command.as_deref().unwrap_or_default();
    if !runner.allowed_commands.iter().any(|c| c == command) {
        return Err(format!("command not allowed on host {host}: {command}"));
    }
    let program = runner
        .resolve(command)
        .ok_or_else(|| format!("command not found on host {host}: {command}"))?;
    let digest = &assignment.spec.artifact;
    let bundle = shared.artifacts.fetch(&shared.client, digest).await?;
    let (archive, dest) = (bundle.path().to_path_buf(), dir.to_path_buf());
    let unpacked = tokio::task::spawn_blocking(move || crate::bundle::unpack(&archive, &dest))
        .await
        .map_err(|e| format!("unpacking bundle {digest} failed: {e}"))?;
    let summary = unpacked.map_err(|e| format!("bundle {digest} refused: {e}"))?;
    info!(
        instance_id = %assignment.instance_id,
        entries = summary.entries,
        bytes = summary.bytes,
        "bundle unpacked"
    );
    Ok(program)
}

/// Starts the command, restarting it whenever it exits, until stopped.
async fn supervise(
    shared: &Shared,
    assignment: &Assignment,
    status: &Status,
    logs: &Logs,
    stop: &mut StopOrder,
    program: &Path,
    dir: &Path,
) {
    let mut backoff = Backoff::new(RESTART_BACKOFF_MIN, RESTART_BACKOFF_MAX);
    loop {
        let Some(port) = shared.ports.take() else {
            status.fail(format!(
                "no free port left in this host's service port range {}",
                shared.ports.range()
            ));
            return;
        };
        let started = Instant::now();
        let started_at = now_ms();
        let ending = match spawn(shared, assignment, logs, program, dir, port.get()).await {
            Ok(child) => {
                status.enter(InstanceState::Starting, None);
                serve(shared, assignment, status, stop, child, port.get()).await
            }
            Err(error) => Ending::Exited(error),
        };
        drop(port);
        let Ending::Exited(exit) = ending else {
            return;
        };
        if started.elapsed() >= STABLE_AFTER && status.state() == InstanceState::Healthy {
            backoff.reset();
        }
        let last_error = crash_report(&exit, logs, started_at);
        warn!(instance_id = %assignment.instance_id, %exit, "instance exited; restarting it");
        shared.count_restart();
        status.set(|r| {
            r.state = InstanceState::Starting;
            r.endpoint = None;
            r.restarts += 1;
            r.last_error = Some(last_error);
        });
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = stop_ordered(stop) => return,
        }
    }
}

type Child = Spawned<super::logs::LineSink>;

async fn spawn(
    shared: &Shared,
    assignment: &Assignment,
    logs: &Logs,
    program: &Path,
    dir: &Path,
    port: u16,
) -> Result<Child, String> {
    let runner = &shared.runner;
    let confiner = runner
        .confiner
        .as_ref()
        .expect("prepare checked that the host confines processes");
    let mut env = runner.job_env(&assignment.spec.env);
    env.insert("PORT".to_string(), OsString::from(port.to_string()));
    env.insert(
        "HOST".to_string(),
        OsString::from(shared.bind_host.to_string()),
    );
    let launch = Launch {
        program,
        args: &assignment.spec.args,
        env: &env,
        stdin: false,
    };
    Spawned::start(
        confiner,
        &launch,
        dir,
        Vec::new(),
        logs.sink(LogStream::Stdout),
        logs.sink(LogStream::Stderr),
    )
    .await
    .map_err(|e| format!("cannot start {}: {e}", program.display()))
}

/// Watches the running process until it exits or the instance is stopped;
/// a stopped one is drained and ended here.
async fn serve(
    shared: &Shared,
    assignment: &Assignment,
    status: &Status,
    stop: &mut StopOrder,
    mut child: Child,
    port: u16,
) -> Ending {
    let watched = probe::watch(shared, assignment, status, stop, port, child.wait()).await;
    match watched {
        Watched::Ended(exit) => exited(child, exit).await,
        Watched::Stopped { was_healthy } => {
            drain(shared, status, &mut child, was_healthy).await;
            Ending::Stopped
        }
    }
}

/// Ends a running process that was told to stop: out of the endpoint set
/// already, it gets a moment for those routing to it to notice, then
/// SIGTERM and the grace period to finish its requests, then SIGKILL.
async fn drain(shared: &Shared, status: &Status, child: &mut Child, was_healthy: bool) {
    status.enter(InstanceState::Stopping, None);
    if was_healthy {
        tokio::select! {
            _ = child.wait() => return,
            () = tokio::time::sleep(super::DRAIN_DELAY) => {}
        }
    }
    child.terminate();
    if tokio::time::timeout(shared.grace, child.wait())
        .await
        .is_err()
    {
        info!("instance did not exit within its grace period; killing it");
        child.stop().await;
    }
}

/// How the process ended, once its last output is in the logs.
async fn exited(child: Child, exit: std::io::Result<std::process::ExitStatus>) -> Ending {
    drop(child.output().await);
    Ending::Exited(match exit {
        Ok(status) => describe_exit(status)
            .1
            .unwrap_or_else(|| "exited with code 0".to_string()),
        Err(e) => format!("lost track of the process: {e}"),
    })
}

/// The exit status and the last lines this run wrote (since `started_at`),
/// within what a report carries.
fn crash_report(exit: &str, logs: &Logs, started_at: Millis) -> String {
    let header = format!("{exit}; last output:\n");
    let room = MAX_LAST_ERROR_BYTES.saturating_sub(header.len());
    let lines: Vec<String> = logs
        .tail_since(started_at, CRASH_TAIL_LINES)
        .into_iter()
        .map(|line| line.text)
        .collect();
    let mut tail = lines.join("\n");
    if tail.len() > room {
        let mut start = tail.len() - room;
        while !tail.is_char_boundary(start) {
            start += 1;
        }
        tail = tail.split_off(start);
    }
    if tail.is_empty() {
        return format!("{exit}; no output");
    }
    header + &tail
}
