//! The end-to-end test harness: starts coordinators and hosts as real `skyclaw`
//! processes on 127.0.0.1 with port 0 and temp data directories, talks to them
//! through the real client and CLI, and waits on conditions with deadlines.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use skyclaw_api::jobs::{Job, JobSpec};
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

    /// Starts the coordinator again on the same address with the same data.
    pub async fn restart(&mut self) {
        let listen = self.url.trim_start_matches("http://").to_string();
        self.spawn(&listen).await;
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
}

impl Host {
    /// Starts a host allowing `allow` (comma-separated) against `coordinators`.
    pub fn start(coordinators: &str, dir: &Path, allow: &str, extra: &[&str]) -> Host {
        let child = skyclaw()
            .args(["host", "--coordinator", coordinators, "--token", TOKEN])
            .args(["--allow-commands", allow, "--data-dir"])
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn host");
        Host {
            child: Some(child),
            dir: dir.to_path_buf(),
        }
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

    /// Sends SIGTERM and returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("host running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("sigterm host");
        child.wait().expect("reap host")
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
