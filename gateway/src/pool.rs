//! The gateway's keep-alive HTTP/1.1 connections to endpoints.
//!
//! A connection is driven by whichever task is using it: the request's own
//! task polls hyper's connection future while it waits for the response
//! head, and the response body polls it while the client reads the body.
//! Once the body has ended the connection goes back to the idle list of its
//! endpoint, where nobody polls it; the next request that takes it polls it
//! once first, which reads an endpoint's close (or finds it half-used) and
//! throws it away. hyper-util's pooled client instead runs each connection
//! as a task of its own and hands every request, response head and body
//! chunk across to it: task wake-ups, often on the other core, that this
//! way does without.
//!
//! Upgrades (WebSocket) get a fresh connection driven by a task of its own,
//! since after the switch it carries the spliced bytes, not requests.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::BoxError;

/// Idle connections kept per endpoint: enough for a busy endpoint's
/// concurrency, bounded so a burst does not leave thousands of sockets open.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// How long an idle pooled connection is kept: shorter than the idle timeout
/// Skyclaw listeners apply (`skyclaw_api::serve::DEFAULT_IDLE_TIMEOUT`), so
/// the gateway gives a connection up before an endpoint closes it under a
/// request being sent.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often connections idle past [`POOL_IDLE_TIMEOUT`] are closed, for
/// endpoints no request takes a connection of any more.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The body the gateway sends upstream.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

type Driver = http1::Connection<TokioIo<Counted>, UpstreamBody>;

/// Why a request got no response from an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: the endpoint never saw the request.
    #[error("could not connect to {authority}: {reason}")]
    Connect {
        authority: Authority,
        reason: String,
    },
    /// The request was (or may have been) sent, and the exchange failed.
    #[error("{0}")]
    Exchange(#[source] hyper::Error),
}

impl SendError {
    /// Whether the request certainly never reached the endpoint.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect { .. })
    }
}

/// What the pool has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct PoolStats {
    opened: AtomicU64,
    closed: AtomicU64,
    failed: AtomicU64,
}

impl PoolStats {
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
    pub fn open(&self) -> u64 {
        self.opened()
            .saturating_sub(self.closed.load(Ordering::Relaxed))
    }
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The idle connections of every endpoint, and how new ones are made.
#[derive(Debug, Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    idle: Mutex<HashMap<Authority, Vec<Idle>>>,
    connect_timeout: Duration,
    stats: Arc<PoolStats>,
}

/// A connection waiting for its next request.
struct Idle {
    connection: Connection,
    since: Instant,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("since", &self.since).finish()
    }
}

/// One HTTP/1.1 connection: the handle requests are sent on, and the future
/// that does its reading and writing. The driver (hyper's buffers and
/// state, a kilobyte or so) is boxed once per connection, as a connection
/// moves with each request it carries: out of the idle list, through the
/// exchange, into the response body, and back.
struct Connection {
    sender: http1::SendRequest<UpstreamBody>,
    driver: Pin<Box<Driver>>,
    /// The driver has finished (the connection closed); it is not polled again.
    ended: bool,
}

impl Connection {
    /// Lets the connection read and write what it can.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.ended && self.driver.as_mut().poll(cx).is_ready() {
            self.ended = true;
        }
    }

    /// Whether a request can be sent on it now, after it read what was
    /// waiting (an endpoint's close, or the end of the last exchange).
    fn poll_usable(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx);
        !self.ended && matches!(self.sender.poll_ready(cx), Poll::Ready(Ok(())))
    }
}

impl Pool {
    /// A pool whose new connections give up after `connect_timeout`. It
    /// closes connections idle for too long from a task of its own, so it
    /// must be made inside the Tokio runtime.
    pub fn new(connect_timeout: Duration) -> Pool {
        let shared = Arc::new(Shared {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            stats: Arc::new(PoolStats::default()),
        });
        tokio::spawn(sweep(Arc::downgrade(&shared)));
        Pool { shared }
    }

    pub fn stats(&self) -> Arc<PoolStats> {
        self.shared.stats.clone()
    }

    /// Sends `request` (its URI the path and query, its `Host` the
    /// endpoint's, as callers keep it per endpoint) to the endpoint at
    /// `authority` on an idle connection or a new one; the response's body
    /// keeps the connection until it has been read to its end.
    pub async fn send(
        &self,
        authority: &Authority,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        if let Some(connection) = self.checkout(authority).await {
            match exchange(connection, request).await {
                Ok((response, connection)) => {
                    return Ok(self.lease(authority, response, connection));
                }
                // The connection closed before it took the request: it was
                // never sent, so it goes on a new connection.
                Err(Unsent::Returned(again)) => request = *again,
                Err(Unsent::Failed(e)) => return Err(SendError::Exchange(e)),
            }
        }
        // Boxed: with connections kept alive, connecting is rare, and its
        // future would otherwise make every request's larger.
        let connection = Box::pin(self.connect(authority)).await?;
        match exchange(connection, request).await {
            Ok((response, connection)) => Ok(self.lease(authority, response, connection)),
            Err(Unsent::Returned(_)) => Err(SendError::Connect {
                authority: authority.clone(),
                reason: "the connection closed before the request was sent".into(),
            }),
            Err(Unsent::Failed(e)) => Err(SendError::Exchange(e)),
        }
    }

