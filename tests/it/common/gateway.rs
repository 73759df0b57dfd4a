//! The kit's part for gateways: `skyclaw gateway` as a real process on ports
//! of its own; the endpoints tests route to (in-process backends that count
//! what they serve and answer as told, echo heads, take uploads and send
//! downloads a part at a time, and switch protocols; sockets that accept and
//! never answer; endpoints that close every connection after one answer;
//! node processes to kill -9); publishing them as a service's endpoints
//! through a fake host; and client load that counts every failure.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use skyclaw_api::Client;

use super::services::{node_service, push_files};
use super::{Auth, FakeServiceHost, Serve, TOKEN, eventually, sigterm_and_reap, skyclaw};

/// Probing and ejection quick enough for a test to watch an endpoint go and
/// come back within seconds: probes every 100 ms, two to fall or rise, and
/// half a second of ejection.
pub const QUICK_HEALTH: &[&str] = &[
    "--probe-interval-ms",
    "100",
    "--probe-rise",
    "2",
    "--probe-fall",
    "2",
    "--ejection-ms",
    "500",
];

/// How long one request of the test's clients may take: far above any
/// gateway timeout a test sets, so a gateway timeout shows as its answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A `skyclaw gateway` process on 127.0.0.1, its ports picked by the kernel
/// and read from the line it prints on start.
pub struct Gateway {
    child: Option<Child>,
    /// Where it routes service traffic.
    pub url: String,
    /// Where it serves `/health` and `/metrics`.
    pub admin: String,
}

impl Gateway {
    /// Starts a gateway watching `coordinators` (comma-separated) with
    /// `auth` (the token or a key) and `extra` flags.
    pub async fn start(coordinators: &str, auth: Auth<'_>, extra: &[&str]) -> Gateway {
        let mut cmd = skyclaw();
        cmd.args(["gateway", "--coordinator", coordinators])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        match auth {
            Auth::Token => cmd.args(["--token", TOKEN]),
            Auth::Key(secret) => cmd.args(["--api-key", secret]),
            Auth::None | Auth::Header(..) => panic!("a gateway starts with the token or a key"),
        };
        let mut child = cmd.spawn().expect("spawn skyclaw gateway");
        let stdout = child.stdout.take().expect("the gateway's stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let line = eventually("the gateway to print where it listens", || async {
            rx.try_recv().ok()
        })
        .await;
        // "gateway routing on URL; /health and /metrics on URL"
        let urls: Vec<&str> = line
            .split_whitespace()
            .filter(|w| w.starts_with("http"))
            .map(|w| w.trim_end_matches(';'))
            .collect();
        let [url, admin] = urls[..] else {
            panic!("unexpected first line from the gateway: {line}");
        };
        Gateway {
            child: Some(child),
            url: url.to_string(),
            admin: admin.to_string(),
        }
    }

    /// The value of a series on its `/metrics`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        super::metric(&self.admin, series).await
    }

    /// How many of `service`'s endpoints are in `state` (up, draining, down,
    /// ejected) now.
    pub async fn endpoints(&self, service: &str, state: &str) -> usize {
        let series =
            format!("skyclaw_gateway_endpoints{{service=\"{service}\",state=\"{state}\"}}");
        self.metric(&series).await.unwrap_or(0.0) as usize
    }

    /// Waits until `n` of `service`'s endpoints are up.
    pub async fn wait_up(&self, service: &str, n: usize) {
        eventually(&format!("{n} endpoints of {service} up"), || async {
            (self.endpoints(service, "up").await == n).then_some(())
        })
        .await;
    }

    /// A service counter (`retries`, `retry_budget_refusals`, `ejections`).
    pub async fn counter(&self, name: &str, service: &str) -> f64 {
        let series = format!("skyclaw_gateway_{name}_total{{service=\"{service}\"}}");
        self.metric(&series).await.unwrap_or(0.0)
    }

    /// `/health` as JSON.
    pub async fn health(&self) -> Option<serde_json::Value> {
        reqwest::get(format!("{}/health", self.admin))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 gateway");
            child.wait().expect("reap gateway");
        }
    }

    /// SIGTERM, and the exit status once it has drained; blocks, so a test
    /// that watches the drain calls it on a blocking thread.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("gateway running");
        sigterm_and_reap(&mut child, "gateway")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One request a [`Backend`] served (health probes are not counted).
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: Method,
    pub path: String,
    pub idempotency_key: Option<String>,
}

