//! The gateway's keep-alive connections to endpoints: hyper-util's pooled
//! HTTP/1.1 client over a connector that counts what it opens, for
//! `/metrics`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::BoxError;

/// Idle connections kept per endpoint: enough for a busy endpoint's
/// concurrency, bounded so a burst does not leave thousands of sockets open.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// How long an idle pooled connection is kept: shorter than the idle timeout
/// Skyclaw listeners apply (`skyclaw_api::serve::DEFAULT_IDLE_TIMEOUT`), so
/// the gateway gives a connection up before an endpoint closes it under a
/// request being sent.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The body the gateway sends upstream.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// What the connector has done.
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

/// The pooled client and its counters.
#[derive(Debug, Clone)]
pub struct Pool {
    pub client: Client<Counting, UpstreamBody>,
    stats: Arc<PoolStats>,
}

impl Pool {
    pub fn new(connect_timeout: Duration) -> Pool {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        let stats = Arc::new(PoolStats::default());
        let connector = Counting {
            inner: http,
            stats: stats.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_ENDPOINT)
            // The gateway sets Host itself: the endpoint's own authority.
            .set_host(true)
            .build(connector);
        Pool { client, stats }
    }

    pub fn stats(&self) -> Arc<PoolStats> {
        self.stats.clone()
    }
}

/// `HttpConnector`, counting connections opened, closed and failed.
#[derive(Debug, Clone)]
pub struct Counting {
    inner: HttpConnector,
    stats: Arc<PoolStats>,
}

impl tower::Service<Uri> for Counting {
    type Response = CountedIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<CountedIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let stats = self.stats.clone();
        Box::pin(async move {
            match connecting.await {
                Ok(io) => {
                    stats.opened.fetch_add(1, Ordering::Relaxed);
                    Ok(CountedIo { io, stats })
                }
                Err(e) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    Err(e.into())
                }
            }
        })
    }
}

/// A connection to an endpoint, counted closed when dropped.
pub struct CountedIo {
    io: TokioIo<TcpStream>,
    stats: Arc<PoolStats>,
}

impl Drop for CountedIo {
    fn drop(&mut self) {
        self.stats.closed.fetch_add(1, Ordering::Relaxed);
    }
}

impl Connection for CountedIo {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for CountedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for CountedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
