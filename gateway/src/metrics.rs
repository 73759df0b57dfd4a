//! The gateway's counters and their Prometheus rendering: requests by
//! service and status with a latency histogram, retries and budget
//! refusals, ejections, endpoints by state, the upstream connection pool,
//! the client listener, and how fresh the endpoint set is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use skyclaw_api::serve::Stats as ListenerStats;

use crate::pool::PoolStats;
use crate::routes::{Freshness, Snapshot};

/// Upper bounds of the latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Status codes are 100 to 599; one counter each.
const STATUS_SLOTS: usize = 500;

/// What one service's requests did.
#[derive(Debug)]
pub struct ServiceStats {
    by_status: Box<[AtomicU64]>,
    latency: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    pub retries: AtomicU64,
    pub budget_refusals: AtomicU64,
    pub ejections: AtomicU64,
}

impl Default for ServiceStats {
    fn default() -> ServiceStats {
        ServiceStats {
            by_status: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            latency: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_micros: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            budget_refusals: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }
}

impl ServiceStats {
    /// One answered request: its status and the time to its response head.
    pub fn answered(&self, status: u16, took: Duration) {
        if let Some(slot) = usize::from(status)
            .checked_sub(100)
            .and_then(|i| self.by_status.get(i))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        let secs = took.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| secs <= b) {
            self.latency[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Counters of requests that reached no service, and of discovery.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests naming no known service (404).
    pub unrouted: AtomicU64,
    /// Endpoint sets received from coordinators.
    pub updates: AtomicU64,
    /// Long-polls that no coordinator answered.
    pub discovery_failures: AtomicU64,
    /// Heartbeats the coordinators refused or did not answer.
    pub registration_failures: AtomicU64,
}

/// Everything `/metrics` renders.
pub struct Render<'a> {
    pub metrics: &'a Metrics,
    pub snapshot: &'a Snapshot,
    pub freshness: &'a Freshness,
    pub stale_secs: Option<f64>,
    pub pool: &'a PoolStats,
    pub listener: &'a ListenerStats,
}

impl Render<'_> {
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut services: Vec<_> = self.snapshot.services.values().collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));

        let _ = writeln!(out, "# TYPE skyclaw_gateway_requests_total counter");
        for s in &services {
            for (i, count) in s.stats.by_status.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "skyclaw_gateway_requests_total{{service=\"{}\",status=\"{}\"}} {count}",
                        s.name,
                        i + 100
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "skyclaw_gateway_unrouted_requests_total {}",
            self.metrics.unrouted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE skyclaw_gateway_request_duration_seconds histogram"
        );
        for s in &services {
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(&s.stats.latency) {
                cumulative += count.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "skyclaw_gateway_request_duration_seconds_bucket{{service=\"{}\",le=\"{bound}\"}} {cumulative}",
                    s.name
                );
            }
            let count = s.stats.latency_count.load(Ordering::Relaxed);
            let sum = s.stats.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "skyclaw_gateway_request_duration_seconds_bucket{{service=\"{}\",le=\"+Inf\"}} {count}",
                s.name
            );
            let _ = writeln!(
                out,
                "skyclaw_gateway_request_duration_seconds_sum{{service=\"{}\"}} {sum}",
                s.name
            );
            let _ = writeln!(
                out,
                "skyclaw_gateway_request_duration_seconds_count{{service=\"{}\"}} {count}",
                s.name
            );
        }
        for (metric, pick) in [
            (
                "retries",
                (|s: &ServiceStats| &s.retries) as fn(&ServiceStats) -> &AtomicU64,
            ),
            ("retry_budget_refusals", |s| &s.budget_refusals),
            ("ejections", |s| &s.ejections),
        ] {
            let _ = writeln!(out, "# TYPE skyclaw_gateway_{metric}_total counter");
            for s in &services {
                let _ = writeln!(
                    out,
                    "skyclaw_gateway_{metric}_total{{service=\"{}\"}} {}",
                    s.name,
                    pick(&s.stats).load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(out, "# TYPE skyclaw_gateway_endpoints gauge");
        for s in &services {
            let mut by_state = BTreeMap::new();
            for e in &s.endpoints {
                *by_state.entry(e.state().as_str()).or_insert(0u64) += 1;
            }
            for state in ["up", "draining", "down", "ejected"] {
                let _ = writeln!(
                    out,
                    "skyclaw_gateway_endpoints{{service=\"{}\",state=\"{state}\"}} {}",
                    s.name,
                    by_state.get(state).copied().unwrap_or(0)
                );
            }
        }
        let pool = self.pool;
        let _ = writeln!(
            out,
            "# TYPE skyclaw_gateway_upstream_connections_opened_total counter"
        );
        let _ = writeln!(
            out,
            "skyclaw_gateway_upstream_connections_opened_total {}",
            pool.opened()
        );
        let _ = writeln!(out, "# TYPE skyclaw_gateway_upstream_connections gauge");
        let _ = writeln!(out, "skyclaw_gateway_upstream_connections {}", pool.open());
        let _ = writeln!(
            out,
            "# TYPE skyclaw_gateway_upstream_connect_failures_total counter"
        );
        let _ = writeln!(
            out,
            "skyclaw_gateway_upstream_connect_failures_total {}",
            pool.failed()
        );
        let l = self.listener;
        let _ = writeln!(out, "# TYPE skyclaw_gateway_client_connections gauge");
        let _ = writeln!(out, "skyclaw_gateway_client_connections {}", l.open());
        let _ = writeln!(
            out,
            "# TYPE skyclaw_gateway_client_connections_refused_total counter"
        );
        let _ = writeln!(
            out,
            "skyclaw_gateway_client_connections_refused_total {}",
            l.refused()
        );
        let _ = writeln!(
            out,
            "# TYPE skyclaw_gateway_client_header_timeouts_total counter"
        );
        let _ = writeln!(
            out,
            "skyclaw_gateway_client_header_timeouts_total {}",
            l.header_timeouts()
        );
        let m = self.metrics;
        let _ = writeln!(out, "# TYPE skyclaw_gateway_endpoint_updates_total counter");
        let _ = writeln!(
            out,
            "skyclaw_gateway_endpoint_updates_total {}",
            m.updates.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE skyclaw_gateway_discovery_failures_total counter"
        );
        let _ = writeln!(
            out,
            "skyclaw_gateway_discovery_failures_total {}",
            m.discovery_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE skyclaw_gateway_registration_failures_total counter"
        );
        let _ = writeln!(
            out,
            "skyclaw_gateway_registration_failures_total {}",
            m.registration_failures.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE skyclaw_gateway_endpoints_index gauge");
        let _ = writeln!(
            out,
            "skyclaw_gateway_endpoints_index {}",
            self.snapshot.index
        );
        let _ = writeln!(out, "# TYPE skyclaw_gateway_endpoints_stale gauge");
        let stale = self.freshness.never_updated || self.freshness.stale_since.is_some();
        let _ = writeln!(out, "skyclaw_gateway_endpoints_stale {}", u8::from(stale));
        let _ = writeln!(out, "# TYPE skyclaw_gateway_endpoints_stale_seconds gauge");
        let _ = writeln!(
            out,
            "skyclaw_gateway_endpoints_stale_seconds {}",
            self.stale_secs.unwrap_or(0.0)
        );
        out
    }
}
