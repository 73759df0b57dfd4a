//! What a gateway is told at start, with the defaults (HAProxy's for active
//! health, Envoy's spirit for outlier detection and retry budgets) and the
//! bounds each setting is checked against.

use std::path::PathBuf;
use std::time::Duration;

use skyclaw_api::Credentials;
use skyclaw_api::serve::Limits;

use crate::GatewayError;

/// Largest request body the gateway forwards unless configured (413 past
/// it): generous for APIs, small enough that one client cannot stream
/// gigabytes through a volunteer's gateway.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// How long requests in progress may finish once a gateway is told to stop,
/// unless configured: long enough for ordinary requests and uploads, short
/// enough that a restart is not held up for minutes by one slow stream.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Certificate chain and private key, PEM files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Timeouts towards endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Opening a TCP connection to an endpoint.
    pub connect: Duration,
    /// From sending a request to receiving its response head.
    pub response_header: Duration,
    /// Longest a request or response body may go without a byte moving.
    pub idle: Duration,
    /// Longest a whole exchange may take, bodies included.
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(2),
            response_header: Duration::from_secs(15),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(300),
        }
    }
}

/// Active health checking of every endpoint.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSettings {
    pub interval: Duration,
    pub timeout: Duration,
    /// Passing probes in a row that make a down endpoint usable.
    pub rise: u32,
    /// Failing probes in a row that take an endpoint out of use.
    pub fall: u32,
}

impl Default for ProbeSettings {
    fn default() -> ProbeSettings {
        ProbeSettings {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// Passive health: ejecting endpoints that fail real requests.
#[derive(Debug, Clone, Copy)]
pub struct OutlierSettings {
    /// Connection failures, timeouts or 5xx answers in a row that eject.
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one adds as much again, up
    /// to [`OutlierSettings::max_ejection`].
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// At most this share of a service's endpoints is ejected at once (at
    /// least one may always be).
    pub max_ejection_percent: u32,
}

impl Default for OutlierSettings {
    fn default() -> OutlierSettings {
        OutlierSettings {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// Retries on another endpoint.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    /// Further attempts one request may make.
    pub max_retries: u32,
    /// Retries may add at most this share of a service's recent requests.
    pub budget_percent: u32,
    /// Retries allowed per second whatever the traffic, so a quiet service
    /// still gets its few.
    pub min_retries_per_sec: u32,
}

impl Default for RetrySettings {
    fn default() -> RetrySettings {
        RetrySettings {
            max_retries: 2,
            budget_percent: 20,
            min_retries_per_sec: 3,
        }
    }
}

/// Everything a gateway runs with.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Coordinator base URLs; the rest of the cluster is learnt from them.
    pub coordinators: Vec<String>,
    /// A `gateway`-scoped API key, or the cluster token.
    pub credentials: Credentials,
    /// `Host: <service>.<domain>` routes to `<service>`.
    pub domain: Option<String>,
    /// Where clients reach this gateway; registered with the coordinators
    /// (so `/v1/gateways` lists it) when given.
    pub public_url: Option<String>,
    pub tls: Option<TlsFiles>,
    /// The client listener's connection cap, header-read and idle timeouts.
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub max_body_bytes: u64,
    pub probes: ProbeSettings,
    pub outliers: OutlierSettings,
    pub retries: RetrySettings,
    /// How long requests in progress may finish after shutdown begins.
    pub shutdown_grace: Duration,
}

impl GatewayConfig {
    /// A gateway with every default, reaching `coordinators` with
    /// `credentials`.
    pub fn new(coordinators: Vec<String>, credentials: Credentials) -> GatewayConfig {
        GatewayConfig {
            coordinators,
            credentials,
            domain: None,
            public_url: None,
            tls: None,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            probes: ProbeSettings::default(),
            outliers: OutlierSettings::default(),
            retries: RetrySettings::default(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), GatewayError> {
        let bad = |m: String| Err(GatewayError::Config(m));
        if self.coordinators.is_empty() {
            return bad("at least one coordinator URL is needed".into());
        }
        if let Some(domain) = &self.domain
            && (domain.is_empty() || domain.starts_with('.') || domain.contains(['/', ':', ' ']))
        {
            return bad(format!(
                "--domain {domain:?} must be a bare domain such as example.org"
            ));
        }
        if let Some(url) = &self.public_url
            && !skyclaw_api::url::is_http_url(url)
        {
            return bad(format!("--public-url {url:?} must be an http(s) URL"));
        }
        let p = &self.probes;
        if p.rise == 0 || p.fall == 0 {
            return bad("probe rise and fall must be at least 1".into());
        }
        if p.timeout.is_zero() || p.timeout > p.interval {
            return bad("the probe timeout must be between 1 ms and the probe interval".into());
        }
        if self.outliers.consecutive_failures == 0 || self.outliers.max_ejection_percent > 100 {
            return bad(
                "outlier failures must be at least 1 and the ejection share at most 100%".into(),
            );
        }
        if self.retries.budget_percent > 100 {
            return bad("the retry budget is a share of requests: at most 100%".into());
        }
        Ok(())
    }
}
