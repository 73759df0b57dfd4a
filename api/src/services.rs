//! Services on the wire: what a deploy asks for (`PUT /v1/services/{name}`),
//! how a service and its instances are reported, the endpoint set gateways
//! watch (`GET /v1/endpoints`), and what hosts are assigned and report.
//!
//! A service is kept running at its replica count by the leader: it places
//! instances on eligible hosts, each host runs what it is assigned and reports
//! every instance's state, and only healthy instances are routable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Millis;
use crate::artifacts::Digest;
use crate::jobs::{
    InvalidSpec, WasiLimits, validate_args, validate_command, validate_env,
    validate_no_loader_variables, validate_wasi_limits,
};

/// Longest service name: a DNS label, so that gateways can route
/// `NAME.example.com` to it.
pub const MAX_SERVICE_NAME: usize = 63;
/// Most replicas of one service: instances are spread one per host while
/// hosts remain, and a network of volunteers rarely has more hosts to spread
/// one service over.
pub const MAX_REPLICAS: u32 = 64;
/// Replicas when a deploy names none.
pub const DEFAULT_REPLICAS: u32 = 1;
/// Health probe defaults: a probe a second, which answers within a second;
/// one success makes an instance healthy, three failures in a row unhealthy.
pub const DEFAULT_HEALTH_PATH: &str = "/health";
pub const DEFAULT_HEALTH_INTERVAL_MS: u64 = 1_000;
pub const DEFAULT_HEALTH_TIMEOUT_MS: u64 = 1_000;
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Probe intervals and timeouts within these: faster probes load the instance
/// for nothing, slower ones leave a dead instance routable for minutes.
pub const MIN_HEALTH_INTERVAL_MS: u64 = 100;
pub const MAX_HEALTH_INTERVAL_MS: u64 = 60_000;
/// Most probes in a row a threshold may ask for.
pub const MAX_HEALTH_THRESHOLD: u32 = 10;
/// Longest health path, as request targets go.
pub const MAX_HEALTH_PATH: usize = 1024;
/// New instances started at once during a rollout, beyond the replicas.
pub const DEFAULT_MAX_SURGE: u32 = 1;
/// How long a rollout may take to make every new instance healthy before it
/// is rolled back: long enough for `npm`-sized apps to start.
pub const DEFAULT_HEALTHY_DEADLINE_MS: u64 = 120_000;
/// Longest healthy deadline a deploy may ask for.
pub const MAX_HEALTHY_DEADLINE_MS: u64 = 60 * 60 * 1000;
/// Most entries in `allowed_outbound_hosts`.
pub const MAX_OUTBOUND_HOSTS: usize = 64;
/// Longest wait a `GET /v1/endpoints` or assignments long-poll holds.
pub const MAX_WATCH_WAIT_MS: u64 = 60_000;
/// Most lines `GET /v1/services/{name}/logs` returns per instance.
pub const MAX_LOG_TAIL: usize = 10_000;
/// Lines returned when `tail` is not given.
pub const DEFAULT_LOG_TAIL: usize = 100;

/// How a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServiceKind {
    /// An allowlisted command run from an unpacked bundle (e.g. `node dist/server.js`).
    #[serde(rename = "native")]
    Native,
    /// A `wasi:http` component served by the host, an instance per request.
    #[serde(rename = "wasi-http")]
    WasiHttp,
}

impl ServiceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Native => "native",
            ServiceKind::WasiHttp => "wasi-http",
        }
    }
}

/// `PUT /v1/services/{name}`: what to run. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub kind: ServiceKind,
    /// A bundle (tar archive) for `native`, a wasm component for `wasi-http`.
    pub artifact: Digest,
    /// `native` only: the program, on the host's allowlist, run in the
    /// unpacked bundle with `PORT` and `HOST` set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    #[serde(default)]
    pub health: HealthCheck,
    /// `wasi-http` only: each request's limits, capped by each host's caps.
    #[serde(default)]
    pub limits: WasiLimits,
    /// `wasi-http` only: where the component may send HTTP requests, as
    /// `scheme://host[:port]` (`*` for any port). Nothing else is reachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    pub rollout: Rollout,
}