#[derive(Debug)]
struct BackendState {
    name: String,
    status: AtomicU16,
    /// Milliseconds each answer waits before it is sent.
    delay_ms: AtomicU64,
    hits: Mutex<Vec<Hit>>,
    /// Bytes of `POST /upload` bodies received so far.
    uploaded: tokio::sync::watch::Sender<u64>,
    /// Lets `GET /download` send the rest of its answer.
    download_rest: tokio::sync::Notify,
}

/// What `GET /download` sends before it waits for the test, and again
/// after: more than the gateway buffers of anything.
pub const DOWNLOAD_PART: usize = 256 * 1024;

/// An endpoint served by the test itself on 127.0.0.1: `/health` answers
/// 200; `/echo`, `/upload`, `/download` and `/upgrade` do what their
/// handlers below say; every other path answers the status the test sets
/// (200 at first) with the backend's name as body, and each such request
/// is recorded.
pub struct Backend {
    pub url: String,
    state: Arc<BackendState>,
    server: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// One backend per name, each answering `status` from the start, and
    /// their URLs.
    pub async fn all_answering(names: &[&str], status: u16) -> (Vec<Backend>, Vec<String>) {
        let mut backends = Vec::new();
        for name in names {
            let backend = Backend::start(name).await;
            backend.answer(status);
            backends.push(backend);
        }
        let urls = backends.iter().map(|b| b.url.clone()).collect();
        (backends, urls)
    }

    pub async fn start(name: &str) -> Backend {
        let state = Arc::new(BackendState {
            name: name.to_string(),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            hits: Mutex::new(Vec::new()),
            uploaded: tokio::sync::watch::Sender::new(0),
            download_rest: tokio::sync::Notify::new(),
        });
        let app = axum::Router::new()
            .route("/health", axum::routing::get(|| async { "ok" }))
            .route("/echo", axum::routing::any(echo_head))
            .route("/upload", axum::routing::post(upload))
            .route("/download", axum::routing::get(download))
            .route("/upgrade", axum::routing::get(upgrade_to_echo))
            .fallback(backend_answer)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Backend { url, state, server }
    }

    /// What it answers from now on (health probes aside).
    pub fn answer(&self, status: u16) {
        self.state.status.store(status, Ordering::Relaxed);
    }

    /// How long each answer (health probes aside) waits from now on, once
    /// its request is recorded.
    pub fn delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Every request it served.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// Requests with `method` it served.
    pub fn count(&self, method: &Method) -> usize {
        self.hits().iter().filter(|h| h.method == *method).count()
    }

    /// Waits until `POST /upload` bodies have brought at least `bytes`.
    pub async fn wait_uploaded(&self, bytes: u64) {
        let mut uploaded = self.state.uploaded.subscribe();
        tokio::time::timeout(super::DEADLINE, uploaded.wait_for(|n| *n >= bytes))
            .await
            .unwrap_or_else(|_| panic!("{bytes} bytes uploaded to the backend in time"))
            .expect("the backend is running");
    }

    /// Lets the `GET /download` in progress send its second part.
    pub fn release_download(&self) {
        self.state.download_rest.notify_one();
    }
}

/// `ANY /echo`: the request's head as the backend got it, as JSON: its
/// method, path and headers (a repeated header's values joined by ", ").
async fn echo_head(request: Request) -> axum::Json<serde_json::Value> {
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    axum::Json(serde_json::json!({
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "headers": headers,
    }))
}

/// `POST /upload`: reads the body as it comes, telling the test how much
/// has arrived; answers its length and sha256 as `LENGTH HEX`.
async fn upload(State(state): State<Arc<BackendState>>, request: Request) -> String {
    use http_body_util::BodyExt;
    use sha2::Digest;
    let mut body = request.into_body();
    let (mut length, mut digest) = (0u64, sha2::Sha256::new());
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.expect("the upload's body").into_data() else {
            continue;
        };
        length += data.len() as u64;
        digest.update(&data);
        state.uploaded.send_modify(|n| *n += data.len() as u64);
    }
    format!("{length} {}", hex::encode(digest.finalize()))
}

