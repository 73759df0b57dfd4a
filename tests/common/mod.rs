//! The end-to-end test harness: starts coordinators and hosts as real `skyclaw`
//! processes on 127.0.0.1 with port 0 and temp data directories, talks to them
//! through the real client and CLI, and waits on conditions with deadlines.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use skyclaw_api::jobs::{Job, JobSpec, JobStatus};
use skyclaw_api::{Client, Credentials};

/// The cluster token every test network uses.
pub const TOKEN: &str = "test-token-0123456789abcdef";
/// How long any condition may take to hold before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Interval between checks of a condition.
const POLL: Duration = Duration::from_millis(20);

pub fn skyclaw() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skyclaw"));
    // Nothing from the developer's environment leaks into a test network.
    for (name, _) in std::env::vars() {
        if name.starts_with("SKYCLAW_") {
            cmd.env_remove(name);
        }
    }
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
}

impl Coordinator {
    /// Starts a coordinator on a free port with data in `dir`.
    pub async fn start(dir: &Path, extra: &[&str]) -> Coordinator {
        let mut c = Coordinator {
            child: None,
            dir: dir.to_path_buf(),
            url: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        c.spawn("127.0.0.1:0").await;
        c
    }

    async fn spawn(&mut self, listen: &str) {
        let url_file = self.dir.join("coordinator.url");
        let _ = std::fs::remove_file(&url_file);
        let child = skyclaw()
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

    pub fn client(&self) -> Client {
        Client::new(
            std::slice::from_ref(&self.url),
            Credentials::Token(TOKEN.into()),
        )
        .unwrap()
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
        let mut cmd = skyclaw();
        cmd.args(["host", "--coordinator", coordinators, "--token", TOKEN])
            .args(mode)
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null());
        if let Some(log) = &stderr {
            cmd.stderr(std::fs::File::create(log).expect("create the host's stderr file"));
        }
        let child = cmd.spawn().expect("spawn host");
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
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap_or_else(|e| panic!("sigterm {what}: {e}"));
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
            "the {what} did not exit within {DEADLINE:?} of SIGTERM"
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
        let tmp = tempfile::tempdir().unwrap();
        let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
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
        skyclaw()
            .args(args)
            .env("SKYCLAW_COORDINATOR_URLS", &self.coordinator.url)
            .env("SKYCLAW_TOKEN", TOKEN)
            .current_dir(self.tmp.path())
            .stdin(Stdio::null())
            .output()
            .expect("run skyclaw")
    }
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

#[allow(unused_imports)] // each test binary uses a different part of the harness
pub use guests::{example, guest};

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

    /// The built `.wasm` component of the example in `examples/<name>`.
    pub fn example(name: &str) -> PathBuf {
        built(
            &format!("examples/{name}/Cargo.toml"),
            "wasm32-wasip2",
            name,
        )
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
