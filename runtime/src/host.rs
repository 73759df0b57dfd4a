//! The daemon's loops: register, keep the coordinator list fresh, heartbeat
//! (renewing leases, stopping revoked jobs), claim work into free slots, run
//! each job on its own task and report it, and on shutdown stop claiming, give
//! running jobs their grace, then abandon the rest so coordinators requeue them.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use skyclaw_api::hosts::{
    Claim, Complete, Heartbeat, LeasedJob, MAX_CLAIM_JOBS, Outcome, RegisterHost, Registered,
};
use skyclaw_api::jobs::JobResult;
use skyclaw_api::services::{MAX_HOST_INSTANCES, ServiceCaps};
use skyclaw_api::{Client, Credentials, ErrorCode};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, Span, debug, error, info, info_span, warn};

use crate::artifacts::ArtifactCache;
use crate::backoff::Backoff;
use crate::config::{DEFAULT_PATH, HostConfig};
use crate::confine::{Confiner, Settings};
use crate::control::{self, Control};
use crate::discovery;
use crate::leases::Leases;
use crate::metrics::Counters;
use crate::native::Runner;
use crate::report::{Reporter, answer_was_lost, is_retryable};
use crate::services::{self, Ports, Prober, StateReports, Supervisor};
use crate::wasi::{WasiEngine, WasiSettings};
use crate::workdir::WorkDirs;
use crate::workload::{Runners, StopReason};
use crate::{HostError, identity};

/// How long one claim waits for work: long enough to keep idle hosts quiet,
/// short enough that freed slots are offered again soon.
pub const CLAIM_WAIT_MS: u64 = 5_000;
/// First pause before registering again while no coordinator answers.
const REGISTER_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest such pause: a coordinator that comes back is found within it.
const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// First pause after a failed claim.
const CLAIM_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause after failed claims: never spin, never idle long.
const CLAIM_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Shortest heartbeat interval honoured, whatever a coordinator says: guards
/// against a zero or absurdly small interval turning into a busy loop.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// How long, after the grace period, killed jobs have to be reported as
/// abandoned before the daemon exits anyway (their leases then expire).
pub const SHUTDOWN_REPORT_WINDOW: Duration = Duration::from_secs(5);
/// Directory under the data directory that holds the jobs' working directories.
const WORK_DIR: &str = "work";
/// Directory under the data directory that holds downloaded artifacts.
const ARTIFACT_DIR: &str = "artifacts";
/// Directory under the data directory that holds compiled wasm code.
const CODE_CACHE_DIR: &str = "wasm-code";
/// How long a host shutting down waits for a coordinator to hear that it
/// drains before it stops its instances anyway.
const DRAIN_ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);
/// Directory under the data directory that holds service instances' files.
const SERVICES_DIR: &str = "services";

