//! A running wasi:http server: its listener moved onto the guest runtime and
//! served there by the HTTP serving every Skyclaw listener shares (connection
//! cap, header and idle timeouts, keep-alive), each request answered by
//! [`Service::answer`]; and its shutdown: stop accepting, let requests in
//! flight finish within a grace, then drop what is left.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use skyclaw_api::serve::{self, Limits};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::warn;

use super::guest::Outbound;
use super::request::Service;
use super::{HttpOptions, HttpProgram};
use crate::wasi::engine::Inner;

/// Connections one service serves at once. Its clients are gateways and
/// health probes, each keeping a pool of keep-alive connections to it; this
/// is far more than they need and bounds one service's share of the host's
/// file descriptors (past it a connection is closed at once).
const MAX_SERVICE_CONNECTIONS: u32 = 1024;
/// How long connections are given to close once the grace is over and
/// their requests were dropped, before the server stops waiting for them:
/// only a connection stuck mid-head lasts longer, and it holds no guest.
const ABORT_WAIT: Duration = Duration::from_secs(1);

/// A wasi:http service being served. Dropping it stops it at once, as
/// [`HttpServer::shutdown`] with no grace would.
pub struct HttpServer {
    local_addr: SocketAddr,
    /// Stops the accept loop; connections finish their requests.
    stop: Option<oneshot::Sender<()>>,
    /// Drops the requests still running.
    abort: watch::Sender<bool>,
    served: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// Starts serving `program` on `listener`, on the engine's guest runtime.
pub(super) fn start(
    inner: Arc<Inner>,
    program: Arc<HttpProgram>,
    listener: TcpListener,
    options: HttpOptions,
) -> std::io::Result<HttpServer> {
    let local_addr = listener.local_addr()?;
    let guests = inner.guests.handle().clone();
    // Registered again with the guest runtime's reactor, so that no
    // connection's readiness goes through the caller's runtime.
    let listener = listener.into_std()?;
    let listener = {
        let _runtime = guests.enter();
        TcpListener::from_std(listener)?
    };
    let (abort, aborted) = watch::channel(false);
    let service = Arc::new(Service {
        name: options.service,
        engine: inner.engine.clone(),
        program,
        limits: inner.settings.caps.apply(&options.limits),
        outbound: Outbound::new(options.outbound),
        slots: Arc::clone(&inner.http.slots),
        stats: Arc::clone(&inner.http.stats),
        aborted,
    });
    let handler = tower::service_fn(move |request| {
        let service = Arc::clone(&service);
        async move { Ok::<_, Infallible>(service.answer(request).await) }
    });
    let limits = Limits {
        max_connections: MAX_SERVICE_CONNECTIONS,
        ..Limits::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let connections = Arc::clone(&inner.http.connections);
    let served = guests.spawn(async move {
        let shutdown = async move {
            // A dropped sender stops the server as well.
            let _ = stopped.await;
        };
        serve::serve(listener, handler, limits, connections, shutdown).await;
    });
    Ok(HttpServer {
        local_addr,
        stop: Some(stop),
        abort,
        served: Some(served),
    })
}

impl HttpServer {
    /// Where the server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets requests in flight finish within `grace`
    /// (idle keep-alive connections close at once), then drops the requests
    /// still running (their clients see the connection end, or 503 for
    /// those the guest had not answered yet) and returns.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(mut served) = self.served.take() else {
            return;
        };
        if tokio::time::timeout(grace, &mut served).await.is_ok() {
            return;
        }
        self.abort.send_replace(true);
        if tokio::time::timeout(ABORT_WAIT, &mut served).await.is_err() {
            warn!(addr = %self.local_addr, "connections outlived the server's shutdown");
            served.abort();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.abort.send_replace(true);
    }
}
