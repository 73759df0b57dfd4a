//! Runner tests: real processes in real temporary directories.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use skyclaw_api::jobs::{OpenclawSpec, Requirements, ShellSpec};
use tokio::sync::watch;
use tokio::time::Instant;

use super::*;
use crate::confine::{self, JobUsers, UidRange};
use crate::spawned::PIPE_DRAIN_TIMEOUT;

const HOST: &str = "test-host";
/// Generous bound on how long a killed process may take to disappear.
const GONE_DEADLINE: Duration = Duration::from_secs(10);
/// Job uids each runner of this test process gets: a range of its own, so
/// that runners in concurrent tests never share a uid.
const UIDS_PER_RUNNER: u32 = 64;

/// A uid range no other runner of this process (or, by its pid, of another
/// test process) uses.
fn own_uids() -> UidRange {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let slot = (std::process::id() % 20_000) * 64 + NEXT.fetch_add(1, Ordering::Relaxed);
    let first = 1_000_000_000 + slot * UIDS_PER_RUNNER;
    UidRange {
        first,
        last: first + UIDS_PER_RUNNER - 1,
    }
}

fn confiner(dir: &Path) -> Confiner {
    Confiner::new(&confine::Settings {
        users: JobUsers::Range(own_uids()),
        memory_mb: confine::DEFAULT_JOB_MEMORY_MB,
        max_processes: confine::DEFAULT_JOB_MAX_PROCESSES,
        hidden: vec![dir.to_path_buf()],
        max_parallel: 4,
    })
    .expect("tests run as root")
}

fn runner(dir: &Path, allowed: &[&str]) -> Runner {
    Runner {
        host_name: HOST.to_string(),
        allowed_commands: allowed.iter().map(|c| c.to_string()).collect(),
        path: std::env::var("PATH").unwrap_or_else(|_| crate::DEFAULT_PATH.to_string()),
        host_env: BTreeMap::new(),
        pass_env: Vec::new(),
        max_output_bytes: crate::DEFAULT_MAX_OUTPUT_BYTES,
        work_dirs: std::sync::Arc::new(crate::workdir::WorkDirs::new(dir.join("work"), 4)),
        confiner: Some(Arc::new(confiner(dir))),
        openclaw_command: "openclaw".to_string(),
        openclaw_version: None,
    }
}

fn shell(command: &str, args: &[&str]) -> ShellSpec {
    ShellSpec {
        command: command.to_string(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: BTreeMap::new(),
        stdin: String::new(),
        timeout_ms: 30_000,
        max_attempts: 1,
        requirements: Requirements::default(),
        queue_timeout_ms: None,
    }
}

/// A stop signal nobody fires; the sender must be kept alive by the caller.
fn never_stopped() -> (watch::Sender<Option<StopReason>>, StopSignal) {
    watch::channel(None)
}

async fn run_shell(runner: &Runner, spec: &ShellSpec) -> Run {
    let (_keep, stop) = never_stopped();
    runner.run_shell("job-1", spec, stop).await
}

/// Host pids of live processes (zombies aside) whose command line holds
/// `marker`: jobs run in PID namespaces of their own, so only the host's
/// view of `/proc` can name them.
fn processes_with(marker: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let live = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
            });
            live && String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(marker)
        })
        .collect()
}

/// Waits until `count` processes with `marker` run; their host pids.
async fn wait_running(marker: &str, count: usize) -> Vec<i32> {
    let deadline = Instant::now() + GONE_DEADLINE;
    loop {
        let found = processes_with(marker);
        if found.len() >= count {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{count} processes {marker:?} never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_gone(marker: &str) {
    let deadline = Instant::now() + GONE_DEADLINE;
    while !processes_with(marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes {marker:?} are still alive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A directory that job users can enter, outside /tmp (which jobs do not see).
fn shared_dir() -> tempfile::TempDir {
    let beside_tests = std::env::current_exe().expect("test binary path");
    let dir = tempfile::tempdir_in(beside_tests.parent().expect("a directory")).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Files left inside the job working directories (kept, emptied directories
/// themselves do not count).
fn files_left_in_work_dirs(dir: &Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(dir.join("work")) else {
        return 0;
    };
    dirs.flatten()
        .map(|d| std::fs::read_dir(d.path()).map_or(0, |entries| entries.count()))
        .sum()
}

#[tokio::test]
async fn runs_a_command_and_keeps_its_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path(), &["echo"]);
    let run = run_shell(&r, &shell("echo", &["hello", "world"])).await;
    assert_eq!(run.result.error, None);
    assert_eq!(run.result.exit_code, Some(0));
    assert_eq!(run.result.stdout, "hello world\n");
    assert_eq!(run.result.stderr, "");
    assert!(!run.result.stdout_truncated);
    assert_eq!(run.stopped, None);
    assert_eq!(
        files_left_in_work_dirs(dir.path()),
        0,
        "working directory emptied"
    );
}

#[tokio::test]
async fn a_command_off_the_allowlist_is_never_spawned() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("touched");
    let r = runner(dir.path(), &["echo"]);
    let run = run_shell(&r, &shell("touch", &[target.to_str().unwrap()])).await;
    assert_eq!(
        run.result.error.as_deref(),
        Some("command not allowed on host test-host: touch")
    );
    assert_eq!(run.result.exit_code, None);
    assert!(!target.exists(), "touch must not have run");
}

#[tokio::test]
async fn an_allowlist_entry_matches_only_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path(), &["/usr/bin/echo"]);
    let run = run_shell(&r, &shell("echo", &["x"])).await;
    assert_eq!(
        run.result.error.as_deref(),
        Some("command not allowed on host test-host: echo")
    );
}

#[tokio::test]
async fn a_missing_command_is_reported_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path(), &["skyclaw-no-such-command"]);
    let run = run_shell(&r, &shell("skyclaw-no-such-command", &[])).await;
    assert_eq!(
        run.result.error.as_deref(),
        Some("command not found on host test-host: skyclaw-no-such-command")
    );
}

