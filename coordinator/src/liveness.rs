//! Host liveness, kept in memory on purpose: heartbeats are frequent and need
//! no durability. Only the verdict "this host is down" becomes a command.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skyclaw_api::artifacts::Digest;
use skyclaw_api::hosts::RegisterHost;
use skyclaw_api::jobs::WasiCaps;

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
            },
        }
    }
}

/// The hosts this coordinator considers up, with when each was last heard.
pub struct Liveness {
    ttl: Duration,
    hosts: Mutex<HashMap<String, Tracked>>,
}

impl Liveness {
    /// Tracks no host until this coordinator leads and calls [`Liveness::reset`].
    pub fn new(ttl: Duration) -> Liveness {
        Liveness {
            ttl,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets every host and tracks `up` instead, each as if just heard: a
    /// newly elected leader gives every host one full TTL of grace.
    pub fn reset(&self, up: Vec<RegisterHost>, now: Instant) {
        *self.lock() = up
            .into_iter()
            .map(|registration| {
                (
                    registration.host_id.clone(),
                    Tracked::new(registration, now),
                )
            })
            .collect();
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn register(&self, registration: RegisterHost, now: Instant) {
        let id = registration.host_id.clone();
        self.lock().insert(id, Tracked::new(registration, now));
    }

    /// Records a heartbeat and the artifacts the host reports holding; false
    /// when the host is not (or no longer) up.
    pub fn beat(&self, host_id: &str, now: Instant, artifacts: Vec<Digest>) -> bool {
        match self.lock().get_mut(host_id) {
            Some(tracked) => {
                tracked.last_seen = now;
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
            .values()
            .filter_map(|h| h.host.registration.wasi)
            .collect()
    }

    pub fn get(&self, host_id: &str) -> Option<LiveHost> {
        self.lock().get(host_id).map(|h| h.host.clone())
    }

    pub fn up_hosts(&self) -> Vec<LiveHost> {
        self.lock().values().map(|h| h.host.clone()).collect()
    }

    pub fn last_seen_ago(&self, host_id: &str, now: Instant) -> Option<Duration> {
        self.lock()
            .get(host_id)
            .map(|h| now.saturating_duration_since(h.last_seen))
    }

    /// Hosts silent for longer than the TTL.
    pub fn overdue(&self, now: Instant) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, h)| now.saturating_duration_since(h.last_seen) > self.ttl)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Stops tracking a host that was marked down; its next heartbeat is told
    /// to register again.
    pub fn remove(&self, host_id: &str) {
        self.lock().remove(host_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tracked>> {
        self.hosts.lock().expect("liveness lock")
    }
}