/// `GET /download`: [`DOWNLOAD_PART`] bytes of `a`, then, once the test
/// releases it, as many of `b`.
async fn download(State(state): State<Arc<BackendState>>) -> axum::body::Body {
    let (mut parts, body) = http_body_util::channel::Channel::<bytes::Bytes>::new(1);
    tokio::spawn(async move {
        let _ = parts.send_data(vec![b'a'; DOWNLOAD_PART].into()).await;
        state.download_rest.notified().await;
        let _ = parts.send_data(vec![b'b'; DOWNLOAD_PART].into()).await;
    });
    axum::body::Body::new(body)
}

/// `GET /upgrade` with `Upgrade: echo`: switches protocols, then sends
/// back every byte it receives until the client closes.
async fn upgrade_to_echo(mut request: Request) -> axum::response::Response {
    let asked = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"echo"));
    if !asked {
        return (StatusCode::BAD_REQUEST, "upgrade to echo").into_response();
    }
    let switching = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = switching.await else {
            return;
        };
        let (mut reader, mut writer) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
        let _ = tokio::io::copy(&mut reader, &mut writer).await;
    });
    axum::response::Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, "echo")
        .body(axum::body::Body::empty())
        .expect("a 101 answer")
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn backend_answer(
    State(state): State<Arc<BackendState>>,
    request: Request,
) -> impl IntoResponse {
    let idempotency_key = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state.hits.lock().unwrap().push(Hit {
        method: request.method().clone(),
        path: request.uri().path().to_string(),
        idempotency_key,
    });
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(state.status.load(Ordering::Relaxed)).unwrap();
    (status, state.name.clone())
}

/// An endpoint that accepts connections and never answers a byte, probes
/// included; it holds every connection until dropped.
pub struct HungEndpoint {
    pub url: String,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HungEndpoint {
    pub async fn start() -> HungEndpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                held.push(stream);
            }
        });
        HungEndpoint {
            url,
            accepted,
            task,
        }
    }

    /// Connections it accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for HungEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An endpoint that answers one request per connection (`200`, body
