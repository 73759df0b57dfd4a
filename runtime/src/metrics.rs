//! The host's counters and their Prometheus text (`GET /metrics` on the
//! host's listener): jobs run by kind and outcome, instances by state,
//! instance restarts, wasi-http requests by status with their latency, and
//! the artifact cache.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::artifacts::CacheStats;
use crate::wasi::{HttpStatsSnapshot, LATENCY_BUCKETS_MS};

/// Counters the host's loops bump as they go.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Jobs ended, by kind and outcome.
    jobs: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Counters {
    pub(crate) fn job_ended(&self, kind: &'static str, outcome: &'static str) {
        *self
            .jobs
            .lock()
            .expect("metrics lock")
            .entry((kind, outcome))
            .or_default() += 1;
    }

    fn jobs(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.jobs.lock().expect("metrics lock").clone()
    }
}

/// Everything `/metrics` shows, read at one moment.
pub(crate) struct Snapshot<'a> {
    pub(crate) counters: &'a Counters,
    pub(crate) instances: BTreeMap<&'static str, u64>,
    pub(crate) restarts: u64,
    pub(crate) cache: CacheStats,
    pub(crate) http: HttpStatsSnapshot,
}

impl Snapshot<'_> {
    /// The Prometheus text exposition of the snapshot.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE skyclaw_host_jobs_total counter");
        for ((kind, outcome), count) in self.counters.jobs() {
            let _ = writeln!(
                out,
                "skyclaw_host_jobs_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# TYPE skyclaw_host_instances gauge");
        for (state, count) in &self.instances {
            let _ = writeln!(out, "skyclaw_host_instances{{state=\"{state}\"}} {count}");
        }
        let _ = writeln!(out, "# TYPE skyclaw_host_instance_restarts_total counter");
        let _ = writeln!(
            out,
            "skyclaw_host_instance_restarts_total {}",
            self.restarts
        );
        let _ = writeln!(out, "# TYPE skyclaw_host_artifact_cache_bytes gauge");
        let _ = writeln!(
            out,
            "skyclaw_host_artifact_cache_bytes {}",
            self.cache.bytes
        );
        let _ = writeln!(
            out,
            "# TYPE skyclaw_host_artifact_cache_fetches_total counter"
        );
        let _ = writeln!(
            out,
            "skyclaw_host_artifact_cache_fetches_total{{result=\"hit\"}} {}",
            self.cache.hits
        );
        let _ = writeln!(
            out,
            "skyclaw_host_artifact_cache_fetches_total{{result=\"download\"}} {}",
            self.cache.downloads
        );
        self.render_http(&mut out);
        out
    }

    fn render_http(&self, out: &mut String) {
        let http = &self.http;
        let _ = writeln!(out, "# TYPE skyclaw_host_wasi_http_requests_total counter");
        for (status, count) in &http.statuses {
            let _ = writeln!(
                out,
                "skyclaw_host_wasi_http_requests_total{{status=\"{status}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# TYPE skyclaw_host_wasi_http_request_seconds histogram"
        );
        let bounds = LATENCY_BUCKETS_MS
            .iter()
            .map(|ms| format!("{}", ms / 1000.0))
            .chain(std::iter::once("+Inf".to_string()));
        for (bound, count) in bounds.zip(&http.latency_buckets) {
            let _ = writeln!(
                out,
                "skyclaw_host_wasi_http_request_seconds_bucket{{le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "skyclaw_host_wasi_http_request_seconds_sum {}",
            http.latency_sum_seconds
        );
        let _ = writeln!(
            out,
            "skyclaw_host_wasi_http_request_seconds_count {}",
            http.requests
        );
        let _ = writeln!(out, "# TYPE skyclaw_host_wasi_http_slots_in_use gauge");
        let _ = writeln!(
            out,
            "skyclaw_host_wasi_http_slots_in_use {}",
            http.slots_in_use
        );
        let _ = writeln!(out, "# TYPE skyclaw_host_wasi_http_connections_open gauge");
        let _ = writeln!(
            out,
            "skyclaw_host_wasi_http_connections_open {}",
            http.connections_open
        );
    }
}
