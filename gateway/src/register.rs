//! The gateway's registration: while it runs with a public URL, it tells
//! the coordinators so every `GATEWAY_HEARTBEAT_INTERVAL_MS`, and
//! `GET /v1/gateways` lists it until its TTL passes without a heartbeat.
//! Clients read that list to fail over between gateways.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sha2::{Digest, Sha256};
use skyclaw_api::Client;
use skyclaw_api::gateways::{GATEWAY_HEARTBEAT_INTERVAL_MS, GatewayHeartbeat};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// A gateway's id: named by its public URL, so a restarted gateway renews
/// its own entry and two processes behind one URL share one.
pub fn gateway_id(public_url: &str) -> String {
    let digest = Sha256::digest(public_url.trim_end_matches('/').as_bytes());
    format!("gw-{}", &hex::encode(digest)[..16])
}

/// Heartbeats until `stopping` turns true.
pub async fn heartbeat(
    client: Client,
    public_url: String,
    metrics: Arc<Metrics>,
    mut stopping: watch::Receiver<bool>,
) {
    let beat = GatewayHeartbeat {
        id: gateway_id(&public_url),
        public_url,
    };
    let mut failing = false;
    loop {
        match client.gateway_heartbeat(&beat).await {
            Ok(_) if failing => {
                tracing::info!(id = %beat.id, "the gateway's registration is renewed again");
                failing = false;
            }
            Ok(_) => {}
            Err(e) => {
                metrics
                    .registration_failures
                    .fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(id = %beat.id, error = %e, "could not register the gateway; clients may not find it");
                    failing = true;
                }
            }
        }
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_millis(GATEWAY_HEARTBEAT_INTERVAL_MS)) => {}
        }
    }
}
