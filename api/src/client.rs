//! The coordinator client: one typed method per route, credentials on every
//! request, and failover across a list of coordinator URLs.
//!
//! Mutating requests always carry an idempotency key (the caller's, or one made
//! per call), so trying the same request on another coordinator after a lost
//! response can never apply it twice. Artifacts travel as streams: files are
//! never read into memory whole, in either direction.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use crate::apikeys::{ApiKey, ApiKeyList, CreateApiKey, CreatedApiKey, Whoami};
use crate::artifacts::{ArtifactInfo, ArtifactList, Digest, digest_file};
use crate::error::{ErrorCode, ErrorEnvelope};
use crate::gateways::{Gateway, GatewayHeartbeat, GatewayList};
use crate::headers;
use crate::hosts::{
    Claim, Claimed, CompleteMany, CompletedMany, Heartbeat, HeartbeatAck, HostList, RegisterHost,
    Registered,
};
use crate::jobs::{Job, JobList, JobQuery, JobSpec};
use crate::network::{Join, PeerList};
use crate::services::{
    Assignments, Deployed, Endpoints, InstanceReports, LogsQuery, Scale, Service, ServiceList,
    ServiceLogs, ServiceSpec,
};
use crate::url::{BASE_URL_FORM, is_http_url};

/// How long an ordinary request may take before the next coordinator is tried.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection attempt may take: coordinators are expected nearby.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a membership change may take: a joining node first catches up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an unused pooled connection is kept: well under a listener's idle
/// keep-alive timeout ([`crate::serve::DEFAULT_IDLE_TIMEOUT`]), so a client
/// does not reuse a connection just as the server closes it.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack added to a long-poll's own wait before the client gives up on it.
const LONG_POLL_SLACK: Duration = Duration::from_secs(5);
/// How long one artifact upload or download may take: the largest blob a
/// coordinator accepts by default (256 MiB) at about 150 KiB/s.
pub const ARTIFACT_TRANSFER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What the client presents to coordinators.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    /// The cluster's shared token (`x-skyclaw-token`).
    Token(String),
    /// A scoped API key (`authorization: Bearer`).
    ApiKey(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets never reach logs.
        f.write_str(match self {
            Credentials::None => "None",
            Credentials::Token(_) => "Token(..)",
            Credentials::ApiKey(_) => "ApiKey(..)",
        })
    }
}

/// Why a request did not produce the expected answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A coordinator answered with an error envelope.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    /// No coordinator could be reached or all answered that they are unavailable.
    #[error("no coordinator answered: {}", .attempts.join("; "))]
    Unavailable {
        attempts: Vec<String>,
        /// The error code of the last coordinator that answered at all (such
        /// as `no_quorum`), when one did.
        last_code: Option<ErrorCode>,
    },
    /// A coordinator answered with something that is not the expected JSON.
    #[error("unexpected answer from {url}: {detail}")]
    Decode { url: String, detail: String },
    /// The client was given no coordinator URLs or an unusable one.
    #[error("invalid coordinator url: {0}")]
    BadUrl(String),
    /// A local file to send or to write an answer into could not be used.
    #[error("{}: {source}", .path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ClientError {
    /// The error code, when a coordinator gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            ClientError::Unavailable { last_code, .. } => *last_code,
            _ => None,
        }
    }

    /// True when the error says nothing about the request itself: trying again
    /// later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unavailable { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 408,
            _ => false,
        }
    }
}

/// A client for a set of coordinators. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    /// Known coordinators; refreshed from `/v1/network/peers`.
    urls: RwLock<Vec<String>>,
    /// Index of the URL that answered last: tried first next time.
    preferred: AtomicUsize,
    credentials: Credentials,
}

/// One request, independent of which coordinator it goes to.
struct Call<'a> {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Payload,
    idempotency_key: Option<&'a str>,
    timeout: Duration,
}

/// What a call sends.
enum Payload {
    None,
    Json(Vec<u8>),
    /// A file streamed from disk, opened anew for every attempt so that each
    /// coordinator tried receives it from the start.
    File(PathBuf),
}

/// What became of sending a call to one coordinator.
enum Attempt<T> {
    /// The coordinator answered (with success or an error): no other is tried.
    Answered(Result<T, ClientError>),
    /// It could not serve the call; the next coordinator is tried.
    Failed(String),
}

