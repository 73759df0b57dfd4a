//! The host daemon against fake coordinators on real ports: registration
//! retries, claims replayed under their idempotency keys, completions resent
//! under their leases, revocation, re-registration, shutdown, and failover to
//! coordinators learned from the peer list.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use skyclaw_api::hosts::{
    Claim, Claimed, Complete, CompleteMany, CompletedMany, Completion, CompletionResult, Heartbeat,
    HeartbeatAck, LeasedJob, Outcome, RegisterHost, Registered,
};
use skyclaw_api::jobs::{Job, JobSpec, JobStatus};
use skyclaw_api::network::{Peer, PeerList, PeerRole};
use skyclaw_api::{ErrorBody, ErrorCode, ErrorEnvelope, headers};
use skyclaw_runtime::{HostConfig, JobUsers, UidRange};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);
/// Job uids each host of this test process gets: hosts running at once
/// must never share one, and a machine lets one host claim a range.
const UIDS_PER_HOST: u32 = 64;

#[derive(Default)]
struct Fake {
    state: Mutex<FakeState>,
    /// Wakes long-polling claims when jobs are queued.
    work: Notify,
}

#[derive(Default)]
struct FakeState {
    /// Answer every request with 503, as a coordinator cut off from its cluster.
    down: bool,
    /// The coordinator URLs `/v1/network/peers` lists; the first leads.
    peers: Vec<String>,
    peer_reads: u32,
    /// Answer this many registrations with 503 first.
    register_failures: u32,
    registrations: Vec<RegisterHost>,
    /// Answer this many heartbeats with `host_not_registered` first.
    heartbeat_forgets: u32,
    heartbeats: Vec<Heartbeat>,
    /// Job ids the next heartbeat answer tells the host to stop.
    stop: Vec<String>,
    queue: Vec<Job>,
    /// Lease the next jobs but answer 503, as if the answer were lost.
    lose_next_claim_answer: bool,
    /// The key of the claim whose answer was "lost".
    lost_claim_key: Option<String>,
    /// Jobs leased per claim key, replayed when the key comes again.
    leased: HashMap<String, Vec<LeasedJob>>,
    claim_keys: Vec<String>,
    /// Answer this many completions with 503 first.
    complete_failures: u32,
    /// Each completion attempt: the job and the lease it named.
    complete_attempts: Vec<(String, String)>,
    completions: HashMap<String, Complete>,
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    fn enqueue(&self, id: &str, spec: serde_json::Value) {
        let spec: JobSpec = serde_json::from_value(spec).unwrap();
        self.lock().queue.push(Job {
            id: id.to_string(),
            status: JobStatus::Queued,
            spec,
            attempts: 0,
            host_id: None,
            created_at: 0,
            updated_at: 0,
            result: None,
            waiting_reason: None,
        });
        self.work.notify_waiters();
    }

    /// Stops answering, long-polling claims included.
    fn go_down(&self) {
        self.lock().down = true;
        self.work.notify_waiters();
    }
}

async fn unless_down(State(fake): State<Arc<Fake>>, request: Request, next: Next) -> Response {
    let down = fake.lock().down;
    if down {
        return error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable);
    }
    next.run(request).await
}

async fn peers(State(fake): State<Arc<Fake>>) -> Json<PeerList> {
    let mut s = fake.lock();
    s.peer_reads += 1;
    let peers = s
        .peers
        .iter()
        .zip(1..)
        .map(|(url, id)| Peer {
            id,
            url: url.clone(),
            role: if id == 1 {
                PeerRole::Leader
            } else {
                PeerRole::Voter
            },
            last_contact_ms: Some(0),
            applied_index: Some(0),
        })
        .collect();
    Json(PeerList {
        leader_id: Some(1),
        peers,
    })
}

fn error(status: StatusCode, code: ErrorCode) -> Response {
    (status, Json(ErrorEnvelope::new(code, code.as_str()))).into_response()
}

