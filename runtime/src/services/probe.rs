//! Watching a running instance: its health probed at the service's interval
//! (more often until it is first healthy), each verdict change reported,
//! until the instance ends on its own or is told to stop. Native and
//! wasi-http instances are watched alike.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use skyclaw_api::services::{Assignment, InstanceState};
use tracing::warn;

use super::health::Verdict;
use super::status::Status;
use super::{Shared, StopOrder, stop_ordered};

/// How watching ended.
pub(super) enum Watched<T> {
    /// The instance ended on its own, with this.
    Ended(T),
    /// It was told to stop; `was_healthy` when it had been routable.
    Stopped { was_healthy: bool },
}

/// Probes the instance listening on `port` until `ended` resolves or the
/// stop order comes.
pub(super) async fn watch<F: Future>(
    shared: &Shared,
    assignment: &Assignment,
    status: &Status,
    stop: &mut StopOrder,
    port: u16,
    ended: F,
) -> Watched<F::Output> {
    let health = &assignment.spec.health;
    let mut verdict = Verdict::new(health);
    let mut was_healthy = false;
    let timeout = Duration::from_millis(health.timeout_ms);
    tokio::pin!(ended);
    loop {
        let pause = shared.probe_interval(health, was_healthy);
        tokio::select! {
            end = &mut ended => return Watched::Ended(end),
            () = stop_ordered(stop) => return Watched::Stopped { was_healthy },
            () = tokio::time::sleep(pause) => {}
        }
        let passed = tokio::select! {
            end = &mut ended => return Watched::Ended(end),
            () = stop_ordered(stop) => return Watched::Stopped { was_healthy },
            probed = shared.prober.probe(SocketAddr::new(shared.probe_host, port), &health.path, timeout) => probed,
        };
        match verdict.observe(passed.is_ok()) {
            Some(true) => {
                was_healthy = true;
                status.enter(InstanceState::Healthy, Some(shared.endpoint(port)));
            }
            Some(false) => {
                let error = passed.err().unwrap_or_default();
                warn!(instance_id = %assignment.instance_id, %error, "instance unhealthy");
                status.set(|r| {
                    r.state = InstanceState::Unhealthy;
                    r.endpoint = None;
                    r.last_error = Some(error);
                });
            }
            None => {}
        }
    }
}
