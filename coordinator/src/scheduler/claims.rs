//! Claims: a live host asks for work and is leased the queued jobs the
//! scheduler gives it. The queue scan, the reservations that keep two
//! concurrent claims from picking the same jobs, the lease proposal, and the
//! replay of a claim whose answer the host lost all live here; `http/hosts.rs`
//! only translates HTTP.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use rand::RngCore;
use skyclaw_api::hosts::Claimed;
use skyclaw_api::jobs::{Job, JobStatus};
use skyclaw_api::now_ms;

use super::{LiveHost, Loads};
use crate::error::ApiError;
use crate::node::Node;
use crate::state::{self, JobRow, read};
use crate::state::{Command, CommandError, IdempotencyRecord, Leases};

/// Queued jobs the scheduler looks at per claim, oldest first. Jobs that no
/// live host can run sit in the queue; past this many of them, younger jobs
/// wait until the old ones are cancelled or a host that can run them appears.
const SCHEDULING_WINDOW: usize = 4096;
/// Most queued jobs read per step of that scan.
const SCHEDULING_PAGE: usize = 256;
/// Fewest queued jobs read by the first step.
const FIRST_PAGE_MIN: usize = 8;

/// Leases up to `max` queued jobs to `host_id`, waiting until `deadline` for
/// some to be queued; an empty answer when none came, or when the
/// coordinator is stopping.
pub async fn claim(
    node: &Node,
    host_id: &str,
    max: usize,
    deadline: Instant,
    record: Option<IdempotencyRecord>,
) -> Result<Claimed, ApiError> {
    // Only a live host is answered, a replay included: one marked down had
    // its leases ended, and must register again.
    node.hosts_tracked().await?;
    if node.liveness.get(host_id).is_none() {
        return Err(not_registered(host_id));
    }
    if let Some(replayed) = replay(node, host_id, record.as_ref())? {
        return Ok(replayed);
    }
    loop {
        let queued = node.store.events().jobs_queued.notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        let host = node
            .liveness
            .get(host_id)
            .ok_or_else(|| not_registered(host_id))?;
        // Once a lease is proposed its answer is final: the idempotency key
        // now names it, so proposing again would only replay it.
        if let Some(leased) = lease_some(node, &host, max, record.clone()).await? {
            return Ok(leased);
        }
        if Instant::now() >= deadline {
            return Ok(Claimed::default());
        }
        tokio::select! {
            _ = queued => {}
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = node.shutting_down() => return Ok(Claimed::default()),
        }
    }
}

/// What a host that is not (or no longer) live is told.
pub fn not_registered(host_id: &str) -> ApiError {
    ApiError::Command(CommandError::HostNotRegistered(format!(
        "host {host_id} is not registered or was marked down; register again"
    )))
}

/// The answer recorded for this claim's idempotency key, if any: a host that
/// lost the answer to a claim gets again those of its jobs it still holds.
fn replay(
    node: &Node,
    host_id: &str,
    record: Option<&IdempotencyRecord>,
) -> Result<Option<Claimed>, ApiError> {
    let Some(record) = record else {
        return Ok(None);
    };
    let Some(outcome) = node.store.read(|c| read::recorded_outcome(c, record))? else {
        return Ok(None);
    };
    let leases = crate::node::answer(outcome?)?;
    Ok(Some(answer(node, host_id, leases, HashMap::new())?))
}

/// The host's answer from the leases a claim's key names. A grant the claim
/// just proposed (its token in `proposed`) is the job as picked; any other
/// grant is a replay of an earlier attempt of the claim, answered only while
/// it is still the host's current lease, with the job as it is now: a lease
/// that ended (expired, the host marked down, the job re-leased or finished)
/// is never handed out again.
fn answer(
    node: &Node,
    host_id: &str,
    leases: Leases,
    mut proposed: HashMap<String, (String, Job)>,
) -> Result<Claimed, ApiError> {
    let mut jobs = HashMap::new();
    for granted in &leases.granted {
        let job = match proposed.remove(&granted.job_id) {
            Some((token, job)) if token == granted.lease_token => Some(job),
            _ => node
                .job(&granted.job_id)?
                .filter(|row| holds(row, host_id, &granted.lease_token))
                .map(|row| row.job),
        };
        if let Some(job) = job {
            jobs.insert(granted.job_id.clone(), job);
        }
    }
    Ok(Claimed {
        jobs: leases.into_leased(|id| jobs.remove(id)),
    })
}

/// True when `row` is running on `host_id` under `lease_token`.
fn holds(row: &JobRow, host_id: &str, lease_token: &str) -> bool {
    row.job.status == JobStatus::Running
        && row.job.host_id.as_deref() == Some(host_id)
        && row.lease_token.as_deref() == Some(lease_token)
}