fn key(headers: &HeaderMap) -> String {
    headers
        .get(headers::IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn register(State(fake): State<Arc<Fake>>, Json(req): Json<RegisterHost>) -> Response {
    let mut s = fake.lock();
    if s.register_failures > 0 {
        s.register_failures -= 1;
        return error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable);
    }
    let host_id = req.host_id.clone();
    s.registrations.push(req);
    Json(Registered {
        host_id,
        heartbeat_interval_ms: 50,
        ttl_ms: 5_000,
    })
    .into_response()
}

async fn heartbeat(State(fake): State<Arc<Fake>>, Json(hb): Json<Heartbeat>) -> Response {
    let mut s = fake.lock();
    if s.heartbeat_forgets > 0 {
        s.heartbeat_forgets -= 1;
        return error(StatusCode::NOT_FOUND, ErrorCode::HostNotRegistered);
    }
    s.heartbeats.push(hb);
    Json(HeartbeatAck {
        stop: std::mem::take(&mut s.stop),
    })
    .into_response()
}

async fn claim(
    State(fake): State<Arc<Fake>>,
    UrlPath(host_id): UrlPath<String>,
    headers: HeaderMap,
    Json(claim): Json<Claim>,
) -> Response {
    let key = key(&headers);
    let deadline = Instant::now() + Duration::from_millis(claim.wait_ms);
    fake.lock().claim_keys.push(key.clone());
    loop {
        let notified = fake.work.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut s = fake.lock();
            if s.down {
                return error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable);
            }
            if let Some(jobs) = s.leased.get(&key) {
                return Json(Claimed { jobs: jobs.clone() }).into_response();
            }
            if !s.queue.is_empty() {
                let n = s.queue.len().min(claim.max_jobs as usize);
                let jobs: Vec<LeasedJob> = s
                    .queue
                    .drain(..n)
                    .map(|mut job| {
                        job.status = JobStatus::Running;
                        job.attempts += 1;
                        job.host_id = Some(host_id.clone());
                        LeasedJob {
                            lease_token: format!("lease-{}", job.id),
                            job,
                            lease_expires_at: u64::MAX,
                        }
                    })
                    .collect();
                s.leased.insert(key.clone(), jobs.clone());
                if std::mem::take(&mut s.lose_next_claim_answer) {
                    s.lost_claim_key = Some(key);
                    return error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable);
                }
                return Json(Claimed { jobs }).into_response();
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Json(Claimed::default()).into_response();
        }
    }
}

async fn complete(State(fake): State<Arc<Fake>>, Json(batch): Json<CompleteMany>) -> Response {
    let mut s = fake.lock();
    let mut results = Vec::new();
    for Completion { job_id, complete } in batch.completions {
        s.complete_attempts
            .push((job_id.clone(), complete.lease_token.clone()));
        // Each failure refuses one completion as a coordinator without a
        // quorum would; the host must send that one again.
        let error = (s.complete_failures > 0).then(|| {
            s.complete_failures -= 1;
            ErrorBody {
                code: ErrorCode::NoQuorum,
                message: "no quorum".into(),
            }
        });
        if error.is_none() {
            assert!(
                s.leased.values().flatten().any(|l| l.job.id == job_id),
                "completion of a leased job"
            );
            s.completions.insert(job_id.clone(), complete);
        }
        results.push(CompletionResult { job_id, error });
    }
    Json(CompletedMany { results }).into_response()
}

async fn start_fake(fake: Arc<Fake>) -> String {
    let app = axum::Router::new()
        .route("/v1/hosts/register", post(register))
        .route("/v1/hosts/{id}/heartbeat", post(heartbeat))
        .route("/v1/hosts/{id}/claim", post(claim))
        .route("/v1/hosts/{id}/complete", post(complete))
        .route("/v1/network/peers", get(peers))
        .layer(axum::middleware::from_fn_with_state(
            fake.clone(),
            unless_down,
        ))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

struct RunningHost {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), skyclaw_runtime::HostError>>,
}

impl RunningHost {
    async fn shut_down(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("host stops in time")
            .unwrap()
            .expect("clean shutdown");
    }
}

/// A uid range no other host of this test process (or, by its pid, of
/// another) uses.
fn own_job_uids() -> UidRange {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let turn = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 64;
    let first = 1_500_000_000 + ((std::process::id() % 5_000) * 64 + turn) * UIDS_PER_HOST;
    UidRange {
        first,
        last: first + UIDS_PER_HOST - 1,
    }
}

fn config(url: &str, data_dir: &Path) -> HostConfig {
    let mut config = HostConfig::new(vec![url.to_string()], "token".into(), data_dir.into());
    config.job_users = Some(JobUsers::Range(own_job_uids()));
    config.name = "fake-host".into();
    config.allowed_commands = vec!["echo".into(), "sleep".into()];
    config.max_parallel = 2;
    config.openclaw_command = data_dir.join("no-openclaw").display().to_string();
    config.shutdown_grace = Duration::from_millis(200);
    config
}

