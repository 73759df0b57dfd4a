//! Host routes: registration, heartbeats (which renew leases), claiming jobs
//! by long-poll, and the host list.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use skyclaw_api::hosts::{
    Claim, Claimed, CompleteMany, CompletedMany, Completion, CompletionResult, Heartbeat,
    HeartbeatAck, Host, HostList, HostStatus, MAX_CLAIM_JOBS, MAX_CLAIM_WAIT_MS,
    MAX_COMPLETE_BATCH, MAX_HOST_LIST, MAX_REPORTED_ARTIFACTS, RegisterHost, Registered,
};
use skyclaw_api::jobs::{CAP_OPENCLAW, CAP_SHELL};
use skyclaw_api::now_ms;
use skyclaw_api::services::MAX_HOST_INSTANCES;

use super::auth::{ClusterToken, Principal};
use super::extract::{IdempotencyKey, JsonBody};
use crate::error::ApiError;
use crate::node::Node;
use crate::scheduler::claims::{self, not_registered};
use crate::state::{self, Command};

/// Hosts heartbeat this many times per TTL, so one lost beat is harmless.
const BEATS_PER_TTL: u32 = 5;
/// Longest accepted host id or name.
const MAX_HOST_NAME: usize = 128;
/// Highest `max_parallel` a host may claim.
const MAX_PARALLEL_LIMIT: u32 = 4096;

pub async fn register(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    idempotency: IdempotencyKey,
    body: JsonBody<RegisterHost>,
) -> Result<Json<Registered>, ApiError> {
    let host = body.parse()?;
    validate_registration(&host)?;
    node.hosts_tracked().await?;
    let now = now_ms();
    let record = idempotency.record(&Principal::Token, &body.request_hash, now);
    node.execute::<()>(
        Command::RegisterHost {
            host: host.clone(),
            now,
        },
        record,
    )
    .await?;
    let host_id = host.host_id.clone();
    node.liveness.register(host, Instant::now());
    tracing::info!(host = %host_id, "host registered");
    let ttl = node.liveness.ttl();
    Ok(Json(Registered {
        host_id,
        heartbeat_interval_ms: (ttl / BEATS_PER_TTL).as_millis() as u64,
        ttl_ms: ttl.as_millis() as u64,
    }))
}

fn validate_registration(host: &RegisterHost) -> Result<(), ApiError> {
    let word = |field: &str, value: &str| {
        let ok = !value.is_empty()
            && value.len() <= MAX_HOST_NAME
            && value.chars().all(|c| c.is_ascii_graphic());
        if ok {
            Ok(())
        } else {
            Err(ApiError::BadRequest(format!(
                "{field} must be 1 to {MAX_HOST_NAME} visible ASCII characters"
            )))
        }
    };
    word("host_id", &host.host_id)?;
    word("incarnation", &host.incarnation)?;
    word("name", &host.name)?;
    if host.max_parallel == 0 || host.max_parallel > MAX_PARALLEL_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "max_parallel must be between 1 and {MAX_PARALLEL_LIMIT}"
        )));
    }
    if host.capabilities.len() > MAX_HOST_LIST || host.allowed_commands.len() > MAX_HOST_LIST {
        return Err(ApiError::BadRequest(format!(
            "capabilities and allowed_commands hold at most {MAX_HOST_LIST} entries each"
        )));
    }
    if host.sandbox_only
        && (!host.allowed_commands.is_empty()
            || host
                .capabilities
                .iter()
                .any(|c| c == CAP_SHELL || c == CAP_OPENCLAW))
    {
        return Err(ApiError::BadRequest(
            "a sandbox-only host may not offer native capabilities or allowed_commands".into(),
        ));
    }
    if let Some(caps) = &host.services
        && (caps.max_instances == 0 || caps.max_instances > MAX_HOST_INSTANCES)
    {
        return Err(ApiError::BadRequest(format!(
            "services.max_instances must be between 1 and {MAX_HOST_INSTANCES}"
        )));
    }
    if let Some(caps) = &host.wasi {
        caps.validate()
            .map_err(|e| ApiError::BadRequest(format!("wasi caps: {e}")))?;
    }
    Ok(())
}