fn default_replicas() -> u32 {
    DEFAULT_REPLICAS
}

/// How a host probes an instance: `GET path` answered 2xx within `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Successes in a row that make an instance healthy.
    pub healthy_threshold: u32,
    /// Failures in a row that make a healthy instance unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> HealthCheck {
        HealthCheck {
            path: DEFAULT_HEALTH_PATH.to_string(),
            interval_ms: DEFAULT_HEALTH_INTERVAL_MS,
            timeout_ms: DEFAULT_HEALTH_TIMEOUT_MS,
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
        }
    }
}

/// How a new version replaces the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rollout {
    /// New instances that may run beyond the replicas while old ones still serve.
    pub max_surge: u32,
    /// A rollout that has not made every new instance healthy by then is
    /// rolled back: the new instances stop, the previous version keeps serving.
    pub healthy_deadline_ms: u64,
}

impl Default for Rollout {
    fn default() -> Rollout {
        Rollout {
            max_surge: DEFAULT_MAX_SURGE,
            healthy_deadline_ms: DEFAULT_HEALTHY_DEADLINE_MS,
        }
    }
}

fn invalid(msg: impl Into<String>) -> Result<(), InvalidSpec> {
    Err(InvalidSpec(msg.into()))
}

/// A service name is a DNS label: 1 to 63 of `a-z`, `0-9` and `-`, neither
/// starting nor ending with `-`.
pub fn validate_service_name(name: &str) -> Result<(), InvalidSpec> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        invalid(format!(
            "service name {name:?} must be a DNS label: 1 to {MAX_SERVICE_NAME} of a-z, 0-9 and \
             '-', not starting or ending with '-'"
        ))
    }
}

impl ServiceSpec {
    /// The spec as another version would differ from it: everything but the
    /// replica count, which changes by scaling, not by a new version.
    pub fn without_replicas(&self) -> ServiceSpec {
        ServiceSpec {
            replicas: 0,
            ..self.clone()
        }
    }

    /// Checks every bound; the first violation is returned, naming its field.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        validate_replicas(self.replicas)?;
        validate_args(&self.args)?;
        validate_env(&self.env)?;
        self.health.validate()?;
        self.rollout.validate()?;
        match self.kind {
            ServiceKind::Native => {
                let Some(command) = &self.command else {
                    return invalid("a native service needs a command (such as \"node\")");
                };
                validate_command(command)?;
                validate_no_loader_variables(&self.env)?;
                validate_service_env(&self.env)?;
                if self.limits != WasiLimits::default() {
                    return invalid("limits apply to wasi-http services only");
                }
                if !self.allowed_outbound_hosts.is_empty() {
                    return invalid("allowed_outbound_hosts applies to wasi-http services only");
                }
            }
            ServiceKind::WasiHttp => {
                if self.command.is_some() || !self.args.is_empty() {
                    return invalid(
                        "a wasi-http service runs its component: command and args apply to \
                         native services only",
                    );
                }
                if !self.env.is_empty() {
                    return invalid(
                        "env applies to native services only: a wasi-http component sees no \
                         environment",
                    );
                }
                validate_wasi_limits(&self.limits)?;
                if self.allowed_outbound_hosts.len() > MAX_OUTBOUND_HOSTS {
                    return invalid(format!(
                        "allowed_outbound_hosts has {} entries; the limit is {MAX_OUTBOUND_HOSTS}",
                        self.allowed_outbound_hosts.len()
                    ));
                }
                for entry in &self.allowed_outbound_hosts {
                    OutboundRule::parse(entry)?;
                }
            }
        }
        Ok(())
    }
}

/// Refuses a replica count outside `0..=MAX_REPLICAS` (0 keeps the service
/// defined with nothing running).
pub fn validate_replicas(replicas: u32) -> Result<(), InvalidSpec> {
    if replicas > MAX_REPLICAS {
        return invalid(format!(
            "replicas must be between 0 and {MAX_REPLICAS}, not {replicas}"
        ));
    }
    Ok(())
}

