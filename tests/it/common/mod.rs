//! The test kit every integration test is built on: starts coordinators and
//! hosts as real `skyclaw` processes on 127.0.0.1 with port 0 and temp data
//! directories, talks to them through the real client and CLI, serves a fake
//! coordinator to a host daemon run in process (`fake_coordinator`), runs
//! gateways and the endpoints behind them (`gateway`), hands
//! out job uid ranges, and waits on conditions with deadlines.

pub mod fake_coordinator;
pub mod fake_gateway;
pub mod gateway;
pub mod services;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use skyclaw_api::hosts::RegisterHost;
use skyclaw_api::jobs::{Job, JobSpec, JobStatus};
use skyclaw_api::{Client, Credentials};

/// The cluster token every test network uses.
pub const TOKEN: &str = "test-token-0123456789abcdef";
/// How long any condition may take to hold before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Interval between checks of a condition.
const POLL: Duration = Duration::from_millis(20);

pub fn skyclaw() -> Command {
    isolated(Command::new(env!("CARGO_BIN_EXE_skyclaw")))
}

/// `skyclaw` started with its open-file limit, soft and hard, set to `limit`,
/// as on a machine with a low hard limit.
pub fn skyclaw_with_open_files(limit: u64) -> Command {
    let mut cmd = isolated(Command::new("sh"));
    cmd.args(["-c", r#"ulimit -n "$0" && exec "$@""#])
        .arg(limit.to_string())
        .arg(env!("CARGO_BIN_EXE_skyclaw"));
    cmd
}

/// Nothing from the developer's environment leaks into a test network.
fn isolated(mut cmd: Command) -> Command {
    for (name, _) in std::env::vars() {
        if name.starts_with("SKYCLAW_") {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.env("SKYCLAW_LOG", "warn");
    cmd
}

/// Polls `check` until it returns `Some`, or panics after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A coordinator process.
pub struct Coordinator {
    child: Option<Child>,
    pub dir: PathBuf,
    pub url: String,
    extra: Vec<String>,
    /// The open-file limit it runs under, when not the test process's.
    open_files: Option<u64>,
}

impl Coordinator {
    /// Starts a coordinator on a free port with data in `dir`.
    pub async fn start(dir: &Path, extra: &[&str]) -> Coordinator {
        Coordinator::start_limited(dir, extra, None).await
    }

    /// Starts a coordinator whose open-file limit, soft and hard, is
    /// `open_files` when given.
    pub async fn start_limited(dir: &Path, extra: &[&str], open_files: Option<u64>) -> Coordinator {
        let mut c = Coordinator {
            child: None,
            dir: dir.to_path_buf(),
            url: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            open_files,
        };
        c.spawn("127.0.0.1:0").await;
        c
    }

    async fn spawn(&mut self, listen: &str) {
        let url_file = self.dir.join("coordinator.url");
        let _ = std::fs::remove_file(&url_file);
        let mut command = match self.open_files {
            Some(limit) => skyclaw_with_open_files(limit),
            None => skyclaw(),
        };
        let child = command
            .args([
                "coordinator",
                "--listen",
                listen,
                "--token",
                TOKEN,
                "--data-dir",
            ])
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn coordinator");
        self.child = Some(child);
        self.url = eventually("the coordinator's url file", || async {
            std::fs::read_to_string(&url_file)
                .ok()
                .filter(|u| !u.is_empty())
        })
        .await;
        let client = self.client();
        eventually("the coordinator to answer /health", || async {
            client.health().await.ok()
        })
        .await;
    }

    /// Takes the write lock of the coordinator's state database until the
    /// answer is dropped: entries commit to the Raft log but cannot apply, so
    /// every write waits. Hold it for less than SQLite's busy timeout (5 s):
    /// past it the coordinator's state machine fails and stops.
    pub fn hold_state_database(&self) -> DatabaseLock {
        let conn = rusqlite::Connection::open(self.dir.join("coordinator.db"))
            .expect("open the coordinator's database");
        conn.execute_batch("BEGIN IMMEDIATE")
            .expect("take the database's write lock");
        DatabaseLock(conn)
    }

    pub fn client(&self) -> Client {
        Client::new(
            std::slice::from_ref(&self.url),
            Credentials::Token(TOKEN.into()),
        )
        .unwrap()
    }

    /// The CLI against this coordinator with the cluster token.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = skyclaw();
        cmd.args(args)
            .env("SKYCLAW_COORDINATOR_URLS", &self.url)
            .env("SKYCLAW_TOKEN", TOKEN)
            .stdin(Stdio::null());
        cmd
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 coordinator");
            child.wait().expect("reap coordinator");
        }
    }

    /// True while the process started last is running (not killed or stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends SIGTERM and returns the exit status; fails the test when the
    /// process does not exit within [`DEADLINE`].
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("coordinator running");
        let status = sigterm_and_reap(child, "coordinator");
        self.child = None;
        status
    }

    /// The applied Raft log index this coordinator reports on `/health`.
    pub async fn applied_index(&self) -> Option<u64> {
        let health = self.client().health().await.ok()?;
        health["applied_index"].as_u64()
    }

    /// Starts the coordinator again on the same address with the same data.
    pub async fn restart(&mut self) {
        let listen = self.url.trim_start_matches("http://").to_string();
        self.spawn(&listen).await;
    }

    /// Starts the coordinator again with the same data on a new free port;
    /// [`Coordinator::url`] is the new address afterwards.
    pub async fn restart_on_new_port(&mut self) {
        self.spawn("127.0.0.1:0").await;
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A coordinator's state database held locked; see
/// [`Coordinator::hold_state_database`].
pub struct DatabaseLock(rusqlite::Connection);

impl Drop for DatabaseLock {
    fn drop(&mut self) {
        self.0
            .execute_batch("ROLLBACK")
            .expect("release the database's write lock");
    }
}

/// A host daemon process.
pub struct Host {
    child: Option<Child>,
    pub dir: PathBuf,
    /// Where the process's stderr goes, when the test reads it.
    stderr: Option<PathBuf>,
}

impl Host {
    /// Starts a host allowing `allow` (comma-separated) against `coordinators`.
    pub fn start(coordinators: &str, dir: &Path, allow: &str, extra: &[&str]) -> Host {
        Host::spawn(coordinators, dir, &["--allow-commands", allow], extra, None)
    }

    /// [`Host::start`], with the host's stderr kept for [`Host::stderr`]
    /// (in `<dir>.stderr`) instead of shown.
    pub fn start_logged(coordinators: &str, dir: &Path, allow: &str, extra: &[&str]) -> Host {
        let log = dir.with_extension("stderr");
        Host::spawn(
            coordinators,
            dir,
            &["--allow-commands", allow],
            extra,
            Some(log),
        )
    }

    /// Starts a sandbox-only host (WASI jobs only) against `coordinators`.
    pub fn start_sandboxed(coordinators: &str, dir: &Path, extra: &[&str]) -> Host {
        Host::spawn(coordinators, dir, &["--sandbox-only"], extra, None)
    }

    fn spawn(
        coordinators: &str,
        dir: &Path,
        mode: &[&str],
        extra: &[&str],
        stderr: Option<PathBuf>,
    ) -> Host {
        let mut command = skyclaw();
        command
            .args(["host", "--coordinator", coordinators, "--token", TOKEN])
            .args(mode)
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null());
        let chose_users = extra
            .iter()
            .any(|a| a.starts_with("--job-uids") || a.starts_with("--allow-same-user"));
        if !chose_users {
            command.args(["--job-uids", &job_uids()]);
        }
        if let Some(log) = &stderr {
            command.stderr(std::fs::File::create(log).expect("create the host's stderr file"));
        }
        let child = command.spawn().expect("spawn host");
        Host {
            child: Some(child),
            dir: dir.to_path_buf(),
            stderr,
        }
    }

    /// What the host wrote to stderr so far (started with [`Host::start_logged`]).
    pub fn stderr(&self) -> String {
        let log = self
            .stderr
            .as_ref()
            .expect("host started with start_logged");
        std::fs::read_to_string(log).expect("read the host's stderr")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("host running").id()
    }

    /// The id the host chose for itself, once it has written it.
    pub async fn id(&self) -> String {
        let file = self.dir.join("host-id");
        eventually("the host id file", || async {
            std::fs::read_to_string(&file)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        })
        .await
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 host");
            child.wait().expect("reap host");
        }
    }

    /// Sends SIGTERM and returns the exit status; fails the test when the
    /// process does not exit within [`DEADLINE`].
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("host running");
        let status = sigterm_and_reap(child, "host");
        self.child = None;
        status
    }
}

