//! Request counters of the engine's wasi:http servers, as relaxed atomics
//! (nothing on a request's path takes a lock): answers by exact status code,
//! how requests that failed on the host's side failed, and a latency
//! histogram with fixed buckets; [`HttpStatsSnapshot`] is a plain copy for
//! `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in milliseconds, from a
/// request's arrival to its response head: sub-millisecond for handlers that
/// answer from memory, up to seconds for those that call out or hit their
/// time limit. A last, unbounded bucket (`+Inf`) holds the rest.
pub const LATENCY_BUCKETS_MS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1_000.0, 5_000.0, 30_000.0,
];
/// The same bounds in microseconds, as they are compared.
const LATENCY_BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000, 30_000_000,
];
/// Status codes counted one by one: every code HTTP can carry, 100 to 999.
const FIRST_STATUS: u16 = 100;
const STATUSES: usize = 900;

/// How a request the guest did not answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// It ran past its time limit (504).
    TimedOut,
    /// It trapped, ran out of fuel or memory, or returned without an answer (500).
    Failed,
    /// No pool slot came free within its time limit, or the server was
    /// stopping (503).
    Unavailable,
    /// The host could not read it as a request (400).
    BadRequest,
}

/// The engine's counters.
pub(super) struct HttpStats {
    statuses: Box<[AtomicU64; STATUSES]>,
    timed_out: AtomicU64,
    failed: AtomicU64,
    unavailable: AtomicU64,
    bad_requests: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
}

impl Default for HttpStats {
    fn default() -> HttpStats {
        HttpStats {
            statuses: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            timed_out: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            bad_requests: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
        }
    }
}

impl HttpStats {
    /// Counts one answered request.
    pub(super) fn answered(&self, status: u16, latency: Duration) {
        if let Some(counter) = status
            .checked_sub(FIRST_STATUS)
            .and_then(|i| self.statuses.get(usize::from(i)))
        {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts how a request the guest did not answer failed.
    pub(super) fn failed(&self, failure: Failure) {
        let counter = match failure {
            Failure::TimedOut => &self.timed_out,
            Failure::Failed => &self.failed,
            Failure::Unavailable => &self.unavailable,
            Failure::BadRequest => &self.bad_requests,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(
        &self,
        connections: &skyclaw_api::serve::Stats,
        slots: u32,
        free_slots: usize,
    ) -> HttpStatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let statuses: Vec<(u16, u64)> = self
            .statuses
            .iter()
            .zip(FIRST_STATUS..)
            .map(|(counter, status)| (status, load(counter)))
            .filter(|(_, count)| *count > 0)
            .collect();
        let mut by_class = [0; 5];
        for (status, count) in &statuses {
            if let Some(class) = by_class.get_mut(usize::from(status / 100 - 1)) {
                *class += count;
            }
        }
        let mut cumulative = 0;
        let latency_buckets = self
            .buckets
            .iter()
            .map(|counter| {
                cumulative += load(counter);
                cumulative
            })
            .collect();
        HttpStatsSnapshot {
            requests: statuses.iter().map(|(_, count)| count).sum(),
            statuses,
            by_class,
            timed_out: load(&self.timed_out),
            failed: load(&self.failed),
            unavailable: load(&self.unavailable),
            bad_requests: load(&self.bad_requests),
            latency_buckets,
            latency_sum_seconds: load(&self.latency_sum_us) as f64 / 1e6,
            slots,
            slots_in_use: (slots as usize).saturating_sub(free_slots) as u32,
            connections_open: connections.open(),
            connections_refused: connections.refused(),
        }
    }
}

/// What the engine's wasi:http servers have answered since it started.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpStatsSnapshot {
    /// Requests answered, whoever answered them.
    pub requests: u64,
    /// Requests answered by exact status code, ascending; codes never
    /// answered are left out.
    pub statuses: Vec<(u16, u64)>,
    /// The same by class: `[1xx, 2xx, 3xx, 4xx, 5xx]` (codes from 600 on,
    /// which only a guest would send, are in `statuses` alone).
    pub by_class: [u64; 5],
    /// Requests the host answered 504: past their time limit.
    pub timed_out: u64,
    /// Requests the host answered 500: the guest trapped, ran out of fuel or
    /// memory, or returned without an answer.
    pub failed: u64,
    /// Requests the host answered 503: no slot within their time limit, or
    /// their server was stopping.
    pub unavailable: u64,
    /// Requests the host answered 400 (no authority, say).
    pub bad_requests: u64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS_MS`], then `+Inf`
    /// (which equals [`HttpStatsSnapshot::requests`]), as Prometheus wants them.
    pub latency_buckets: Vec<u64>,
    /// Sum of all latencies, in seconds.
    pub latency_sum_seconds: f64,
    /// Pool slots kept for HTTP requests.
    pub slots: u32,
    /// Of those, held by requests now.
    pub slots_in_use: u32,
    /// Connections open now, over every server.
    pub connections_open: u64,
    /// Connections closed at accept because a server's cap was reached.
    pub connections_refused: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_their_millisecond_bounds() {
        for (ms, us) in LATENCY_BUCKETS_MS.iter().zip(LATENCY_BUCKETS_US) {
            assert_eq!((ms * 1000.0).round() as u64, us);
        }
        assert!(LATENCY_BUCKETS_US.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn answers_are_counted_by_status_and_latency() {
        let stats = HttpStats::default();
        stats.answered(200, Duration::from_micros(50));
        stats.answered(200, Duration::from_millis(3));
        stats.answered(504, Duration::from_secs(60));
        stats.answered(999, Duration::ZERO);
        let snapshot = stats.snapshot(&skyclaw_api::serve::Stats::default(), 4, 4);
        assert_eq!(snapshot.statuses, vec![(200, 2), (504, 1), (999, 1)]);
        assert_eq!(snapshot.by_class, [0, 2, 0, 0, 1]);
        assert_eq!(snapshot.requests, 4);
        let buckets = &snapshot.latency_buckets;
        assert_eq!(buckets.len(), LATENCY_BUCKETS_MS.len() + 1);
        assert_eq!(buckets[0], 2, "50 µs and 999's zero");
        assert_eq!(buckets[5], 3, "3 ms is under 5 ms");
        assert_eq!(buckets[13], 3, "60 s is over the last bound");
        assert_eq!(*buckets.last().unwrap(), snapshot.requests);
    }
}
