//! Runner tests: real processes in real temporary directories.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use skyclaw_api::jobs::{OpenclawSpec, Requirements, ShellSpec};
use tokio::sync::watch;
use tokio::time::Instant;

use super::*;

const HOST: &str = "test-host";
/// Generous bound on how long a killed process may take to disappear.
const GONE_DEADLINE: Duration = Duration::from_secs(10);

fn runner(dir: &Path, allowed: &[&str]) -> Runner {
    Runner {
        host_name: HOST.to_string(),
        allowed_commands: allowed.iter().map(|c| c.to_string()).collect(),
        path: std::env::var("PATH").unwrap_or_else(|_| crate::DEFAULT_PATH.to_string()),
        host_env: BTreeMap::new(),
        pass_env: Vec::new(),
        max_output_bytes: crate::DEFAULT_MAX_OUTPUT_BYTES,
        work_dirs: std::sync::Arc::new(crate::workdir::WorkDirs::new(dir.join("work"), 4)),
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

/// Gone, or a zombie waiting for a reaper that is not ours.
fn is_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_gone(pid: i32) {
    let deadline = Instant::now() + GONE_DEADLINE;
    while !is_gone(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn read_pid(path: &Path) -> i32 {
    let text = std::fs::read_to_string(path).expect("pid file written by the job");
    text.trim().parse().expect("a pid")
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
async fn a_timeout_kills_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let script = format!("sleep 300 & echo $! > {}; sleep 300", pidfile.display());
    let mut spec = shell("sh", &["-c", &script]);
    spec.timeout_ms = 500;
    let r = runner(dir.path(), &["sh"]);
    let started = Instant::now();
    let run = run_shell(&r, &spec).await;
    assert_eq!(run.result.error.as_deref(), Some("timed out after 500 ms"));
    assert_eq!(run.result.exit_code, None);
    assert!(run.result.duration_ms >= 500, "{}", run.result.duration_ms);
    assert!(started.elapsed() < Duration::from_secs(30));
    wait_gone(read_pid(&pidfile).await).await;
}

#[tokio::test]
async fn a_background_grandchild_dies_with_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let script = format!("sleep 300 & echo $! > {}; echo done", pidfile.display());
    let r = runner(dir.path(), &["sh"]);
    let run = run_shell(&r, &shell("sh", &["-c", &script])).await;
    assert_eq!(run.result.error, None);
    assert_eq!(run.result.stdout, "done\n");
    wait_gone(read_pid(&pidfile).await).await;
}

#[tokio::test]
async fn a_process_that_left_the_group_does_not_hold_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("escaped.pid");
    // The escaped process writes its pid only once it has its own session;
    // the job waits for that, so the escape has happened when the job ends.
    let script = format!(
        "setsid sh -c 'echo $$ > {pid}.tmp && mv {pid}.tmp {pid}; exec sleep 300' & \
         while [ ! -e {pid} ]; do sleep 0.01; done; echo done",
        pid = pidfile.display()
    );
    let r = runner(dir.path(), &["sh"]);
    let run = run_shell(&r, &shell("sh", &["-c", &script])).await;
    let pid = read_pid(&pidfile).await;
    // It left our group on purpose, so killing the group missed it.
    assert!(!is_gone(pid), "the escaped process should still run");
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    assert_eq!(run.result.error, None);
    assert_eq!(run.result.stdout, "done\n");
    assert!(
        run.result.duration_ms >= PIPE_DRAIN_TIMEOUT.as_millis() as u64,
        "{}",
        run.result.duration_ms
    );
    wait_gone(pid).await;
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
    let home = vars.get("HOME").expect("HOME is set");
    assert!(
        home.starts_with(r.work_dirs.root().to_str().unwrap()),
        "{home}"
    );
    let names: Vec<&str> = vars.keys().copied().collect();
    assert_eq!(names, ["HOME", "JOB_VAR", "LANG", "PASSED", "PATH"]);
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

    let run = run_shell(&r, &shell("sh", &["-c", "kill -KILL $$"])).await;
    assert_eq!(run.result.exit_code, None);
    assert_eq!(
        run.result.error.as_deref(),
        Some("killed by signal SIGKILL")
    );
}

#[tokio::test]
async fn a_stopped_job_is_killed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let script = format!("echo $$ > {}; exec sleep 300", pidfile.display());
    let r = runner(dir.path(), &["sh"]);
    let (stop_tx, stop) = never_stopped();
    let spec = shell("sh", &["-c", &script]);
    let job = tokio::spawn(async move { r.run_shell("job-1", &spec, stop).await });
    let deadline = Instant::now() + GONE_DEADLINE;
    while std::fs::read_to_string(&pidfile).map_or(true, |s| !s.ends_with('\n')) {
        assert!(Instant::now() < deadline, "job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send_replace(Some(StopReason::ShuttingDown));
    let run = job.await.unwrap();
    assert_eq!(run.stopped, Some(StopReason::ShuttingDown));
    assert_eq!(run.result.error.as_deref(), Some("host shutting down"));
    wait_gone(read_pid(&pidfile).await).await;
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
    let mut r = runner(dir.path(), &[]);
    r.openclaw_command = fake_openclaw(dir.path()).display().to_string();
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
