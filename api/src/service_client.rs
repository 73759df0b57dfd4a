//! Calling services through gateways: the path a gateway routes by
//! (`/s/SERVICE/PATH`), and a client that fails over between the gateways
//! fronting one network under the shared rule of [`crate::retry`].
//!
//! A request that never reached a gateway (connection refused, DNS or TLS
//! failure) is sent to the next one whatever its method. One that was sent
//! and answered 502, 503 or 504, or whose connection broke after sending, is
//! sent to the next gateway only when it is replayable (an idempotent method,
//! or an idempotency key); otherwise the caller learns what happened. No
//! gateway is tried twice in one call.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use crate::error::ErrorEnvelope;
use crate::jobs::InvalidSpec;
use crate::retry;
use crate::services::validate_service_name;
use crate::url::{BASE_URL_FORM, is_http_url};

/// What a gateway's path for a service begins with: `/s/SERVICE/PATH`
/// reaches `PATH` of `SERVICE`, the prefix stripped.
pub const SERVICE_PATH_PREFIX: &str = "/s/";

/// How long connecting to a gateway may take before it is taken as down and
/// the next one is tried: gateways answer connections at once or not at all.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one attempt on one gateway may take by default, from connecting
/// to the body's last byte: past it a hung call is given up on (and, being
/// sent, is resent elsewhere only when replayable).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Most bytes of a failing gateway's answer read for the failure's message:
/// enough for an error envelope, and a hostile gateway cannot make the client
/// buffer more.
const FAILURE_DETAIL_BYTES: usize = 1024;

/// The path a gateway routes to `path` of `service`: `/s/SERVICE/PATH`, with
/// `path`'s query kept and a leading `/` added when it has none.
pub fn service_path(service: &str, path: &str) -> Result<String, InvalidSpec> {
    validate_service_name(service)?;
    let slash = if path.starts_with('/') { "" } else { "/" };
    Ok(format!("{SERVICE_PATH_PREFIX}{service}{slash}{path}"))
}

/// A client that reaches services through a list of gateways. Cheap to share;
/// it remembers which gateway answered last and tries that one first.
#[derive(Debug)]
pub struct ServiceClient {
    http: reqwest::Client,
    /// Gateway base URLs, without trailing slashes.
    gateways: Vec<String>,
    /// Index of the gateway that answered last.
    preferred: AtomicUsize,
    timeout: Duration,
}

/// Why a [`ServiceClient`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServiceClientError {
    #[error("no gateway URLs given")]
    NoGateways,
    #[error("{0:?} is not a gateway URL (expected {BASE_URL_FORM})")]
    BadUrl(String),
    #[error("cannot set up the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// One gateway that could not serve a call, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayFailure {
    pub gateway: String,
    pub detail: String,
}

impl std::fmt::Display for GatewayFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.gateway, self.detail)
    }
}

/// Why a call produced no answer to return.
#[derive(Debug, thiserror::Error)]
pub enum ServiceCallError {
    /// The service name or path cannot be called.
    #[error("{0}")]
    Invalid(#[from] InvalidSpec),
    /// The request could not be built (a value the HTTP stack refuses).
    #[error("cannot build the request: {0}")]
    Request(String),
    /// The request reached `gateway` and then the connection failed; it may
    /// have been processed, and being not replayable it was not resent.
    #[error(
        "{gateway}: {detail}; the request may have been processed and was not resent to \
         another gateway ({method} without an idempotency key)"
    )]
    Unknown {
        method: Method,
        gateway: String,
        detail: String,
        /// The gateways that failed before it.
        failed: Vec<GatewayFailure>,
    },
    /// Every gateway failed.
    #[error("no gateway answered: {}", join(.failed))]
    Unavailable { failed: Vec<GatewayFailure> },
}

