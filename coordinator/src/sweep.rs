//! Background duties of the leader: taking over host liveness when it is
//! elected, marking silent hosts down, requeueing jobs whose leases expired,
//! keeping queued jobs' waiting reasons current and failing those past their
//! queue timeout, placing service instances (`reconcile`), and forgetting
//! old idempotency records. Followers only watch for election.

use std::sync::Arc;
use std::time::{Duration, Instant};

use skyclaw_api::now_ms;

use crate::cluster::ClusterError;
use crate::node::Node;
use crate::reconcile::reconcile;
use crate::state::Command;
use crate::state::jobs;

/// How often expired leases are looked for.
const LEASE_SWEEP: Duration = Duration::from_millis(500);
/// How soon waiting reasons follow a change of the live hosts, and how late
/// a queue timeout may be honoured: each look costs one indexed read when
/// nothing changed.
const QUEUE_SWEEP: Duration = Duration::from_millis(250);
/// How soon a takeover of liveness that failed is tried again.
const TAKEOVER_RETRY: Duration = Duration::from_millis(100);
/// Idempotency keys are honoured for a day, like most public APIs do.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How often old idempotency records are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(10 * 60);
/// How often placement looks even when no service changed: hosts coming
/// and going, rollout deadlines passing. A change to a service or instance
/// wakes it at once.
const PLACEMENT_SWEEP: Duration = Duration::from_millis(500);

/// Runs until the task is aborted.
pub async fn run(node: Arc<Node>) {
    let mut metrics = node.cluster.raft.metrics();
    // Check hosts several times per TTL so one is marked down soon after it ends.
    let mut hosts = tokio::time::interval(node.liveness.ttl() / 4);
    let mut leases = tokio::time::interval(LEASE_SWEEP);
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let mut queue = tokio::time::interval(QUEUE_SWEEP);
    let mut takeover = tokio::time::interval(TAKEOVER_RETRY);
    let mut placement = tokio::time::interval(PLACEMENT_SWEEP);
    let mut services = node.store.events().watch_services();
    for tick in [
        &mut hosts,
        &mut leases,
        &mut prune,
        &mut queue,
        &mut takeover,
        &mut placement,
    ] {
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        // The leader's duties run only once it has taken over liveness.
        let tracking = node.liveness.tracking_since().is_some();
        let result = tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return; // raft stopped
                }
                follow_leadership(&node).await
            }
            _ = takeover.tick(), if !tracking => follow_leadership(&node).await,
            _ = hosts.tick(), if tracking => mark_silent_hosts_down(&node).await,
            _ = leases.tick(), if tracking => expire_leases(&node).await,
            _ = prune.tick(), if tracking => prune_idempotency(&node).await,
            _ = queue.tick(), if tracking => queue_duties(&node).await,
            _ = placement.tick(), if tracking => reconcile(&node).await,
            changed = services.changed(), if tracking => match changed {
                Ok(()) => reconcile(&node).await,
                Err(_) => return, // the store is gone
            },
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "background duty failed; retrying on the next tick");
        }
    }
}

/// Takes over liveness once this coordinator leads and has applied the log
/// its predecessor left (so the hosts it reads are the ones last
/// registered), and stops tracking once it no longer leads. A takeover that
/// fails is tried again on the next change or tick.
async fn follow_leadership(node: &Node) -> Result<(), ClusterError> {
    let leading = node.cluster.is_leader();
    let tracking = node.liveness.tracking_since().is_some();
    if !leading && tracking {
        node.liveness.stop_tracking();
        tracing::info!(
            node = node.cluster.id,
            "no longer leading; stopped tracking hosts"
        );
    } else if leading && !tracking {
        node.cluster.wait_applied_own_log().await?;
        if node.cluster.is_leader() {
            node.take_over_liveness().await?;
            tracing::info!(
                node = node.cluster.id,
                "elected leader; tracking host liveness"
            );
        }
    }
    Ok(())
}

async fn mark_silent_hosts_down(node: &Node) -> Result<(), ClusterError> {
    for (host_id, incarnation) in node.liveness.overdue(Instant::now()) {
        let command = Command::HostDown {
            host_id: host_id.clone(),
            incarnation: incarnation.clone(),
            now: now_ms(),
        };
        match node.propose(command, None).await?.outcome {
            Ok(requeued) => {
                node.liveness.remove(&host_id, &incarnation);
                tracing::warn!(host = %host_id, ?requeued, "host missed its heartbeats; marked down");
            }
            // It registered again, as another incarnation, meanwhile.
            Err(e) => tracing::info!(host = %host_id, reason = %e, "host not marked down"),
        }
    }
    Ok(())
}

/// Requeues jobs whose leases expired. A new leader first gives every lease
/// one host TTL of grace, as it gives hosts: expiries were stamped by its
/// predecessor's clock, and hosts could not renew while no leader was
/// elected.
async fn expire_leases(node: &Node) -> Result<(), ClusterError> {
    let in_grace = node
        .liveness
        .tracking_since()
        .is_some_and(|since| since.elapsed() < node.liveness.ttl());
    if in_grace {
        return Ok(());
    }
    let now = now_ms();
    let expired = node
        .store
        .scan(move |c| jobs::expired_leases(c, now))
        .await?;
    if !expired.is_empty() {
        node.propose(Command::ExpireLeases { now }, None).await?;
        tracing::warn!(jobs = expired.len(), "leases expired; jobs requeued");
    }
    Ok(())
}

/// Both duties run each time: one failing does not hold up the other.
async fn queue_duties(node: &Node) -> Result<(), ClusterError> {
    let refreshed = crate::waiting::refresh_reasons(node).await;
    let failed = crate::waiting::fail_overdue(node).await;
    refreshed.and(failed)
}

async fn prune_idempotency(node: &Node) -> Result<(), ClusterError> {
    let before = now_ms().saturating_sub(IDEMPOTENCY_TTL.as_millis() as u64);
    node.propose(Command::PruneIdempotency { before }, None)
        .await?;
    Ok(())
}