/// Sends SIGTERM to `child` and waits up to [`DEADLINE`] for it to exit. On
/// failure the child stays where it was, for its owner's `Drop` to kill.
fn sigterm_and_reap(child: &mut Child, what: &str) -> std::process::ExitStatus {
    signal_and_reap(child, nix::sys::signal::Signal::SIGTERM, what)
}

/// Sends `signal` to `child` and waits up to [`DEADLINE`] for it to exit.
fn signal_and_reap(
    child: &mut Child,
    signal: nix::sys::signal::Signal,
    what: &str,
) -> std::process::ExitStatus {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
        .unwrap_or_else(|e| panic!("{signal} {what}: {e}"));
    let start = Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .unwrap_or_else(|e| panic!("reap {what}: {e}"))
        {
            return status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the {what} did not exit within {DEADLINE:?} of {signal}"
        );
        std::thread::sleep(POLL);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until the coordinator lists `host_id` as up.
pub async fn host_up(client: &Client, host_id: &str) {
    eventually(&format!("host {host_id} to be up"), || async {
        let hosts = client.list_hosts().await.ok()?;
        hosts
            .hosts
            .iter()
            .any(|h| h.id == host_id && h.status == skyclaw_api::hosts::HostStatus::Up)
            .then_some(())
    })
    .await
}

/// A `skyclaw dev` process run in `root` (its data in `root/.skyclaw`), on a
/// free port, its stderr kept in `root/dev.stderr`.
pub struct Dev {
    child: Option<Child>,
    pub root: PathBuf,
    /// Where it serves, from the URL file it writes.
    pub url: String,
}

impl Dev {
    /// The data directory `dev` keeps in its root.
    pub const DIR: &str = ".skyclaw";

    /// `skyclaw dev` in `root` on port 0 (its gateway too) with a job uid range of its own, to
    /// start with [`Dev::spawn`] once the test has added what it needs.
    pub fn command(root: &Path) -> Command {
        let mut cmd = skyclaw();
        // Port 0 for the gateway too: dev tests run side by side.
        cmd.args([
            "dev",
            "--data-dir",
            Dev::DIR,
            "--port",
            "0",
            "--gateway-port",
            "0",
        ])
        .args(["--job-uids", &job_uids()])
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        cmd
    }

    /// Starts `dev` in `root` with the usual flags.
    pub async fn start(root: &Path) -> Dev {
        Dev::spawn(Dev::command(root), root).await
    }

    /// Starts `command` (from [`Dev::command`]) and waits for its URL file
    /// and for its coordinator to answer.
    pub async fn spawn(mut command: Command, root: &Path) -> Dev {
        let url_file = root.join(Dev::DIR).join("url");
        let _ = std::fs::remove_file(&url_file);
        let log = std::fs::File::create(root.join("dev.stderr")).expect("create dev.stderr");
        let child = command.stderr(log).spawn().expect("spawn skyclaw dev");
        let mut dev = Dev {
            child: Some(child),
            root: root.to_path_buf(),
            url: String::new(),
        };
        dev.url = eventually("skyclaw dev to write its url", || async {
            std::fs::read_to_string(&url_file)
                .ok()
                .map(|u| u.trim().to_string())
                .filter(|u| skyclaw_api::url::is_http_url(u))
        })
        .await;
        let health = format!("{}/health", dev.url);
        eventually("skyclaw dev to answer /health", || async {
            reqwest::get(&health)
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        })
        .await;
        dev
    }

    /// The dev data directory.
    pub fn dir(&self) -> PathBuf {
        self.root.join(Dev::DIR)
    }

    /// The CLI run in `cwd` as a user would, with no URL or credentials:
    /// what it needs it finds in the dev directory.
    pub fn cli_in(cwd: &Path, args: &[&str]) -> Output {
        skyclaw()
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .output()
            .expect("run skyclaw")
    }

    /// [`Dev::cli_in`] in the directory `dev` runs in.
    pub fn cli(&self, args: &[&str]) -> Output {
        Dev::cli_in(&self.root, args)
    }

    /// What `dev` wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.root.join("dev.stderr")).expect("read dev.stderr")
    }

    /// Ctrl-C: sends SIGINT and returns the exit status; fails the test when
    /// the process does not exit within [`DEADLINE`].
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("dev running");
        let status = signal_and_reap(child, nix::sys::signal::Signal::SIGINT, "dev");
        self.child = None;
        status
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 dev");
            child.wait().expect("reap dev");
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A one-coordinator, one-host network in a temp dir.
pub struct Network {
    // Fields drop in order: the host stops before its coordinator does.
    pub host: Host,
    pub host_id: String,
    pub coordinator: Coordinator,
    pub tmp: tempfile::TempDir,
}

impl Network {
    pub async fn start(allow: &str, host_extra: &[&str]) -> Network {
        Network::start_with(&[], allow, host_extra).await
    }

    /// A network whose coordinator also gets `coordinator_extra`.
    pub async fn start_with(
        coordinator_extra: &[&str],
        allow: &str,
        host_extra: &[&str],
    ) -> Network {
        let tmp = tempfile::tempdir().unwrap();
        let coordinator = Coordinator::start(&tmp.path().join("coord"), coordinator_extra).await;
        let host = Host::start(
            &coordinator.url,
            &tmp.path().join("host"),
            allow,
            host_extra,
        );
        let host_id = host.id().await;
        host_up(&coordinator.client(), &host_id).await;
        Network {
            host,
            host_id,
            coordinator,
            tmp,
        }
    }

    pub fn client(&self) -> Client {
        self.coordinator.client()
    }

    /// Runs the CLI against this network with the cluster token.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("run skyclaw")
    }

    /// The CLI against this network, to start and wait on later.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.coordinator.cli_command(args);
        cmd.current_dir(self.tmp.path());
        cmd
    }
}