fn join(failures: &[GatewayFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A gateway's answer: the response, whose body is still to be read (it
/// streams), which gateway gave it, and those that failed before it.
#[derive(Debug)]
pub struct ServiceResponse {
    pub gateway: String,
    pub failed: Vec<GatewayFailure>,
    pub response: reqwest::Response,
}

impl ServiceClient {
    /// A client for the given gateway base URLs (`http(s)://HOST:PORT`, a path
    /// prefix allowed); trailing slashes are dropped.
    pub fn new(gateways: Vec<String>) -> Result<ServiceClient, ServiceClientError> {
        let gateways: Vec<String> = gateways
            .iter()
            .map(|g| g.trim().trim_end_matches('/').to_string())
            .filter(|g| !g.is_empty())
            .collect();
        if gateways.is_empty() {
            return Err(ServiceClientError::NoGateways);
        }
        if let Some(bad) = gateways.iter().find(|g| !is_http_url(g)) {
            return Err(ServiceClientError::BadUrl(bad.clone()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // A redirect is the service's answer, for the caller to see: not
            // followed (and so never resent with another method).
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(ServiceClient {
            http,
            gateways,
            preferred: AtomicUsize::new(0),
            timeout: DEFAULT_REQUEST_TIMEOUT,
        })
    }

    /// The client with another limit on one attempt than
    /// [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> ServiceClient {
        self.timeout = timeout;
        self
    }

    /// Sends `method path_and_query` to `service` through the gateways, the
    /// one that answered last first, moving on as the module's rule allows.
    /// Any answer that is not a retryable status (or one that may not be
    /// resent) is returned, its body unread.
    pub async fn send(
        &self,
        service: &str,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<ServiceResponse, ServiceCallError> {
        let path = service_path(service, path_and_query)?;
        let replayable = retry::replayable(&method, &headers);
        let count = self.gateways.len();
        let start = self.preferred.load(Ordering::Relaxed) % count;
        let mut failed = Vec::new();
        for index in (0..count).map(|offset| (start + offset) % count) {
            let gateway = self.gateways[index].clone();
            let sent = self
                .http
                .request(method.clone(), format!("{gateway}{path}"))
                .headers(headers.clone())
                .body(body.clone())
                .timeout(self.timeout)
                .send()
                .await;
            match sent {
                Ok(response) => {
                    let status = response.status();
                    if !retry::retryable_status(status) {
                        self.preferred.store(index, Ordering::Relaxed);
                    } else if replayable {
                        let detail = failure_detail(status, response).await;
                        failed.push(GatewayFailure { gateway, detail });
                        continue;
                    }
                    return Ok(ServiceResponse {
                        gateway,
                        failed,
                        response,
                    });
                }
                Err(e) if e.is_builder() => return Err(ServiceCallError::Request(describe(&e))),
                // Never sent, or harmless to send again.
                Err(e) if e.is_connect() || replayable => failed.push(GatewayFailure {
                    gateway,
                    detail: describe(&e),
                }),
                Err(e) => {
                    return Err(ServiceCallError::Unknown {
                        method,
                        gateway,
                        detail: describe(&e),
                        failed,
                    });
                }
            }
        }
        Err(ServiceCallError::Unavailable { failed })
    }
}

/// A transport error as one line: what failed and its root cause (reqwest's
/// own message names the URL, which the caller already shows).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "connection failed after sending"
    };
    let mut root: &dyn std::error::Error = e;
    while let Some(source) = root.source() {
        root = source;
    }
    format!("{what}: {root}")
}

/// A retryable answer as one line: its status, and the message of its error
/// envelope or the start of its text.
async fn failure_detail(status: StatusCode, mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < FAILURE_DETAIL_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(FAILURE_DETAIL_BYTES);
    let message = match serde_json::from_slice::<ErrorEnvelope>(&body) {
        Ok(envelope) => envelope.error.message,
        Err(_) => String::from_utf8_lossy(&body).trim().to_string(),
    };
    if message.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_paths_carry_the_prefix_the_path_and_its_query() {
        assert_eq!(service_path("web", "/a/b?x=1").unwrap(), "/s/web/a/b?x=1");
        assert_eq!(service_path("web", "a?x=1").unwrap(), "/s/web/a?x=1");
        assert_eq!(service_path("web", "").unwrap(), "/s/web/");
        assert_eq!(service_path("web", "?q").unwrap(), "/s/web/?q");
        for bad in ["", "Web", "a/b", "-a", "a b"] {
            assert!(service_path(bad, "/").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn gateways_must_be_http_urls() {
        let client = ServiceClient::new(vec![" http://a:1/ ".into(), "https://b".into()]).unwrap();
        assert_eq!(client.gateways, ["http://a:1", "https://b"]);
        assert!(matches!(
            ServiceClient::new(vec![" ".into()]),
            Err(ServiceClientError::NoGateways)
        ));
        let err = ServiceClient::new(vec!["http://a:1".into(), "a:1".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"a:1\" is not a gateway URL (expected http://HOST:PORT or https://HOST:PORT)"
        );
    }

    /// Reserves a port nothing listens on.
    fn dead_gateway() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    #[tokio::test]
    async fn every_dead_gateway_is_named_once() {
        let gateways = vec![dead_gateway(), dead_gateway()];
        let client = ServiceClient::new(gateways.clone()).unwrap();
        let err = client
            .send("web", Method::POST, "/", HeaderMap::new(), Bytes::new())
            .await
            .unwrap_err();
        let ServiceCallError::Unavailable { failed } = err else {
            panic!("{err}")
        };
        let tried: Vec<&str> = failed.iter().map(|f| f.gateway.as_str()).collect();
        assert_eq!(tried, [gateways[0].as_str(), gateways[1].as_str()]);
        assert!(failed[0].detail.starts_with("cannot connect"), "{failed:?}");
    }

    #[test]
    fn unknown_outcomes_say_the_request_was_not_resent() {
        let err = ServiceCallError::Unknown {
            method: Method::POST,
            gateway: "http://a:1".into(),
            detail: "connection failed after sending: closed".into(),
            failed: Vec::new(),
        };
        assert_eq!(
            err.to_string(),
            "http://a:1: connection failed after sending: closed; the request may have been \
             processed and was not resent to another gateway (POST without an idempotency key)"
        );
    }
}