impl Client {
    /// A client for the given coordinator base URLs (`http://host:port`).
    pub fn new(urls: &[String], credentials: Credentials) -> Result<Client, ClientError> {
        let urls: Vec<String> = urls
            .iter()
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            return Err(ClientError::BadUrl("no coordinator urls given".into()));
        }
        for url in &urls {
            if !is_http_url(url) {
                return Err(ClientError::BadUrl(format!(
                    "{url} (expected {BASE_URL_FORM})"
                )));
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| ClientError::BadUrl(e.to_string()))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                urls: RwLock::new(urls),
                preferred: AtomicUsize::new(0),
                credentials,
            }),
        })
    }

    /// Parses a comma-separated URL list, as given to `--coordinator`.
    pub fn split_urls(list: &str) -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// Whether the client presents an API key (whose scopes limit it), not
    /// the token.
    pub fn uses_api_key(&self) -> bool {
        matches!(self.inner.credentials, Credentials::ApiKey(_))
    }

    /// The coordinator URLs the client knows now.
    pub fn urls(&self) -> Vec<String> {
        self.inner.urls.read().expect("urls lock").clone()
    }

    /// Learns every coordinator from `/v1/network/peers` and uses them from now
    /// on, keeping the one that answered first in line. Returns the new list.
    pub async fn refresh_urls(&self) -> Result<Vec<String>, ClientError> {
        let peers = self.peers().await?;
        let answered = self
            .urls()
            .get(self.inner.preferred.load(Ordering::Relaxed))
            .cloned();
        let mut urls: Vec<String> = peers
            .peers
            .iter()
            .map(|p| p.url.trim_end_matches('/').to_string())
            .filter(|u| is_http_url(u))
            .collect();
        if urls.is_empty() {
            return Ok(self.urls());
        }
        urls.sort();
        urls.dedup();
        // The URL that answered stays first, even when the cluster advertises
        // it under another name (a tunnel, localhost for 127.0.0.1).
        if let Some(answered) = answered {
            urls.retain(|u| *u != answered);
            urls.insert(0, answered);
        }
        *self.inner.urls.write().expect("urls lock") = urls.clone();
        self.inner.preferred.store(0, Ordering::Relaxed);
        Ok(urls)
    }

    /// `GET /v1/network/peers`: every coordinator in the cluster.
    pub async fn peers(&self) -> Result<PeerList, ClientError> {
        self.call(Call::get("/v1/network/peers")).await
    }

    /// `POST /v1/network/join`: adds a coordinator, or updates its address.
    pub async fn join(&self, join: &Join) -> Result<PeerList, ClientError> {
        let mut call = Call::post("/v1/network/join", join, None);
        // Adding a learner waits until it has caught up with the log.
        call.timeout = JOIN_TIMEOUT;
        self.call(call).await
    }

    /// `DELETE /v1/network/peers/{id}`: removes a coordinator for good.
    pub async fn remove_peer(&self, id: u64) -> Result<PeerList, ClientError> {
        let mut call = Call::get(&format!("/v1/network/peers/{id}"));
        call.method = Method::DELETE;
        call.timeout = JOIN_TIMEOUT;
        self.call(call).await
    }

    /// `GET /health` on the preferred coordinator (or the next that answers).
    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.call(Call::get("/health")).await
    }

    pub async fn submit_job(
        &self,
        spec: &JobSpec,
        idempotency_key: Option<&str>,
    ) -> Result<Job, ClientError> {
        self.call(Call::post("/v1/jobs", spec, idempotency_key))
            .await
    }

    pub async fn get_job(&self, id: &str) -> Result<Job, ClientError> {
        self.call(Call::get(&format!("/v1/jobs/{}", segment(id))))
            .await
    }

    /// Waits up to `timeout` for the job to be terminal and returns it as it is then.
    pub async fn wait_job_once(&self, id: &str, timeout: Duration) -> Result<Job, ClientError> {
        let mut call = Call::get(&format!("/v1/jobs/{}/wait", segment(id)));
        call.query
            .push(("timeout_ms", timeout.as_millis().to_string()));
        call.timeout = timeout + LONG_POLL_SLACK;
        self.call(call).await
    }

    pub async fn list_jobs(&self, query: &JobQuery) -> Result<JobList, ClientError> {
        let mut call = Call::get("/v1/jobs");
        if let Some(status) = query.status {
            call.query.push(("status", status.as_str().to_string()));
        }
        if let Some(limit) = query.limit {
            call.query.push(("limit", limit.to_string()));
        }
        if let Some(after) = &query.after {
            call.query.push(("after", after.clone()));
        }
        self.call(call).await
    }

    pub async fn cancel_job(&self, id: &str) -> Result<Job, ClientError> {
        let path = format!("/v1/jobs/{}/cancel", segment(id));
        self.call(Call::post(&path, &serde_json::json!({}), None))
            .await
    }

    /// Reports several jobs' ends at once. Each completion names its lease,
    /// so sending the batch again applies none twice; the answer says what
    /// became of each.
    pub async fn complete_many(
        &self,
        host_id: &str,
        batch: &CompleteMany,
    ) -> Result<CompletedMany, ClientError> {
        let path = format!("/v1/hosts/{}/complete", segment(host_id));
        self.call(Call::post(&path, batch, None)).await
    }

    pub async fn register_host(&self, req: &RegisterHost) -> Result<Registered, ClientError> {
        self.call(Call::post("/v1/hosts/register", req, None)).await
    }

    pub async fn heartbeat(
        &self,
        host_id: &str,
        hb: &Heartbeat,
    ) -> Result<HeartbeatAck, ClientError> {
        let path = format!("/v1/hosts/{}/heartbeat", segment(host_id));
        self.call(Call::post(&path, hb, None)).await
    }

    /// Long-polls for work. A retry after a lost answer must reuse the key so
    /// that jobs leased by the lost answer are handed out again, not orphaned.
    pub async fn claim(
        &self,
        host_id: &str,
        claim: &Claim,
        idempotency_key: &str,
    ) -> Result<Claimed, ClientError> {
        let path = format!("/v1/hosts/{}/claim", segment(host_id));
        let mut call = Call::post(&path, claim, Some(idempotency_key));
        call.timeout = Duration::from_millis(claim.wait_ms) + LONG_POLL_SLACK;
        self.call(call).await
    }

    pub async fn list_hosts(&self) -> Result<HostList, ClientError> {
        self.call(Call::get("/v1/hosts")).await
    }

    /// `GET /v1/whoami`: the token, or the API key presented and its scopes.
    pub async fn whoami(&self) -> Result<Whoami, ClientError> {
        self.call(Call::get("/v1/whoami")).await
    }

    pub async fn create_api_key(&self, req: &CreateApiKey) -> Result<CreatedApiKey, ClientError> {
        self.call(Call::post("/v1/apikeys", req, None)).await
    }

    pub async fn list_api_keys(&self) -> Result<ApiKeyList, ClientError> {
        self.call(Call::get("/v1/apikeys")).await
    }

    pub async fn revoke_api_key(&self, id: &str) -> Result<ApiKey, ClientError> {
        let mut call = Call::get(&format!("/v1/apikeys/{}", segment(id)));
        call.method = Method::DELETE;
        self.call(call).await
    }

    /// `PUT /v1/services/{name}`: creates the service or deploys a new
    /// version (the same spec again is a no-op the answer says so).
    pub async fn put_service(
        &self,
        name: &str,
        spec: &ServiceSpec,
    ) -> Result<Deployed, ClientError> {
        let mut call = Call::post(&format!("/v1/services/{}", segment(name)), spec, None);
        call.method = Method::PUT;
        self.call(call).await
    }

    pub async fn get_service(&self, name: &str) -> Result<Service, ClientError> {
        self.call(Call::get(&format!("/v1/services/{}", segment(name))))
            .await
    }

    pub async fn list_services(&self) -> Result<ServiceList, ClientError> {
        self.call(Call::get("/v1/services")).await
    }

    pub async fn scale_service(&self, name: &str, replicas: u32) -> Result<Service, ClientError> {
        let path = format!("/v1/services/{}/scale", segment(name));
        self.call(Call::post(&path, &Scale { replicas }, None))
            .await
    }

    /// `DELETE /v1/services/{name}`: every instance stops.
    pub async fn delete_service(&self, name: &str) -> Result<(), ClientError> {
        let mut call = Call::get(&format!("/v1/services/{}", segment(name)));
        call.method = Method::DELETE;
        self.call(call).await
    }

    /// `GET /v1/services/{name}/logs`: recent output of the service's
    /// native instances, fetched by the coordinator from their hosts.
    pub async fn service_logs(
        &self,
        name: &str,
        query: &LogsQuery,
    ) -> Result<ServiceLogs, ClientError> {
        let mut call = Call::get(&format!("/v1/services/{}/logs", segment(name)));
        if let Some(instance) = &query.instance {
            call.query.push(("instance", instance.clone()));
        }
        if let Some(tail) = query.tail {
            call.query.push(("tail", tail.to_string()));
        }
        self.call(call).await
    }

    /// `GET /v1/endpoints`: at once when `index` is `None`, else once the
    /// endpoint set's index passes it (or `wait` runs out).
    pub async fn endpoints(
        &self,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<Endpoints, ClientError> {
        self.call(watch_call("/v1/endpoints", index, wait)).await
    }

    /// `POST /v1/gateways/heartbeat`: registers the gateway, or renews it
    /// for another [`crate::gateways::GATEWAY_TTL_MS`]. Sending it again
    /// only renews, so a retry is always safe.
    pub async fn gateway_heartbeat(
        &self,
        heartbeat: &GatewayHeartbeat,
    ) -> Result<Gateway, ClientError> {
        self.call(Call::post("/v1/gateways/heartbeat", heartbeat, None))
            .await
    }

    /// `GET /v1/gateways`: the live gateways.
    pub async fn list_gateways(&self) -> Result<GatewayList, ClientError> {
        self.call(Call::get("/v1/gateways")).await
    }

    /// `GET /v1/hosts/{id}/assignments`, a long-poll like [`Client::endpoints`].
    pub async fn assignments(
        &self,
        host_id: &str,
        index: Option<u64>,
        wait: Duration,
    ) -> Result<Assignments, ClientError> {
        let path = format!("/v1/hosts/{}/assignments", segment(host_id));
        self.call(watch_call(&path, index, wait)).await
    }

    /// Reports instance states; reports on instances the host does not hold
    /// are left out by the coordinators.
    pub async fn report_instances(
        &self,
        host_id: &str,
        reports: &InstanceReports,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/hosts/{}/instances", segment(host_id));
        self.call(Call::post(&path, reports, None)).await
    }

    /// Hashes the file, then uploads it (`PUT /v1/artifacts/{digest}`). Returns
    /// what the coordinator stored and whether this upload stored it first.
    pub async fn put_artifact(&self, path: &Path) -> Result<(ArtifactInfo, bool), ClientError> {
        let (digest, _) = digest_file(path)
            .await
            .map_err(|source| ClientError::File {
                path: path.to_path_buf(),
                source,
            })?;
        self.upload_artifact(path, &digest).await
    }

    /// Uploads a file already hashed to `digest`; the coordinator refuses it if
    /// the bytes it receives hash to anything else.
    pub async fn upload_artifact(
        &self,
        path: &Path,
        digest: &Digest,
    ) -> Result<(ArtifactInfo, bool), ClientError> {
        let mut call = Call::get(&artifact_path(digest));
        call.method = Method::PUT;
        call.body = Payload::File(path.to_path_buf());
        call.timeout = ARTIFACT_TRANSFER_TIMEOUT;
        self.failover(&call, |url, response| async move {
            let created = response.status() == StatusCode::CREATED;
            Attempt::Answered(decode(&url, response).await.map(|info| (info, created)))
        })
        .await
    }

    /// `HEAD /v1/artifacts/{digest}`: the artifact's size, or `None` when the
    /// cluster does not know it.
    pub async fn head_artifact(&self, digest: &Digest) -> Result<Option<u64>, ClientError> {
        let mut call = Call::get(&artifact_path(digest));
        call.method = Method::HEAD;
        self.failover(&call, |url, response| async move {
            Attempt::Answered(head_answer(&url, &response))
        })
        .await
    }

    /// `GET /v1/artifacts/{digest}`, streamed into `dest` (created or
    /// truncated). Returns the digest of the bytes actually received and their
    /// count; comparing it with `digest` is the caller's decision. A download
    /// that breaks off is tried again from the start on the next coordinator.
    pub async fn download_artifact(
        &self,
        digest: &Digest,
        dest: &Path,
    ) -> Result<(Digest, u64), ClientError> {
        let mut call = Call::get(&artifact_path(digest));
        call.timeout = ARTIFACT_TRANSFER_TIMEOUT;
        self.failover(&call, |url, response| async move {
            if !response.status().is_success() {
                return Attempt::Answered(Err(error_of(&url, response).await));
            }
            save_body(response, dest).await
        })
        .await
    }

    /// `GET /v1/artifacts`: every artifact the cluster stores, oldest first.
    pub async fn list_artifacts(&self) -> Result<ArtifactList, ClientError> {
        self.call(Call::get("/v1/artifacts")).await
    }

    /// Sends the call and decodes the JSON answer.
    async fn call<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T, ClientError> {
        self.failover(&call, |url, response| async move {
            Attempt::Answered(decode(&url, response).await)
        })
        .await
    }

    /// Sends the call to each coordinator in turn, starting with the one that
    /// answered last, until one gives an answer that is not "unavailable";
    /// `finish` turns that answer into the result, or sends the call on to
    /// the next coordinator.
    async fn failover<T, Fut>(
        &self,
        call: &Call<'_>,
        mut finish: impl FnMut(String, reqwest::Response) -> Fut,
    ) -> Result<T, ClientError>
    where
        Fut: Future<Output = Attempt<T>>,
    {
        let made_key;
        let idempotency_key = match call.idempotency_key {
            Some(k) => Some(k),
            None if call.method != Method::GET && call.method != Method::HEAD => {
                made_key = uuid::Uuid::now_v7().simple().to_string();
                Some(made_key.as_str())
            }
            None => None,
        };
        let urls = self.urls();
        let start = self.inner.preferred.load(Ordering::Relaxed) % urls.len();
        let mut attempts = Vec::new();
        let mut last_code = None;
        for offset in 0..urls.len() {
            let index = (start + offset) % urls.len();
            let url = format!("{}{}", urls[index], call.path);
            match self.send_once(&url, call, idempotency_key).await? {
                Ok(response) => {
                    let status = response.status();
                    if is_unavailable(status) {
                        let (code, detail) = error_detail(response).await;
                        last_code = code.or(last_code);
                        attempts.push(format!("{url}: HTTP {status}: {detail}"));
                        continue;
                    }
                    match finish(url.clone(), response).await {
                        Attempt::Answered(result) => {
                            self.inner.preferred.store(index, Ordering::Relaxed);
                            return result;
                        }
                        Attempt::Failed(detail) => attempts.push(format!("{url}: {detail}")),
                    }
                }
                Err(e) => {
                    attempts.push(format!("{url}: {}", describe_transport(&e)));
                }
            }
        }
        Err(ClientError::Unavailable {
            attempts,
            last_code,
        })
    }

    /// Sends the call to one coordinator. The outer error is local (a file to
    /// send cannot be opened), the inner one the transport's.
    async fn send_once(
        &self,
        url: &str,
        call: &Call<'_>,
        idempotency_key: Option<&str>,
    ) -> Result<Result<reqwest::Response, reqwest::Error>, ClientError> {
        let mut req = self
            .inner
            .http
            .request(call.method.clone(), url)
            .timeout(call.timeout);
        if !call.query.is_empty() {
            req = req.query(&call.query);
        }
        req = match &self.inner.credentials {
            Credentials::None => req,
            Credentials::Token(t) => req.header(headers::TOKEN, t),
            Credentials::ApiKey(k) => req.bearer_auth(k),
        };
        if let Some(key) = idempotency_key {
            req = req.header(headers::IDEMPOTENCY_KEY, key);
        }
        req = match &call.body {
            Payload::None => req,
            Payload::Json(body) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone()),
            Payload::File(path) => {
                let (file, len) = open_with_len(path).await?;
                req.header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, len)
                    .body(reqwest::Body::wrap_stream(ReaderStream::new(file)))
            }
        };
        Ok(req.send().await)
    }
}