/// A stand-in for the OpenClaw CLI, in a directory of its own that job users
/// can enter (kept while the returned guard lives): `--version` answers
/// `openclaw 9.9.9`, and an agent turn prints its arguments as JSON.
pub fn fake_openclaw() -> (tempfile::TempDir, PathBuf) {
    let dir = shared_dir();
    let path = dir.path().join("openclaw");
    std::fs::write(
        &path,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'openclaw 9.9.9'; exit 0; fi\n\
         printf '{\"args\":['; sep=''; for a in \"$@\"; do printf '%s\"%s\"' \"$sep\" \"$a\"; sep=','; done; printf ']}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (dir, path)
}

/// Jobs a [`fake_host`] may hold at once.
pub const FAKE_HOST_PARALLEL: usize = 4;

/// A host registered by hand (no daemon behind it) offering `capabilities`:
/// it stays live for one host TTL unless the test heartbeats for it.
pub fn fake_host(host_id: &str, capabilities: &[&str]) -> RegisterHost {
    RegisterHost {
        host_id: host_id.into(),
        incarnation: "fake-incarnation".into(),
        name: host_id.into(),
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        max_parallel: FAKE_HOST_PARALLEL as u32,
        allowed_commands: vec!["true".into()],
        openclaw_version: None,
        version: "test".into(),
        sandbox_only: false,
        wasi: None,
        services: None,
    }
}

/// Registers a [`fake_host`] offering `shell` and heartbeats for it every
/// `every` until the returned task is aborted.
pub async fn live_fake_host(
    client: &Client,
    host_id: &str,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    keep_live(client, &fake_host(host_id, &["shell"]), every).await
}

/// Registers `registration` and heartbeats for it every `every` until the
/// returned task is aborted.
pub async fn keep_live(
    client: &Client,
    registration: &RegisterHost,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    client
        .register_host(registration)
        .await
        .expect("register a fake host");
    // It holds no leases, as a daemon with nothing running.
    let (client, host_id) = (client.clone(), registration.host_id.clone());
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(every);
        loop {
            beat.tick().await;
            let _ = client
                .heartbeat(&host_id, &skyclaw_api::hosts::Heartbeat::default())
                .await;
        }
    })
}

/// Submits a spec given as JSON and waits for the job to be terminal.
pub async fn run_job(client: &Client, spec: serde_json::Value) -> Job {
    let spec: JobSpec = serde_json::from_value(spec).expect("valid spec");
    let job = client.submit_job(&spec, None).await.expect("submit");
    wait_terminal(client, &job.id).await
}

/// Waits until job `id` has `status`.
pub async fn wait_status(client: &Client, id: &str, status: JobStatus) -> Job {
    eventually(&format!("job {id} to be {status:?}"), || async {
        let job = client.get_job(id).await.ok()?;
        (job.status == status).then_some(job)
    })
    .await
}

pub async fn wait_terminal(client: &Client, id: &str) -> Job {
    eventually(&format!("job {id} to finish"), || async {
        let job = client
            .wait_job_once(id, Duration::from_secs(5))
            .await
            .ok()?;
        job.status.is_terminal().then_some(job)
    })
    .await
}

/// A temp directory that job users can enter and read: for programs a host
/// allows. Outside /tmp, which every job sees replaced by its own.
pub fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A file every job may append to, outside /tmp (which jobs do not see), for
/// tests that count how often jobs ran: jobs run as users of their own, so
/// the file is writable by all. Kept while the returned guard lives.
pub fn execution_log() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = shared_dir();
    let log = dir.path().join("executions.log");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    (dir, log)
}

/// Job uids in ranges of this size, one range per host a test starts.
const JOB_UIDS_PER_HOST: u32 = 256;
/// Ranges a test process may hand out before it reuses the first: every
/// integration test runs in one process, and far fewer hosts than this live
/// at once.
const JOB_UID_RANGES_PER_PROCESS: u32 = 1024;
/// Test processes whose stretches of ranges differ (by pid): with
/// [`JOB_UID_RANGES_PER_PROCESS`] and [`JOB_UIDS_PER_HOST`] they stay below
/// 2^31, where uids are still valid everywhere.
const JOB_UID_PROCESS_SLOTS: u32 = 2000;

