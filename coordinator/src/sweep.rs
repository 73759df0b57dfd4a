//! Background duties of the leader: taking over host liveness when it is
//! elected, marking silent hosts down, requeueing jobs whose leases expired,
//! keeping queued jobs' waiting reasons current and failing those past their
//! queue timeout, and forgetting old idempotency records. Followers only
//! watch for election.

use std::sync::Arc;
use std::time::{Duration, Instant};

use skyclaw_api::now_ms;

use crate::node::Node;
use crate::state::Command;
use crate::state::read;

/// How often expired leases are looked for.
const LEASE_SWEEP: Duration = Duration::from_millis(500);
/// How soon waiting reasons follow a change of the live hosts, and how late
/// a queue timeout may be honoured: each look costs one indexed read when
/// nothing changed.
const QUEUE_SWEEP: Duration = Duration::from_millis(250);
/// Idempotency keys are honoured for a day, like most public APIs do.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How often old idempotency records are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(10 * 60);

/// Runs until the task is aborted.
pub async fn run(node: Arc<Node>) {
    let mut metrics = node.cluster.raft.metrics();
    let mut leading = false;
    // Check hosts several times per TTL so one is marked down soon after it ends.
    let mut hosts = tokio::time::interval(node.liveness.ttl() / 4);
    let mut leases = tokio::time::interval(LEASE_SWEEP);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let mut queue = tokio::time::interval(QUEUE_SWEEP);
    for tick in [&mut hosts, &mut leases, &mut prune, &mut queue] {
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        let result = tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return; // raft stopped
                }
                let now_leading = node.cluster.is_leader();
                let took_over = now_leading && !leading;
                leading = now_leading;
                if took_over {
                    tracing::info!(node = node.cluster.id, "elected leader; tracking host liveness");
                    node.take_over_liveness().map_err(crate::ApiError::from)
                } else {
                    Ok(())
                }
            }
            _ = hosts.tick(), if leading => mark_silent_hosts_down(&node).await,
            _ = leases.tick(), if leading => expire_leases(&node).await,
            _ = prune.tick(), if leading => prune_idempotency(&node).await,
            _ = queue.tick(), if leading => queue_duties(&node).await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "background duty failed; retrying on the next tick");
        }
    }
}

async fn mark_silent_hosts_down(node: &Node) -> Result<(), crate::ApiError> {
    for host_id in node.liveness.overdue(Instant::now()) {
        let outcome = node
            .propose(
                Command::HostDown {
                    host_id: host_id.clone(),
                    now: now_ms(),
                },
                None,
            )
            .await?
            .outcome;
        node.liveness.remove(&host_id);
        tracing::warn!(host = %host_id, requeued = ?outcome, "host missed its heartbeats; marked down");
    }
    Ok(())
}

async fn expire_leases(node: &Node) -> Result<(), crate::ApiError> {
    let now = now_ms();
    let expired = node.store.read(|c| read::expired_leases(c, now))?;
    if !expired.is_empty() {
        node.propose(Command::ExpireLeases { now }, None).await?;
        tracing::warn!(jobs = expired.len(), "leases expired; jobs requeued");
    }
    Ok(())
}

/// Both duties run each time: one failing does not hold up the other.
async fn queue_duties(node: &Node) -> Result<(), crate::ApiError> {
    let refreshed = crate::waiting::refresh_reasons(node).await;
    let failed = crate::waiting::fail_overdue(node).await;
    refreshed.and(failed)
}

async fn prune_idempotency(node: &Node) -> Result<(), crate::ApiError> {
    let before = now_ms().saturating_sub(IDEMPOTENCY_TTL.as_millis() as u64);
    node.propose(Command::PruneIdempotency { before }, None)
        .await?;
    Ok(())
}