impl HealthCheck {
    fn validate(&self) -> Result<(), InvalidSpec> {
        let path_ok = self.path.starts_with('/')
            && self.path.len() <= MAX_HEALTH_PATH
            && self.path.bytes().all(|b| b.is_ascii_graphic());
        if !path_ok {
            return invalid(format!(
                "health.path must start with '/' and be at most {MAX_HEALTH_PATH} visible ASCII \
                 characters, not {:?}",
                self.path
            ));
        }
        let interval = MIN_HEALTH_INTERVAL_MS..=MAX_HEALTH_INTERVAL_MS;
        if !interval.contains(&self.interval_ms) {
            return invalid(format!(
                "health.interval_ms must be between {MIN_HEALTH_INTERVAL_MS} and \
                 {MAX_HEALTH_INTERVAL_MS}, not {}",
                self.interval_ms
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.interval_ms {
            return invalid(format!(
                "health.timeout_ms must be between 1 and health.interval_ms ({}), not {}",
                self.interval_ms, self.timeout_ms
            ));
        }
        for (field, value) in [
            ("healthy_threshold", self.healthy_threshold),
            ("unhealthy_threshold", self.unhealthy_threshold),
        ] {
            if value == 0 || value > MAX_HEALTH_THRESHOLD {
                return invalid(format!(
                    "health.{field} must be between 1 and {MAX_HEALTH_THRESHOLD}, not {value}"
                ));
            }
        }
        Ok(())
    }
}

impl Rollout {
    fn validate(&self) -> Result<(), InvalidSpec> {
        if self.max_surge == 0 || self.max_surge > MAX_REPLICAS {
            return invalid(format!(
                "rollout.max_surge must be between 1 and {MAX_REPLICAS}, not {}",
                self.max_surge
            ));
        }
        if self.healthy_deadline_ms == 0 || self.healthy_deadline_ms > MAX_HEALTHY_DEADLINE_MS {
            return invalid(format!(
                "rollout.healthy_deadline_ms must be between 1 and {MAX_HEALTHY_DEADLINE_MS} \
                 (one hour), not {}",
                self.healthy_deadline_ms
            ));
        }
        Ok(())
    }
}

/// One entry of `allowed_outbound_hosts`: a scheme, a host, and a port (or
/// any port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    pub https: bool,
    /// Lowercase; compared exactly (no wildcards in hosts).
    pub host: String,
    /// `None`: any port.
    pub port: Option<u16>,
}

impl OutboundRule {
    /// Reads `http://host`, `https://host:8443` or `http://127.0.0.1:*`; a
    /// missing port is the scheme's own.
    pub fn parse(entry: &str) -> Result<OutboundRule, InvalidSpec> {
        let bad = |why: &str| {
            InvalidSpec(format!(
                "allowed_outbound_hosts entry {entry:?} {why}; write scheme://host[:port], \
                 such as https://api.example.com or http://127.0.0.1:*"
            ))
        };
        let (https, rest) = if let Some(rest) = entry.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = entry.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(bad("has no http:// or https:// scheme"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("names more than a host and port"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, "*")) => (host, None),
            Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
                match port.parse::<u16>() {
                    Ok(port) if port > 0 => (host, Some(port)),
                    _ => return Err(bad("has a port that is not 1 to 65535 or *")),
                }
            }
            _ => (rest, Some(if https { 443 } else { 80 })),
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b));
        if !host_ok {
            return Err(bad("has no valid host"));
        }
        Ok(OutboundRule {
            https,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// True when a request to `host:port` over `https` (or not) is allowed.
    pub fn allows(&self, https: bool, host: &str, port: u16) -> bool {
        self.https == https
            && self.host.eq_ignore_ascii_case(host)
            && self.port.is_none_or(|p| p == port)
    }
}

/// One version of a service's spec, as deployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceVersion {
    pub version: u64,
    pub spec: ServiceSpec,
    pub created_at: Millis,
}

/// Where a deploy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    /// New instances are starting; old ones serve until new ones are healthy.
    Rolling,
    /// Every instance runs the version and is (or was) healthy.
    Done,
    /// The version did not become healthy in time: its instances were
    /// stopped and the previous version serves.
    Failed,
}

impl DeployStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::Rolling => "rolling",
            DeployStatus::Done => "done",
            DeployStatus::Failed => "failed",
        }
    }
}

