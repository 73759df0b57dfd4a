//! The host's service supervisor: it long-polls the coordinators for the
//! instances this host is assigned, starts each on a task of its own
//! (`native`: a confined process from an unpacked bundle; `wasi_http`: a
//! component served by the WASI engine), probes their health, reports every
//! state change (`reports`), and stops them: drained when the coordinators
//! ask, and all of them, unpublished first, when the host shuts down.
//!
//! Architecture invariant: an instance is reported healthy, and so becomes
//! routable, only after its own health probes passed; it leaves the endpoint
//! set (reported `stopping`) before its process or server is told to stop.

mod health;
mod logs;
mod native;
mod ports;
mod probe;
mod reports;
mod status;
mod wasi_http;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skyclaw_api::Client;
use skyclaw_api::services::{Assignment, HealthCheck, InstanceState, ServiceKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::artifacts::ArtifactCache;
use crate::backoff::Backoff;
use crate::native::Runner;
use crate::wasi::WasiEngine;
pub(crate) use health::Prober;
pub(crate) use logs::Logs;
pub use ports::PortRange;
pub(crate) use ports::Ports;
pub(crate) use reports::StateReports;
use status::Status;

/// How long one assignments long-poll waits for a change: idle hosts stay
/// quiet, and a lost coordinator is noticed within it.
const ASSIGNMENTS_WAIT: Duration = Duration::from_secs(30);
/// First pause after a failed assignments poll.
const POLL_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest such pause.
const POLL_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a stopping instance that was routable keeps serving before it is
/// told to stop: gateways and clients watching the endpoint set learn that it
/// left (a long-poll answers within milliseconds) and stop sending to it.
pub(crate) const DRAIN_DELAY: Duration = Duration::from_secs(1);
/// Before it probes at the service's interval, a starting instance is probed
/// this often, so that it is routable a moment after it listens.
const STARTUP_PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How long a host shutting down waits for the coordinators to take its
/// instances out of the endpoint set before it stops them anyway.
const UNPUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the final `stopped` reports have to reach a coordinator at
/// shutdown; past it the coordinators learn from the host's absence.
const FINAL_REPORT_WINDOW: Duration = Duration::from_secs(5);
/// Ended instance ids remembered, so that an assignment still listing one
/// (its end not yet reported) does not start it again.
const MAX_REMEMBERED_ENDED: usize = 4096;
/// Pause between endpoint set reads while waiting for it to drop the host's
/// instances.
const UNPUBLISH_POLL: Duration = Duration::from_millis(50);

/// The order to stop an instance: `true` once given.
pub(crate) type StopOrder = watch::Receiver<bool>;

/// Resolves once the instance is told to stop.
pub(crate) async fn stop_ordered(stop: &mut StopOrder) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// What every instance of the host uses.
pub(crate) struct Shared {
    pub(crate) client: Client,
    pub(crate) host_id: String,
    pub(crate) host_name: String,
    /// The allowlist, PATH, passed environment and confiner of native work.
    pub(crate) runner: Runner,
    /// Serves wasi-http instances.
    pub(crate) engine: WasiEngine,
    pub(crate) artifacts: Arc<ArtifactCache>,
    pub(crate) ports: Ports,
    /// The address other machines reach this host by, in endpoint URLs.
    pub(crate) advertise_host: String,
    /// Where instances listen: loopback when only this machine reaches them.
    pub(crate) bind_host: IpAddr,
    /// Where the host's probes reach them.
    pub(crate) probe_host: IpAddr,
    /// Parent of the instances' directories.
    pub(crate) root: PathBuf,
    pub(crate) reports: StateReports,
    pub(crate) prober: Prober,
    /// How long a stopping instance may take to finish its requests.
    pub(crate) grace: Duration,
    restarts: AtomicU64,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: Client,
        host_id: String,
        host_name: String,
        runner: Runner,
        engine: WasiEngine,
        artifacts: Arc<ArtifactCache>,
        ports: Ports,
        advertise_host: String,
        root: PathBuf,
        reports: StateReports,
        prober: Prober,
        grace: Duration,
    ) -> Shared {
        let bind_host = bind_address(&advertise_host);
        Shared {
            probe_host: probe_address(bind_host),
            client,
            host_id,
            host_name,
            runner,
            engine,
            artifacts,
            ports,
            advertise_host,
            bind_host,
            root,
            reports,
            prober,
            grace,
            restarts: AtomicU64::new(0),
        }
    }

    pub(crate) fn instance_dir(&self, instance_id: &str) -> PathBuf {
        self.root.join(instance_id)
    }

    /// The base URL an instance listening on `port` is reached at.
    pub(crate) fn endpoint(&self, port: u16) -> String {
        if self.advertise_host.contains(':') {
            format!("http://[{}]:{port}", self.advertise_host)
        } else {
            format!("http://{}:{port}", self.advertise_host)
        }
    }

    /// The pause before the next health probe.
    pub(crate) fn probe_interval(&self, check: &HealthCheck, was_healthy: bool) -> Duration {
        let interval = Duration::from_millis(check.interval_ms);
        if was_healthy {
            interval
        } else {
            interval.min(STARTUP_PROBE_INTERVAL)
        }
    }

    pub(crate) fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Instances listen on every address when others must reach them, on
/// loopback when the host advertises loopback.
fn bind_address(advertise_host: &str) -> IpAddr {
    match advertise_host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => ip,
        Ok(IpAddr::V6(_)) => IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED),
        _ if advertise_host == "localhost" => IpAddr::from([127, 0, 0, 1]),
        _ => IpAddr::from([0, 0, 0, 0]),
    }
}