/// Opens a file to send and tells its length, for `content-length`.
async fn open_with_len(path: &Path) -> Result<(tokio::fs::File, u64), ClientError> {
    let file_error = |source| ClientError::File {
        path: path.to_path_buf(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(file_error)?;
    let len = file.metadata().await.map_err(file_error)?.len();
    Ok((file, len))
}

fn artifact_path(digest: &Digest) -> String {
    // A digest is `sha256:` and hex: safe in a path as it is.
    format!("/v1/artifacts/{digest}")
}

/// A HEAD answer: the size on success, `None` when the artifact is unknown.
/// HEAD answers carry no body, so an error's code comes from its
/// [`headers::ERROR_CODE`] header.
fn head_answer(url: &str, response: &reqwest::Response) -> Result<Option<u64>, ClientError> {
    let status = response.status();
    if status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(ClientError::Api {
            status: status.as_u16(),
            code: code_header(response),
            message: format!("HEAD {url} answered HTTP {status}"),
        });
    }
    // Read from the header: the body of a HEAD answer is empty, whatever its length.
    response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .map(Some)
        .ok_or_else(|| ClientError::Decode {
            url: url.to_string(),
            detail: "no content-length in the answer".into(),
        })
}

/// The code an answer without an envelope names in its header; one that
/// names none (not a coordinator's answer) is `Internal`.
fn code_header(response: &reqwest::Response) -> ErrorCode {
    response
        .headers()
        .get(headers::ERROR_CODE)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(ErrorCode::Internal)
}

/// Streams a successful answer's body into `dest`, hashing it on the way. A
/// local file error ends the call; a broken transfer tries the next coordinator.
async fn save_body(mut response: reqwest::Response, dest: &Path) -> Attempt<(Digest, u64)> {
    let file_error = |source| {
        Attempt::Answered(Err(ClientError::File {
            path: dest.to_path_buf(),
            source,
        }))
    };
    let mut file = match tokio::fs::File::create(dest).await {
        Ok(file) => file,
        Err(e) => return file_error(e),
    };
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                hasher.update(&chunk);
                size += chunk.len() as u64;
                if let Err(e) = file.write_all(&chunk).await {
                    return file_error(e);
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Attempt::Failed(format!(
                    "the download broke off: {}",
                    describe_transport(&e)
                ));
            }
        }
    }
    if let Err(e) = file.flush().await {
        return file_error(e);
    }
    Attempt::Answered(Ok((Digest::from_sha256(&hasher.finalize().into()), size)))
}

