//! The host's counters and their Prometheus text (`GET /metrics` on the
//! host's listener): jobs run by kind and outcome, instances by state,
//! instance restarts, and the artifact cache.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use crate::artifacts::CacheStats;

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
        out
    }
}