#[tokio::test]
async fn a_timeout_kills_the_whole_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = shell("sh", &["-c", "setsid sleep 301.1 & sleep 301.1"]);
    spec.timeout_ms = 500;
    let r = runner(dir.path(), &["sh"]);
    let started = Instant::now();
    let run = run_shell(&r, &spec).await;
    assert_eq!(run.result.error.as_deref(), Some("timed out after 500 ms"));
    assert_eq!(run.result.exit_code, None);
    assert!(run.result.duration_ms >= 500, "{}", run.result.duration_ms);
    assert!(started.elapsed() < Duration::from_secs(30));
    wait_gone("sleep 301.1").await;
}

#[tokio::test]
async fn no_process_outlives_a_job_that_exited() {
    let dir = tempfile::tempdir().unwrap();
    // A background child, one in a session of its own, one double-forked
    // and one ignoring hangups: each tries to outlive the job its own way.
    let script = "sleep 302.1 & setsid sleep 302.1 & (sleep 302.1 &) ; nohup sleep 302.1 >/dev/null 2>&1 & \
                  while [ $(pgrep -c -f '^sleep 302.1') -lt 4 ]; do sleep 0.01; done; echo done";
    let r = runner(dir.path(), &["sh"]);
    let run = run_shell(&r, &shell("sh", &["-c", script])).await;
    assert_eq!(run.result.error, None, "{}", run.result.stderr);
    assert_eq!(run.result.stdout, "done\n");
    assert!(
        run.result.duration_ms < PIPE_DRAIN_TIMEOUT.as_millis() as u64,
        "the job ended when its init did, not after the pipe drain timeout: {} ms",
        run.result.duration_ms
    );
    wait_gone("sleep 302.1").await;
}

#[tokio::test]
async fn output_past_the_limit_is_counted_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = runner(dir.path(), &["sh"]);
    r.max_output_bytes = 1000;
    let script = "head -c 100000 /dev/zero; head -c 1500 /dev/zero >&2";
    let run = run_shell(&r, &shell("sh", &["-c", script])).await;
    assert_eq!(run.result.error, None);
    assert_eq!(run.result.stdout.len(), 1000);
    assert!(run.result.stdout_truncated);
    assert_eq!(run.result.stdout_dropped_bytes, 99_000);
    assert_eq!(run.result.stderr.len(), 1000);
    assert!(run.result.stderr_truncated);
    assert_eq!(run.result.stderr_dropped_bytes, 500);
}

#[tokio::test]
async fn jobs_see_a_clean_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = runner(dir.path(), &["env"]);
    r.host_env = BTreeMap::from([
        ("SKYCLAW_TOKEN".to_string(), "secret-token".to_string()),
        ("SECRET".to_string(), "x".to_string()),
        ("PASSED".to_string(), "y".to_string()),
    ]);
    r.pass_env = vec!["PASSED".to_string(), "UNSET_ON_HOST".to_string()];
    let mut spec = shell("env", &[]);
    spec.env.insert("JOB_VAR".to_string(), "z".to_string());
    let run = run_shell(&r, &spec).await;
    assert_eq!(run.result.error, None);
    let vars: BTreeMap<&str, &str> = run
        .result
        .stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    assert_eq!(vars.get("PASSED"), Some(&"y"));
    assert_eq!(vars.get("JOB_VAR"), Some(&"z"));
    assert_eq!(vars.get("LANG"), Some(&"C.UTF-8"));
    assert_eq!(vars.get("PATH"), Some(&r.path.as_str()));
    assert_eq!(vars.get("HOME"), Some(&JOB_HOME));
    assert_eq!(vars.get("TMPDIR"), Some(&JOB_HOME));
    let names: Vec<&str> = vars.keys().copied().collect();
    assert_eq!(
        names,
        ["HOME", "JOB_VAR", "LANG", "PASSED", "PATH", "TMPDIR"]
    );
}

