//! Job routes: submit, list, get, wait (long-poll), cancel, and completion by
//! the host that holds the lease.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use skyclaw_api::apikeys::Scope;
use skyclaw_api::jobs::{DEFAULT_PAGE, Job, JobList, JobQuery, JobSpec, MAX_PAGE, WasiSpec};
use skyclaw_api::now_ms;

use super::artifacts;
use super::auth::Principal;
use super::extract::{ApiQuery, IdempotencyKey, JsonBody};
use crate::error::ApiError;
use crate::node::Node;
use crate::scheduler;
use crate::state::{self, Command, JobRow};

/// Longest a single wait long-poll holds the connection; clients loop.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Wait when the caller names none.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

pub async fn submit(
    State(node): State<Arc<Node>>,
    principal: Principal,
    idempotency: IdempotencyKey,
    body: JsonBody<JobSpec>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    principal.require(Scope::JobsSubmit)?;
    let spec = body.parse()?;
    spec.validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let JobSpec::Wasi(wasi) = &spec {
        check_wasi(&node, wasi)?;
    }
    // Judged here, on the leader, which alone knows the live hosts.
    let (generation, live) = node.liveness.up_hosts_counted();
    let waiting_reason = scheduler::waiting_reason(&spec, &live);
    let now = now_ms();
    let command = Command::EnqueueJob {
        id: new_job_id(),
        spec,
        owner: principal.owner(),
        now,
        waiting_reason,
    };
    let record = idempotency.record(&principal, &body.request_hash, now);
    let job: Job = node.execute(command, record).await?;
    // Hosts that changed while the job was being enqueued may have been
    // judged by a refresh that did not see it yet.
    if node.liveness.generation() != generation {
        node.liveness.mark_stale();
    }
    Ok((StatusCode::CREATED, Json(job)))
}

/// Refuses a WASI job that can never run: its artifact was never uploaded or
/// is not a wasm binary, or its limits exceed what every live WASI host grants.
/// With no WASI host up, limits are not judged: one may still register.
fn check_wasi(node: &Node, wasi: &WasiSpec) -> Result<(), ApiError> {
    let digest = &wasi.artifact;
    let info = artifacts::uploaded(node, digest, "skyclaw artifact push FILE")?;
    if !info.kind.is_wasm() {
        return Err(ApiError::BadRequest(format!(
            "artifact {digest} is a {}, not a WASI component or preview1 module",
            info.kind
        )));
    }
    let caps = node.liveness.wasi_caps();
    if caps.is_empty() || caps.iter().any(|c| wasi.limits.within(c)) {
        return Ok(());
    }
    // Hosts often share their caps: each excess is said once.
    let mut excess: Vec<String> = caps.iter().filter_map(|c| wasi.limits.excess(c)).collect();
    excess.sort();
    excess.dedup();
    Err(ApiError::BadRequest(format!(
        "no live host grants these limits: {}; a host's owner sets its maxima with \
         --wasi-max-fuel, --wasi-max-memory-mb and --wasi-max-timeout-ms",
        excess.join("; ")
    )))
}

/// Time-ordered ids: listing by id follows submission order.
fn new_job_id() -> String {
    format!("j-{}", uuid::Uuid::now_v7().simple())
}

/// Jobs the caller may see, oldest first: every job for the token, the jobs
/// it submitted for a key with `jobs:read`.
pub async fn list(
    State(node): State<Arc<Node>>,
    principal: Principal,
    ApiQuery(query): ApiQuery<JobQuery>,
) -> Result<Json<JobList>, ApiError> {
    principal.require(Scope::JobsRead)?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let owner = match &principal {
        Principal::Token => None,
        Principal::ApiKey(_) => Some(principal.owner().as_column()),
    };
    let (status, after) = (query.status, query.after.clone());
    let rows = node
        .store
        .scan(move |c| state::jobs::page(c, status, owner.as_deref(), after.as_deref(), limit + 1))
        .await?;
    let mut jobs: Vec<Job> = rows.into_iter().map(|r| r.job).collect();
    let next_after = if jobs.len() > limit as usize {
        jobs.truncate(limit as usize);
        jobs.last().map(|j| j.id.clone())
    } else {
        None
    };
    Ok(Json(JobList { jobs, next_after }))
}

pub async fn get(
    State(node): State<Arc<Node>>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    principal.require(Scope::JobsRead)?;
    Ok(Json(visible_job(&node, &principal, &id)?.job))
}

/// A job the caller may see; others' jobs are reported as missing.
fn visible_job(node: &Node, principal: &Principal, id: &str) -> Result<JobRow, ApiError> {
    node.job(id)?
        .filter(|row| principal.can_see(row))
        .ok_or_else(|| ApiError::NotFound(format!("no job {id}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    timeout_ms: Option<u64>,
}

pub async fn wait(
    State(node): State<Arc<Node>>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<Job>, ApiError> {
    principal.require(Scope::JobsRead)?;
    let timeout = query
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_WAIT)
        .min(MAX_WAIT);
    let mut watch = node.store.events().watch_job(&id);
    let row = visible_job(&node, &principal, &id);
    if matches!(&row, Ok(row) if !row.job.status.is_terminal()) {
        tokio::select! {
            _ = watch.finished() => {}
            _ = tokio::time::sleep(timeout) => {}
            _ = node.shutting_down() => {}
        }
    }
    drop(watch);
    Ok(Json(visible_job(&node, &principal, &id)?.job))
}

pub async fn cancel(
    State(node): State<Arc<Node>>,
    principal: Principal,
    idempotency: IdempotencyKey,
    Path(id): Path<String>,
    body: JsonBody<serde_json::Value>,
) -> Result<Json<Job>, ApiError> {
    principal.require(Scope::JobsSubmit)?;
    let value = body.parse()?;
    if !value.as_object().is_some_and(|o| o.is_empty()) && !value.is_null() {
        return Err(ApiError::BadRequest(
            "cancel takes an empty JSON object as its body".into(),
        ));
    }
    let now = now_ms();
    let command = Command::CancelJob {
        job_id: id,
        owner: principal.owner(),
        now,
    };
    let record = idempotency.record(&principal, &body.request_hash, now);
    Ok(Json(node.execute(command, record).await?))
}
