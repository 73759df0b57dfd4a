//! One connection: the TLS handshake when the listener has TLS, then hyper
//! serves HTTP/1.1 (or HTTP/1.1 and HTTP/2, for the gateway's clients), a watchdog closes it when a
//! request head is slow to arrive or when it waits too long between requests,
//! and heads past [`MAX_HEAD_BYTES`] answer 431 with the JSON envelope.
//!
//! hyper's own `header_read_timeout` is not used: hyper 1.x arms it as soon as
//! a keep-alive connection goes idle after a response (`State::idle` asks for
//! the next head to be read, and reading a head starts the timer), so it would
//! close idle keep-alive connections after the header timeout and no longer
//! idle timeout could be had. The watchdog instead tracks three phases: a head
//! arriving (since the accept, or since the first byte after an idle spell),
//! requests in progress (never timed here: long-polls and streaming transfers
//! keep their own limits), and idle between requests.
//!
//! A phase change is a write to a shared cell and wakes nothing: on a busy
//! keep-alive connection the phase changes three times per request, and
//! waking the watchdog (and re-arming its timer) each time cost more than
//! the rest of the connection's bookkeeping. The watchdog has one timer
//! instead, which it re-arms only when it fires: at the current phase's
//! expiry, or sooner, one shortest timeout ahead. Every phase change sets
//! an expiry at least one shortest timeout after it happens, so the timer
//! never fires after the expiry it has to enforce.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body_util::{Either, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::ServiceExt;

use super::{
    HYPER_MAX_HEAD_BYTES, Limits, MAX_HEAD_BYTES, MAX_HEADERS, Protocols, READ_BUFFER_BYTES, Stats,
};
use crate::{ErrorCode, ErrorEnvelope};

/// Serves one accepted connection: the TLS handshake first when the
/// listener has TLS (within the header-read timeout), then HTTP.
pub(super) async fn accept<S, B>(
    stream: TcpStream,
    service: S,
    limits: Limits,
    protocols: Protocols,
    stats: &Stats,
    stopping: watch::Receiver<bool>,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(tls) = protocols.tls else {
        let http2_and_upgrades = protocols.http2_and_upgrades;
        return serve(stream, service, limits, http2_and_upgrades, stats, stopping).await;
    };
    let stream = match tokio::time::timeout(limits.header_read_timeout, tls.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    serve(
        stream,
        service,
        limits,
        protocols.http2_and_upgrades,
        stats,
        stopping,
    )
    .await;
}

/// Serves one connection until the client closes it, a timeout closes it,
/// or (after `stopping` turns true) its last request is answered: HTTP/1.1
/// only, or HTTP/1.1 and HTTP/2 with upgrades.
async fn serve<IO, S, B>(
    stream: IO,
    service: S,
    limits: Limits,
    http2_and_upgrades: bool,
    stats: &Stats,
    stopping: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Activity::new();
    let io = TokioIo::new(Watched {
        stream,
        activity: activity.clone(),
    });
    let service = Tracking {
        inner: service,
        activity: activity.clone(),
    };
    if http2_and_upgrades {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .header_read_timeout(None)
            .max_headers(MAX_HEADERS)
            .max_buf_size(READ_BUFFER_BYTES);
        builder
            .http2()
            .max_header_list_size(HYPER_MAX_HEAD_BYTES as u32)
            .max_concurrent_streams(MAX_HTTP2_STREAMS);
        let connection = std::pin::pin!(builder.serve_connection_with_upgrades(io, service));
        supervise(
            connection,
            |c| c.graceful_shutdown(),
            &activity,
            limits,
            stats,
            stopping,
        )
        .await;
    } else {
        let mut builder = http1::Builder::new();
        builder
            .header_read_timeout(None)
            .max_header_size(HYPER_MAX_HEAD_BYTES)
            .max_headers(MAX_HEADERS)
            .max_buf_size(READ_BUFFER_BYTES);
        let connection = std::pin::pin!(builder.serve_connection(io, service));
        supervise(
            connection,
            |c| c.graceful_shutdown(),
            &activity,
            limits,
            stats,
            stopping,
        )
        .await;
    }
}

/// Drives a connection under the watchdog until it ends or times out.
async fn supervise<C, E>(
    mut connection: Pin<&mut C>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    activity: &Activity,
    limits: Limits,
    stats: &Stats,
    mut stopping: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut check = std::pin::pin!(tokio::time::sleep_until(
        limits.next_check(activity.phase(), Instant::now())
    ));
    let mut draining = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stopping.wait_for(|stop| *stop), if !draining => {
                draining = true;
                graceful_shutdown(connection.as_mut());
            }
            () = check.as_mut() => {
                let now = Instant::now();
                let phase = activity.phase();
                if let Some((at, timeout)) = limits.expiry(phase)
                    && at <= now
                {
                    // No request is in progress, so dropping the connection
                    // cuts nothing short.
                    let counter = match timeout {
                        Timeout::Header => &stats.header_timeouts,
                        Timeout::Idle => &stats.idle_timeouts,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(?timeout, "closing a connection that timed out");
                    return;
                }
                check.as_mut().reset(limits.next_check(phase, now));
            }
        }
    }
}