#[tokio::test]
async fn stdin_is_written_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path(), &["cat", "true"]);
    let mut spec = shell("cat", &[]);
    spec.stdin = "to cat\n".to_string();
    let run = run_shell(&r, &spec).await;
    assert_eq!(run.result.stdout, "to cat\n");

    // A child that never reads a large stdin must not hang the runner.
    let mut spec = shell("true", &[]);
    spec.stdin = "x".repeat(skyclaw_api::jobs::MAX_STDIN_BYTES);
    let run = run_shell(&r, &spec).await;
    assert_eq!(run.result.error, None);
}

#[tokio::test]
async fn exit_codes_and_signals_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path(), &["sh"]);
    let run = run_shell(&r, &shell("sh", &["-c", "echo oops >&2; exit 3"])).await;
    assert_eq!(run.result.exit_code, Some(3));
    assert_eq!(run.result.error.as_deref(), Some("exited with code 3"));
    assert_eq!(run.result.stderr, "oops\n");

    // The job's program is the init of its PID namespace, which ignores
    // the signals it sends itself; from outside, a kill is a kill.
    let job = {
        let r = runner(dir.path(), &["sh"]);
        tokio::spawn(async move { run_shell(&r, &shell("sh", &["-c", "exec sleep 303.1"])).await })
    };
    for pid in wait_running("sleep 303.1", 1).await {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    let run = job.await.unwrap();
    assert_eq!(run.result.exit_code, None);
    assert_eq!(
        run.result.error.as_deref(),
        Some("killed by signal SIGKILL")
    );
}

#[tokio::test]
async fn a_stopped_job_is_killed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let r = runner(dir.path(), &["sh"]);
    let (stop_tx, stop) = never_stopped();
    let spec = shell("sh", &["-c", "setsid sleep 304.1 & exec sleep 304.1"]);
    let job = tokio::spawn(async move { r.run_shell("job-1", &spec, stop).await });
    wait_running("sleep 304.1", 2).await;
    stop_tx.send_replace(Some(StopReason::ShuttingDown));
    let run = job.await.unwrap();
    assert_eq!(run.stopped, Some(StopReason::ShuttingDown));
    assert_eq!(run.result.error.as_deref(), Some("host shutting down"));
    wait_gone("sleep 304.1").await;
}

/// Writes an executable fake `openclaw` that prints its arguments as JSON.
fn fake_openclaw(dir: &Path) -> PathBuf {
    let path = dir.join("openclaw");
    let script = r#"#!/bin/sh
if [ "$1" = "--version" ]; then echo "  openclaw 9.9.9  "; exit 0; fi
printf '{"args":['
sep=''
for a in "$@"; do printf '%s"%s"' "$sep" "$a"; sep=','; done
printf ']}\n'
"#;
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn openclaw_spec() -> OpenclawSpec {
    OpenclawSpec {
        message: "hello there".to_string(),
        agent: "main".to_string(),
        thinking: Some("low".to_string()),
        model: Some("m1".to_string()),
        local: true,
        timeout_ms: 30_000,
        max_attempts: 1,
        requirements: Requirements::default(),
        queue_timeout_ms: None,
    }
}

#[tokio::test]
async fn openclaw_runs_the_agent_and_parses_its_json() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = shared_dir();
    let mut r = runner(dir.path(), &[]);
    r.openclaw_command = fake_openclaw(scripts.path()).display().to_string();
    r.openclaw_version = r.probe_openclaw().await;
    assert_eq!(r.openclaw_version.as_deref(), Some("openclaw 9.9.9"));

    let (_keep, stop) = never_stopped();
    let run = r.run_openclaw("job-2", &openclaw_spec(), stop).await;
    assert_eq!(run.result.error, None);
    let expected = serde_json::json!({"args": [
        "agent", "--message", "hello there", "--agent", "main", "--json",
        "--thinking", "low", "--model", "m1", "--local"
    ]});
    assert_eq!(run.result.output, Some(expected));
}

#[tokio::test]
async fn openclaw_is_refused_where_it_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = runner(dir.path(), &[]);
    r.openclaw_command = dir.path().join("missing-openclaw").display().to_string();
    assert_eq!(r.probe_openclaw().await, None);
    let (_keep, stop) = never_stopped();
    let run = r.run_openclaw("job-3", &openclaw_spec(), stop).await;
    assert_eq!(
        run.result.error.as_deref(),
        Some("openclaw is not available on host test-host")
    );
}