/// The latest deploy of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy {
    pub version: u64,
    pub status: DeployStatus,
    /// Why it failed: for a crashing process, its exit status and last lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub started_at: Millis,
    /// When a rollout still rolling is rolled back.
    pub deadline_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
}

/// An instance's state, as its host reports it (`pending` until it does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Placed on a host, which has not reported it yet.
    Pending,
    /// Fetching, unpacking or starting; not yet healthy.
    Starting,
    /// Passing its health check: routable.
    Healthy,
    /// Failing its health check or restarting after an exit.
    Unhealthy,
    /// Leaving the endpoint set; in-flight requests finish.
    Stopping,
    Stopped,
    /// Cannot run on its host (bundle refused, command not allowed, no port).
    Failed,
}

impl InstanceState {
    pub const ALL: [InstanceState; 7] = [
        InstanceState::Pending,
        InstanceState::Starting,
        InstanceState::Healthy,
        InstanceState::Unhealthy,
        InstanceState::Stopping,
        InstanceState::Stopped,
        InstanceState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Starting => "starting",
            InstanceState::Healthy => "healthy",
            InstanceState::Unhealthy => "unhealthy",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Failed => "failed",
        }
    }

    /// True once the instance will never run again.
    pub fn is_terminal(self) -> bool {
        matches!(self, InstanceState::Stopped | InstanceState::Failed)
    }

    /// True while the instance counts towards its service's replicas.
    pub fn is_alive(self) -> bool {
        matches!(
            self,
            InstanceState::Pending
                | InstanceState::Starting
                | InstanceState::Healthy
                | InstanceState::Unhealthy
        )
    }
}

impl std::str::FromStr for InstanceState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InstanceState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown instance state {s:?}"))
    }
}

/// One running (or once running) copy of a service on a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub host_id: String,
    pub version: u64,
    /// The base URL it serves at, once its host reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub state: InstanceState,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A service as `GET /v1/services/{name}` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// The latest version deployed.
    pub current: ServiceVersion,
    /// The version that serves while `current` rolls out, or after it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<ServiceVersion>,
    pub replicas: u32,
    pub deploy: Deploy,
    /// Why instances wait to be placed (no eligible host), as the leader sees
    /// the live hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,
    pub instances: Vec<Instance>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Service {
    /// The version the service is kept at: the one rolling out or done, or
    /// after a failed rollout the previous one (`None`: the first version
    /// failed, so nothing runs).
    pub fn target_version(&self) -> Option<u64> {
        match self.deploy.status {
            DeployStatus::Failed => self.previous.as_ref().map(|p| p.version),
            DeployStatus::Rolling | DeployStatus::Done => Some(self.current.version),
        }
    }

    /// The spec of `version`, if it is the current or previous one.
    pub fn spec_of(&self, version: u64) -> Option<&ServiceSpec> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|v| v.version == version)
            .map(|v| &v.spec)
    }
}

/// `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceList {
    pub services: Vec<Service>,
}

/// What a `PUT /v1/services/{name}` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployOutcome {
    /// A new service, at version 1.
    Created,
    /// A new version, now rolling out.
    Deployed,
    /// The same spec with another replica count: scaled, no new version.
    Scaled,
    /// The same spec as the current version: nothing changed.
    Unchanged,
}

/// The answer to `PUT /v1/services/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployed {
    pub outcome: DeployOutcome,
    pub service: Service,
}