/// Streams one HTTP/2 connection may carry at once: each is a request in
/// progress, so this bounds what one client holds of a proxy's upstreams.
const MAX_HTTP2_STREAMS: u32 = 256;

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// A request head is due: the connection is new, or bytes arrived after
    /// an idle spell.
    Head { since: Instant },
    /// Requests are being answered; their responses are not all written.
    Busy { requests: usize },
    /// Every response is written and nothing new has arrived.
    Idle { since: Instant },
}

/// Which timeout closed a connection.
#[derive(Debug, Clone, Copy)]
enum Timeout {
    Header,
    Idle,
}

impl Limits {
    /// When a connection in `phase` times out, and by which timeout.
    fn expiry(&self, phase: Phase) -> Option<(Instant, Timeout)> {
        match phase {
            Phase::Head { since } => Some((since + self.header_read_timeout, Timeout::Header)),
            Phase::Busy { .. } => None,
            Phase::Idle { since } => Some((since + self.idle_timeout, Timeout::Idle)),
        }
    }

    /// When the watchdog next looks at a connection in `phase`: its expiry,
    /// or one shortest timeout from `now` if that is sooner (or there is
    /// none), since a later phase change may bring the expiry that close.
    fn next_check(&self, phase: Phase, now: Instant) -> Instant {
        let soonest = now + self.header_read_timeout.min(self.idle_timeout);
        match self.expiry(phase) {
            Some((at, _)) => at.min(soonest),
            None => soonest,
        }
    }
}

/// A connection's phase, changed by its socket (bytes read), its service
/// (requests begun) and its response bodies (requests done), and read by
/// its watchdog when its timer fires. Response bodies of HTTP/2 streams are
/// written from tasks of their own, hence the lock.
#[derive(Clone)]
struct Activity(Arc<Mutex<Phase>>);

impl Activity {
    fn new() -> Activity {
        Activity(Arc::new(Mutex::new(Phase::Head {
            since: Instant::now(),
        })))
    }