/// Picks jobs for the host and leases them; `None` when none fit right now.
async fn lease_some(
    node: &Node,
    host: &LiveHost,
    max: usize,
    record: Option<IdempotencyRecord>,
) -> Result<Option<Claimed>, ApiError> {
    let live = node.liveness.up_hosts();
    let mut picked = Vec::new();
    let mut after_seq = 0;
    let mut scanned = 0;
    // Page through the queue, starting small: every row read is parsed, and
    // a host usually finds its jobs right after those other claims are
    // leasing (the oldest).
    let mut page_size = (max + node.reservations.count()).clamp(FIRST_PAGE_MIN, SCHEDULING_PAGE);
    // Read only when locality needs them: most claims never do.
    let mut loads: Option<Loads> = None;
    let no_loads = Loads::new();
    while picked.len() < max && scanned < SCHEDULING_WINDOW {
        let page = node
            .store
            .scan(move |c| state::jobs::queued(c, after_seq, page_size))
            .await?;
        page_size = (page_size * 2).min(SCHEDULING_PAGE);
        let Some((last_seq, _)) = page.last() else {
            break;
        };
        after_seq = *last_seq;
        scanned += page.len();
        let free: Vec<_> = page
            .into_iter()
            .map(|(_, job)| job)
            .filter(|job| !node.reservations.contains(&job.id))
            .collect();
        let want = max - picked.len();
        if loads.is_none() && super::needs_loads(&free, host, &live) {
            loads = Some(load_by_host(node).await?);
        }
        picked.extend(
            super::pick(
                &free,
                host,
                &live,
                loads.as_ref().unwrap_or(&no_loads),
                want,
            )
            .into_iter()
            .cloned(),
        );
    }
    let picked_ids = picked.iter().map(|j| j.id.clone()).collect();
    // Released when dropped: after the proposal, or when this claim is
    // abandoned while it waits (its client gone, a timeout).
    let reserved = node.reservations.reserve(picked_ids);
    if reserved.ids.is_empty() {
        return Ok(None);
    }
    // Oldest first, as picked.
    let leases: Vec<(String, String)> = reserved
        .ids
        .iter()
        .map(|id| (id.clone(), new_lease_token()))
        .collect();
    let mut picked: HashMap<String, Job> = picked
        .into_iter()
        .map(|job| (job.id.clone(), job))
        .collect();
    let proposed = leases
        .iter()
        .filter_map(|(id, token)| Some((id.clone(), (token.clone(), picked.remove(id)?))))
        .collect();
    let now = now_ms();
    let host_id = &host.registration.host_id;
    let command = Command::LeaseJobs {
        host_id: host_id.clone(),
        leases,
        expires_at: now + node.config.lease_duration.as_millis() as u64,
        now,
    };
    let result = node.execute(command, record).await;
    drop(reserved);
    // The grants, not the picks: under a retried key, apply replays the
    // first attempt's grants, which may be other jobs.
    Ok(Some(answer(node, host_id, result?, proposed)?))
}

/// Jobs running per host, as the state machine has them.
async fn load_by_host(node: &Node) -> Result<Loads, ApiError> {
    Ok(node
        .store
        .scan(state::jobs::running_counts)
        .await?
        .into_iter()
        .collect())
}

/// 128 random bits: a lease token cannot be guessed by another host.
fn new_lease_token() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Jobs picked for a lease that is being proposed, so two concurrent claims
/// on this leader do not pick the same jobs.
#[derive(Default)]
pub struct Reservations {
    ids: Mutex<HashSet<String>>,
}

impl Reservations {
    /// Reserves those of `ids` that are free, until the answer is dropped.
    fn reserve(&self, ids: Vec<String>) -> Reserved<'_> {
        let mut reserved = self.ids.lock().expect("reservations lock");
        let ids = ids
            .into_iter()
            .filter(|id| reserved.insert(id.clone()))
            .collect();
        Reserved { owner: self, ids }
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.lock().expect("reservations lock").contains(id)
    }

    /// Jobs being leased right now: the oldest queued ones, which a claim
    /// reads past.
    pub fn count(&self) -> usize {
        self.ids.lock().expect("reservations lock").len()
    }
}

/// The jobs one claim reserved; released when dropped, however the claim
/// ends, so that no job stays reserved by a claim nobody waits for.
struct Reserved<'a> {
    owner: &'a Reservations,
    ids: Vec<String>,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut reserved = self.owner.ids.lock().expect("reservations lock");
        for id in &self.ids {
            reserved.remove(id);
        }
    }
}
