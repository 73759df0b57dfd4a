//! Queued jobs that no live host can run: the leader keeps their waiting
//! reasons in step with the live hosts and fails those whose queue timeout
//! passed. Both are decided here, from the leader's view of the hosts, and
//! carried in commands, so every replica records the same reasons and
//! followers answer reads with them.

use std::sync::Arc;

use skyclaw_api::jobs::Job;
use skyclaw_api::now_ms;

use crate::cluster::ClusterError;
use crate::node::Node;
use crate::scheduler::{self, LiveHost};
use crate::state::Command;
use crate::state::jobs;
use crate::store::{Store, StoreError};

/// Queued jobs read per step when reasons are refreshed.
const REFRESH_PAGE: usize = 256;
/// Reasons one command changes: keeps each Raft entry small however long the
/// queue is.
const REASONS_PER_COMMAND: usize = 512;
/// Jobs one sweep fails for their queue timeout; any more go on the next.
const OVERDUE_PER_SWEEP: usize = 512;

/// Brings every queued job's waiting reason in step with the live hosts, if
/// they changed since the last refresh. A refresh that fails is tried again
/// on the next call.
pub async fn refresh_reasons(node: &Node) -> Result<(), ClusterError> {
    if !node.liveness.take_stale() {
        return Ok(());
    }
    let result = refresh(node).await;
    if result.is_err() {
        node.liveness.mark_stale();
    }
    result
}

async fn refresh(node: &Node) -> Result<(), ClusterError> {
    let live = node.liveness.up_hosts();
    let store = Arc::clone(&node.store);
    let changes = tokio::task::spawn_blocking(move || changed_reasons(&store, &live))
        .await
        .map_err(|e| ClusterError::Internal(format!("reading the queue failed: {e}")))??;
    for chunk in changes.chunks(REASONS_PER_COMMAND) {
        let reasons = chunk.to_vec();
        node.propose(Command::SetWaitingReasons { reasons }, None)
            .await?;
    }
    if !changes.is_empty() {
        tracing::debug!(jobs = changes.len(), "waiting reasons changed");
    }
    Ok(())
}

/// Every queued job whose waiting reason is not the one `live` gives, with
/// that reason. Blocking: it reads the whole queue.
fn changed_reasons(
    store: &Store,
    live: &[LiveHost],
) -> Result<Vec<(String, Option<String>)>, StoreError> {
    let mut changes = Vec::new();
    let mut after_seq = 0;
    loop {
        let page = store.read(|c| jobs::queued(c, after_seq, REFRESH_PAGE))?;
        let Some((last_seq, _)) = page.last() else {
            return Ok(changes);
        };
        after_seq = *last_seq;
        for (_, job) in page {
            let reason = scheduler::waiting_reason(&job.spec, live);
            if reason != job.waiting_reason {
                changes.push((job.id, reason));
            }
        }
    }
}

/// Fails the queued jobs whose queue timeout has passed, each with why it
/// waited.
pub async fn fail_overdue(node: &Node) -> Result<(), ClusterError> {
    let now = now_ms();
    let overdue = node
        .store
        .scan(move |c| jobs::queue_overdue(c, now, OVERDUE_PER_SWEEP))
        .await?;
    if overdue.is_empty() {
        return Ok(());
    }
    let live = node.liveness.up_hosts();
    let jobs: Vec<(String, String)> = overdue
        .iter()
        .map(|job| (job.id.clone(), timeout_reason(job, &live)))
        .collect();
    let count = jobs.len();
    node.propose(Command::FailQueued { jobs, now }, None)
        .await?;
    tracing::info!(jobs = count, "queue timeouts passed; jobs failed");
    Ok(())
}

/// The failure sentence of a job whose queue timeout passed.
fn timeout_reason(job: &Job, live: &[LiveHost]) -> String {
    let reason = scheduler::waiting_reason(&job.spec, live)
        .unwrap_or_else(|| "every live host that can run it was busy".to_string());
    let timeout = job.spec.queue_timeout_ms().unwrap_or_default();
    format!("{reason}; gave up after its queue timeout of {timeout} ms")
}
