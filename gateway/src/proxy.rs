//! One request through the gateway: which service it names, which endpoint
//! gets it (round-robin over usable ones), the attempts (another endpoint
//! after a failure, only when the retry rule and the budget allow), and
//! the answer: the endpoint's, or the gateway's own JSON error.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use skyclaw_api::serve::Stats as ListenerStats;
use skyclaw_api::{ErrorCode, ErrorEnvelope, retry};
use smallvec::SmallVec;
use tokio::time::Instant;

use crate::body::{self, BodyError, BoxError, RequestBody, Timed};
use crate::config::{GatewayConfig, OutlierSettings, ProbeSettings, RetrySettings, Timeouts};
use crate::forward;
use crate::metrics::Metrics;
use crate::pool::{Pool, PooledBody};
use crate::probe::Prober;
use crate::routes::{self, Routes, Service};
use crate::upgrade;
use crate::upstream::Streak;

/// What the gateway answers with.
pub type GatewayBody = UnsyncBoxBody<Bytes, BoxError>;

/// Endpoints a request's attempts remember inline (more spill to the heap):
/// the first attempt and the default two retries.
const TRIED_INLINE: usize = 3;

/// Seconds a client is told to wait (`Retry-After`) when a service has no
/// usable endpoint: about one probe interval, in which one may come back.
const RETRY_AFTER_SECS: u32 = 2;

/// Everything the request path reads.
pub struct Gateway {
    pub routes: Arc<Routes>,
    pub metrics: Arc<Metrics>,
    pub listener_stats: Arc<ListenerStats>,
    pub pool: Pool,
    domain: Option<String>,
    tls: bool,
    pub(crate) timeouts: Timeouts,
    max_body_bytes: u64,
    outliers: OutlierSettings,
    retries: RetrySettings,
    probes: ProbeSettings,
}

impl Gateway {
    pub fn new(config: &GatewayConfig, tls: bool) -> Gateway {
        Gateway {
            routes: Arc::new(Routes::new()),
            metrics: Arc::new(Metrics::default()),
            listener_stats: Arc::new(ListenerStats::default()),
            pool: Pool::new(config.timeouts.connect),
            domain: config.domain.as_ref().map(|d| d.to_ascii_lowercase()),
            tls,
            timeouts: config.timeouts,
            max_body_bytes: config.max_body_bytes,
            outliers: config.outliers,
            retries: config.retries,
            probes: config.probes,
        }
    }

    /// What discovery hands new endpoints to.
    pub fn probes(&self) -> Prober {
        Prober {
            pool: self.pool.clone(),
            settings: self.probes,
        }
    }

    async fn handle(
        &self,
        client: &forward::Client,
        request: Request<Incoming>,
    ) -> Response<GatewayBody> {
        let started = Instant::now();
        let (service, uri) = match self.route(&request) {
            Ok(route) => route,
            Err(answer) => return *answer,
        };
        service.budget.request(started);
        let answer = if upgrade::is_upgrade(&request) {
            // Boxed: upgrades are rare, and their future would otherwise
            // make every request's larger (it is moved on each request).
            Box::pin(upgrade::forward(self, &service, request, uri, client)).await
        } else {
            self.forward(&service, request, uri, client, started).await
        };
        service
            .stats
            .answered(answer.status().as_u16(), started.elapsed());
        answer
    }

    /// The service a request names and the request target its endpoints
    /// get; or, when it names none, the gateway's answer (boxed: the rare
    /// case should not make the common one's result large).
    fn route(
        &self,
        request: &Request<Incoming>,
    ) -> Result<(Arc<Service>, Uri), Box<Response<GatewayBody>>> {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .map(lowercase);
        let Ok(target) = routes::target(request.uri(), host.as_deref(), self.domain.as_deref())
        else {
            self.metrics.unrouted.fetch_add(1, Ordering::Relaxed);
            let how = match &self.domain {
                Some(domain) => format!("/s/<service>/... or Host: <service>.{domain}"),
                None => "/s/<service>/...".to_string(),
            };
            return Err(Box::new(error(
                ErrorCode::NotFound,
                format!("the request names no service: use {how}"),
            )));
        };
        let Some(service) = self.routes.service(target.service) else {
            self.metrics.unrouted.fetch_add(1, Ordering::Relaxed);
            return Err(Box::new(error(
                ErrorCode::NotFound,
                format!("no service named {:?}", target.service),
            )));
        };
        let Ok(uri) = target.upstream_uri() else {
            return Err(Box::new(error(
                ErrorCode::BadRequest,
                "the request's path is not a valid URI path",
            )));
        };
        Ok((service, uri))
    }