    /// Sends an upgrade request (made as for [`Pool::send`]) on a new
    /// connection, driven by a task of its own so that a 101 answer hands
    /// its socket to `hyper::upgrade::on`.
    pub async fn upgrade(
        &self,
        authority: &Authority,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let Connection {
            mut sender, driver, ..
        } = self.connect(authority).await?;
        tokio::spawn(async move {
            let driver = Pin::into_inner(driver);
            if let Err(e) = driver.with_upgrades().await {
                tracing::debug!(error = %e, "an upgrade's connection to its endpoint failed");
            }
        });
        sender
            .send_request(request)
            .await
            .map_err(SendError::Exchange)
    }

    /// The most recently used idle connection of `authority` that is still
    /// usable; those that are not are closed on the way.
    async fn checkout(&self, authority: &Authority) -> Option<Connection> {
        loop {
            let now = Instant::now();
            let mut idle = {
                let mut lists = self.shared.idle.lock().expect("pool lock");
                let list = lists.get_mut(authority)?;
                list.pop()?
            };
            if now.duration_since(idle.since) >= POOL_IDLE_TIMEOUT {
                continue;
            }
            if poll_fn(|cx| Poll::Ready(idle.connection.poll_usable(cx))).await {
                return Some(idle.connection);
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Connection, SendError> {
        let failed = |reason: String| {
            self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
            SendError::Connect {
                authority: authority.clone(),
                reason,
            }
        };
        let address = match authority.port_u16() {
            Some(_) => authority.as_str().to_owned(),
            None => format!("{}:80", authority.host()),
        };
        let stream =
            match tokio::time::timeout(self.shared.connect_timeout, TcpStream::connect(address))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(failed(e.to_string())),
                Err(_) => {
                    return Err(failed(format!(
                        "no connection within {:?}",
                        self.shared.connect_timeout
                    )));
                }
            };
        // Requests and answers are small and latency-bound: no Nagle delay.
        let _ = stream.set_nodelay(true);
        self.shared.stats.opened.fetch_add(1, Ordering::Relaxed);
        let io = TokioIo::new(Counted {
            stream,
            stats: self.shared.stats.clone(),
        });
        let (sender, driver) = http1::handshake(io)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(Connection {
            sender,
            driver: Box::pin(driver),
            ended: false,
        })
    }

    fn lease(
        &self,
        authority: &Authority,
        response: Response<Incoming>,
        connection: Connection,
    ) -> Response<PooledBody> {
        let lease = Lease {
            connection,
            authority: authority.clone(),
            pool: Arc::downgrade(&self.shared),
        };
        response.map(|body| PooledBody {
            body,
            lease: Some(lease),
        })
    }
}

/// How an exchange failed.
enum Unsent {
    /// The connection was closed before the request was written: here it is.
    Returned(Box<Request<UpstreamBody>>),
    /// The request was (or may have been) written.
    Failed(hyper::Error),
}

/// Sends one request on `connection`, driving it until the response head
/// has arrived.
async fn exchange(
    mut connection: Connection,
    request: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Connection), Unsent> {
    let mut response = std::pin::pin!(connection.sender.try_send_request(request));
    let answered = poll_fn(|cx| {
        connection.drive(cx);
        response.as_mut().poll(cx)
    })
    .await;
    match answered {
        Ok(response) => Ok((response, connection)),
        Err(mut e) => match e.take_message() {
            Some(request) => Err(Unsent::Returned(Box::new(request))),
            None => Err(Unsent::Failed(e.into_error())),
        },
    }
}

/// Closes connections idle past their time, until the pool is gone.
async fn sweep(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let expired: Vec<Idle> = {
            let mut lists = shared.idle.lock().expect("pool lock");
            let mut expired = Vec::new();
            for list in lists.values_mut() {
                // Each list is oldest first: connections go back on its end.
                let stale = list
                    .iter()
                    .take_while(|i| now.duration_since(i.since) >= POOL_IDLE_TIMEOUT)
                    .count();
                expired.extend(list.drain(..stale));
            }
            lists.retain(|_, list| !list.is_empty());
            expired
        };
        // Closed outside the lock.
        drop(expired);
    }
}

/// A connection lent to one exchange, returned when its response body ends.
struct Lease {
    connection: Connection,
    authority: Authority,
    pool: Weak<Shared>,
}

impl Lease {
    fn give_back(self) {
        let Some(shared) = self.pool.upgrade() else {
            return;
        };
        if self.connection.ended || self.connection.sender.is_closed() {
            return;
        }
        let mut lists = shared.idle.lock().expect("pool lock");
        let list = lists.entry(self.authority).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle {
                connection: self.connection,
                since: Instant::now(),
            });
        }
    }
}

/// A response body from an endpoint; it drives its connection while it is
/// read, and returns it to the pool once it has ended. Dropped before its
/// end, it closes the connection: what is left unread cannot be skipped.
pub struct PooledBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(lease) = &mut this.lease {
            lease.connection.drive(cx);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(lease) = this.lease.take() {
                    lease.give_back();
                }
            }
            Poll::Ready(Some(Err(_))) => this.lease = None,
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing left (an empty one, or one whose declared
        // length has all arrived) is often dropped without being polled to
        // its end; its connection is as good as after a full read.
        if let Some(lease) = self.lease.take()
            && self.body.is_end_stream()
        {
            lease.give_back();
        }
    }
}

/// A socket to an endpoint, counted closed when dropped.
struct Counted {
    stream: TcpStream,
    stats: Arc<PoolStats>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stats.closed.fetch_add(1, Ordering::Relaxed);
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
}
