//! Reporting instance states to the coordinators: the newest state of each
//! instance wins, changes that come close together go in one request, and
//! a failed request is retried until a coordinator takes it. A report is the
//! whole state of an instance, so sending one twice is harmless.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skyclaw_api::Client;
use skyclaw_api::services::{InstanceReport, InstanceReports, MAX_INSTANCE_REPORTS};
use tokio::sync::{Notify, watch};
use tracing::{debug, error, warn};

use crate::backoff::Backoff;
use crate::report::is_retryable;

/// First pause before sending reports again after a failure.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between retries: a coordinator that comes back hears from
/// the host within it.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Bytes of reports one request carries at most: far below the coordinators'
/// smallest body limit (1 MiB by default), whatever the reports' errors hold.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Hands instance states to the task that sends them. Cheap to clone.
#[derive(Clone)]
pub(crate) struct StateReports {
    shared: Arc<Shared>,
}

struct Shared {
    /// The newest unsent report of each instance, with its sequence number.
    pending: Mutex<BTreeMap<String, (u64, InstanceReport)>>,
    /// The next sequence number to give a report.
    next: Mutex<u64>,
    wake: Notify,
    /// Counts successful sends, to wake those waiting for a report to land.
    sent: watch::Sender<u64>,
}

impl StateReports {
    /// Starts the sending task for `host_id`; it runs until aborted.
    pub(crate) fn start(
        client: Client,
        host_id: String,
    ) -> (StateReports, tokio::task::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            next: Mutex::new(1),
            wake: Notify::new(),
            sent: watch::Sender::new(0),
        });
        let task = tokio::spawn(send_loop(client, host_id, Arc::clone(&shared)));
        (StateReports { shared }, task)
    }

    /// Queues an instance's state, replacing an unsent older one.
    pub(crate) fn report(&self, report: InstanceReport) {
        let seq = {
            let mut next = self.shared.next.lock().expect("report lock");
            let seq = *next;
            *next += 1;
            seq
        };
        self.shared
            .pending
            .lock()
            .expect("report lock")
            .insert(report.instance_id.clone(), (seq, report));
        self.shared.wake.notify_one();
    }

    /// Resolves once the newest state queued for `instance_id` reached a
    /// coordinator.
    pub(crate) async fn landed(&self, instance_id: &str) {
        let mut sent = self.shared.sent.subscribe();
        loop {
            let unsent = self
                .shared
                .pending
                .lock()
                .expect("report lock")
                .contains_key(instance_id);
            if !unsent || sent.changed().await.is_err() {
                return;
            }
        }
    }
}

async fn send_loop(client: Client, host_id: String, shared: Arc<Shared>) {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    loop {
        let batch = next_batch(&shared);
        if batch.is_empty() {
            let waiting = shared.wake.notified();
            // A report queued between the read above and here woke nobody.
            if shared.pending.lock().expect("report lock").is_empty() {
                waiting.await;
            }
            continue;
        }
        let body = InstanceReports {
            reports: batch.iter().map(|(_, r)| r.clone()).collect(),
        };
        match client.report_instances(&host_id, &body).await {
            Ok(()) => {
                backoff.reset();
                settle(&shared, &batch);
                debug!(reports = batch.len(), "instance states reported");
            }
            Err(error) if !is_retryable(&error) => {
                // Sending it again would be refused again, and would hold up
                // every later report: it is dropped (its instances report
                // again at their next change).
                error!(%error, reports = batch.len(), "instance states refused; dropping them");
                settle(&shared, &batch);
            }
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot report instance states");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The oldest pending reports that fit one request: at most
/// [`MAX_INSTANCE_REPORTS`] and about [`MAX_BATCH_BYTES`] (one report always
/// goes, however large: its error is capped by the status).
fn next_batch(shared: &Shared) -> Vec<(u64, InstanceReport)> {
    let pending = shared.pending.lock().expect("report lock");
    let mut batch = Vec::new();
    let mut bytes = 0;
    for entry in pending.values() {
        let size = serde_json::to_vec(&entry.1).map_or(0, |json| json.len());
        if batch.len() == MAX_INSTANCE_REPORTS
            || (!batch.is_empty() && bytes + size > MAX_BATCH_BYTES)
        {
            break;
        }
        bytes += size;
        batch.push(entry.clone());
    }
    batch
}

/// Drops the sent reports that no newer one replaced, and wakes those
/// waiting for reports to land.
fn settle(shared: &Shared, sent: &[(u64, InstanceReport)]) {
    let mut pending = shared.pending.lock().expect("report lock");
    for (seq, report) in sent {
        if pending
            .get(&report.instance_id)
            .is_some_and(|(newest, _)| newest == seq)
        {
            pending.remove(&report.instance_id);
        }
    }
    drop(pending);
    shared.sent.send_modify(|sent| *sent += 1);
}