/// A job uid range no other host of the test run holds: hosts in concurrent
/// tests must never share a uid (each would take the other's jobs for
/// leftovers), and a machine lets only one host claim a range. For a host
/// daemon run in process; [`job_uids`] is the same as a `--job-uids` value.
pub fn job_uid_range() -> skyclaw_runtime::UidRange {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let turn = NEXT.fetch_add(1, Ordering::Relaxed) % JOB_UID_RANGES_PER_PROCESS;
    let slot = (std::process::id() % JOB_UID_PROCESS_SLOTS) * JOB_UID_RANGES_PER_PROCESS + turn;
    let first = 1_000_000_000 + slot * JOB_UIDS_PER_HOST;
    skyclaw_runtime::UidRange {
        first,
        last: first + JOB_UIDS_PER_HOST - 1,
    }
}

/// A `--job-uids` value (`FIRST-LAST`) for a host process: a
/// [`job_uid_range`].
pub fn job_uids() -> String {
    job_uid_range().to_string()
}

/// Host pids of live processes (zombies aside) whose command line contains
/// `marker`. Jobs run in PID namespaces of their own: what they call their
/// pid means nothing here, so tests find their processes by what they run.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !process_gone(pid)
                && String::from_utf8_lossy(&cmdline)
                    .replace('\0', " ")
                    .contains(marker)
        })
        .collect()
}

/// Waits until at least `count` processes run `marker`; their host pids.
pub async fn wait_processes(marker: &str, count: usize) -> Vec<i32> {
    eventually(&format!("{count} processes running {marker:?}"), || async {
        let found = processes_with(marker);
        (found.len() >= count).then_some(found)
    })
    .await
}

/// Waits until no process runs `marker`.
pub async fn wait_no_processes(marker: &str) {
    eventually(
        &format!("every process running {marker:?} to be gone"),
        || async { processes_with(marker).is_empty().then_some(()) },
    )
    .await
}

/// The value of one series on a node's `/metrics`, such as
/// `skyclaw_jobs{status="queued"}`; `None` when it cannot be read. Each call
/// opens a connection of its own, so none is left pooled.
pub async fn metric(url: &str, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// Raises this test process's soft open-file limit to its hard limit, as
/// nodes do, and fails the test unless `needed` descriptors fit.
pub fn raise_open_files(needed: u64) {
    let limit = skyclaw_api::serve::raise_nofile_limit().expect("raise the open-file limit");
    assert!(
        limit >= needed,
        "this test needs {needed} open files but the hard limit is {limit} (raise `ulimit -Hn`)"
    );
}

/// True once `pid` no longer runs (a zombie counts as gone).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// A replicated coordinator cluster: node `i` of [`Cluster::nodes`] runs with
/// `--node-id i+1`; the first initialises the cluster, the others join it
/// through the first one's URL, one at a time, so roles are predictable:
/// the first `voters` nodes become voters, later ones stay learners.
pub struct Cluster {
    pub nodes: Vec<Coordinator>,
    pub tmp: tempfile::TempDir,
    voters: usize,
    extra: Vec<String>,
}

/// A peer as compared across nodes: id, url, and voter or learner.
pub type PeerView = (u64, String, skyclaw_api::network::PeerRole);

impl Cluster {
    /// Starts `n` coordinators with `--voters voters` (and `extra` on every
    /// node) and waits until the peers table shows all of them in their roles.
    pub async fn start(n: usize, voters: usize, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster {
            nodes: Vec::new(),
            tmp: tempfile::tempdir().unwrap(),
            voters,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..n {
            cluster.add().await;
        }
        cluster
    }

    /// Starts the next node (bootstrapping from node 1 unless it is node 1)
    /// and waits until it is listed with the role it should get.
    pub async fn add(&mut self) -> usize {
        let index = self.nodes.len();
        let id = (index + 1).to_string();
        let voters = self.voters.to_string();
        let mut args: Vec<&str> = vec!["--node-id", &id, "--voters", &voters];
        let bootstrap = self.nodes.first().map(|n| n.url.clone());
        if let Some(url) = &bootstrap {
            args.extend(["--bootstrap", url.as_str()]);
        }
        args.extend(self.extra.iter().map(String::as_str));
        let dir = self.tmp.path().join(format!("coord{}", index + 1));
        let node = Coordinator::start(&dir, &args).await;
        self.nodes.push(node);
        let expected = self.expected_roles();
        self.wait_for_peers(&format!("node {} to join", index + 1), |view| {
            *view == expected
        })
        .await;
        index
    }

    /// The peers every node should list once all have joined: the first
    /// `voters` nodes vote (one of them leads), the rest are learners.
    pub fn expected_roles(&self) -> Vec<(u64, String, bool)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u64 + 1, n.url.clone(), i < self.voters))
            .collect()
    }

    /// All node URLs, comma-separated, as hosts and the CLI take them.
    pub fn urls(&self) -> String {
        self.url_list().join(",")
    }

    pub fn url_list(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    /// A client that knows every node and fails over between them.
    pub fn client(&self) -> Client {
        Client::new(&self.url_list(), Credentials::Token(TOKEN.into())).unwrap()
    }

    /// The nodes still running.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect()
    }

    /// Asks node `index` (which forwards to the leader) for the peers table.
    pub async fn peers_of(&self, index: usize) -> Option<skyclaw_api::network::PeerList> {
        self.nodes[index].client().peers().await.ok()
    }

    /// Waits until every running node answers the same peers table, with a
    /// leader, and `check` accepts it as (id, url, is-voter) sorted by id.
    /// Returns the table.
    pub async fn wait_for_peers(
        &self,
        what: &str,
        check: impl Fn(&Vec<(u64, String, bool)>) -> bool,
    ) -> skyclaw_api::network::PeerList {
        use skyclaw_api::network::PeerRole;
        eventually(what, || async {
            let mut agreed: Option<(Option<u64>, Vec<PeerView>)> = None;
            let mut table = None;
            for i in self.live() {
                let list = self.peers_of(i).await?;
                let mut view: Vec<PeerView> = list
                    .peers
                    .iter()
                    .map(|p| (p.id, p.url.clone(), p.role))
                    .collect();
                view.sort_by_key(|p| p.0);
                let this = (list.leader_id, view);
                match &agreed {
                    None => agreed = Some(this),
                    Some(seen) if *seen != this => return None,
                    Some(_) => {}
                }
                table = Some(list);
            }
            let (leader, view) = agreed?;
            let leader = leader?;
            let leaders: Vec<u64> = view
                .iter()
                .filter(|p| p.2 == PeerRole::Leader)
                .map(|p| p.0)
                .collect();
            if leaders != [leader] {
                return None;
            }
            let roles: Vec<(u64, String, bool)> = view
                .into_iter()
                .map(|(id, url, role)| (id, url, role != PeerRole::Learner))
                .collect();
            check(&roles).then_some(table?)
        })
        .await
    }

    /// Waits until every running node names the same leader, one that runs,
    /// and returns its index in [`Cluster::nodes`].
    pub async fn leader(&self) -> usize {
        eventually("the running nodes to agree on a running leader", || async {
            let mut leader = None;
            for i in self.live() {
                let id = self.peers_of(i).await?.leader_id?;
                if leader.is_some_and(|l| l != id) {
                    return None;
                }
                leader = Some(id);
            }
            let index = usize::try_from(leader? - 1).ok()?;
            self.nodes.get(index)?.is_running().then_some(index)
        })
        .await
    }

    /// A running node other than `not`.
    pub fn follower(&self, not: usize) -> usize {
        self.live()
            .into_iter()
            .find(|&i| i != not)
            .expect("another running node")
    }
}

