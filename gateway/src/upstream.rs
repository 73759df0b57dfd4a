//! One endpoint as this gateway sees it: what the coordinators said of it
//! (its URL, whether it drains), what the gateway's own probes say (up or
//! down, with rise and fall thresholds), and whether real requests failing
//! on it have ejected it for a while (outlier detection).
//!
//! The request path reads two atomics; the lock is taken only when a probe
//! answers or a failure streak reaches the threshold.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use http::HeaderValue;
use http::uri::Authority;
use tokio::time::Instant;

use crate::config::{OutlierSettings, ProbeSettings};

/// An ejection this long ago is forgotten: the next one starts again from the
/// base length.
const EJECTION_MEMORY: Duration = Duration::from_secs(600);

/// One endpoint of one service.
#[derive(Debug)]
pub struct Upstream {
    pub instance_id: String,
    pub authority: Authority,
    /// The `Host` header requests to this endpoint carry: its authority.
    pub host: HeaderValue,
    /// The path this endpoint answers probes on.
    pub health_path: String,
    draining: AtomicBool,
    up: AtomicBool,
    ejected: AtomicBool,
    /// Failed requests in a row (passive health).
    streak: AtomicU32,
    health: Mutex<Health>,
}

/// What the probes and ejections have said, under the lock.
#[derive(Debug)]
struct Health {
    passes: u32,
    fails: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    last_ejected: Option<Instant>,
}

/// The state an endpoint is counted in by `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    Up,
    Draining,
    Down,
    Ejected,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Draining => "draining",
            State::Down => "down",
            State::Ejected => "ejected",
        }
    }
}

/// What a failure streak led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streak {
    /// Under the threshold, or already ejected.
    Counted,
    /// At the threshold: the caller asks the service whether it may eject.
    Reached,
}

impl Upstream {
    /// A newly listed endpoint starts up: the coordinators list only
    /// instances their hosts' probes found healthy, and the gateway's own
    /// first probe follows at once.
    pub fn new(
        instance_id: String,
        authority: Authority,
        health_path: String,
        draining: bool,
    ) -> Upstream {
        Upstream {
            instance_id,
            host: HeaderValue::from_str(authority.as_str())
                .expect("an authority is a valid header value"),
            authority,
            health_path,
            draining: AtomicBool::new(draining),
            up: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            streak: AtomicU32::new(0),
            health: Mutex::new(Health {
                passes: 0,
                fails: 0,
                ejections: 0,
                ejected_until: None,
                last_ejected: None,
            }),
        }
    }

    /// Whether new requests may go here: up and not ejected.
    pub fn usable(&self) -> bool {
        self.up.load(Ordering::Relaxed) && !self.ejected.load(Ordering::Relaxed)
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    pub fn ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    pub fn state(&self) -> State {
        if self.ejected() {
            State::Ejected
        } else if !self.up.load(Ordering::Relaxed) {
            State::Down
        } else if self.draining() {
            State::Draining
        } else {
            State::Up
        }
    }

    /// A request succeeded here: the failure streak ends.
    pub fn succeeded(&self) {
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed here (no connection, a timeout, a reset or a 5xx).
    pub fn failed(&self, settings: &OutlierSettings) -> Streak {
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= settings.consecutive_failures && !self.ejected() {
            Streak::Reached
        } else {
            Streak::Counted
        }
    }

    /// Ejects the endpoint for a time that grows with its recent ejections.
    /// Returns how long.
    pub fn eject(&self, settings: &OutlierSettings, now: Instant) -> Duration {
        let mut health = self.health.lock().expect("upstream health lock");
        if health
            .last_ejected
            .is_some_and(|at| now.duration_since(at) > EJECTION_MEMORY)
        {
            health.ejections = 0;
        }
        health.ejections += 1;
        let length = settings
            .base_ejection
            .saturating_mul(health.ejections)
            .min(settings.max_ejection);
        health.ejected_until = Some(now + length);
        health.last_ejected = Some(now);
        self.streak.store(0, Ordering::Relaxed);
        self.ejected.store(true, Ordering::Relaxed);
        length
    }

    /// One active probe's answer. An ejected endpoint comes back only with a
    /// passing probe after its ejection ran out.
    pub fn probed(&self, passed: bool, settings: &ProbeSettings, now: Instant) -> Change {
        let mut health = self.health.lock().expect("upstream health lock");
        let mut change = Change::None;
        if passed {
            health.fails = 0;
            health.passes = health.passes.saturating_add(1);
            if !self.up.load(Ordering::Relaxed) && health.passes >= settings.rise {
                self.up.store(true, Ordering::Relaxed);
                change = Change::Rose;
            }
            if self.ejected() && health.ejected_until.is_none_or(|until| now >= until) {
                health.ejected_until = None;
                self.streak.store(0, Ordering::Relaxed);
                self.ejected.store(false, Ordering::Relaxed);
                change = Change::Readmitted;
            }
        } else {
            health.passes = 0;
            health.fails = health.fails.saturating_add(1);
            if self.up.load(Ordering::Relaxed) && health.fails >= settings.fall {
                self.up.store(false, Ordering::Relaxed);
                change = Change::Fell;
            }
        }
        change
    }
}

/// What a probe changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Rose,
    Fell,
    Readmitted,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        Upstream::new(
            "i1".into(),
            "127.0.0.1:9".parse().unwrap(),
            "/health".into(),
            false,
        )
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_passes() {
        let u = upstream();
        let p = ProbeSettings::default();
        let now = Instant::now();
        assert_eq!(u.probed(false, &p, now), Change::None);
        assert_eq!(u.probed(false, &p, now), Change::None);
        assert!(u.usable());
        assert_eq!(u.probed(false, &p, now), Change::Fell);
        assert!(!u.usable());
        assert_eq!(u.probed(true, &p, now), Change::None);
        assert_eq!(u.probed(true, &p, now), Change::Rose);
        assert!(u.usable());
    }

    #[test]
    fn an_ejection_ends_with_a_passing_probe_after_it_runs_out_and_grows() {
        let u = upstream();
        let o = OutlierSettings::default();
        let p = ProbeSettings::default();
        let now = Instant::now();
        for _ in 1..o.consecutive_failures {
            assert_eq!(u.failed(&o), Streak::Counted);
        }
        assert_eq!(u.failed(&o), Streak::Reached);
        assert_eq!(u.eject(&o, now), o.base_ejection);
        assert!(!u.usable());
        assert_eq!(u.state(), State::Ejected);
        assert_eq!(
            u.probed(true, &p, now),
            Change::None,
            "not before it runs out"
        );
        let later = now + o.base_ejection;
        assert_eq!(u.probed(false, &p, later), Change::None);
        assert!(!u.usable(), "a failing probe does not readmit");
        assert_eq!(u.probed(true, &p, later), Change::Readmitted);
        assert!(u.usable());
        assert_eq!(
            u.eject(&o, later),
            o.base_ejection * 2,
            "the second is longer"
        );
        let much_later = later + EJECTION_MEMORY + o.max_ejection + Duration::from_secs(1);
        assert_eq!(u.probed(true, &p, much_later), Change::Readmitted);
        assert_eq!(
            u.eject(&o, much_later),
            o.base_ejection,
            "old ejections are forgotten"
        );
    }

    #[test]
    fn a_success_ends_the_streak() {
        let u = upstream();
        let o = OutlierSettings::default();
        for _ in 1..o.consecutive_failures {
            u.failed(&o);
        }
        u.succeeded();
        assert_eq!(u.failed(&o), Streak::Counted);
    }
}