impl<'a> Call<'a> {
    fn get(path: &str) -> Call<'a> {
        Call {
            method: Method::GET,
            path: path.to_string(),
            query: Vec::new(),
            body: Payload::None,
            idempotency_key: None,
            timeout: REQUEST_TIMEOUT,
        }
    }

    fn post(path: &str, body: &impl Serialize, idempotency_key: Option<&'a str>) -> Call<'a> {
        Call {
            method: Method::POST,
            path: path.to_string(),
            query: Vec::new(),
            // Serialising our own wire types cannot fail.
            body: Payload::Json(serde_json::to_vec(body).expect("wire types serialise")),
            idempotency_key,
            timeout: REQUEST_TIMEOUT,
        }
    }
}

/// A long-poll over a version index, with the time to wait in its timeout.
fn watch_call<'a>(path: &str, index: Option<u64>, wait: Duration) -> Call<'a> {
    let mut call = Call::get(path);
    if let Some(index) = index {
        call.query.push(("index", index.to_string()));
    }
    call.query.push(("wait_ms", wait.as_millis().to_string()));
    call.timeout = wait + LONG_POLL_SLACK;
    call
}

/// Statuses that say "this coordinator cannot serve you now; another might".
fn is_unavailable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Escapes an id for use as one path segment.
fn segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn describe_transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection refused or unreachable".to_string()
    } else {
        e.to_string()
    }
}

