//! Endpoint discovery: long-polls the coordinators' endpoint set and
//! rebuilds the routing table from each new one, starting probes for new
//! endpoints; refreshes the coordinator list from `/v1/network/peers` (the
//! client fails over between them). While no coordinator answers, the
//! gateway keeps routing on the last set it received and says it is stale.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use skyclaw_api::Client;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::routes::Routes;

/// How long one long-poll waits for a change: well under the coordinators'
/// own request timeout.
const LONG_POLL_WAIT: Duration = Duration::from_secs(30);
/// How often the coordinator list is refreshed while all is well, so that
/// coordinators that joined are known before the ones known fail.
const PEER_REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// Waits between failed polls: from the first to the last, doubling.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Watches the endpoint set until `stopping` turns true.
pub async fn watch(
    client: Client,
    routes: Arc<Routes>,
    prober: Prober,
    metrics: Arc<Metrics>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut index: Option<u64> = None;
    // The first poll learns the whole cluster, so a gateway started with one
    // coordinator URL survives that coordinator.
    let mut refreshed: Option<Instant> = None;
    let mut retry = RETRY_FIRST;
    let mut failing = false;
    loop {
        if refreshed.is_none_or(|at| at.elapsed() >= PEER_REFRESH_INTERVAL) {
            refreshed = Some(Instant::now());
            if let Err(e) = client.refresh_urls().await {
                tracing::debug!(error = %e, "could not refresh the coordinator list");
            }
        }
        let polled = tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            polled = client.endpoints(index, LONG_POLL_WAIT) => polled,
        };
        match polled {
            Ok(endpoints) => {
                if failing {
                    tracing::info!(
                        index = endpoints.index,
                        "a coordinator answers again; the endpoint set is fresh"
                    );
                    failing = false;
                }
                retry = RETRY_FIRST;
                if index != Some(endpoints.index) || routes.freshness().stale_since.is_some() {
                    for upstream in routes.update(&endpoints) {
                        prober.start(&upstream, stopping.clone());
                    }
                    metrics.updates.fetch_add(1, Ordering::Relaxed);
                    index = Some(endpoints.index);
                }
            }
            Err(e) => {
                metrics.discovery_failures.fetch_add(1, Ordering::Relaxed);
                routes.mark_stale(e.to_string(), Instant::now());
                if !failing {
                    tracing::warn!(error = %e, "no coordinator answers; routing on the last endpoint set");
                    failing = true;
                }
                tokio::select! {
                    _ = stopping.wait_for(|s| *s) => return,
                    () = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
                // A coordinator that joined may be the one that answers.
                if client.refresh_urls().await.is_ok() {
                    refreshed = Some(Instant::now());
                }
            }
        }
    }
}