/// Where this host's own probes reach an instance bound to `bind_host`.
fn probe_address(bind_host: IpAddr) -> IpAddr {
    match bind_host {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

/// One instance this host runs.
struct Running {
    status: Arc<Status>,
    logs: Logs,
    kind: ServiceKind,
    stop: watch::Sender<bool>,
}

/// Runs the host's instances; see the module docs.
pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    running: Mutex<HashMap<String, Running>>,
    /// Instances that ended here, newest last.
    ended: Mutex<(VecDeque<String>, HashSet<String>)>,
}

impl Supervisor {
    pub(crate) fn new(shared: Shared) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            shared: Arc::new(shared),
            running: Mutex::default(),
            ended: Mutex::default(),
        })
    }

    /// Follows the assignments until `shutdown`, then drains every instance.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        let mut index = None;
        let mut backoff = Backoff::new(POLL_BACKOFF_MIN, POLL_BACKOFF_MAX);
        let shared = Arc::clone(&self.shared);
        loop {
            while tasks.try_join_next().is_some() {}
            let answer = tokio::select! {
                _ = shutdown.wait_for(|down| *down) => break,
                answer = shared.client.assignments(&shared.host_id, index, ASSIGNMENTS_WAIT) => answer,
            };
            match answer {
                Ok(assignments) => {
                    backoff.reset();
                    index = Some(assignments.index);
                    self.apply(assignments.instances, &mut tasks);
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot read assignments");
                    tokio::select! {
                        _ = shutdown.wait_for(|down| *down) => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.drain(tasks).await;
    }

    /// Starts the assigned instances not running yet, and stops those asked
    /// to stop or no longer assigned.
    fn apply(self: &Arc<Self>, assigned: Vec<Assignment>, tasks: &mut JoinSet<()>) {
        let listed: HashSet<String> = assigned.iter().map(|a| a.instance_id.clone()).collect();
        for assignment in assigned {
            let id = assignment.instance_id.clone();
            let running = self.running.lock().expect("running lock").contains_key(&id);
            if assignment.stop {
                if !self.order_stop(&id) && !running {
                    // Ended here already, or never started: say it is over.
                    self.report_ended(&id);
                }
            } else if !running && !self.has_ended(&id) {
                self.start(assignment, tasks);
            }
        }
        let unlisted: Vec<String> = self
            .running
            .lock()
            .expect("running lock")
            .keys()
            .filter(|id| !listed.contains(*id))
            .cloned()
            .collect();
        for id in unlisted {
            info!(instance_id = %id, "instance no longer assigned here; stopping it");
            self.order_stop(&id);
        }
    }

    fn start(self: &Arc<Self>, assignment: Assignment, tasks: &mut JoinSet<()>) {
        let id = assignment.instance_id.clone();
        let status = Arc::new(Status::new(&id, self.shared.reports.clone()));
        let logs = Logs::default();
        let (stop_tx, mut stop) = watch::channel(false);
        self.running.lock().expect("running lock").insert(
            id.clone(),
            Running {
                status: Arc::clone(&status),
                logs: logs.clone(),
                kind: assignment.spec.kind,
                stop: stop_tx,
            },
        );
        info!(
            instance_id = %id,
            service = %assignment.service,
            version = assignment.version,
            kind = assignment.spec.kind.as_str(),
            "starting instance"
        );
        let supervisor = Arc::clone(self);
        let span = info_span!("instance", instance_id = %id, service = %assignment.service);
        tasks.spawn(
            async move {
                let shared = &supervisor.shared;
                status.enter(InstanceState::Starting, None);
                match assignment.spec.kind {
                    ServiceKind::Native => {
                        native::run(shared, &assignment, &status, &logs, &mut stop).await;
                    }
                    ServiceKind::WasiHttp => {
                        wasi_http::run(shared, &assignment, &status, &mut stop).await;
                    }
                }
                if status.state() != InstanceState::Failed {
                    status.enter(InstanceState::Stopped, None);
                }
                supervisor.forget(&assignment.instance_id).await;
            }
            .instrument(span),
        );
    }

    /// Tells a running instance to stop; false when none runs by that id.
    fn order_stop(&self, instance_id: &str) -> bool {
        let running = self.running.lock().expect("running lock");
        match running.get(instance_id) {
            Some(instance) => {
                if !instance.stop.send_replace(true) {
                    debug!(instance_id, "instance asked to stop");
                }
                true
            }
            None => false,
        }
    }

    /// An instance's task ended: its directory goes, and its id is kept so it
    /// is not started again.
    async fn forget(&self, instance_id: &str) {
        let dir = self.shared.instance_dir(instance_id);
        let removed = tokio::task::spawn_blocking(move || crate::workdir::remove_all(&dir)).await;
        if let Ok(Err(error)) = removed {
            warn!(instance_id, %error, "cannot remove the instance directory");
        }
        // Remembered as ended before it leaves the running set, so that an
        // assignment read in between never starts it again.
        {
            let mut ended = self.ended.lock().expect("ended lock");
            let (order, set) = &mut *ended;
            if set.insert(instance_id.to_string()) {
                order.push_back(instance_id.to_string());
            }
            while order.len() > MAX_REMEMBERED_ENDED {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
        self.running
            .lock()
            .expect("running lock")
            .remove(instance_id);
    }

    fn has_ended(&self, instance_id: &str) -> bool {
        self.ended
            .lock()
            .expect("ended lock")
            .1
            .contains(instance_id)
    }

    /// Reports an instance this host does not run as stopped, unless its end
    /// was reported already.
    fn report_ended(&self, instance_id: &str) {
        if !self.has_ended(instance_id) {
            Status::new(instance_id, self.shared.reports.clone())
                .enter(InstanceState::Stopped, None);
        }
    }

    /// At shutdown: takes every instance out of the endpoint set and waits
    /// (bounded) until the coordinators published that, then stops them all
    /// with their grace period, and gives the final reports a moment.
    async fn drain(&self, mut tasks: JoinSet<()>) {
        let statuses: Vec<Arc<Status>> = self
            .running
            .lock()
            .expect("running lock")
            .values()
            .map(|r| Arc::clone(&r.status))
            .collect();
        if statuses.is_empty() {
            return;
        }
        info!(
            instances = statuses.len(),
            "shutting down; draining instances"
        );
        for status in &statuses {
            if status.state().is_alive() {
                status.enter(InstanceState::Stopping, None);
            }
        }
        let ids: Vec<String> = statuses.iter().map(|s| s.snapshot().instance_id).collect();
        if tokio::time::timeout(UNPUBLISH_TIMEOUT, self.unpublished(&ids))
            .await
            .is_err()
        {
            warn!(
                "the coordinators did not unpublish this host's instances in time; stopping them anyway"
            );
        }
        for id in &ids {
            self.order_stop(id);
        }
        let window = self.shared.grace + DRAIN_DELAY + FINAL_REPORT_WINDOW;
        if tokio::time::timeout(window, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            warn!("instances did not stop in time; abandoning them");
            tasks.shutdown().await;
        }
        let reported = async {
            for id in &ids {
                self.shared.reports.landed(id).await;
            }
        };
        if tokio::time::timeout(FINAL_REPORT_WINDOW, reported)
            .await
            .is_err()
        {
            warn!(
                "final instance states not reported; the coordinators will notice the host is gone"
            );
        }
    }

    /// Resolves once the `stopping` reports of `ids` landed and the endpoint
    /// set lists none of them.
    async fn unpublished(&self, ids: &[String]) {
        for id in ids {
            self.shared.reports.landed(id).await;
        }
        let ours: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let deadline = Instant::now() + UNPUBLISH_TIMEOUT;
        while Instant::now() < deadline {
            match self.shared.client.endpoints(None, Duration::ZERO).await {
                Ok(set) => {
                    let listed = set
                        .services
                        .iter()
                        .flat_map(|s| &s.endpoints)
                        .any(|e| ours.contains(e.instance_id.as_str()));
                    if !listed {
                        return;
                    }
                }
                Err(error) => debug!(%error, "cannot read the endpoint set"),
            }
            tokio::time::sleep(UNPUBLISH_POLL).await;
        }
    }

    /// The newest lines of a native instance's output; `None` when no such
    /// instance runs here.
    pub(crate) fn logs(&self, instance_id: &str) -> Option<(ServiceKind, Logs)> {
        let running = self.running.lock().expect("running lock");
        running.get(instance_id).map(|r| (r.kind, r.logs.clone()))
    }

    /// How many instances are in each state now.
    pub(crate) fn states(&self) -> BTreeMap<&'static str, u64> {
        let mut counts: BTreeMap<&'static str, u64> =
            InstanceState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for running in self.running.lock().expect("running lock").values() {
            *counts.entry(running.status.state().as_str()).or_default() += 1;
        }
        counts
    }

    /// Restarts of instances since the host started.
    pub(crate) fn restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }
}

/// Empties the instances' parent directory at start: what is there was left
/// by a host that died with instances running (the staging directories of
/// interrupted unpacks among them).
pub(crate) async fn reset_root(root: &Path) -> std::io::Result<()> {
    let dir = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        crate::workdir::remove_all(&dir)?;
        skyclaw_api::datadir::create_private(&dir)
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}