    async fn forward(
        &self,
        service: &Service,
        request: Request<Incoming>,
        mut uri: Uri,
        client: &forward::Client,
        started: Instant,
    ) -> Response<GatewayBody> {
        let (mut parts, incoming) = request.into_parts();
        let replayable = retry::replayable(&parts.method, &parts.headers);
        let body = match RequestBody::read(
            incoming,
            &parts.headers,
            self.max_body_bytes,
            self.timeouts.idle,
        )
        .await
        {
            Ok(body) => body,
            Err(e) => return body_error(&e),
        };
        let request_id =
            forward::prepare_request(&mut parts.headers, client, parts.uri.authority());
        // The body is read (or streams under the gateway's own limits): the
        // endpoint gets no `Expect: 100-continue` to answer.
        parts.headers.remove(header::EXPECT);
        let deadline = started + self.timeouts.total;
        let max_attempts = 1 + self.retries.max_retries as usize;
        let mut tried: SmallVec<[usize; TRIED_INLINE]> = SmallVec::new();
        let mut last = Failure::NoEndpoint;
        loop {
            let retry = !tried.is_empty();
            if tried.len() >= max_attempts {
                break;
            }
            let Some(index) = service.pick(&tried) else {
                break;
            };
            let Some(attempt_body) = body.attempt() else {
                break;
            };
            // A retry is charged to the budget only once it is sure to be made.
            if retry {
                if !service.budget.try_retry(&self.retries, Instant::now()) {
                    service
                        .stats
                        .budget_refusals
                        .fetch_add(1, Ordering::Relaxed);
                    break;
                }
                service.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            tried.push(index);
            let upstream = &service.endpoints[index];
            // The last attempt there can be takes the head instead of a copy.
            let last_attempt =
                tried.len() >= max_attempts || tried.len() >= service.endpoints.len();
            let mut upstream_request = Request::new(attempt_body);
            *upstream_request.method_mut() = parts.method.clone();
            *upstream_request.version_mut() = Version::HTTP_11;
            if last_attempt {
                *upstream_request.uri_mut() = std::mem::take(&mut uri);
                *upstream_request.headers_mut() = std::mem::take(&mut parts.headers);
            } else {
                *upstream_request.uri_mut() = uri.clone();
                *upstream_request.headers_mut() = parts.headers.clone();
            }
            upstream_request
                .headers_mut()
                .insert(header::HOST, upstream.host.clone());
            let head_by = (Instant::now() + self.timeouts.response_header).min(deadline);
            // Boxed, so that the request's own future (moved whole on
            // every request) does not carry the pool's.
            let sent = tokio::time::timeout_at(
                head_by,
                Box::pin(self.pool.send(&upstream.authority, upstream_request)),
            )
            .await;
            match sent {
                Ok(Ok(response)) => {
                    let status = response.status();
                    if status.is_server_error() {
                        self.failed(service, index);
                    } else {
                        upstream.succeeded();
                    }
                    if retry::retryable_status(status) && replayable && body.replayable_after_send()
                    {
                        last = Failure::Answered(Box::new(response));
                        continue;
                    }
                    return self.respond(response, request_id, deadline);
                }
                Ok(Err(e)) if e.is_connect() => {
                    self.failed(service, index);
                    tracing::debug!(endpoint = %upstream.authority, error = %e, "could not connect to an endpoint");
                    last = Failure::Unreachable(e.to_string());
                }
                Ok(Err(e)) => {
                    if body::is_too_large(&e) {
                        return body_error(&BodyError::TooLarge(self.max_body_bytes));
                    }
                    self.failed(service, index);
                    tracing::debug!(endpoint = %upstream.authority, error = %e, "an endpoint failed a request");
                    last = Failure::Broke(e.to_string());
                    if !(replayable && body.replayable_after_send()) {
                        break;
                    }
                }
                Err(_) => {
                    self.failed(service, index);
                    last = Failure::TimedOut;
                    if !(replayable && body.replayable_after_send()) {
                        break;
                    }
                }
            }
        }
        match last {
            Failure::Answered(response) => self.respond(*response, request_id, deadline),
            Failure::NoEndpoint => {
                let mut answer = error(
                    ErrorCode::Unavailable,
                    format!(
                        "service {:?} has no endpoint the gateway can use now",
                        service.name
                    ),
                );
                answer
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                answer
            }
            Failure::Unreachable(e) | Failure::Broke(e) => error(
                ErrorCode::BadGateway,
                format!("no endpoint of service {:?} answered: {e}", service.name),
            ),
            Failure::TimedOut => error(
                ErrorCode::Timeout,
                format!(
                    "service {:?} did not answer within the gateway's timeout",
                    service.name
                ),
            ),
        }
    }

    /// A request failed on endpoint `index`; a long enough streak ejects it,
    /// if the service can spare it.
    fn failed(&self, service: &Service, index: usize) {
        let upstream = &service.endpoints[index];
        if upstream.failed(&self.outliers) == Streak::Reached
            && service.may_eject(self.outliers.max_ejection_percent)
        {
            let length = upstream.eject(&self.outliers, Instant::now());
            service.stats.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                service = %service.name,
                endpoint = %upstream.authority,
                instance = %upstream.instance_id,
                ejected_for_ms = length.as_millis() as u64,
                "ejecting an endpoint after failures in a row"
            );
        }
    }

