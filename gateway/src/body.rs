//! Request and response bodies on their way through the gateway.
//!
//! A request body up to [`RETRY_BUFFER_BYTES`] is read whole before the
//! first attempt, so a retry can send it again. A larger one streams: it
//! can still go to another endpoint while no byte of it has been sent (the
//! connection failed), never after. Both are held to the body limit (413)
//! and to the idle timeout; response bodies to the idle and total timeouts.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::pool::UpstreamBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request bodies up to this size are buffered so that a retry can replay
/// them: most API requests fit, and a thousand such requests in flight hold
/// 64 MiB at most.
pub const RETRY_BUFFER_BYTES: usize = 64 * 1024;

/// Why a request body could not be read or forwarded.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is larger than the gateway's limit of {0} bytes")]
    TooLarge(u64),
    #[error("the request body stalled for longer than {0:?}")]
    Stalled(Duration),
    #[error("the client's request body failed: {0}")]
    Client(#[source] hyper::Error),
}

/// A request body as the gateway holds it between attempts.
pub enum RequestBody {
    /// Read whole: every attempt sends it.
    Buffered(Bytes),
    /// Read as it is sent: attempts may follow only while none of it was.
    Streamed(Arc<Streamed>),
}

/// The shared state of a streamed body: whichever attempt polls it gets its
/// bytes, and once one did, no other may.
pub struct Streamed {
    touched: AtomicBool,
    source: Mutex<Source>,
}

struct Source {
    prefix: Option<Bytes>,
    rest: Incoming,
    sent: u64,
    limit: u64,
    idle: Duration,
    idle_timer: Option<Pin<Box<Sleep>>>,
}

impl RequestBody {
    /// Reads what it may of `body`. `headers` are the request's.
    pub async fn read(
        mut body: Incoming,
        headers: &HeaderMap,
        limit: u64,
        idle: Duration,
    ) -> Result<RequestBody, BodyError> {
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return Err(BodyError::TooLarge(limit));
        }
        if body.is_end_stream() {
            return Ok(RequestBody::Buffered(Bytes::new()));
        }
        let streamed = |prefix, body| {
            RequestBody::Streamed(Arc::new(Streamed {
                touched: AtomicBool::new(false),
                source: Mutex::new(Source {
                    prefix,
                    rest: body,
                    sent: 0,
                    limit,
                    idle,
                    idle_timer: None,
                }),
            }))
        };
        if declared.is_some_and(|n| n > RETRY_BUFFER_BYTES as u64) {
            return Ok(streamed(None, body));
        }
        let cap = RETRY_BUFFER_BYTES.min(usize::try_from(limit).unwrap_or(usize::MAX));
        let mut buffer = BytesMut::new();
        loop {
            let frame = match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => return Err(BodyError::Stalled(idle)),
                Ok(None) => return Ok(RequestBody::Buffered(buffer.freeze())),
                Ok(Some(Err(e))) => return Err(BodyError::Client(e)),
                Ok(Some(Ok(frame))) => frame,
            };
            // Request trailers are rare; a buffered body drops them.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            if buffer.len() > cap {
                if buffer.len() as u64 > limit {
                    return Err(BodyError::TooLarge(limit));
                }
                return Ok(streamed(Some(buffer.freeze()), body));
            }
        }
    }

    /// The body for one more attempt, or `None` when a streamed body was
    /// already (partly) sent.
    pub fn attempt(&self) -> Option<UpstreamBody> {
        match self {
            RequestBody::Buffered(bytes) => Some(
                http_body_util::Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            ),
            RequestBody::Streamed(shared) if !shared.touched.load(Ordering::Acquire) => {
                Some(Attempt(shared.clone()).boxed_unsync())
            }
            RequestBody::Streamed(_) => None,
        }
    }

    /// Whether this body can be sent again after an attempt that sent it.
    pub fn replayable_after_send(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }
}

/// One attempt's view of a streamed body.
struct Attempt(Arc<Streamed>);

impl Body for Attempt {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.touched.store(true, Ordering::Release);
        let mut source = self.0.source.lock().expect("body lock");
        let source = &mut *source;
        if let Some(prefix) = source.prefix.take() {
            source.sent += prefix.len() as u64;
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match Pin::new(&mut source.rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                source.idle_timer = None;
                if let Some(data) = frame.data_ref() {
                    source.sent += data.len() as u64;
                    if source.sent > source.limit {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(source.limit).into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e).into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let idle = source.idle;
                let timer = source
                    .idle_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyError::Stalled(idle).into())))
            }
        }
    }
}

/// A response body held to an idle timeout and a deadline for the whole
/// exchange; past either it ends with an error, which cuts the connection
/// to the client (its answer is incomplete, and it must be able to tell).
/// A timer is armed only while the body waits, so a body that is ready at
/// once (most small answers) costs none.
pub struct Timed<B> {
    inner: B,
    idle: Duration,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> Timed<B> {
    pub fn new(inner: B, idle: Duration, deadline: Instant) -> Timed<B> {
        Timed {
            inner,
            idle,
            deadline,
            timer: None,
        }
    }
}

/// Why a response body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum Cut {
    #[error("the response body stalled for longer than {0:?}")]
    Stalled(Duration),
    #[error("the exchange took longer than the gateway's total timeout")]
    Deadline,
}

impl<B> Body for Timed<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(frame)) => {
                this.timer = None;
                Poll::Ready(Some(frame.map_err(Into::into)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let (idle, deadline) = (this.idle, this.deadline);
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(
                        (Instant::now() + idle).min(deadline),
                    ))
                });
                ready!(timer.as_mut().poll(cx));
                let cut = if Instant::now() >= deadline {
                    Cut::Deadline
                } else {
                    Cut::Stalled(idle)
                };
                Poll::Ready(Some(Err(cut.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an error (or one of its sources) is the body limit.
pub fn is_too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if matches!(e.downcast_ref::<BodyError>(), Some(BodyError::TooLarge(_))) {
            return true;
        }
        current = e.source();
    }
    false
}