/// `ok`) and then closes it without saying so beforehand (no
/// `Connection: close`): what a server with a short keep-alive timeout
/// does to a connection the gateway keeps idle.
pub struct ClosingEndpoint {
    pub url: String,
    answered: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ClosingEndpoint {
    pub async fn start() -> ClosingEndpoint {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answered = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (counter, closings) = (answered.clone(), closed.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (counter, closings) = (counter.clone(), closings.clone());
                tokio::spawn(async move {
                    // Requests to it have no body: the head is all there is.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_ok() {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(stream);
                    closings.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
        ClosingEndpoint {
            url,
            answered,
            closed,
            task,
        }
    }

    /// Requests it answered, probes included.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    /// Connections it has answered on and closed.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::Relaxed)
    }
}

impl Drop for ClosingEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A node HTTP server answering `/health` with `ok` and every other path
/// with its `NAME`, printing its port once it listens.
const NODE_BACKEND: &str = r#"
const http = require('http');
const server = http.createServer((req, res) => {
  res.end(req.url === '/health' ? 'ok' : process.env.NAME);
});
server.listen(Number(process.env.PORT), '127.0.0.1', () => {
  console.log(server.address().port);
});
"#;

/// An endpoint in a process of its own (node), to kill -9 and start again
/// on the same port.
pub struct NodeBackend {
    child: Option<Child>,
    pub name: String,
    pub port: u16,
    pub url: String,
}

impl NodeBackend {
    pub async fn start(name: &str) -> NodeBackend {
        let mut backend = NodeBackend {
            child: None,
            name: name.to_string(),
            port: 0,
            url: String::new(),
        };
        backend.spawn().await;
        backend
    }

    async fn spawn(&mut self) {
        let mut child = std::process::Command::new("node")
            .args(["-e", NODE_BACKEND])
            .env("NAME", &self.name)
            .env("PORT", self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = eventually("node to listen", || async { rx.try_recv().ok() }).await;
        self.port = line.trim().parse().expect("node prints its port");
        self.url = format!("http://127.0.0.1:{}", self.port);
        self.child = Some(child);
    }

    /// kill -9 the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9 node");
            child.wait().expect("reap node");
        }
    }

    /// Starts it again on the port it had.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }
}

impl Drop for NodeBackend {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// URLs each published service's instances are reported at, and how many of
/// its instances were handed one so far.
type Published = Arc<Mutex<BTreeMap<String, (Vec<String>, usize)>>>;

/// The host that runs published services: every instance is reported
/// healthy at the next URL of its service's endpoints. One host plays for all
/// of a test's services, so wherever the scheduler puts an instance, it is
/// reported at its own service's endpoints.
pub struct Publisher {
    published: Published,
    _host: FakeServiceHost,
}

impl Publisher {
    pub async fn start(client: &Client) -> Publisher {
        let published = Published::default();
        let urls = published.clone();
        let host = FakeServiceHost::start(client, "publisher", move |a| {
            let mut urls = urls.lock().expect("published lock");
            match urls.get_mut(&a.service) {
                Some((endpoints, next)) => {
                    *next += 1;
                    Serve::At(endpoints[(*next - 1) % endpoints.len()].clone())
                }
                None => Serve::Crash(format!("the test published no endpoint for {}", a.service)),
            }
        })
        .await;
        Publisher {
            published,
            _host: host,
        }
    }

    /// Deploys service `name` with one replica per URL of `endpoints`.
    /// Returns once the coordinators route to all of them.
    pub async fn publish(&self, client: &Client, dir: &Path, name: &str, endpoints: &[String]) {
        self.published
            .lock()
            .expect("published lock")
            .insert(name.to_string(), (endpoints.to_vec(), 0));
        let bundle = push_files(client, dir, &[("server.js", "")]).await;
        let spec = node_service(&bundle, &["server.js"], endpoints.len() as u32);
        client.put_service(name, &spec).await.expect("deploy");
        eventually(&format!("{name}'s endpoints to be routable"), || async {
            let routable = client.endpoints(None, Duration::ZERO).await.ok()?;
            let service = routable.services.into_iter().find(|s| s.name == name)?;
            (service.endpoints.len() == endpoints.len()).then_some(())
        })
        .await;
    }
}

/// A [`Publisher`] that published service `name` at `endpoints`.
pub async fn publish(client: &Client, dir: &Path, name: &str, endpoints: &[String]) -> Publisher {
    let publisher = Publisher::start(client).await;
    publisher.publish(client, dir, name, endpoints).await;
    publisher
}

/// What a [`Load`] saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: usize,
    /// Each request that did not get a 200: its status or error, and body.
    pub failures: Vec<String>,
    /// How many 200 answers each body got.
    pub bodies: BTreeMap<String, usize>,
}

/// Clients sending `GET url` in a loop on keep-alive connections until
/// stopped, recording every answer.
pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(CLIENT_TIMEOUT)
            .build()
            .unwrap();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, report, http) = (stop.clone(), report.clone(), http.clone());
                let url = url.to_string();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = match http.get(&url).send().await {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                r.text().await.map(|body| (status, body))
                            }
                            Err(e) => Err(e),
                        };
                        let mut report = report.lock().unwrap();
                        match answer {
                            Ok((200, body)) => {
                                report.ok += 1;
                                *report.bodies.entry(body).or_default() += 1;
                            }
                            Ok((status, body)) => report.failures.push(format!("{status} {body}")),
                            Err(e) => report.failures.push(format!("{e:?}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            report,
            tasks,
        }
    }

    /// 200 answers with `body` so far.
    pub fn answered_by(&self, body: &str) -> usize {
        let report = self.report.lock().unwrap();
        report.bodies.get(body).copied().unwrap_or(0)
    }

    /// Waits for `n` more 200 answers with `body`.
    pub async fn wait_answers(&self, body: &str, n: usize) {
        let start = self.answered_by(body);
        eventually(&format!("{n} more answers from {body}"), || async {
            (self.answered_by(body) >= start + n).then_some(())
        })
        .await;
    }

    /// Stops the clients after their requests in flight and reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("a load client");
        }
        std::mem::take(&mut *self.report.lock().unwrap())
    }
}
