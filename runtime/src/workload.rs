//! The kinds of work a host runs, told apart in one place: a [`Workload`] is
//! made once from a job's spec; [`Runners`] holds the runner of every kind
//! (the native runner, the WASI engine with its artifact cache), says which
//! kinds this host offers and hands each job to its runner. Also what every
//! run gives back ([`Run`]) and the order that stops one ([`StopSignal`]).

use std::sync::Arc;

use skyclaw_api::Client;
use skyclaw_api::jobs::{
    CAP_OPENCLAW, CAP_SHELL, CAP_WASI, CodeSource, Job, JobResult, JobSpec, OpenclawSpec,
    ShellSpec, WasiSpec,
};
use tokio::sync::watch;

use crate::artifacts::ArtifactCache;
use crate::native::Runner;
use crate::wasi::WasiEngine;

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

/// Resolves once the job is told to stop; never if it cannot be any more.
pub(crate) async fn stop_order(stop: &mut StopSignal) -> StopReason {
    if let Ok(reason) = stop.wait_for(Option::is_some).await
        && let Some(reason) = *reason
    {
        return reason;
    }
    std::future::pending().await
}

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

/// A kind of work a host may offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Wasi,
    Shell,
    Openclaw,
}

impl Kind {
    /// Every kind, in the order a registration lists their capabilities.
    const ALL: [Kind; 3] = [Kind::Wasi, Kind::Shell, Kind::Openclaw];

    /// The capability a host offers the kind under.
    fn capability(self) -> &'static str {
        match self {
            Kind::Wasi => CAP_WASI,
            Kind::Shell => CAP_SHELL,
            Kind::Openclaw => CAP_OPENCLAW,
        }
    }

    /// True for kinds that run as native processes, which sandbox-only hosts
    /// never start.
    fn is_native(self) -> bool {
        self != Kind::Wasi
    }
}