async fn error_detail(response: reqwest::Response) -> (Option<ErrorCode>, String) {
    match response.json::<ErrorEnvelope>().await {
        Ok(env) => (Some(env.error.code), env.error.message),
        Err(_) => (None, "no error envelope".to_string()),
    }
}

async fn decode<T: DeserializeOwned>(
    url: &str,
    response: reqwest::Response,
) -> Result<T, ClientError> {
    if !response.status().is_success() {
        return Err(error_of(url, response).await);
    }
    let bytes = response.bytes().await.map_err(|e| ClientError::Decode {
        url: url.to_string(),
        detail: e.to_string(),
    })?;
    // An empty answer (204) reads as JSON null, which `()` accepts.
    let json: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
    serde_json::from_slice(json).map_err(|e| ClientError::Decode {
        url: url.to_string(),
        detail: e.to_string(),
    })
}

/// The error an unsuccessful answer carries in its envelope.
async fn error_of(url: &str, response: reqwest::Response) -> ClientError {
    let status = response.status();
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => {
            return ClientError::Decode {
                url: url.to_string(),
                detail: e.to_string(),
            };
        }
    };
    match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
        Ok(env) => ClientError::Api {
            status: status.as_u16(),
            code: env.error.code,
            message: env.error.message,
        },
        Err(_) => ClientError::Decode {
            url: url.to_string(),
            detail: format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("job-1_a.b"), "job-1_a.b");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn urls_must_have_a_scheme() {
        assert!(Client::new(&["127.0.0.1:1".into()], Credentials::None).is_err());
        assert!(Client::new(&[], Credentials::None).is_err());
        let c = Client::new(
            &Client::split_urls("http://a:1/, http://b:2"),
            Credentials::None,
        )
        .unwrap();
        assert_eq!(c.urls(), ["http://a:1", "http://b:2"]);
    }
}
