//! Serves HTTP on a bound listener with the limits every Skyclaw listener
//! shares (HTTP/1.1 in the clear, or, for the gateway, HTTP/1.1 and HTTP/2
//! with upgrades, over TLS when it has a certificate): a cap on concurrent connections, a header-read timeout, an idle
//! keep-alive timeout, a bound on request heads (431 with the JSON error
//! envelope) and graceful shutdown; and raises the process's open-file limit.
//!
//! Over the cap a connection is accepted and closed at once, so a client fails
//! fast (and fails over to another node) instead of waiting in the backlog.
//! Accept errors that are not about one connection (EMFILE) pause the loop
//! briefly instead of spinning.

mod connection;
mod fdlimit;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::{Body, Bytes, Incoming};
use hyper::{Request, Response};
use tokio::net::{TcpListener, TcpSocket, ToSocketAddrs};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub use fdlimit::{nofile_limit, raise_nofile_limit};

/// Connections served at once unless configured: a few thousand hosts each
/// long-polling for claims fit, while a flood of sockets past it is refused
/// instead of exhausting file descriptors and memory.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;
/// How long a client may take to send a request head unless configured,
/// counted from the accept (a new connection) or from the first byte of a
/// later request: a slowloris sender is cut off after it, a real client sends
/// a head in one packet.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a keep-alive connection may wait for its next request unless
/// configured: longer than Skyclaw's own clients keep an unused pooled
/// connection ([`crate::client::POOL_IDLE_TIMEOUT`]), so a client gives a
/// connection up before the server closes it under a request being sent.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Request heads (request line and headers) larger than this answer 431 with
/// the JSON envelope: real clients send well under 8 KiB; this leaves room for
/// long credentials and idempotency keys.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Heads larger than this are refused by hyper itself, before they reach the
/// application, with a bare 431, and the connection is closed; between
/// [`MAX_HEAD_BYTES`] and this bound the 431 carries the JSON envelope. It
/// bounds what one sender can make a connection buffer for a head.
pub const HYPER_MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers one request may carry (httparse's default); more answer a bare 431.
pub const MAX_HEADERS: usize = 100;
/// Largest read buffer of one connection: a head up to hyper's bound and the
/// start of a body, so a flood of connections holds bounded memory.
const READ_BUFFER_BYTES: usize = 2 * HYPER_MAX_HEAD_BYTES;
/// File descriptors kept out of the connection cap for the node's own use
/// (database and WAL files, artifact blobs, connections to peers), so a full
/// listener cannot starve them.
pub const FD_RESERVE: u64 = 256;
/// Connections the kernel queues for accept (it caps this at
/// `net.core.somaxconn`): a burst of connects waits in the queue while the
/// accept loop catches up instead of having its handshakes dropped and
/// retried seconds later; tokio's own default is 1024.
pub const LISTEN_BACKLOG: u32 = 4096;
/// Pause after an accept error that is not about one connection (EMFILE,
/// ENFILE, ENOMEM): retrying at once would spin while nothing has been freed.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// How a listener's connections speak, beyond the HTTP/1.1 in the clear that
/// every node's API uses.
#[derive(Clone, Default)]
pub struct Protocols {
    /// TLS on every connection; the handshake counts against the header-read
    /// timeout. Its ALPN list says which HTTP versions are offered.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// HTTP/2 beside HTTP/1.1 (by ALPN over TLS, by prior knowledge in the
    /// clear) and protocol upgrades (WebSocket), for a proxy's clients.
    pub http2_and_upgrades: bool,
}

impl std::fmt::Debug for Protocols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protocols")
            .field("tls", &self.tls.is_some())
            .field("http2_and_upgrades", &self.http2_and_upgrades)
            .finish()
    }
}

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; lowered at start to fit under the open-file
    /// limit less [`FD_RESERVE`].
    pub max_connections: u32,
    /// Longest a request head may take to arrive.
    pub header_read_timeout: Duration,
    /// Longest a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// What a listener has done with its connections, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    open: AtomicU64,
    refused: AtomicU64,
    header_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
}

impl Stats {
    /// Connections being served now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at accept because the cap was reached.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections closed because a request head did not arrive in time.
    pub fn header_timeouts(&self) -> u64 {
        self.header_timeouts.load(Ordering::Relaxed)
    }

    /// Keep-alive connections closed for waiting too long between requests.
    pub fn idle_timeouts(&self) -> u64 {
        self.idle_timeouts.load(Ordering::Relaxed)
    }
}

/// Serves `service` over HTTP/1.1 on `listener` until `shutdown` resolves,
/// then stops accepting, lets every request in progress finish (idle
/// connections close at once) and returns once all connections are closed.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_with(
        listener,
        move |_peer| service.clone(),
        limits,
        Protocols::default(),
        stats,
        shutdown,
    )
    .await;
}

/// [`serve`], speaking what `protocols` says, with each connection served by
/// the service `make_service` builds for it from the address it came from
/// (a proxy forwards that address; worked out once per connection, it costs
/// a request nothing).
pub async fn serve_with<M, S, B>(
    listener: TcpListener,
    make_service: M,
    limits: Limits,
    protocols: Protocols,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) where
    M: Fn(Option<SocketAddr>) -> S,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let cap = connection_cap(limits.max_connections);
    let slots = Arc::new(Semaphore::new(cap as usize));
    let (stop, stopping) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accept error; pausing the listener");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                }
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(cap, "connection cap reached; closing a new connection");
            continue;
        };
        let slot = Slot::take(permit, stats.clone());
        // hyper may write a head and a body separately: Nagle's algorithm
        // would hold the second write until the first is acknowledged.
        let _ = stream.set_nodelay(true);
        let service = make_service(stream.peer_addr().ok());
        let stopping = stopping.clone();
        let protocols = protocols.clone();
        tokio::spawn(async move {
            connection::accept(stream, service, limits, protocols, &slot.stats, stopping).await;
            drop(slot);
        });
    }
    drop(listener);
    // Ignored send error: no connection is left to tell.
    let _ = stop.send(true);
    // Every slot back means every connection has closed. Acquiring fails only
    // once the semaphore is closed, which nothing does.
    let _ = slots.acquire_many(cap).await;
}

/// Binds a listener on the first address `addr` resolves to that can be
/// bound, with a backlog of [`LISTEN_BACKLOG`].
pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let mut failed = None;
    for addr in tokio::net::lookup_host(addr).await? {
        match listen(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => failed = Some(e),
        }
    }
    Err(failed
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to listen on")))
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As std and tokio do: a restarted node can bind its port again while
    // connections of its previous run linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// One connection's place under the cap, counted in [`Stats::open`] while held.
struct Slot {
    _permit: OwnedSemaphorePermit,
    stats: Arc<Stats>,
}

impl Slot {
    fn take(permit: OwnedSemaphorePermit, stats: Arc<Stats>) -> Slot {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Slot {
            _permit: permit,
            stats,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection cap: as configured, but lowered so that the connections and
/// [`FD_RESERVE`] fit under the soft open-file limit; with a tiny limit, half
/// of it.
fn connection_cap(configured: u32) -> u32 {
    let Ok(soft) = nofile_limit() else {
        return configured;
    };
    let room = soft.saturating_sub(FD_RESERVE).max(soft / 2);
    let cap = u32::try_from(room)
        .unwrap_or(u32::MAX)
        .min(configured)
        .max(1);
    if cap < configured {
        tracing::warn!(
            configured,
            cap,
            open_file_limit = soft,
            "connection cap lowered to fit the open-file limit"
        );
    }
    cap
}

/// Errors about one connection that went away before it was accepted: the
/// next accept may well succeed at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