/// One job's work, as the runner of its kind takes it.
#[derive(Debug, Clone, Copy)]
enum Workload<'a> {
    Wasi(&'a WasiSpec),
    Shell(&'a ShellSpec),
    Openclaw(&'a OpenclawSpec),
}

impl<'a> Workload<'a> {
    fn of(spec: &'a JobSpec) -> Workload<'a> {
        match spec {
            JobSpec::Wasi(spec) => Workload::Wasi(spec),
            JobSpec::Shell(spec) => Workload::Shell(spec),
            JobSpec::OpenclawRun(spec) => Workload::Openclaw(spec),
        }
    }

    fn kind(self) -> Kind {
        match self {
            Workload::Wasi(_) => Kind::Wasi,
            Workload::Shell(_) => Kind::Shell,
            Workload::Openclaw(_) => Kind::Openclaw,
        }
    }
}

/// The runner of every kind of work on this host.
pub(crate) struct Runners {
    /// Shell jobs and OpenClaw turns.
    pub(crate) native: Runner,
    /// WASI jobs, whose programs come from `artifacts`.
    pub(crate) engine: WasiEngine,
    pub(crate) artifacts: Arc<ArtifactCache>,
    /// Where artifacts missing from the cache are fetched.
    pub(crate) client: Client,
    /// The host runs WASI jobs only (`--sandbox-only`).
    pub(crate) sandbox_only: bool,
}

impl Runners {
    /// The capabilities this host registers with: one per kind it can run.
    pub(crate) fn capabilities(&self) -> Vec<String> {
        Kind::ALL
            .into_iter()
            .filter(|kind| self.offers(*kind))
            .map(|kind| kind.capability().to_string())
            .collect()
    }

    fn offers(&self, kind: Kind) -> bool {
        match kind {
            Kind::Wasi => true,
            Kind::Shell => !self.native.allowed_commands.is_empty(),
            Kind::Openclaw => self.native.openclaw_version.is_some(),
        }
    }

    /// Runs any job the host was given with the runner of its kind; failures
    /// to run become a failed result.
    pub(crate) async fn run(&self, job: &Job, stop: StopSignal) -> Run {
        // Coordinators validate submissions; checking again keeps a bad record
        // (or a coordinator of another version) from reaching a process.
        if let Err(e) = job.spec.validate() {
            return Run::refused(format!("invalid job spec: {e}"));
        }
        let workload = Workload::of(&job.spec);
        if self.sandbox_only && workload.kind().is_native() {
            return Run::refused(format!(
                "host {} is sandbox-only: it runs WASI jobs, never {} jobs",
                self.native.host_name,
                job.spec.kind()
            ));
        }
        match workload {
            Workload::Wasi(spec) => self.run_wasi(spec, stop).await,
            Workload::Shell(spec) => self.native.run_shell(&job.id, spec, stop).await,
            Workload::Openclaw(spec) => self.native.run_openclaw(&job.id, spec, stop).await,
        }
    }

    /// Runs a WASI job: its compiled code from memory when an earlier job
    /// loaded it, else its artifact, verified, from the cache or a coordinator.
    async fn run_wasi(&self, spec: &WasiSpec, stop: StopSignal) -> Run {
        let digest = &spec.artifact;
        if let Some(program) = self.engine.loaded(digest) {
            self.artifacts.touch(digest);
            return self
                .engine
                .run(program, CodeSource::Memory, spec, stop)
                .await;
        }
        let blob = match self.artifacts.fetch(&self.client, digest).await {
            Ok(blob) => blob,
            Err(e) => return Run::refused(e),
        };
        let (program, code) = match self.engine.load(digest, blob.path()).await {
            Ok(loaded) => loaded,
            Err(e) => return Run::refused(e),
        };
        drop(blob);
        self.engine.run(program, code, spec, stop).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use skyclaw_api::Credentials;
    use skyclaw_api::jobs::{JobStatus, Requirements};

    use super::*;
    use crate::HostConfig;
    use crate::wasi::WasiSettings;
    use crate::workdir::WorkDirs;

    const HOST: &str = "test-host";
    /// Nothing listens there: these tests never reach a coordinator.
    const NO_COORDINATOR: &str = "http://127.0.0.1:9";
    /// Bytes the test artifact cache may hold; it stays empty.
    const CACHE_BYTES: u64 = 1024 * 1024;

    /// A host's runners, with no confiner: nothing native can start here.
    fn runners(dir: &Path, allowed: &[&str], sandbox_only: bool) -> Runners {
        let config = HostConfig::new(
            vec![NO_COORDINATOR.to_string()],
            "token".to_string(),
            dir.to_path_buf(),
        );
        let engine = WasiEngine::new(WasiSettings {
            caps: config.wasi_caps(),
            max_parallel: 1,
            max_http_requests: 0,
            guest_threads: 1,
            max_output_bytes: config.max_output_bytes,
            code_cache_dir: dir.join("code"),
            host_name: HOST.to_string(),
        })
        .expect("engine");
        let artifacts = ArtifactCache::open(dir.join("artifacts"), CACHE_BYTES, |_| {})
            .expect("artifact cache");
        Runners {
            native: Runner {
                host_name: HOST.to_string(),
                allowed_commands: allowed.iter().map(|c| c.to_string()).collect(),
                path: crate::DEFAULT_PATH.to_string(),
                host_env: BTreeMap::new(),
                pass_env: Vec::new(),
                max_output_bytes: config.max_output_bytes,
                work_dirs: Arc::new(WorkDirs::new(dir.join("work"), 1)),
                confiner: None,
                openclaw_command: config.openclaw_command.clone(),
                openclaw_version: None,
            },
            engine,
            artifacts: Arc::new(artifacts),
            client: Client::new(&config.coordinators, Credentials::Token(config.token))
                .expect("client"),
            sandbox_only,
        }
    }

    fn shell_job(command: &str) -> Job {
        Job {
            id: "job-1".to_string(),
            status: JobStatus::Running,
            spec: JobSpec::Shell(ShellSpec {
                command: command.to_string(),
                args: Vec::new(),
                env: BTreeMap::new(),
                stdin: String::new(),
                timeout_ms: 1_000,
                max_attempts: 1,
                requirements: Requirements::default(),
                queue_timeout_ms: None,
            }),
            attempts: 1,
            host_id: None,
            created_at: 0,
            updated_at: 0,
            result: None,
            waiting_reason: None,
        }
    }

    async fn run(runners: &Runners, job: &Job) -> Option<String> {
        let (_keep, stop) = watch::channel(None);
        runners.run(job, stop).await.result.error
    }

    #[tokio::test]
    async fn a_host_offers_each_kind_it_can_run_in_one_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = runners(dir.path(), &[], false);
        assert_eq!(r.capabilities(), [CAP_WASI]);
        r.native.allowed_commands = vec!["echo".to_string()];
        assert_eq!(r.capabilities(), [CAP_WASI, CAP_SHELL]);
        r.native.openclaw_version = Some("openclaw 1".to_string());
        assert_eq!(r.capabilities(), [CAP_WASI, CAP_SHELL, CAP_OPENCLAW]);
        r.native.allowed_commands.clear();
        assert_eq!(r.capabilities(), [CAP_WASI, CAP_OPENCLAW]);
    }

    #[tokio::test]
    async fn each_job_goes_to_its_runner_unless_the_host_refuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let sandboxed = runners(dir.path(), &[], true);
        assert_eq!(
            run(&sandboxed, &shell_job("echo")).await.as_deref(),
            Some("host test-host is sandbox-only: it runs WASI jobs, never shell jobs")
        );
        // Checked before the kind: a bad spec never reaches a runner.
        let bad = shell_job("");
        let error = run(&sandboxed, &bad).await.unwrap();
        assert!(error.starts_with("invalid job spec: "), "{error}");

        // A host that is not sandbox-only hands the job to the native runner,
        // which here has no user to run it as.
        let dir = tempfile::tempdir().unwrap();
        let native = runners(dir.path(), &["echo"], false);
        assert_eq!(
            run(&native, &shell_job("echo")).await.as_deref(),
            Some("host test-host runs no native processes: it has no user to run them as")
        );
    }
}