fn start_host(config: HostConfig) -> RunningHost {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(skyclaw_runtime::run(config, async {
        let _ = stopped.await;
    }));
    RunningHost { stop, task }
}

async fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn runs_claimed_jobs_and_reports_them_through_failures() {
    let fake = Arc::new(Fake::default());
    {
        let mut s = fake.lock();
        s.register_failures = 3;
        s.lose_next_claim_answer = true;
        s.complete_failures = 2;
    }
    let url = start_fake(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let host = start_host(config(&url, data.path()));

    let registered = wait_until("registration", || {
        fake.lock().registrations.first().cloned()
    })
    .await;
    assert!(
        registered.host_id.starts_with("h-"),
        "{}",
        registered.host_id
    );
    assert_eq!(registered.name, "fake-host");
    assert_eq!(registered.capabilities, ["wasi", "shell"]);
    assert!(!registered.sandbox_only);
    assert_eq!(registered.wasi, Some(config(&url, data.path()).wasi_caps()));
    assert_eq!(registered.openclaw_version, None);
    assert_eq!(registered.max_parallel, 2);
    assert_eq!(registered.version, env!("CARGO_PKG_VERSION"));

    fake.enqueue(
        "ok",
        serde_json::json!({"kind": "shell", "command": "echo", "args": ["hi"]}),
    );
    fake.enqueue(
        "bad",
        serde_json::json!({"kind": "shell", "command": "touch", "args": ["x"]}),
    );
    let completions = wait_until("both completions", || {
        let s = fake.lock();
        (s.completions.len() == 2).then(|| s.completions.clone())
    })
    .await;

    let ok = &completions["ok"];
    assert_eq!(ok.outcome, Outcome::Succeeded);
    assert_eq!(ok.lease_token, "lease-ok");
    assert_eq!(ok.result.stdout, "hi\n");
    let bad = &completions["bad"];
    assert_eq!(bad.outcome, Outcome::Failed);
    assert_eq!(
        bad.result.error.as_deref(),
        Some("command not allowed on host fake-host: touch")
    );

    {
        let s = fake.lock();
        // The lost claim answer was asked for again under the same key.
        let lost_key = s.lost_claim_key.as_ref().expect("a claim answer was lost");
        assert_eq!(s.claim_keys.iter().filter(|k| *k == lost_key).count(), 2);
        // Every completion attempt of a job named that job's one lease.
        for (job, lease) in &s.complete_attempts {
            assert!(
                ["ok", "bad"].contains(&job.as_str()) && *lease == format!("lease-{job}"),
                "{job} {lease}"
            );
        }
        assert_eq!(s.complete_attempts.len(), 4);
        assert!(!s.heartbeats.is_empty());
    }
    host.shut_down().await;

    // A restarted host keeps its id.
    let host = start_host(config(&url, data.path()));
    wait_until("second registration", || {
        (fake.lock().registrations.len() == 2).then_some(())
    })
    .await;
    assert_eq!(fake.lock().registrations[1].host_id, registered.host_id);
    host.shut_down().await;
}

/// Waits until a heartbeat renews `job_id`'s lease: the job is running.
async fn wait_running(fake: &Fake, job_id: &str) {
    wait_until("the job's lease in a heartbeat", || {
        let s = fake.lock();
        s.heartbeats
            .last()
            .filter(|hb| hb.running.iter().any(|l| l.job_id == job_id))
            .map(|_| ())
    })
    .await;
}

#[tokio::test]
async fn shutdown_abandons_jobs_still_running_after_the_grace() {
    let fake = Arc::new(Fake::default());
    let url = start_fake(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let host = start_host(config(&url, data.path()));
    fake.enqueue(
        "long",
        serde_json::json!({"kind": "shell", "command": "sleep", "args": ["300"]}),
    );
    wait_running(&fake, "long").await;

    host.shut_down().await;
    let s = fake.lock();
    let long = s.completions.get("long").expect("abandoned job reported");
    assert_eq!(long.outcome, Outcome::Abandoned);
    assert_eq!(long.result.error.as_deref(), Some("host shutting down"));
}

#[tokio::test]
async fn revoked_jobs_are_killed_and_not_reported() {
    let fake = Arc::new(Fake::default());
    let url = start_fake(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let host = start_host(config(&url, data.path()));
    fake.enqueue(
        "doomed",
        serde_json::json!({"kind": "shell", "command": "sleep", "args": ["300"]}),
    );
    wait_running(&fake, "doomed").await;

    fake.lock().stop.push("doomed".to_string());
    wait_until("the revoked job's lease to go", || {
        let s = fake.lock();
        s.heartbeats
            .last()
            .filter(|hb| s.stop.is_empty() && hb.running.is_empty())
            .map(|_| ())
    })
    .await;
    assert!(fake.lock().completions.is_empty());

    // The slot is free again: another job runs.
    fake.enqueue(
        "next",
        serde_json::json!({"kind": "shell", "command": "echo"}),
    );
    wait_until("the next job", || {
        fake.lock().completions.get("next").cloned()
    })
    .await;
    host.shut_down().await;
    assert!(!fake.lock().completions.contains_key("doomed"));
}

#[tokio::test]
async fn a_forgotten_host_registers_again_with_the_same_id() {
    let fake = Arc::new(Fake::default());
    fake.lock().heartbeat_forgets = 1;
    let url = start_fake(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let host = start_host(config(&url, data.path()));
    let ids = wait_until("a second registration", || {
        let s = fake.lock();
        (s.registrations.len() >= 2).then(|| {
            (
                s.registrations[0].host_id.clone(),
                s.registrations[1].host_id.clone(),
            )
        })
    })
    .await;
    assert_eq!(ids.0, ids.1);
    wait_until("heartbeats after registering again", || {
        (!fake.lock().heartbeats.is_empty()).then_some(())
    })
    .await;
    host.shut_down().await;
}

#[tokio::test]
async fn learns_the_cluster_from_one_coordinator_and_fails_over_to_the_others() {
    let first = Arc::new(Fake::default());
    let second = Arc::new(Fake::default());
    let first_url = start_fake(first.clone()).await;
    let second_url = start_fake(second.clone()).await;
    for fake in [&first, &second] {
        fake.lock().peers = vec![first_url.clone(), second_url.clone()];
    }
    let data = tempfile::tempdir().unwrap();
    // The host is given the first coordinator only.
    let host = start_host(config(&first_url, data.path()));
    wait_until("registration", || {
        (!first.lock().registrations.is_empty()).then_some(())
    })
    .await;
    wait_until("the host to read the peer list", || {
        (first.lock().peer_reads > 0).then_some(())
    })
    .await;

    first.go_down();
    second.enqueue(
        "elsewhere",
        serde_json::json!({"kind": "shell", "command": "echo", "args": ["hi"]}),
    );
    let done = wait_until("the job through the second coordinator", || {
        second.lock().completions.get("elsewhere").cloned()
    })
    .await;
    assert_eq!(done.outcome, Outcome::Succeeded);
    assert_eq!(done.result.stdout, "hi\n");
    wait_until("heartbeats to the second coordinator", || {
        (!second.lock().heartbeats.is_empty()).then_some(())
    })
    .await;
    host.shut_down().await;
    assert!(first.lock().completions.is_empty());
}

#[tokio::test]
async fn sandbox_only_host_refuses_a_native_job_it_is_given() {
    let fake = Arc::new(Fake::default());
    let url = start_fake(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let mut sandboxed = config(&url, data.path());
    sandboxed.allowed_commands.clear();
    sandboxed.sandbox_only = true;
    let host = start_host(sandboxed);
    let registered = wait_until("registration", || {
        fake.lock().registrations.first().cloned()
    })
    .await;
    assert!(registered.sandbox_only);
    assert_eq!(registered.capabilities, ["wasi"]);

    // A coordinator should never do this; the host refuses all the same.
    let marker = data.path().join("touched");
    fake.enqueue(
        "native",
        serde_json::json!({"kind": "shell", "command": "touch", "args": [marker]}),
    );
    let native = wait_until("the refusal", || {
        fake.lock().completions.get("native").cloned()
    })
    .await;
    assert_eq!(native.outcome, Outcome::Failed);
    assert_eq!(
        native.result.error.as_deref(),
        Some("host fake-host is sandbox-only: it runs WASI jobs, never shell jobs")
    );
    assert!(!marker.exists(), "nothing was spawned");
    host.shut_down().await;
}
