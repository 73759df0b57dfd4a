//! Host liveness, kept in memory on purpose: heartbeats are frequent and need
//! no durability. Only the verdict "this host is down" becomes a command.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use skyclaw_api::hosts::RegisterHost;

struct LiveHost {
    last_seen: Instant,
    registration: RegisterHost,
}

/// The hosts this coordinator considers up, with when each was last heard.
pub struct Liveness {
    ttl: Duration,
    hosts: Mutex<HashMap<String, LiveHost>>,
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
                let id = registration.host_id.clone();
                let host = LiveHost {
                    last_seen: now,
                    registration,
                };
                (id, host)
            })
            .collect();
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn register(&self, registration: RegisterHost, now: Instant) {
        let id = registration.host_id.clone();
        self.lock().insert(
            id,
            LiveHost {
                last_seen: now,
                registration,
            },
        );
    }

    /// Records a heartbeat; false when the host is not (or no longer) up.
    pub fn beat(&self, host_id: &str, now: Instant) -> bool {
        match self.lock().get_mut(host_id) {
            Some(host) => {
                host.last_seen = now;
                true
            }
            None => false,
        }
    }

    pub fn get(&self, host_id: &str) -> Option<RegisterHost> {
        self.lock().get(host_id).map(|h| h.registration.clone())
    }

    pub fn up_hosts(&self) -> Vec<RegisterHost> {
        self.lock()
            .values()
            .map(|h| h.registration.clone())
            .collect()
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, LiveHost>> {
        self.hosts.lock().expect("liveness lock")
    }
}
