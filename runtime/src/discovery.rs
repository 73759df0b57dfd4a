//! Learning every coordinator of the cluster from the ones the host was given,
//! so one bootstrap URL is enough and the host fails over to coordinators that
//! joined after it started.

use std::time::Duration;

use skyclaw_api::Client;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info};

/// How often the host re-reads the coordinator list: often enough that a
/// coordinator added or moved is used within a minute, rarely enough to cost
/// the cluster nothing (one small read per host per interval). Failover
/// itself does not wait for it: the client already tries every URL it knows.
const PEER_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Refreshes the client's coordinator URLs now and then every
/// [`PEER_REFRESH_INTERVAL`], until aborted. The client is shared, so
/// heartbeats, claims and reports use the new list at once. Failures are
/// harmless (the known URLs stay) and only logged at debug level.
pub(crate) async fn refresh_loop(client: Client) {
    let mut ticker = tokio::time::interval(PEER_REFRESH_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let before = sorted(client.urls());
        match client.refresh_urls().await {
            Ok(urls) if sorted(urls.clone()) != before => {
                info!(coordinators = ?urls, "learned the cluster's coordinators");
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "cannot refresh the coordinator list; keeping it"),
        }
    }
}

fn sorted(mut urls: Vec<String>) -> Vec<String> {
    urls.sort();
    urls
}
