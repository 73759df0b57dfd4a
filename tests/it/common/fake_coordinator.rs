//! A fake coordinator on a real port, for tests that run the host daemon in
//! process: it serves the host routes and the peer list from state the test
//! reads and steers (failures to answer, lost claim answers, stop orders,
//! going down), so the daemon's retries and failover can be checked. It also
//! serves services' logs from lines the test sets, for the CLI's
//! `services logs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use skyclaw_api::hosts::{
    Claim, Claimed, Complete, CompleteMany, CompletedMany, Completion, CompletionResult, Heartbeat,
    HeartbeatAck, LeasedJob, RegisterHost, Registered,
};
use skyclaw_api::jobs::{Job, JobSpec, JobStatus};
use skyclaw_api::network::{Peer, PeerList, PeerRole};
use skyclaw_api::services::{LogsQuery, ServiceLogs};
use skyclaw_api::{ErrorBody, ErrorCode, ErrorEnvelope, headers};
use tokio::sync::Notify;
use tokio::time::Instant;

/// A fake coordinator's state and the wake-up of its long-polling claims;
/// serve it with [`start`].
#[derive(Default)]
pub struct FakeCoordinator {
    state: Mutex<FakeState>,
    /// Wakes long-polling claims when jobs are queued.
    work: Notify,
}

/// What a [`FakeCoordinator`] was asked and how it is to answer.
#[derive(Default)]
pub struct FakeState {
    /// Answer every request with 503, as a coordinator cut off from its cluster.
    pub down: bool,
    /// The coordinator URLs `/v1/network/peers` lists; the first leads.
    pub peers: Vec<String>,
    pub peer_reads: u32,
    /// Answer this many registrations with 503 first.
    pub register_failures: u32,
    pub registrations: Vec<RegisterHost>,
    /// Answer this many heartbeats with `host_not_registered` first.
    pub heartbeat_forgets: u32,
    pub heartbeats: Vec<Heartbeat>,
    /// Job ids the next heartbeat answer tells the host to stop.
    pub stop: Vec<String>,
    pub queue: Vec<Job>,
    /// Lease the next jobs but answer 503, as if the answer were lost.
    pub lose_next_claim_answer: bool,
    /// The key of the claim whose answer was "lost".
    pub lost_claim_key: Option<String>,
    /// Jobs leased per claim key, replayed when the key comes again.
    pub leased: HashMap<String, Vec<LeasedJob>>,
    pub claim_keys: Vec<String>,
    /// Refuse this many completions (`no_quorum`) first.
    pub complete_failures: u32,
    /// Each completion attempt: the job and the lease it named.
    pub complete_attempts: Vec<(String, String)>,
    pub completions: HashMap<String, Complete>,
    /// What `GET /v1/services/{name}/logs` answers, by service; each
    /// instance's newest `tail` lines (all when no tail is asked).
    pub service_logs: HashMap<String, ServiceLogs>,
    /// Each logs query: the service and what it asked.
    pub logs_queries: Vec<(String, LogsQuery)>,
}

impl FakeCoordinator {
    pub fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Queues job `id` with `spec` (given as JSON) and wakes waiting claims.
    pub fn enqueue(&self, id: &str, spec: serde_json::Value) {
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
    pub fn go_down(&self) {
        self.lock().down = true;
        self.work.notify_waiters();
    }
}

/// Serves `fake` on a free port of 127.0.0.1 until the test process ends;
/// returns its base URL.
pub async fn start(fake: Arc<FakeCoordinator>) -> String {
    let app = axum::Router::new()
        .route("/v1/hosts/register", post(register))
        .route("/v1/hosts/{id}/heartbeat", post(heartbeat))
        .route("/v1/hosts/{id}/claim", post(claim))
        .route("/v1/hosts/{id}/complete", post(complete))
        .route("/v1/network/peers", get(peers))
        .route("/v1/services/{name}/logs", get(service_logs))
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

async fn unless_down(
    State(fake): State<Arc<FakeCoordinator>>,
    request: Request,
    next: Next,
) -> Response {
    let down = fake.lock().down;
    if down {
        return error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable);
    }
    next.run(request).await
}

async fn service_logs(
    State(fake): State<Arc<FakeCoordinator>>,
    UrlPath(name): UrlPath<String>,
    axum::extract::Query(query): axum::extract::Query<LogsQuery>,
) -> Response {
    let mut s = fake.lock();
    s.logs_queries.push((name.clone(), query.clone()));
    let Some(logs) = s.service_logs.get(&name) else {
        return error(StatusCode::NOT_FOUND, ErrorCode::NotFound);
    };
    let mut logs = logs.clone();
    logs.instances.retain(|i| {
        query
            .instance
            .as_ref()
            .is_none_or(|id| *id == i.instance_id)
    });
    for instance in &mut logs.instances {
        let keep = query.tail.unwrap_or(usize::MAX);
        let skip = instance.lines.len().saturating_sub(keep);
        instance.lines.drain(..skip);
    }
    Json(logs).into_response()
}

async fn peers(State(fake): State<Arc<FakeCoordinator>>) -> Json<PeerList> {
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

async fn register(
    State(fake): State<Arc<FakeCoordinator>>,
    Json(req): Json<RegisterHost>,
) -> Response {
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

async fn heartbeat(
    State(fake): State<Arc<FakeCoordinator>>,
    Json(hb): Json<Heartbeat>,
) -> Response {
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
    State(fake): State<Arc<FakeCoordinator>>,
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

async fn complete(
    State(fake): State<Arc<FakeCoordinator>>,
    Json(batch): Json<CompleteMany>,
) -> Response {
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