/// Runs the host daemon until `shutdown` resolves, then stops claiming, lets
/// running jobs go on for `shutdown_grace`, kills and abandons the rest, and
/// returns `Ok(())`. Errors only when the host cannot start: a bad
/// configuration or data directory, or a registration that retrying cannot fix.
pub async fn run(
    config: HostConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HostError> {
    let host = Arc::new(Host::build(&config).await?);
    let span = host.span.clone();
    async move {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shutdown_task = tokio::spawn(async move {
            shutdown.await;
            shutdown_tx.send_replace(true);
        });
        let listening = {
            let (host, shutdown) = (Arc::clone(&host), shutdown_rx.clone());
            tokio::spawn(async move { host.control.serve(shutdown).await }.in_current_span())
        };
        let outcome = host.serve(shutdown_rx, config.shutdown_grace).await;
        // Every job was settled (reported or given up on) by the drain.
        host.reporting.abort();
        if let Some(reporting) = &host.instance_reporting {
            reporting.abort();
        }
        listening.abort();
        shutdown_task.abort();
        outcome
    }
    .instrument(span)
    .await
}

/// What the loops share.
struct Host {
    /// The span every log line of this host's loops is in: it names the host.
    span: Span,
    client: Client,
    /// Sends jobs' completions, batched.
    reporter: Reporter,
    /// The task behind `reporter`; aborted once the drain settled every job.
    reporting: JoinHandle<()>,
    host_id: String,
    registration: RegisterHost,
    runners: Runners,
    max_parallel: u32,
    leases: Arc<Leases>,
    /// Wakes the heartbeat loop to register again when a claim learns that
    /// the coordinators forgot this host.
    reregister: Notify,
    counters: Arc<Counters>,
    /// Runs the service instances; `None` on a host without service ports.
    supervisor: Option<Arc<Supervisor>>,
    /// The task that sends instance states; aborted after the drain.
    instance_reporting: Option<JoinHandle<()>>,
    /// Set at shutdown and sent with every later heartbeat.
    draining: AtomicBool,
    control: ControlListener,
}

impl Host {
    /// Everything the loops need, from the configuration: checks it, makes
    /// the data directory and loads the host id, sets up the runners (see
    /// [`runners`]), says what the host offers, and starts the reporter.
    /// Errors when the host cannot start.
    async fn build(config: &HostConfig) -> Result<Host, HostError> {
        config.validate()?;
        let client = Client::new(
            &config.coordinators,
            Credentials::Token(config.token.clone()),
        )
        .map_err(HostError::Client)?;
        skyclaw_api::datadir::create_private(&config.data_dir).map_err(|source| {
            HostError::DataDir {
                action: "cannot create",
                path: config.data_dir.clone(),
                source,
            }
        })?;
        let host_id = identity::load_or_create(&config.data_dir)?;
        let span = info_span!("host", host_id = %host_id);
        let runners = runners(config, &client).instrument(span.clone()).await?;
        let (supervisor, instance_reporting) = match config.service_ports {
            Some(range) => {
                let (supervisor, reporting) =
                    supervisor(config, &client, &host_id, &runners, range).await?;
                (Some(supervisor), Some(reporting))
            }
            None => (None, None),
        };
        let counters = Arc::new(Counters::default());
        let control = ControlListener::bind(
            config,
            Arc::new(Control {
                host_id: host_id.clone(),
                token_hash: control::token_hash(&config.token),
                counters: Arc::clone(&counters),
                artifacts: Arc::clone(&runners.artifacts),
                engine: runners.engine.clone(),
                supervisor: supervisor.clone(),
            }),
        )
        .await?;
        let registration = registration(config, &host_id, &runners, control.url.clone());
        let (reporter, reporting) = Reporter::start(client.clone(), host_id.clone());
        Ok(Host {
            span,
            client,
            reporter,
            reporting,
            host_id,
            registration,
            runners,
            max_parallel: config.max_parallel,
            leases: Arc::new(Leases::default()),
            reregister: Notify::new(),
            counters,
            supervisor,
            instance_reporting,
            control,
            draining: AtomicBool::new(false),
        })
    }

    async fn serve(
        self: &Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) -> Result<(), HostError> {
        let Some(registered) = self.register_until_answered(&mut shutdown).await? else {
            info!("shut down before registering");
            return Ok(());
        };
        let heartbeat = tokio::spawn(
            Arc::clone(self)
                .heartbeat_loop(heartbeat_interval(&registered))
                .in_current_span(),
        );
        let discovery =
            tokio::spawn(discovery::refresh_loop(self.client.clone()).in_current_span());
        // After registering: assignments read before it would be those of
        // this host's previous incarnation, which registering ends.
        // Its own stop order: the host announces that it drains first.
        let (stop_supervisor, supervisor_stop) = watch::channel(false);
        let supervising = self
            .supervisor
            .clone()
            .map(|supervisor| tokio::spawn(supervisor.run(supervisor_stop).in_current_span()));
        let mut tasks = JoinSet::new();
        self.claim_loop(&mut tasks, &mut shutdown).await;
        if supervising.is_some() {
            self.announce_draining().await;
        }
        stop_supervisor.send_replace(true);
        self.drain(tasks, grace).await;
        // Instances drain beside the jobs; both are settled before the exit.
        if let Some(supervising) = supervising
            && let Err(e) = supervising.await
        {
            error!(error = %e, "the service supervisor panicked");
        }
        // Heartbeats (and the coordinator list they use) went on through the
        // drain so that leases stayed valid while jobs finished and were
        // reported.
        heartbeat.abort();
        discovery.abort();
        info!("host stopped");
        Ok(())
    }

    /// Registers, retrying while no coordinator answers. `None` when shutdown
    /// came first.
    async fn register_until_answered(
        &self,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Registered>, HostError> {
        let mut backoff = Backoff::new(REGISTER_BACKOFF_MIN, REGISTER_BACKOFF_MAX);
        let mut attempt = 1u32;
        loop {
            let answer = tokio::select! {
                () = fired(shutdown) => return Ok(None),
                answer = self.client.register_host(&self.registration) => answer,
            };
            let error = match answer {
                Ok(registered) => {
                    info!(
                        name = %self.registration.name,
                        capabilities = ?self.registration.capabilities,
                        heartbeat_interval_ms = registered.heartbeat_interval_ms,
                        "host registered"
                    );
                    return Ok(Some(registered));
                }
                Err(e) if is_retryable(&e) => e,
                Err(e) => return Err(HostError::Register(e)),
            };
            let delay = backoff.next_delay();
            warn!(attempt, error = %error, retry_in_ms = delay.as_millis() as u64, "cannot register yet");
            tokio::select! {
                () = fired(shutdown) => return Ok(None),
                () = tokio::time::sleep(delay) => {}
            }
            attempt += 1;
        }
    }

    /// Registers once more with the same id; the new interval on success.
    async fn reregister(&self) -> Option<Duration> {
        match self.client.register_host(&self.registration).await {
            Ok(registered) => {
                info!("host registered again");
                Some(heartbeat_interval(&registered))
            }
            Err(e) => {
                warn!(error = %e, "cannot register again; retrying at the next heartbeat");
                None
            }
        }
    }

    /// What a heartbeat says now.
    fn beat(&self) -> Heartbeat {
        Heartbeat {
            running: self.leases.held(),
            artifacts: self.runners.artifacts.held(),
            draining: self.draining.load(Ordering::Relaxed),
        }
    }

    /// Tells the coordinators this host is shutting down, so that no new
    /// instance is placed here while its own drain; bounded, since a
    /// coordinator that does not answer learns it from the host's absence.
    async fn announce_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let sent = tokio::time::timeout(
            DRAIN_ANNOUNCE_TIMEOUT,
            self.client.heartbeat(&self.host_id, &self.beat()),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            warn!(
                "cannot tell the coordinators this host is draining; stopping its instances anyway"
            );
        }
    }

    /// Heartbeats until aborted, renewing every held lease, reporting the
    /// artifacts held (at once when they change) and stopping the jobs the
    /// coordinator revokes.
    async fn heartbeat_loop(self: Arc<Self>, interval: Duration) {
        let mut ticker = ticker(interval);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.runners.artifacts.changed() => {}
                () = self.reregister.notified() => {
                    if let Some(interval) = self.reregister().await {
                        ticker = self::ticker(interval);
                    }
                    continue;
                }
            }
            match self.client.heartbeat(&self.host_id, &self.beat()).await {
                Ok(ack) => {
                    for job_id in ack.stop {
                        if self.leases.stop(&job_id, StopReason::Revoked) {
                            info!(job_id, "coordinator revoked job; killing it");
                        }
                    }
                }
                Err(e) if e.code() == Some(ErrorCode::HostNotRegistered) => {
                    warn!("coordinators forgot this host; registering again");
                    if let Some(interval) = self.reregister().await {
                        ticker = self::ticker(interval);
                    }
                }
                Err(e) => warn!(error = %e, "heartbeat failed"),
            }
        }
    }

    /// Claims jobs into free slots until shutdown, starting each on `tasks`.
    async fn claim_loop(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        let slots = Arc::new(Semaphore::new(self.max_parallel as usize));
        let mut key = new_claim_key();
        // A claim whose answer was lost is sent again unchanged under its key:
        // the same request is what the coordinator replays.
        let mut lost: Option<Claim> = None;
        let mut backoff = Backoff::new(CLAIM_BACKOFF_MIN, CLAIM_BACKOFF_MAX);
        loop {
            reap(tasks);
            let first = tokio::select! {
                () = fired(shutdown) => return,
                permit = Arc::clone(&slots).acquire_owned() => permit.expect("the slot semaphore is never closed"),
            };
            let claim = lost.take().unwrap_or_else(|| {
                let free = (1 + slots.available_permits()).min(MAX_CLAIM_JOBS as usize);
                Claim {
                    max_jobs: u32::try_from(free).unwrap_or(MAX_CLAIM_JOBS),
                    wait_ms: CLAIM_WAIT_MS,
                }
            });
            let answer = tokio::select! {
                () = fired(shutdown) => return,
                answer = self.client.claim(&self.host_id, &claim, &key) => answer,
            };
            match answer {
                Ok(claimed) => {
                    key = new_claim_key();
                    backoff.reset();
                    let mut first = Some(first);
                    for leased in claimed.jobs {
                        let permit = first
                            .take()
                            .or_else(|| Arc::clone(&slots).try_acquire_owned().ok());
                        match permit {
                            Some(permit) => self.start(tasks, leased, permit),
                            None => self.give_back(tasks, leased),
                        }
                    }
                }
                Err(error) => {
                    // Only a request whose answer was lost is retried under
                    // its key: the coordinator then replays the jobs it
                    // leased. After any answer, the next claim is a new one.
                    if answer_was_lost(&error) {
                        lost = Some(claim);
                    } else {
                        key = new_claim_key();
                    }
                    if error.code() == Some(ErrorCode::HostNotRegistered) {
                        self.reregister.notify_one();
                    }
                    let delay = backoff.next_delay();
                    warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "claim failed");
                    tokio::select! {
                        () = fired(shutdown) => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Runs one leased job on its own task, then reports it.
    fn start(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        leased: LeasedJob,
        slot: OwnedSemaphorePermit,
    ) {
        let host = Arc::clone(self);
        let span = info_span!("job", job_id = %leased.job.id);
        tasks.spawn(
            async move {
                let job = leased.job;
                let (stop, _lease) = host.leases.hold(&job.id, &leased.lease_token);
                info!(
                    kind = job.spec.kind(),
                    attempt = job.attempts,
                    "job started"
                );
                let run = host.runners.run(&job, stop.clone()).await;
                drop(slot);
                if *stop.borrow() == Some(StopReason::Revoked) {
                    info!("job revoked by the coordinator; not reporting it");
                    return;
                }
                let outcome = if run.stopped == Some(StopReason::ShuttingDown) {
                    Outcome::Abandoned
                } else if run.result.exit_code == Some(0) && run.result.error.is_none() {
                    Outcome::Succeeded
                } else {
                    Outcome::Failed
                };
                host.counters.job_ended(job.spec.kind(), outcome.as_str());
                info!(
                    ?outcome,
                    exit_code = run.result.exit_code,
                    duration_ms = run.result.duration_ms,
                    error = run.result.error.as_deref().unwrap_or(""),
                    "job ended"
                );
                let complete = Complete {
                    lease_token: leased.lease_token,
                    outcome,
                    result: run.result,
                };
                host.reporter.report(&job.id, complete).await;
            }
            .instrument(span),
        );
    }

    /// Hands back a job the host has no slot for (a coordinator gave more
    /// than was asked): abandoned, so it is requeued at once.
    fn give_back(self: &Arc<Self>, tasks: &mut JoinSet<()>, leased: LeasedJob) {
        warn!(job_id = %leased.job.id, "claim gave more jobs than free slots; giving one back");
        let host = Arc::clone(self);
        tasks.spawn(
            async move {
                let complete = Complete {
                    lease_token: leased.lease_token,
                    outcome: Outcome::Abandoned,
                    result: JobResult::error(format!(
                        "host {} has no free slot",
                        host.registration.name
                    )),
                };
                host.reporter.report(&leased.job.id, complete).await;
            }
            .in_current_span(),
        );
    }

    /// Lets running jobs finish and pending reports go out for `grace`; then
    /// kills what still runs, reports it abandoned, and gives those reports
    /// [`SHUTDOWN_REPORT_WINDOW`] before dropping the rest.
    async fn drain(&self, mut tasks: JoinSet<()>, grace: Duration) {
        reap(&mut tasks);
        if tasks.is_empty() {
            return;
        }
        info!(
            jobs = tasks.len(),
            grace_ms = grace.as_millis() as u64,
            "shutting down; waiting for running jobs"
        );
        if tokio::time::timeout(grace, join_all(&mut tasks))
            .await
            .is_ok()
        {
            return;
        }
        let killed = self.leases.stop_all(StopReason::ShuttingDown);
        info!(
            jobs = killed,
            "grace period over; killing running jobs and abandoning them"
        );
        if tokio::time::timeout(SHUTDOWN_REPORT_WINDOW, join_all(&mut tasks))
            .await
            .is_err()
        {
            error!(
                jobs = tasks.len(),
                "jobs not reported before exit; their leases will expire"
            );
            tasks.shutdown().await;
        }
    }
}

/// Resolves once shutdown was asked for; never if it cannot be any more.
async fn fired(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|fired| *fired).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn heartbeat_interval(registered: &Registered) -> Duration {
    Duration::from_millis(registered.heartbeat_interval_ms).max(MIN_HEARTBEAT_INTERVAL)
}

/// Ticks every `interval`, the first tick one interval from now (registering
/// was the first sign of life).
fn ticker(interval: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

fn new_claim_key() -> String {
    format!("claim-{}", uuid::Uuid::now_v7().simple())
}

/// Collects finished job tasks so the set does not grow; a panic is logged.
fn reap(tasks: &mut JoinSet<()>) {
    while let Some(finished) = tasks.try_join_next() {
        log_join(finished);
    }
}

async fn join_all(tasks: &mut JoinSet<()>) {
    while let Some(finished) = tasks.join_next().await {
        log_join(finished);
    }
}

fn log_join(finished: Result<(), tokio::task::JoinError>) {
    if let Err(e) = finished
        && e.is_panic()
    {
        error!(error = %e, "job task panicked");
    }
}

/// The runners of every kind of work: kills what an earlier run left (its
/// processes, then their working directories), checks that native work can be
/// confined here, asks OpenClaw its version, starts the WASI engine, makes the
/// daemon non-dumpable and opens the artifact cache.
async fn runners(config: &HostConfig, client: &Client) -> Result<Runners, HostError> {
    // Leftover processes go before their directories do.
    let confiner = native_confiner(config).await?;
    let work_root = config.data_dir.join(WORK_DIR);
    reset_work_root(&work_root).await?;
    let work_dirs = Arc::new(WorkDirs::new(work_root, config.max_parallel as usize));
    let confiner = match confiner {
        Some(confiner) => probe_confinement(confiner, config, &work_dirs).await?,
        None => None,
    };
    let mut native = Runner {
        host_name: config.name.clone(),
        allowed_commands: config.allowed_commands.clone(),
        path: std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string()),
        host_env: read_env(&config.pass_env),
        pass_env: config.pass_env.clone(),
        max_output_bytes: config.max_output_bytes,
        work_dirs,
        confiner,
        openclaw_command: config.openclaw_command.clone(),
        openclaw_version: None,
    };
    // A host that starts no native programs does not start a probe either.
    if native.confiner.is_some() {
        native.openclaw_version = native.probe_openclaw().await;
    }
    let engine = WasiEngine::new(WasiSettings {
        caps: config.wasi_caps(),
        max_parallel: config.max_parallel,
        max_http_requests: crate::wasi::DEFAULT_MAX_HTTP_REQUESTS,
        guest_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        max_output_bytes: config.max_output_bytes,
        code_cache_dir: config.data_dir.join(CODE_CACHE_DIR),
        host_name: config.name.clone(),
    })?;
    // After the engine: it opens /proc/self/pagemap, which a
    // non-dumpable process that is not root may no longer open.
    crate::confine::protect_process()
        .map_err(|e| HostError::Config(format!("cannot make the daemon non-dumpable: {e}")))?;
    let evicted_code = engine.clone();
    let artifacts = Arc::new(ArtifactCache::open(
        config.data_dir.join(ARTIFACT_DIR),
        config.artifact_cache_bytes,
        move |digest| evicted_code.forget(digest),
    )?);
    Ok(Runners {
        native,
        engine,
        artifacts,
        client: client.clone(),
        sandbox_only: config.sandbox_only,
    })
}

/// What the host tells coordinators about itself each time it registers.
fn registration(
    config: &HostConfig,
    host_id: &str,
    runners: &Runners,
    control_url: Option<String>,
) -> RegisterHost {
    RegisterHost {
        host_id: host_id.to_string(),
        // Afresh for every start of the daemon: coordinators tell a restart
        // (whose jobs are gone) from this daemon registering again (whose
        // jobs still run).
        incarnation: uuid::Uuid::now_v7().simple().to_string(),
        name: config.name.clone(),
        capabilities: runners.capabilities(),
        max_parallel: config.max_parallel,
        allowed_commands: config.allowed_commands.clone(),
        openclaw_version: runners.native.openclaw_version.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        sandbox_only: config.sandbox_only,
        wasi: Some(config.wasi_caps()),
        services: config.service_ports.map(|range| ServiceCaps {
            max_instances: range.count().min(MAX_HOST_INSTANCES),
            control_url,
        }),
    }
}

/// The service supervisor of a host with service ports, and the task that
/// reports its instances' states. Empties what instances of an earlier run
/// left on disk.
async fn supervisor(
    config: &HostConfig,
    client: &Client,
    host_id: &str,
    runners: &Runners,
    range: services::PortRange,
) -> Result<(Arc<Supervisor>, JoinHandle<()>), HostError> {
    let root = config.data_dir.join(SERVICES_DIR);
    services::reset_root(&root)
        .await
        .map_err(|source| HostError::DataDir {
            action: "cannot create",
            path: root.clone(),
            source,
        })?;
    let (reports, reporting) = StateReports::start(client.clone(), host_id.to_string());
    let supervisor = Supervisor::new(services::Shared::new(
        client.clone(),
        host_id.to_string(),
        config.name.clone(),
        runners.native.clone(),
        runners.engine.clone(),
        Arc::clone(&runners.artifacts),
        Ports::new(range),
        config.advertise_host.clone(),
        root,
        reports,
        Prober::new().map_err(HostError::Config)?,
        config.shutdown_grace,
    ));
    Ok((supervisor, reporting))
}

/// The host's own listener, bound at start so that a taken address fails
/// the start, and the URL the coordinators reach it at.
struct ControlListener {
    listener: std::sync::Mutex<Option<tokio::net::TcpListener>>,
    control: Arc<Control>,
    /// `None` when coordinators could not reach it.
    url: Option<String>,
}

impl ControlListener {
    async fn bind(
        config: &HostConfig,
        control: Arc<Control>,
    ) -> Result<ControlListener, HostError> {
        let listener = skyclaw_api::serve::bind(config.listen)
            .await
            .map_err(|e| HostError::Config(format!("cannot listen on {}: {e}", config.listen)))?;
        let local = listener
            .local_addr()
            .map_err(|e| HostError::Config(format!("cannot read the listener's address: {e}")))?;
        let ip = local.ip();
        let advertised_loopback = config
            .advertise_host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
            || config.advertise_host == "localhost";
        let host = if ip.is_unspecified() {
            Some(config.advertise_host.clone())
        } else if ip.is_loopback() && !advertised_loopback {
            // Coordinators elsewhere cannot reach a loopback listener, and
            // one on their own machine would be whoever listens there: they
            // are not told of it (and fetch no instance logs from here).
            warn!(
                listen = %local,
                advertise_host = %config.advertise_host,
                "the host's listener is on loopback: coordinators cannot fetch instance logs \
                 from it (listen on an address they reach, such as --listen 0.0.0.0:9200)"
            );
            None
        } else {
            Some(ip.to_string())
        };
        let url = host.map(|host| {
            if host.contains(':') {
                format!("http://[{host}]:{}", local.port())
            } else {
                format!("http://{host}:{}", local.port())
            }
        });
        info!(listen = %local, url = url.as_deref().unwrap_or("(not advertised)"), "host listening");
        Ok(ControlListener {
            listener: std::sync::Mutex::new(Some(listener)),
            control,
            url,
        })
    }

    /// Serves `/health`, `/metrics` and instance logs until shutdown.
    async fn serve(&self, mut shutdown: watch::Receiver<bool>) {
        let Some(listener) = self.listener.lock().expect("listener lock").take() else {
            return;
        };
        let app = control::router(Arc::clone(&self.control));
        let stats = Arc::new(skyclaw_api::serve::Stats::default());
        let limits = skyclaw_api::serve::Limits::default();
        skyclaw_api::serve::serve(listener, app, limits, stats, async move {
            fired(&mut shutdown).await;
        })
        .await;
    }
}

/// Empties the jobs' parent directory: working directories left there were
/// left by a host that died mid-job.
async fn reset_work_root(work_root: &std::path::Path) -> Result<(), HostError> {
    match tokio::fs::remove_dir_all(work_root).await {
        Ok(()) => debug!(dir = %work_root.display(), "removed leftover job directories"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(dir = %work_root.display(), error = %e, "cannot remove leftover job directories")
        }
    }
    let root = work_root.to_path_buf();
    tokio::task::spawn_blocking(move || skyclaw_api::datadir::create_private(&root))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|source| HostError::DataDir {
            action: "cannot create",
            path: work_root.to_path_buf(),
            source,
        })
}

/// The confiner of native jobs, or `None` when this host runs none. Kills
/// what an earlier run of the daemon left under the job uids before any job.
async fn native_confiner(config: &HostConfig) -> Result<Option<Arc<Confiner>>, HostError> {
    if config.sandbox_only {
        return Ok(None);
    }
    let Some(users) = config.job_users else {
        info!("not root and same-user jobs not allowed: running no native jobs");
        return Ok(None);
    };
    let hidden = std::iter::once(config.data_dir.clone())
        .chain(config.hidden_paths.iter().cloned())
        .collect();
    let confiner = Arc::new(Confiner::new(&Settings {
        users,
        memory_mb: config.job_memory_mb,
        max_processes: config.job_max_processes,
        hidden,
        max_parallel: config.max_parallel,
    })?);
    let sweeper = Arc::clone(&confiner);
    let _ = tokio::task::spawn_blocking(move || sweeper.kill_leftovers()).await;
    Ok(Some(confiner))
}

/// Checks that this machine lets the host confine a process. A host that
/// allows commands must be able to; one that would only have offered
/// OpenClaw turns goes on without native work.
async fn probe_confinement(
    confiner: Arc<Confiner>,
    config: &HostConfig,
    work_dirs: &Arc<WorkDirs>,
) -> Result<Option<Arc<Confiner>>, HostError> {
    let dir = work_dirs.take().map_err(|source| HostError::DataDir {
        action: "cannot create",
        path: config.data_dir.join(WORK_DIR),
        source,
    })?;
    let probed = confiner.probe(&dir).await;
    let returned = Arc::clone(work_dirs);
    let _ = tokio::task::spawn_blocking(move || returned.give_back(dir)).await;
    match probed {
        Ok(()) => Ok(Some(confiner)),
        Err(e) if config.allowed_commands.is_empty() => {
            warn!(error = %e, "cannot confine native processes here; not offering openclaw-run");
            Ok(None)
        }
        Err(e) => Err(HostError::Confine(e.to_string())),
    }
}

/// The host variables named in `pass_env`, the only ones jobs may see.
fn read_env(pass_env: &[String]) -> BTreeMap<String, String> {
    pass_env
        .iter()
        .filter_map(|name| Some((name.clone(), std::env::var(name).ok()?)))
        .collect()
}