    fn phase(&self) -> Phase {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Phase> {
        // A phase is a plain value, whole after any panic: the lock cannot
        // hold a half-made one.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes arrived: after an idle spell they start the next request's head.
    fn received(&self) {
        let mut phase = self.lock();
        if let Phase::Idle { .. } = *phase {
            *phase = Phase::Head {
                since: Instant::now(),
            };
        }
    }

    /// A request head was parsed; the request is in progress until the
    /// returned guard is dropped.
    fn begin_request(&self) -> InProgress {
        let mut phase = self.lock();
        *phase = match *phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            Phase::Head { .. } | Phase::Idle { .. } => Phase::Busy { requests: 1 },
        };
        drop(phase);
        InProgress(self.clone())
    }

    fn end_request(&self) {
        let mut phase = self.lock();
        *phase = match *phase {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        };
    }
}

/// Held by a request from its head to the end of its response body (hyper
/// drops the body once it is written, or when the connection is gone).
struct InProgress(Activity);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// The socket (or its TLS stream), telling the connection's [`Activity`]
/// when bytes arrive.
struct Watched<IO> {
    stream: IO,
    activity: Activity,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.received();
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The application's service as hyper calls it: marks each request in
/// progress until its response is written, and answers heads past
/// [`MAX_HEAD_BYTES`] itself.
struct Tracking<S> {
    inner: S,
    activity: Activity,
}

/// A response body of the application's, or of the 431 answer.
type AnswerBody<B> = Tracked<Either<B, Full<Bytes>>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracking<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<AnswerBody<B>>;
    type Error = Infallible;
    type Future = Call<tower::util::Oneshot<S, Request<Incoming>>, B>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_progress = self.activity.begin_request();
        let head = head_len(&request);
        if head > MAX_HEAD_BYTES {
            let answer = head_too_large(head).map(|body| Tracked {
                body: Either::Right(body),
                _in_progress: in_progress,
            });
            return Call::Answered {
                answer: Some(answer),
            };
        }
        Call::Answering {
            answered: self.inner.clone().oneshot(request),
            in_progress: Some(in_progress),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer on its way, as hyper polls it. A type of its own
    /// rather than a boxed future: hyper keeps each connection's call in one
    /// allocation it reuses, so a request costs none here.
    #[project = CallProjection]
    enum Call<F, B> {
        /// The application is answering; its response's body keeps the
        /// request in progress.
        Answering { #[pin] answered: F, in_progress: Option<InProgress> },
        /// The listener answered itself (the head was too large).
        Answered { answer: Option<Response<AnswerBody<B>>> },
    }
}

impl<F, B> Future for Call<F, B>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
{
    type Output = Result<Response<AnswerBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        const POLLED_AGAIN: &str = "a call is not polled after it completed";
        match self.project() {
            CallProjection::Answering {
                answered,
                in_progress,
            } => {
                let answer = std::task::ready!(answered.poll(cx))?;
                let in_progress = in_progress.take().expect(POLLED_AGAIN);
                Poll::Ready(Ok(answer.map(|body| Tracked {
                    body: Either::Left(body),
                    _in_progress: in_progress,
                })))
            }
            CallProjection::Answered { answer } => {
                Poll::Ready(Ok(answer.take().expect(POLLED_AGAIN)))
            }
        }
    }
}

/// The size of a request's head as it came over the wire, give or take the
/// spelling of the version: request line, headers, line ends.
fn head_len<B>(request: &Request<B>) -> usize {
    const VERSION_AND_LINE_ENDS: usize = " HTTP/1.1\r\n\r\n".len();
    let uri = request.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + ": \r\n".len() + value.len())
        .sum();
    request.method().as_str().len() + 1 + target + VERSION_AND_LINE_ENDS + headers
}

/// The 431 answer, with the JSON envelope; the connection closes after it, as
/// a client sending such heads is misbehaving.
fn head_too_large(len: usize) -> Response<Full<Bytes>> {
    let code = ErrorCode::HeadersTooLarge;
    let envelope = ErrorEnvelope::new(
        code,
        format!("the request head is {len} bytes; at most {MAX_HEAD_BYTES} are accepted"),
    );
    let body = serde_json::to_vec(&envelope).expect("an error envelope serialises");
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = code.status();
    let headers = answer.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        crate::headers::ERROR_CODE,
        HeaderValue::from_static(code.as_str()),
    );
    answer
}

/// A response body that keeps its request marked in progress until hyper is
/// done with it.
struct Tracked<B> {
    body: B,
    _in_progress: InProgress,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn head_len_counts_the_request_line_and_headers() {
        let request = Request::get("/v1/jobs?limit=5")
            .header("x-a", "bc")
            .body(())
            .unwrap();
        let wire = "GET /v1/jobs?limit=5 HTTP/1.1\r\nx-a: bc\r\n\r\n";
        assert_eq!(head_len(&request), wire.len());
    }

    #[tokio::test]
    async fn phases_follow_requests_and_bytes() {
        let limits = Limits::default();
        let activity = Activity::new();
        let started = Instant::now();
        let expiry = || limits.expiry(activity.phase());
        let (at, timeout) = expiry().unwrap();
        assert!(matches!(timeout, Timeout::Header));
        assert!(at <= started + limits.header_read_timeout);
        activity.received();
        assert_eq!(expiry().unwrap().0, at, "bytes of a head restart nothing");
        let first = activity.begin_request();
        let second = activity.begin_request();
        assert!(expiry().is_none());
        activity.received();
        drop(first);
        assert!(expiry().is_none(), "one request is still in progress");
        drop(second);
        assert!(matches!(expiry().unwrap().1, Timeout::Idle));
        activity.received();
        assert!(matches!(expiry().unwrap().1, Timeout::Header));
    }

    #[test]
    fn the_watchdog_looks_again_no_later_than_any_phase_change_could_expire() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let now = Instant::now();
        let idle = Phase::Idle { since: now };
        assert_eq!(
            limits.next_check(idle, now),
            now + limits.header_read_timeout,
            "bytes after an idle spell start a head, due sooner than the idle expiry"
        );
        let head = Phase::Head {
            since: now - Duration::from_secs(4),
        };
        assert_eq!(
            limits.next_check(head, now),
            now + Duration::from_secs(6),
            "a head is checked when it is due"
        );
        let busy = Phase::Busy { requests: 1 };
        assert_eq!(
            limits.next_check(busy, now),
            now + limits.header_read_timeout
        );
    }
}