/// `POST /v1/services/{name}/scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    pub replicas: u32,
}

/// The query of a long-poll over a version index: answer at once when the
/// index is past `index`, else wait up to `wait_ms` for it to pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    #[serde(default)]
    pub index: Option<u64>,
    #[serde(default)]
    pub wait_ms: Option<u64>,
}

/// `GET /v1/endpoints`: every service's routable endpoints. `index` grows
/// whenever the set changes; pass it back to wait for the next change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoints {
    pub index: u64,
    pub services: Vec<ServiceEndpoints>,
}

/// One service's routable endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceEndpoints {
    pub name: String,
    pub kind: ServiceKind,
    /// The version being rolled out or serving.
    pub version: u64,
    /// The path the instances answer health probes on (the version's
    /// `health.path`), so gateways can probe endpoints themselves.
    pub health_path: String,
    pub endpoints: Vec<Endpoint>,
}

/// One healthy instance a gateway may send requests to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub instance_id: String,
    pub url: String,
    pub version: u64,
    /// An instance of an older version still serving while the new one
    /// rolls out: route to it, but expect it to go.
    pub draining: bool,
}

/// `GET /v1/hosts/{id}/assignments`: what a host should run now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    pub index: u64,
    pub instances: Vec<Assignment>,
}

/// One instance a host is to run, or to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub instance_id: String,
    pub service: String,
    pub version: u64,
    pub spec: ServiceSpec,
    /// Drain and stop it: the coordinators already left it out of the
    /// endpoint set.
    pub stop: bool,
}

/// Most instance reports one `POST /v1/hosts/{id}/instances` carries.
pub const MAX_INSTANCE_REPORTS: usize = 512;
/// Longest `last_error` a host may report: the exit status and the last
/// lines of output, enough to see why a process crashed.
pub const MAX_LAST_ERROR_BYTES: usize = 4096;

/// `POST /v1/hosts/{id}/instances`: state changes of the host's instances.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceReports {
    pub reports: Vec<InstanceReport>,
}

/// An instance's state as its host sees it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceReport {
    pub instance_id: String,
    pub state: InstanceState,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub restarts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Most instances one host may offer to run: each holds a port and a
/// process or a pool of wasm instances; more is a misconfigured range.
pub const MAX_HOST_INSTANCES: u32 = 4096;

/// What a host grants services: how many instances it runs at once (its
/// port range bounds it), and where its own listener is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCaps {
    pub max_instances: u32,
    /// Base URL of the host's own listener (`--listen`, as others reach it
    /// through `--advertise-host`): coordinators fetch instance logs there.
    #[serde(default)]
    pub control_url: Option<String>,
}

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line of an instance's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub stream: LogStream,
    pub at: Millis,
    pub text: String,
}

/// `GET /v1/services/{name}/logs`: recent output of each native instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceLogs {
    pub instances: Vec<InstanceLogs>,
}

/// One instance's recent lines, or why they could not be fetched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceLogs {
    pub instance_id: String,
    pub host_id: String,
    #[serde(default)]
    pub lines: Vec<LogLine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/services/{name}/logs`: which instance (every native one when
/// `None`) and how many of the newest lines of each (at most
/// [`MAX_LOG_TAIL`], [`DEFAULT_LOG_TAIL`] when `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub tail: Option<usize>,
}

/// Env names the host sets for a native instance; a spec may not set them.
pub const RESERVED_ENV: [&str; 2] = ["PORT", "HOST"];