pub async fn heartbeat(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    Path(host_id): Path<String>,
    body: JsonBody<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let Heartbeat {
        running,
        artifacts,
        draining,
    } = body.parse()?;
    if artifacts.len() > MAX_REPORTED_ARTIFACTS {
        return Err(ApiError::BadRequest(format!(
            "a heartbeat reports at most {MAX_REPORTED_ARTIFACTS} artifacts, not {}",
            artifacts.len()
        )));
    }
    node.hosts_tracked().await?;
    if !node
        .liveness
        .beat(&host_id, Instant::now(), artifacts, draining)
    {
        return Err(not_registered(&host_id));
    }
    if running.is_empty() {
        return Ok(Json(HeartbeatAck::default()));
    }
    let command = Command::RenewLeases {
        host_id,
        leases: running,
        expires_at: now_ms() + node.config.lease_duration.as_millis() as u64,
    };
    let stop = node.execute(command, None).await?;
    Ok(Json(HeartbeatAck { stop }))
}

pub async fn claim(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    idempotency: IdempotencyKey,
    Path(host_id): Path<String>,
    body: JsonBody<Claim>,
) -> Result<Json<Claimed>, ApiError> {
    let Claim { max_jobs, wait_ms } = body.parse()?;
    if max_jobs == 0 || max_jobs > MAX_CLAIM_JOBS {
        return Err(ApiError::BadRequest(format!(
            "max_jobs must be between 1 and {MAX_CLAIM_JOBS}"
        )));
    }
    let record = idempotency.record(&Principal::Token, &body.request_hash, now_ms());
    let deadline = Instant::now() + Duration::from_millis(wait_ms.min(MAX_CLAIM_WAIT_MS));
    let claimed = claims::claim(&node, &host_id, max_jobs as usize, deadline, record).await?;
    Ok(Json(claimed))
}

/// Records the ends of several jobs: each completion is proposed on its own
/// (the log batches them) and answered on its own, so one stale lease does
/// not hold up the rest.
pub async fn complete_many(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
    Path(host_id): Path<String>,
    body: JsonBody<CompleteMany>,
) -> Result<Json<CompletedMany>, ApiError> {
    let completions = body.parse()?.completions;
    if completions.is_empty() || completions.len() > MAX_COMPLETE_BATCH {
        return Err(ApiError::BadRequest(format!(
            "a batch holds 1 to {MAX_COMPLETE_BATCH} completions, not {}",
            completions.len()
        )));
    }
    tracing::debug!(host = %host_id, jobs = completions.len(), "completions reported");
    let now = now_ms();
    let results = futures_util::future::join_all(
        completions
            .into_iter()
            .map(|completion| complete_one(&node, completion, now)),
    )
    .await;
    Ok(Json(CompletedMany { results }))
}

/// Applies one completion of a batch. No idempotency key is needed: a
/// completion is idempotent by its lease.
async fn complete_one(node: &Node, completion: Completion, now: u64) -> CompletionResult {
    let Completion { job_id, complete } = completion;
    let command = Command::CompleteJob {
        job_id: job_id.clone(),
        lease_token: complete.lease_token,
        outcome: complete.outcome,
        result: complete.result,
        now,
    };
    let error = node.execute::<()>(command, None).await.err();
    CompletionResult {
        job_id,
        error: error.map(|e| e.body()),
    }
}

pub async fn list(
    State(node): State<Arc<Node>>,
    _token: ClusterToken,
) -> Result<Json<HostList>, ApiError> {
    let (rows, counts) = node
        .store
        .scan(|c| Ok((state::hosts::list(c)?, state::jobs::running_counts(c)?)))
        .await?;
    let now = Instant::now();
    let hosts = rows
        .into_iter()
        .map(|row| {
            let r = row.registration;
            let running = counts
                .iter()
                .find(|(id, _)| *id == r.host_id)
                .map_or(0, |(_, n)| *n);
            let last = node.liveness.last_seen_ago(&r.host_id, now);
            let mut artifacts: Vec<_> = node
                .liveness
                .get(&r.host_id)
                .map(|live| live.artifacts.iter().cloned().collect())
                .unwrap_or_default();
            artifacts.sort();
            Host {
                status: if row.status == HostStatus::Up && last.is_some() {
                    HostStatus::Up
                } else {
                    HostStatus::Down
                },
                last_heartbeat_ms_ago: last.map(|d| d.as_millis() as u64),
                running_jobs: running,
                registered_at: row.registered_at,
                updated_at: row.updated_at,
                id: r.host_id,
                name: r.name,
                capabilities: r.capabilities,
                max_parallel: r.max_parallel,
                allowed_commands: r.allowed_commands,
                openclaw_version: r.openclaw_version,
                version: r.version,
                sandbox_only: r.sandbox_only,
                wasi: r.wasi,
                services: r.services,
                artifacts,
            }
        })
        .collect();
    Ok(Json(HostList { hosts }))
}
