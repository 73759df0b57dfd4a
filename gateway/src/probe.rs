//! Active health: every endpoint in the table is probed on its health path
//! at an interval, from the moment it appears until it leaves the table;
//! rise and fall thresholds turn answers into up and down, and a passing
//! probe is what readmits an ejected endpoint once its ejection ran out.

use std::sync::{Arc, Weak};

use http::{Request, Uri};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::ProbeSettings;
use crate::pool::Pool;
use crate::upstream::{Change, Upstream};

/// At most this much of a probe's answer is read (then the connection is
/// given up rather than drained): health answers are small.
const MAX_PROBE_BODY_BYTES: usize = 64 * 1024;

/// Starts the probes of new endpoints.
#[derive(Debug, Clone)]
pub struct Prober {
    pub pool: Pool,
    pub settings: ProbeSettings,
}

impl Prober {
    /// Probes `upstream` until it leaves the table or `stopping` turns true.
    pub fn start(&self, upstream: &Arc<Upstream>, stopping: watch::Receiver<bool>) {
        let weak = Arc::downgrade(upstream);
        let prober = self.clone();
        tokio::spawn(async move { prober.watch(weak, stopping).await });
    }

    async fn watch(self, weak: Weak<Upstream>, mut stopping: watch::Receiver<bool>) {
        loop {
            let Some(upstream) = weak.upgrade() else {
                return;
            };
            let passed = self.probe(&upstream).await;
            let change = upstream.probed(passed, &self.settings, Instant::now());
            let endpoint = upstream.authority.as_str();
            match change {
                Change::None => {}
                Change::Fell => {
                    tracing::warn!(endpoint, instance = %upstream.instance_id, "endpoint failed its probes: down")
                }
                Change::Rose => {
                    tracing::info!(endpoint, instance = %upstream.instance_id, "endpoint passed its probes: up")
                }
                Change::Readmitted => {
                    tracing::info!(endpoint, instance = %upstream.instance_id, "ejected endpoint passed its probe: readmitted")
                }
            }
            drop(upstream);
            tokio::select! {
                _ = stopping.wait_for(|s| *s) => return,
                () = tokio::time::sleep(self.settings.interval) => {}
            }
        }
    }

    /// One probe: a GET of the health path answered 2xx or 3xx in time.
    async fn probe(&self, upstream: &Upstream) -> bool {
        let Ok(uri) = Uri::try_from(upstream.health_path.as_str()) else {
            return false;
        };
        let request = Request::get(uri)
            .header(http::header::HOST, upstream.host.clone())
            .header(http::header::USER_AGENT, "skyclaw-gateway-probe")
            .body(crate::proxy::full(bytes::Bytes::new()))
            .expect("a GET with a valid URI");
        let answered = tokio::time::timeout(self.settings.timeout, async {
            let response = self.pool.send(&upstream.authority, request).await.ok()?;
            let ok = response.status().is_success() || response.status().is_redirection();
            let limited = http_body_util::Limited::new(response.into_body(), MAX_PROBE_BODY_BYTES);
            limited.collect().await.ok()?;
            Some(ok)
        })
        .await;
        matches!(answered, Ok(Some(true)))
    }
}