/// Refuses env that names a variable the host sets itself.
pub fn validate_service_env(env: &BTreeMap<String, String>) -> Result<(), InvalidSpec> {
    for name in RESERVED_ENV {
        if env.contains_key(name) {
            return invalid(format!(
                "env may not set {name}: the host sets it to where the instance listens"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Result<ServiceSpec, String> {
        let spec: ServiceSpec = serde_json::from_value(json).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.0)?;
        Ok(spec)
    }

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn a_native_spec_takes_defaults_and_needs_a_command() {
        let s = spec(serde_json::json!({
            "kind": "native", "artifact": DIGEST, "command": "node", "args": ["server.js"]
        }))
        .unwrap();
        assert_eq!(s.replicas, DEFAULT_REPLICAS);
        assert_eq!(s.health, HealthCheck::default());
        assert_eq!(s.rollout, Rollout::default());
        let err = spec(serde_json::json!({"kind": "native", "artifact": DIGEST})).unwrap_err();
        assert!(err.contains("needs a command"), "{err}");
    }

    #[test]
    fn a_wasi_http_spec_takes_no_env() {
        let err = spec(serde_json::json!({
            "kind": "wasi-http", "artifact": DIGEST, "env": {"A": "1"}
        }))
        .unwrap_err();
        assert!(err.contains("env applies to native services only"), "{err}");
    }

    #[test]
    fn unknown_fields_and_kinds_are_named() {
        let err = spec(serde_json::json!({
            "kind": "native", "artifact": DIGEST, "command": "node", "replicaz": 2
        }))
        .unwrap_err();
        assert!(err.contains("replicaz"), "{err}");
        let err = spec(serde_json::json!({"kind": "docker", "artifact": DIGEST})).unwrap_err();
        assert!(err.contains("docker"), "{err}");
        let err = spec(serde_json::json!({
            "kind": "wasi-http", "artifact": DIGEST, "health": {"paht": "/"}
        }))
        .unwrap_err();
        assert!(err.contains("paht"), "{err}");
    }

    #[test]
    fn bounds_name_their_field() {
        let cases = [
            (serde_json::json!({"replicas": 65}), "replicas"),
            (
                serde_json::json!({"health": {"path": "health"}}),
                "health.path",
            ),
            (
                serde_json::json!({"health": {"interval_ms": 1000, "timeout_ms": 2000}}),
                "health.timeout_ms",
            ),
            (
                serde_json::json!({"health": {"unhealthy_threshold": 0}}),
                "health.unhealthy_threshold",
            ),
            (
                serde_json::json!({"rollout": {"max_surge": 0}}),
                "rollout.max_surge",
            ),
            (serde_json::json!({"command": "node"}), "command and args"),
            (
                serde_json::json!({"allowed_outbound_hosts": ["ftp://x"]}),
                "ftp://x",
            ),
        ];
        for (extra, field) in cases {
            let mut json = serde_json::json!({"kind": "wasi-http", "artifact": DIGEST});
            json.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let err = spec(json.clone()).unwrap_err();
            assert!(err.contains(field), "{json}: {err}");
        }
    }

    #[test]
    fn names_are_dns_labels() {
        for good in ["api", "a", "ts-api-2", &"x".repeat(63)] {
            validate_service_name(good).unwrap();
        }
        for bad in ["", "-api", "api-", "Api", "a_b", "a.b", &"x".repeat(64)] {
            assert!(validate_service_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn outbound_rules_match_scheme_host_and_port() {
        let any_port = OutboundRule::parse("http://127.0.0.1:*").unwrap();
        assert!(any_port.allows(false, "127.0.0.1", 8080));
        assert!(!any_port.allows(true, "127.0.0.1", 8080));
        let api = OutboundRule::parse("https://API.example.com").unwrap();
        assert!(api.allows(true, "api.example.com", 443));
        assert!(!api.allows(true, "api.example.com", 8443));
        assert!(!api.allows(true, "evil.example.com", 443));
        let port = OutboundRule::parse("https://api.example.com:8443/").unwrap();
        assert_eq!(port.port, Some(8443));
        for bad in [
            "api.example.com",
            "https://",
            "https://a/b",
            "https://a:0",
            "https://a:x",
            "https://u@a",
        ] {
            assert!(OutboundRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_host_sets_port_and_host() {
        let env = BTreeMap::from([("PORT".to_string(), "1".to_string())]);
        let err = validate_service_env(&env).unwrap_err().0;
        assert!(err.contains("PORT"), "{err}");
    }
}
