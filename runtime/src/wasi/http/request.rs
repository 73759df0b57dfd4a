//! One request: a pool slot (waited for within the request's time limit), a
//! fresh store with the request's fuel and memory cap, a fresh instance of
//! the program, and its handler run as a task of the guest runtime until it
//! returns, traps, runs past its time limit or its server is stopped. The
//! guest's response head is answered as soon as the guest sets it; a
//! request the guest never answered is answered by the host (500, 503 or
//! 504), and that request alone fails.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Incoming;
use skyclaw_api::jobs::EffectiveLimits;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::time::Instant;
use tracing::debug;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::HttpProgram;
use super::guest::{HttpGuest, Outbound};
use super::stats::{Failure, HttpStats};
use crate::wasi::sandbox;

/// The body of every answer: the guest's stream, or the host's own text.
pub(super) type Body = HyperOutgoingBody;

/// What every request of one server shares.
pub(super) struct Service {
    pub(super) name: String,
    pub(super) engine: Engine,
    pub(super) program: Arc<HttpProgram>,
    pub(super) limits: EffectiveLimits,
    pub(super) outbound: Outbound,
    pub(super) slots: Arc<Semaphore>,
    pub(super) stats: Arc<HttpStats>,
    /// Turns true when the server's grace is over: requests still running
    /// are dropped.
    pub(super) aborted: watch::Receiver<bool>,
}

/// How a guest's run ended, when it ended without an answer.
enum Ended {
    /// The handler returned or trapped; whether it hit its memory cap.
    Ran(wasmtime::Result<()>, bool),
    TimedOut,
    Aborted,
}

impl Service {
    /// Answers one request; never fails (a failure is an answer).
    pub(super) async fn answer(self: Arc<Service>, request: Request<Incoming>) -> Response<Body> {
        let arrived = Instant::now();
        let response = match self.run(request, arrived).await {
            Ok(response) => response,
            Err(failure) => {
                self.stats.failed(failure.kind);
                text(failure.status, failure.message)
            }
        };
        self.stats
            .answered(response.status().as_u16(), arrived.elapsed());
        response
    }

    async fn run(
        &self,
        request: Request<Incoming>,
        arrived: Instant,
    ) -> Result<Response<Body>, Refusal> {
        let deadline = arrived + Duration::from_millis(self.limits.timeout_ms);
        let mut aborted = self.aborted.clone();
        let slot = tokio::select! {
            biased;
            _ = aborted.wait_for(|stop| *stop) => return Err(Refusal::stopping()),
            slot = tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned()) => slot,
        };
        let Ok(Ok(slot)) = slot else {
            return Err(Refusal {
                kind: Failure::Unavailable,
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: format!(
                    "no capacity for the request within its time limit of {} ms",
                    self.limits.timeout_ms
                ),
            });
        };
        let guest = HttpGuest::new(self.outbound.clone(), self.limits.memory_mb);
        let mut store = Store::new(&self.engine, guest);
        sandbox::arm(&mut store, self.limits.fuel)
            .map_err(|e| Refusal::failed(format!("{e:#}")))?;
        let (sender, answered) = oneshot::channel();
        let mut http = store.data_mut().http();
        let request = http
            .new_incoming_request(Scheme::Http, request)
            .map_err(|e| Refusal {
                kind: Failure::BadRequest,
                status: StatusCode::BAD_REQUEST,
                message: format!("{e:#}"),
            })?;
        let response = http
            .new_response_outparam(sender)
            .map_err(|e| Refusal::failed(format!("{e:#}")))?;
        let program = Arc::clone(&self.program);
        // The guest runs as a task of its own, so that its response body
        // streams while the connection writes it; it holds its store and
        // slot until it ends, at its deadline at the latest.
        let run = tokio::spawn(async move {
            let ended = tokio::select! {
                biased;
                _ = aborted.wait_for(|stop| *stop) => Ended::Aborted,
                () = tokio::time::sleep_until(deadline) => Ended::TimedOut,
                ran = program.handle(&mut store, request, response) => {
                    Ended::Ran(ran, store.data().memory_denied())
                }
            };
            // The store goes before the slot, so its instance is back in the
            // pool by the time another request may take the slot.
            drop(store);
            drop(slot);
            ended
        });
        match answered.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(Refusal::failed(format!(
                "the handler answered with an error: {code:?}"
            ))),
            // The guest's end dropped the response without setting it.
            Err(_) => match run.await {
                Ok(ended) => Err(self.unanswered(ended)),
                Err(e) => Err(Refusal::failed(format!("the request's task failed: {e}"))),
            },
        }
    }

    /// The host's answer to a request whose guest ended without one.
    fn unanswered(&self, ended: Ended) -> Refusal {
        let limits = &self.limits;
        let refusal = match ended {
            Ended::TimedOut => Refusal {
                kind: Failure::TimedOut,
                status: StatusCode::GATEWAY_TIMEOUT,
                message: format!(
                    "the request ran past its time limit of {} ms",
                    limits.timeout_ms
                ),
            },
            Ended::Aborted => Refusal::stopping(),
            Ended::Ran(_, true) => Refusal::failed(format!(
                "the request exceeded its memory limit of {} MiB",
                limits.memory_mb
            )),
            Ended::Ran(Err(e), false) => Refusal::failed(sandbox::trapped(&e, limits)),
            Ended::Ran(Ok(()), false) => {
                Refusal::failed("the handler returned without a response".to_string())
            }
        };
        debug!(service = %self.name, status = %refusal.status, error = %refusal.message, "request failed");
        refusal
    }
}

/// A request the host answers itself.
struct Refusal {
    kind: Failure,
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn failed(message: String) -> Refusal {
        Refusal {
            kind: Failure::Failed,
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
        }
    }

    fn stopping() -> Refusal {
        Refusal {
            kind: Failure::Unavailable,
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the service is stopping".to_string(),
        }
    }
}

/// A plain-text answer of the host's.
fn text(status: StatusCode, message: String) -> Response<Body> {
    let body = Full::new(Bytes::from(message + "\n"))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