pub use guests::{example, guest};

/// Misbehaving clients over raw TCP: sockets that send nothing, send one
/// request and then idle, or send a request head a byte at a time; each is
/// watched for the server closing it.
pub mod sockets {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::task::JoinSet;

    use super::DEADLINE;

    /// What a slowloris sender sends first: a request head that never ends.
    const SLOW_HEAD: &[u8] = b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ";

    /// Sockets held open against a node; dropping this closes them all.
    #[derive(Default)]
    pub struct Sockets {
        tasks: JoinSet<()>,
        ready: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
    }

    impl Sockets {
        /// Opens `n` connections to `url` (`http://IP:PORT`) that send nothing.
        pub fn silent(&mut self, url: &str, n: usize) {
            self.open(url, n, |stream| async { Some(stream) });
        }

        /// Opens `n` connections that each send one keep-alive `GET /health`,
        /// read its answer and then send nothing more.
        pub fn kept_alive(&mut self, url: &str, n: usize) {
            self.open(url, n, |mut stream| async move {
                stream
                    .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
                    .await
                    .ok()?;
                let (status, _) = read_answer(&mut stream).await?;
                (status == 200).then_some(stream)
            });
        }

        /// Opens `n` connections that send the start of a request head and then
        /// one more byte of a header value every `every`, never ending the head.
        pub fn slowloris(&mut self, url: &str, n: usize, every: Duration) {
            let addr = addr(url);
            for _ in 0..n {
                let addr = addr.clone();
                let ready = self.ready.clone();
                let closed = self.closed.clone();
                self.tasks.spawn(async move {
                    let Ok(mut stream) = TcpStream::connect(&addr).await else {
                        return;
                    };
                    if stream.write_all(SLOW_HEAD).await.is_err() {
                        return;
                    }
                    ready.fetch_add(1, Ordering::Relaxed);
                    let started = Instant::now();
                    let mut buf = [0u8; 1024];
                    let mut tick = tokio::time::interval(every);
                    while started.elapsed() < DEADLINE {
                        let shut = tokio::select! {
                            read = stream.read(&mut buf) => matches!(read, Ok(0) | Err(_)),
                            _ = tick.tick() => stream.write_all(b"a").await.is_err(),
                        };
                        if shut {
                            closed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                });
            }
        }

        /// Connects `n` times and runs `setup` on each connection; one whose
        /// setup succeeds counts as ready and is then watched until the server
        /// closes it.
        fn open<F, Fut>(&mut self, url: &str, n: usize, setup: F)
        where
            F: Fn(TcpStream) -> Fut + Clone + Send + 'static,
            Fut: Future<Output = Option<TcpStream>> + Send,
        {
            let addr = addr(url);
            for _ in 0..n {
                let (addr, setup) = (addr.clone(), setup.clone());
                let ready = self.ready.clone();
                let closed = self.closed.clone();
                self.tasks.spawn(async move {
                    let Ok(stream) = TcpStream::connect(&addr).await else {
                        return;
                    };
                    let Some(stream) = setup(stream).await else {
                        return;
                    };
                    ready.fetch_add(1, Ordering::Relaxed);
                    if server_closes(stream).await {
                        closed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        }

        /// Connections connected and set up (a request answered, a head begun).
        pub fn ready(&self) -> usize {
            self.ready.load(Ordering::Relaxed)
        }

        /// Connections the server has closed.
        pub fn closed(&self) -> usize {
            self.closed.load(Ordering::Relaxed)
        }
    }

    fn addr(url: &str) -> String {
        url.trim_start_matches("http://").to_string()
    }

    /// Reads one HTTP/1.1 answer with a `content-length` body: its status and
    /// body; `None` if the connection closes first or the answer is malformed.
    pub async fn read_answer(stream: &mut TcpStream) -> Option<(u16, String)> {
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = stream.read(&mut buf).await.ok().filter(|&n| n > 0)?;
            data.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
        let status = head.split(' ').nth(1)?.parse().ok()?;
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(Some(0), |v| v.trim().parse().ok())?;
        while data.len() < head_end + length {
            let n = stream.read(&mut buf).await.ok().filter(|&n| n > 0)?;
            data.extend_from_slice(&buf[..n]);
        }
        let body = String::from_utf8_lossy(&data[head_end..head_end + length]).into_owned();
        Some((status, body))
    }

    /// Whether the server closes `stream` (end of file or a reset) within
    /// [`DEADLINE`]; anything it sends first is discarded.
    async fn server_closes(mut stream: TcpStream) -> bool {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(DEADLINE, async {
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await
        .is_ok()
    }
}

/// The WASI programs tests run on hosts: the guests in `tests/guests` and the
/// examples in `examples/`, built on first use in each test process with the
/// cargo that runs the tests, into `target/guests` (a target directory of
/// their own, so the build never waits for the outer cargo's lock).
pub mod guests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Mutex;

    /// Guests built for `wasm32-wasip1` (preview 1 core modules); every other
    /// guest is a `wasm32-wasip2` component.
    pub const PREVIEW1: &[&str] = &["p1hello"];

    /// Builds done so far in this process, as (manifest, target).
    static BUILT: Mutex<BTreeSet<(String, &'static str)>> = Mutex::new(BTreeSet::new());

    fn repo() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR"))
    }

    fn target_dir() -> PathBuf {
        repo().join("target").join("guests")
    }

    /// The built `.wasm` of guest `name` (a bin of `tests/guests`): a
    /// component, or a core module for the guests in [`PREVIEW1`].
    pub fn guest(name: &str) -> PathBuf {
        let target = if PREVIEW1.contains(&name) {
            "wasm32-wasip1"
        } else {
            "wasm32-wasip2"
        };
        built("tests/guests/Cargo.toml", target, name)
    }

    /// The built `.wasm` component of the example in `examples/<name>`: a
    /// binary's is named as the package is, a library's (`cdylib`, as
    /// wasi:http components are) with `_` for `-`.
    pub fn example(name: &str) -> PathBuf {
        let manifest = format!("examples/{name}/Cargo.toml");
        let text = std::fs::read_to_string(repo().join(&manifest)).expect("read the example");
        let program = if text.contains("cdylib") {
            name.replace('-', "_")
        } else {
            name.to_string()
        };
        built(&manifest, "wasm32-wasip2", &program)
    }

    /// Builds the project at `manifest` for `target` unless this process
    /// already did, and returns the path of its program `name`.
    fn built(manifest: &str, target: &'static str, name: &str) -> PathBuf {
        let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        if !built.contains(&(manifest.to_string(), target)) {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--release", "--target", target, "--manifest-path"])
                .arg(repo().join(manifest))
                .env("CARGO_TARGET_DIR", target_dir())
                .current_dir(repo());
            if target == "wasm32-wasip1" {
                for bin in PREVIEW1 {
                    cmd.args(["--bin", bin]);
                }
            }
            let out = cmd.output().expect("run cargo to build the guests");
            assert!(
                out.status.success(),
                "building {manifest} for {target} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            built.insert((manifest.to_string(), target));
        }
        let path = target_dir()
            .join(target)
            .join("release")
            .join(format!("{name}.wasm"));
        assert!(path.is_file(), "{manifest} built no {}", path.display());
        path
    }
}

/// wasi:http serving in process: a WASI engine of the runtime's own, a
/// component of `tests/guests` loaded into it and served on 127.0.0.1 port
/// 0, a plain HTTP client, and local upstream servers for outbound calls.
pub mod serving {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;

    use skyclaw_api::jobs::WasiLimits;
    use skyclaw_api::services::OutboundRule;
    use skyclaw_runtime::HostConfig;
    use skyclaw_runtime::wasi::{HttpOptions, HttpProgram, HttpServer, WasiEngine, WasiSettings};

    /// Guest threads: two, so that a guest spinning on one never stalls
    /// the rest, as on any host with more than one core.
    const GUEST_THREADS: usize = 2;

    /// An engine with the host's default caps, one job slot and
    /// `max_http_requests` request slots, its code cache under `dir`.
    pub fn engine(dir: &Path, max_http_requests: u32) -> WasiEngine {
        let config = HostConfig::new(Vec::new(), String::new(), dir.to_path_buf());
        WasiEngine::new(WasiSettings {
            caps: config.wasi_caps(),
            max_parallel: 1,
            max_http_requests,
            guest_threads: GUEST_THREADS,
            max_output_bytes: 64 * 1024,
            code_cache_dir: dir.join("code"),
            host_name: "test-host".to_string(),
        })
        .expect("a WASI engine")
    }

    /// Loads the built guest `name` (a wasi:http component) into `engine`.
    pub async fn load(engine: &WasiEngine, name: &str) -> Arc<HttpProgram> {
        let path = super::guest(name);
        let (digest, _) = skyclaw_api::artifacts::digest_file(&path)
            .await
            .expect("hash the guest");
        engine
            .load_http(&digest, &path)
            .await
            .unwrap_or_else(|e| panic!("load {name}: {e}"))
    }

    /// Serves `program` on 127.0.0.1 port 0 with `limits` and `outbound`
    /// rules (`http://127.0.0.1:4000` and the like).
    pub async fn serve(
        engine: &WasiEngine,
        program: Arc<HttpProgram>,
        limits: WasiLimits,
        outbound: &[String],
    ) -> HttpServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let outbound = outbound
            .iter()
            .map(|rule| OutboundRule::parse(rule).expect("a valid outbound rule"))
            .collect();
        let options = HttpOptions {
            service: "test-service".to_string(),
            limits,
            outbound,
        };
        engine
            .serve_http(program, listener, options)
            .expect("serve the program")
    }

    /// A client that goes straight to 127.0.0.1, whatever proxy the
    /// environment names.
    pub fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("an HTTP client")
    }

    /// `GET http://addr{path}`: its status and body as text.
    pub async fn get(client: &reqwest::Client, addr: SocketAddr, path: &str) -> (u16, String) {
        let response = client
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let body = response.text().await.expect("a body");
        (status, body)
    }

    /// An upstream HTTP server on 127.0.0.1 port 0 that answers every path
    /// with `body`; it stops when the returned task is aborted or dropped
    /// with the test's runtime.
    pub async fn upstream(body: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("a local address");
        let app = axum::Router::new().fallback(move || async move { body });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve upstream");
        });
        (addr, task)
    }
}

// The Raft log and state databases of a coordinator, read from outside.

/// Opens a node's SQLite database for reading beside the node.
pub fn open_read_only(path: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// A coordinator's replicated state, read in one transaction from its
/// database: the applied index and every row of every table, sorted. Tables
/// come from `sqlite_master`, so a new table is compared without a change here.
pub fn replica_state(dir: &Path) -> rusqlite::Result<(u64, Vec<String>)> {
    let mut conn = open_read_only(&dir.join("coordinator.db"))?;
    let tx = conn.transaction()?;
    let applied: u64 = tx.query_row(
        "SELECT value FROM meta WHERE key = 'applied_index'",
        [],
        |r| r.get(0),
    )?;
    let tables: Vec<String> = tx
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut rows = Vec::new();
    for table in tables {
        let mut stmt = tx.prepare(&format!("SELECT * FROM \"{table}\""))?;
        let columns = stmt.column_count();
        let mut query = stmt.query([])?;
        let mut table_rows = Vec::new();
        while let Some(row) = query.next()? {
            let values: Vec<String> = (0..columns)
                .map(|i| {
                    row.get::<_, rusqlite::types::Value>(i)
                        .map(|v| format!("{v:?}"))
                })
                .collect::<rusqlite::Result<_>>()?;
            table_rows.push(format!("{table}: {}", values.join(" | ")));
        }
        table_rows.sort();
        rows.extend(table_rows);
    }
    Ok((applied, rows))
}

/// Waits until the coordinators in `dirs` have applied the same index and
/// hold the same rows in every table, and returns the row count. On timeout,
/// shows the first rows that differ.
pub async fn same_replicas(dirs: &[PathBuf]) -> usize {
    let start = Instant::now();
    loop {
        let states: Vec<_> = dirs.iter().map(|d| replica_state(d)).collect();
        if let Ok(states) = states.into_iter().collect::<rusqlite::Result<Vec<_>>>() {
            if states.iter().all(|s| *s == states[0]) {
                return states[0].1.len();
            }
            if start.elapsed() > DEADLINE {
                let indexes: Vec<u64> = states.iter().map(|s| s.0).collect();
                for state in &states[1..] {
                    let differ = states[0]
                        .1
                        .iter()
                        .zip(&state.1)
                        .find(|(a, b)| a != b)
                        .map(|(a, b)| format!("{a}\n  vs\n{b}"));
                    if let Some(differ) = differ {
                        panic!("coordinators at applied indexes {indexes:?} differ:\n{differ}");
                    }
                }
                panic!(
                    "coordinators never reached the same state: applied indexes {indexes:?}, rows {:?}",
                    states.iter().map(|s| s.1.len()).collect::<Vec<_>>()
                );
            }
        } else {
            assert!(
                start.elapsed() < DEADLINE,
                "cannot read the coordinator databases"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Credentials on a raw request.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    /// The cluster token.
    Token,
    /// An API key's secret, as a bearer token.
    Key(&'a str),
    /// Any header, such as a wrong token.
    Header(&'a str, &'a str),
}

/// Raw HTTP to one coordinator, without failover or retries, as any client
/// would send it.
pub struct RawApi {
    http: reqwest::Client,
    pub base: String,
}

impl RawApi {
    pub fn new(base: &str) -> RawApi {
        RawApi {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// A request to `path` with `auth`, to add to and send.
    pub fn request(&self, method: &str, path: &str, auth: Auth<'_>) -> reqwest::RequestBuilder {
        let req = self.http.request(
            method.parse().expect("an HTTP method"),
            format!("{}{path}", self.base),
        );
        match auth {
            Auth::None => req,
            Auth::Token => req.header(skyclaw_api::headers::TOKEN, TOKEN),
            Auth::Key(secret) => req.bearer_auth(secret),
            Auth::Header(name, value) => req.header(name, value),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        auth: Auth<'_>,
        body: Option<Vec<u8>>,
    ) -> reqwest::Response {
        let mut req = self.request(method, path, auth);
        if let Some(body) = body {
            req = req.body(body);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} got no answer: {e}"))
    }

    /// Sends a JSON body (if any) and returns the status and the JSON answer
    /// (`Null` when the answer is not JSON).
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        auth: Auth<'_>,
        body: Option<&str>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut req = self.request(method, path, auth);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} got no answer: {e}"));
        let status = resp.status();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }
}

/// Every route a coordinator serves, from its router's own table, as
/// `(method, path, access)` with each `{param}` filled in by a value of the
/// right shape that names nothing stored.
pub fn coordinator_routes() -> Vec<(String, String, skyclaw_coordinator::Access)> {
    let digest = format!("sha256:{}", "0".repeat(64));
    skyclaw_coordinator::routes()
        .into_iter()
        .map(|route| {
            let path = route
                .path
                .replace("{id}", "x-1")
                .replace("{name}", "x-1")
                .replace("{digest}", &digest);
            assert!(
                !path.contains('{'),
                "a parameter to fill in: {}",
                route.path
            );
            (route.method.to_string(), path, route.access)
        })
        .collect()
}

/// The highest index in a coordinator's Raft log (or the last purged one).
pub fn last_log_index(dir: &Path) -> u64 {
    let conn = open_read_only(&dir.join("raft-log.db")).unwrap();
    let last: Option<i64> = conn
        .query_row("SELECT max(idx) FROM log", [], |r| r.get(0))
        .unwrap();
    last.map_or_else(|| last_purged_index(dir).unwrap_or(0), |i| i as u64)
}

/// The index up to which a coordinator's Raft log was purged, if it was.
pub fn last_purged_index(dir: &Path) -> Option<u64> {
    use rusqlite::OptionalExtension;
    let conn = open_read_only(&dir.join("raft-log.db")).ok()?;
    let value: Option<String> = conn
        .query_row(
            "SELECT value FROM state WHERE key = 'last_purged'",
            [],
            |r| r.get(0),
        )
        .optional()
        .ok()?;
    let log_id: serde_json::Value = serde_json::from_str(&value?).unwrap();
    log_id["index"].as_u64()
}

/// True when a coordinator's Raft log holds the entry at `index`.
pub fn log_holds(dir: &Path, index: u64) -> bool {
    let conn = open_read_only(&dir.join("raft-log.db")).unwrap();
    conn.query_row(
        "SELECT count(*) FROM log WHERE idx = ?1",
        [index as i64],
        |r| r.get::<_, i64>(0),
    )
    .unwrap()
        > 0
}

/// The metadata of the snapshot a coordinator keeps (`raft.snapshot`: a
/// header line, a line of JSON metadata, the data), if it keeps one.
pub fn snapshot_meta(dir: &Path) -> Option<serde_json::Value> {
    let file = std::fs::read(dir.join("raft.snapshot")).ok()?;
    let mut lines = file.splitn(3, |&b| b == b'\n');
    assert_eq!(lines.next(), Some(&b"SKYCLAW-SNAPSHOT-FILE 1"[..]));
    Some(serde_json::from_slice(lines.next()?).expect("snapshot metadata is JSON"))
}

/// What a [`FakeServiceHost`] makes of an instance it is assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serve {
    /// Reports it `starting`, then `healthy` at an endpoint of its own
    /// (where nothing listens).
    Healthy,
    /// Reports it `starting`, then `healthy` at this endpoint, which the
    /// test serves.
    At(String),
    /// Reports it `failed` with this `last_error`, as a host whose process
    /// crashed at once (or could not start) would.
    Crash(String),
}

/// A host played by the test, no daemon behind it: registered with service
/// capacity and allowed `node`, kept live, long-polling its assignments and
/// reporting each instance as `serve` decides (from the assignment: its
/// version, its spec), and every instance it is told to stop as `stopped`.
/// Stops when dropped.
pub struct FakeServiceHost {
    beat: tokio::task::JoinHandle<()>,
    serve: tokio::task::JoinHandle<()>,
}

/// Instances one [`FakeServiceHost`] offers to run.
pub const FAKE_SERVICE_INSTANCES: u32 = 8;
/// Heartbeats of a [`FakeServiceHost`]: well within any host TTL tests use.
const FAKE_SERVICE_HEARTBEAT: Duration = Duration::from_millis(200);
/// Longest assignments long-poll of a [`FakeServiceHost`].
const FAKE_SERVICE_WAIT: Duration = Duration::from_secs(5);

impl FakeServiceHost {
    pub async fn start<F>(client: &Client, id: &str, serve: F) -> FakeServiceHost
    where
        F: Fn(&skyclaw_api::services::Assignment) -> Serve + Send + Sync + 'static,
    {
        use skyclaw_api::services::{InstanceReport, InstanceReports, InstanceState};
        let mut registration = fake_host(id, &["shell"]);
        registration.allowed_commands = vec!["node".into()];
        registration.services = Some(skyclaw_api::services::ServiceCaps {
            max_instances: FAKE_SERVICE_INSTANCES,
            control_url: None,
        });
        // So that wasi-http services are placed on it too.
        registration.wasi = Some(skyclaw_api::jobs::WasiCaps {
            default_fuel: skyclaw_api::jobs::DEFAULT_WASI_MAX_FUEL,
            default_memory_mb: skyclaw_api::jobs::DEFAULT_WASI_MAX_MEMORY_MB,
            default_timeout_ms: skyclaw_api::jobs::DEFAULT_WASI_MAX_TIMEOUT_MS,
            max_fuel: skyclaw_api::jobs::DEFAULT_WASI_MAX_FUEL,
            max_memory_mb: skyclaw_api::jobs::DEFAULT_WASI_MAX_MEMORY_MB,
            max_timeout_ms: skyclaw_api::jobs::DEFAULT_WASI_MAX_TIMEOUT_MS,
        });
        let beat = keep_live(client, &registration, FAKE_SERVICE_HEARTBEAT).await;
        let (client, host_id) = (client.clone(), id.to_string());
        let serve = tokio::spawn(async move {
            // What was last reported of each instance, so each is reported once.
            let mut reported = std::collections::HashMap::new();
            let mut index = None;
            let mut port = 40_000u16;
            loop {
                let Ok(assigned) = client.assignments(&host_id, index, FAKE_SERVICE_WAIT).await
                else {
                    tokio::time::sleep(POLL).await;
                    continue;
                };
                index = Some(assigned.index);
                let mut reports = Vec::new();
                for a in &assigned.instances {
                    let report = |state, endpoint: Option<String>, last_error| InstanceReport {
                        instance_id: a.instance_id.clone(),
                        state,
                        endpoint,
                        restarts: 0,
                        last_error,
                    };
                    if a.stop {
                        if reported.insert(a.instance_id.clone(), InstanceState::Stopped)
                            != Some(InstanceState::Stopped)
                        {
                            reports.push(report(InstanceState::Stopped, None, None));
                        }
                        continue;
                    }
                    if reported.contains_key(&a.instance_id) {
                        continue;
                    }
                    let served = match serve(a) {
                        Serve::Healthy => {
                            port += 1;
                            Ok(format!("http://127.0.0.1:{port}"))
                        }
                        Serve::At(endpoint) => Ok(endpoint),
                        Serve::Crash(error) => Err(error),
                    };
                    match served {
                        Ok(endpoint) => {
                            reports.push(report(InstanceState::Starting, None, None));
                            reports.push(report(InstanceState::Healthy, Some(endpoint), None));
                            reported.insert(a.instance_id.clone(), InstanceState::Healthy);
                        }
                        Err(error) => {
                            reports.push(report(InstanceState::Failed, None, Some(error)));
                            reported.insert(a.instance_id.clone(), InstanceState::Failed);
                        }
                    }
                }
                // One report per instance per request: the coordinator applies
                // a batch's reports in order, but a host sends only the latest.
                for report in reports {
                    let batch = InstanceReports {
                        reports: vec![report],
                    };
                    let _ = client.report_instances(&host_id, &batch).await;
                }
            }
        });
        FakeServiceHost { beat, serve }
    }
}

impl Drop for FakeServiceHost {
    fn drop(&mut self) {
        self.beat.abort();
        self.serve.abort();
    }
}

/// Creates an API key with `scopes` through the token and returns its secret.
pub async fn api_key(client: &Client, scopes: &[skyclaw_api::apikeys::Scope]) -> String {
    let created = client
        .create_api_key(&skyclaw_api::apikeys::CreateApiKey {
            name: "test".into(),
            scopes: scopes.to_vec(),
        })
        .await
        .expect("create an API key");
    created.secret.expect("a new key's secret")
}

/// A directory to deploy: `root/name` holding `skyclaw.toml` with
/// `manifest` and each of `files` (path relative to it, contents),
/// directories made as needed. Written again over an existing one, so a test
/// can change a file and deploy anew.
pub fn service_dir(root: &Path, name: &str, manifest: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("skyclaw.toml"), manifest).unwrap();
    for (path, contents) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    dir
}

/// A finished CLI run's exit code, stdout and stderr, for asserting on.
pub fn outcome(output: &Output) -> (Option<i32>, String, String) {
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs a CLI command to its end on a blocking thread, so the test's own
/// tasks (fake hosts) keep running meanwhile.
pub async fn run_cli(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run skyclaw"))
        .await
        .expect("the CLI thread")
}