    pub(crate) fn max_retries(&self) -> usize {
        self.retries.max_retries as usize
    }

    pub(crate) fn respond<B>(
        &self,
        response: Response<B>,
        request_id: HeaderValue,
        deadline: Instant,
    ) -> Response<GatewayBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = response.into_parts();
        forward::prepare_response(&mut parts.headers, request_id);
        Response::from_parts(
            parts,
            Timed::new(body, self.timeouts.idle, deadline).boxed_unsync(),
        )
    }
}

/// How the attempts so far ended.
enum Failure {
    NoEndpoint,
    /// The last endpoint tried answered 502/503/504: passed on as it is.
    Answered(Box<Response<PooledBody>>),
    Unreachable(String),
    Broke(String),
    TimedOut,
}

/// One client connection's service: the gateway, with what it forwards
/// about the client (`peer` is the address the connection came from).
pub fn service(
    gateway: Arc<Gateway>,
    peer: Option<SocketAddr>,
) -> impl tower::Service<
    Request<Incoming>,
    Response = Response<GatewayBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<GatewayBody>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    let connection = Arc::new(Connection {
        client: forward::Client::new(peer, gateway.tls),
        gateway,
    });
    tower::service_fn(move |request| {
        let connection = connection.clone();
        async move { Ok(connection.gateway.handle(&connection.client, request).await) }
    })
}

/// What one client connection's requests share.
struct Connection {
    gateway: Arc<Gateway>,
    client: forward::Client,
}

/// `s` in lowercase, copied only when it has capitals.
fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// The gateway's own answer, with the JSON envelope.
pub fn error(code: ErrorCode, message: impl Into<String>) -> Response<GatewayBody> {
    let envelope = ErrorEnvelope::new(code, message);
    let body = serde_json::to_vec(&envelope).expect("an error envelope serialises");
    let mut answer = Response::new(full(Bytes::from(body)));
    *answer.status_mut() = code.status();
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    answer
}

pub fn full(bytes: Bytes) -> GatewayBody {
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn body_error(e: &BodyError) -> Response<GatewayBody> {
    let code = match e {
        BodyError::TooLarge(_) => ErrorCode::PayloadTooLarge,
        BodyError::Stalled(_) => ErrorCode::RequestTimeout,
        BodyError::Client(_) => ErrorCode::BadRequest,
    };
    let mut answer = error(code, e.to_string());
    if code == ErrorCode::PayloadTooLarge {
        answer
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    answer
}
