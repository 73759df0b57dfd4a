//! A wasi-http instance: its component fetched and verified, loaded through
//! the WASI engine's code cache, served on a port of the host's range (the
//! next one when a port is taken), probed for health like any instance, and
//! on stop given the grace period to finish its requests.

use std::io;
use std::net::SocketAddr;

use skyclaw_api::services::{Assignment, OutboundRule};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::ports::HeldPort;
use super::probe::{self, Watched};
use super::status::Status;
use super::{DRAIN_DELAY, Shared, StopOrder, stop_ordered};
use crate::wasi::HttpOptions;
use skyclaw_api::services::InstanceState;

/// Ports tried before the instance gives up: each was free when checked, so
/// more than a few taken in a row means something else is grabbing them.
const BIND_ATTEMPTS: usize = 8;

/// Serves the instance until it is told to stop or cannot run.
pub(super) async fn run(
    shared: &Shared,
    assignment: &Assignment,
    status: &Status,
    stop: &mut StopOrder,
) {
    let spec = &assignment.spec;
    let outbound = match spec
        .allowed_outbound_hosts
        .iter()
        .map(|entry| OutboundRule::parse(entry))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(rules) => rules,
        Err(e) => return status.fail(format!("allowed_outbound_hosts: {}", e.0)),
    };
    let load = async {
        let blob = shared
            .artifacts
            .fetch(&shared.client, &spec.artifact)
            .await?;
        shared.engine.load_http(&spec.artifact, blob.path()).await
    };
    let program = tokio::select! {
        program = load => program,
        () = stop_ordered(stop) => return,
    };
    let program = match program {
        Ok(program) => program,
        Err(error) => {
            warn!(instance_id = %assignment.instance_id, %error, "instance cannot run");
            return status.fail(error);
        }
    };
    let (port, listener) = match bind(shared).await {
        Ok(bound) => bound,
        Err(error) => return status.fail(error),
    };
    let options = HttpOptions {
        service: assignment.service.clone(),
        limits: spec.limits,
        outbound,
    };
    let server = match shared.engine.serve_http(program, listener, options) {
        Ok(server) => server,
        Err(e) => return status.fail(format!("cannot serve the component: {e}")),
    };
    debug!(addr = %server.local_addr(), "wasi-http instance serving");
    let watched = probe::watch(
        shared,
        assignment,
        status,
        stop,
        port.get(),
        std::future::pending::<()>(),
    )
    .await;
    let Watched::Stopped { was_healthy } = watched else {
        unreachable!("a server never ends on its own");
    };
    status.enter(InstanceState::Stopping, None);
    if was_healthy {
        tokio::time::sleep(DRAIN_DELAY).await;
    }
    server.shutdown(shared.grace).await;
    info!(instance_id = %assignment.instance_id, "wasi-http instance stopped");
    drop(port);
}

/// A listener on a free port of the range; a port something else took since
/// it was checked is skipped.
async fn bind(shared: &Shared) -> Result<(HeldPort, TcpListener), String> {
    for _ in 0..BIND_ATTEMPTS {
        let Some(port) = shared.ports.take() else {
            break;
        };
        let addr = SocketAddr::new(shared.bind_host, port.get());
        match skyclaw_api::serve::bind(addr).await {
            Ok(listener) => return Ok((port, listener)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                debug!(%addr, "port taken; trying another");
            }
            Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
        }
    }
    Err(format!(
        "no free port left in this host's service port range {}",
        shared.ports.range()
    ))
}
