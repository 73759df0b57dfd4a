//! Host liveness, kept in memory on purpose: heartbeats are frequent and need
//! no durability. Only the verdict "this host is down" becomes a command.
//! What jobs can run on changes with the live hosts, so every change to them
//! is counted and marks queued jobs' waiting reasons for a fresh look.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skyclaw_api::artifacts::Digest;
use skyclaw_api::hosts::RegisterHost;
use skyclaw_api::jobs::WasiCaps;
use tokio::sync::watch;

use crate::scheduler::LiveHost;

struct Tracked {
    last_seen: Instant,
    host: LiveHost,
}

impl Tracked {
    fn new(registration: RegisterHost, now: Instant) -> Tracked {
        Tracked {
            last_seen: now,
            host: LiveHost {
                registration,
                artifacts: Arc::default(),
                draining: false,
            },
        }
    }
}

/// The hosts this coordinator considers up, with when each was last heard.
/// Meaningful only while this coordinator leads and has taken over: until
/// then, no host is known to be either up or down.
pub struct Liveness {
    ttl: Duration,
    hosts: Mutex<Hosts>,
    /// When this leader took over tracking; `None` while it does not (a
    /// follower, or a new leader still applying its predecessor's log).
    tracking: watch::Sender<Option<Instant>>,
    /// Set by every change to the live hosts (and by [`Liveness::mark_stale`]):
    /// queued jobs' waiting reasons may no longer hold.
    reasons_stale: AtomicBool,
}

#[derive(Default)]
struct Hosts {
    tracked: HashMap<String, Tracked>,
    /// Counts changes to which hosts are live or what they registered.
    generation: u64,
}

impl Liveness {
    /// Tracks no host until this coordinator leads and calls [`Liveness::reset`].
    pub fn new(ttl: Duration) -> Liveness {
        Liveness {
            ttl,
            hosts: Mutex::new(Hosts::default()),
            tracking: watch::channel(None).0,
            reasons_stale: AtomicBool::new(false),
        }
    }

    /// Forgets every host and tracks `up` instead, each as if just heard: a
    /// newly elected leader gives every host one full TTL of grace.
    pub fn reset(&self, up: Vec<RegisterHost>, now: Instant) {
        let mut hosts = self.lock();
        self.tracking.send_replace(Some(now));
        hosts.tracked = up
            .into_iter()
            .map(|registration| {
                (
                    registration.host_id.clone(),
                    Tracked::new(registration, now),
                )
            })
            .collect();
        self.changed(&mut hosts);
    }

    /// Stops tracking (this coordinator no longer leads) and forgets every
    /// host, so that nothing is judged on a stale view.
    pub fn stop_tracking(&self) {
        let mut hosts = self.lock();
        self.tracking.send_replace(None);
        hosts.tracked.clear();
        self.changed(&mut hosts);
    }

    /// When this coordinator took over tracking, if it has.
    pub fn tracking_since(&self) -> Option<Instant> {
        *self.tracking.borrow()
    }

    /// Waits up to `wait` for this coordinator to take over tracking; true
    /// once it has. A host's request that reaches a new leader before the
    /// takeover waits here instead of being told it is unknown.
    pub async fn tracking(&self, wait: Duration) -> bool {
        let mut tracking = self.tracking.subscribe();
        let took_over = tracking.wait_for(Option::is_some);
        matches!(tokio::time::timeout(wait, took_over).await, Ok(Ok(_)))
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn register(&self, registration: RegisterHost, now: Instant) {
        let id = registration.host_id.clone();
        let mut hosts = self.lock();
        hosts.tracked.insert(id, Tracked::new(registration, now));
        self.changed(&mut hosts);
    }

    /// Records a heartbeat, the artifacts the host reports holding and
    /// whether it is draining; false when the host is not (or no longer) up.
    pub fn beat(
        &self,
        host_id: &str,
        now: Instant,
        artifacts: Vec<Digest>,
        draining: bool,
    ) -> bool {
        match self.lock().tracked.get_mut(host_id) {
            Some(tracked) => {
                tracked.last_seen = now;
                tracked.host.draining = draining;
                let artifacts: HashSet<Digest> = artifacts.into_iter().collect();
                if *tracked.host.artifacts != artifacts {
                    tracked.host.artifacts = Arc::new(artifacts);
                }
                true
            }
            None => false,
        }
    }

    /// What each live host grants WASI jobs (hosts without WASI left out).
    pub fn wasi_caps(&self) -> Vec<WasiCaps> {
        self.lock()
            .tracked
            .values()
            .filter_map(|h| h.host.registration.wasi)
            .collect()
    }

    pub fn get(&self, host_id: &str) -> Option<LiveHost> {
        self.lock().tracked.get(host_id).map(|h| h.host.clone())
    }

    pub fn up_hosts(&self) -> Vec<LiveHost> {
        self.up_hosts_counted().1
    }

    /// The live hosts and the count of changes that led to them, read together.
    pub fn up_hosts_counted(&self) -> (u64, Vec<LiveHost>) {
        let hosts = self.lock();
        let up = hosts.tracked.values().map(|h| h.host.clone()).collect();
        (hosts.generation, up)
    }

    /// How many times the live hosts have changed.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    pub fn last_seen_ago(&self, host_id: &str, now: Instant) -> Option<Duration> {
        self.lock()
            .tracked
            .get(host_id)
            .map(|h| now.saturating_duration_since(h.last_seen))
    }

    /// Hosts silent for longer than the TTL: the id and incarnation of each.
    pub fn overdue(&self, now: Instant) -> Vec<(String, String)> {
        self.lock()
            .tracked
            .iter()
            .filter(|(_, h)| now.saturating_duration_since(h.last_seen) > self.ttl)
            .map(|(id, h)| (id.clone(), h.host.registration.incarnation.clone()))
            .collect()
    }

    /// Stops tracking a host's `incarnation`, which was marked down; its next
    /// heartbeat is told to register again. A newer incarnation stays.
    pub fn remove(&self, host_id: &str, incarnation: &str) {
        let mut hosts = self.lock();
        let marked = hosts
            .tracked
            .get(host_id)
            .is_some_and(|h| h.host.registration.incarnation == incarnation);
        if marked {
            hosts.tracked.remove(host_id);
            self.changed(&mut hosts);
        }
    }

    /// Asks for queued jobs' waiting reasons to be looked at again: one was
    /// judged against hosts that have changed since.
    pub fn mark_stale(&self) {
        self.reasons_stale.store(true, Ordering::SeqCst);
    }

    /// True once after any change: the caller then looks at every queued job.
    pub fn take_stale(&self) -> bool {
        self.reasons_stale.swap(false, Ordering::SeqCst)
    }

    fn changed(&self, hosts: &mut Hosts) {
        hosts.generation += 1;
        self.mark_stale();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hosts> {
        self.hosts.lock().expect("liveness lock")
    }
}
