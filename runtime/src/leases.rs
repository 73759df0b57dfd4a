//! The leases a host holds: renewed with every heartbeat until the job's
//! completion is reported, each with the switch that stops its job.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use skyclaw_api::hosts::HeldLease;
use tokio::sync::watch;

use crate::workload::{StopReason, StopSignal};

/// Shared by the claim loop (which adds), the job tasks (which remove, through
/// [`LeaseGuard`]) and the heartbeat loop (which reads and stops).
#[derive(Debug, Default)]
pub(crate) struct Leases {
    jobs: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    lease_token: String,
    stop: watch::Sender<Option<StopReason>>,
}

/// Forgets its lease when dropped, however the job's task ends.
#[derive(Debug)]
pub(crate) struct LeaseGuard {
    leases: Arc<Leases>,
    job_id: String,
    lease_token: String,
}

impl Leases {
    /// Records a lease and returns its job's stop signal. A lease the host
    /// still held for the same job is stale now: its run is stopped.
    pub(crate) fn hold(
        self: &Arc<Self>,
        job_id: &str,
        lease_token: &str,
    ) -> (StopSignal, LeaseGuard) {
        let (stop, signal) = watch::channel(None);
        let entry = Entry {
            lease_token: lease_token.to_string(),
            stop,
        };
        if let Some(old) = self.lock().insert(job_id.to_string(), entry) {
            request_stop(&old.stop, StopReason::Revoked);
        }
        let guard = LeaseGuard {
            leases: Arc::clone(self),
            job_id: job_id.to_string(),
            lease_token: lease_token.to_string(),
        };
        (signal, guard)
    }

    /// Every lease held, for a heartbeat.
    pub(crate) fn held(&self) -> Vec<HeldLease> {
        self.lock()
            .iter()
            .map(|(job_id, entry)| HeldLease {
                job_id: job_id.clone(),
                lease_token: entry.lease_token.clone(),
            })
            .collect()
    }

    /// Asks one job to stop; false when the host holds no such job.
    pub(crate) fn stop(&self, job_id: &str, reason: StopReason) -> bool {
        match self.lock().get(job_id) {
            Some(entry) => {
                request_stop(&entry.stop, reason);
                true
            }
            None => false,
        }
    }

    /// Asks every job to stop; returns how many the host holds.
    pub(crate) fn stop_all(&self, reason: StopReason) -> usize {
        let jobs = self.lock();
        for entry in jobs.values() {
            request_stop(&entry.stop, reason);
        }
        jobs.len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // The map stays consistent even if a holder panicked: every change is
        // a single insert or remove.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let mut jobs = self.leases.lock();
        if jobs
            .get(&self.job_id)
            .is_some_and(|entry| entry.lease_token == self.lease_token)
        {
            jobs.remove(&self.job_id);
        }
    }
}

/// The first reason given wins: a job revoked and then caught by shutdown
/// stays revoked.
fn request_stop(stop: &watch::Sender<Option<StopReason>>, reason: StopReason) {
    stop.send_if_modified(|current| {
        if current.is_none() {
            *current = Some(reason);
            true
        } else {
            false
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_held_until_their_guard_drops() {
        let leases = Arc::new(Leases::default());
        let (stop, guard) = leases.hold("j1", "t1");
        assert_eq!(leases.held().len(), 1);
        assert!(leases.stop("j1", StopReason::Revoked));
        assert!(!leases.stop("j2", StopReason::Revoked));
        assert_eq!(leases.stop_all(StopReason::ShuttingDown), 1);
        assert_eq!(*stop.borrow(), Some(StopReason::Revoked));
        drop(guard);
        assert!(leases.held().is_empty());
    }

    #[test]
    fn a_new_lease_on_the_same_job_stops_the_old_run() {
        let leases = Arc::new(Leases::default());
        let (old_stop, old_guard) = leases.hold("j1", "t1");
        let (new_stop, _new_guard) = leases.hold("j1", "t2");
        assert_eq!(*old_stop.borrow(), Some(StopReason::Revoked));
        assert_eq!(*new_stop.borrow(), None);
        drop(old_guard);
        let held = leases.held();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].lease_token, "t2");
    }
}
