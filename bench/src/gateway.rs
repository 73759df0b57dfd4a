//! The gateway benchmark. Through `skyclaw gateway` (its own process, routing
//! to a service a fake host reports at a static nginx backend) and through
//! nginx itself (one worker, upstream keepalive: the anchor) to that same
//! backend, with the same `wrk` load, alternating A B A B, and the backend
//! directly as the baseline: requests/s, p50/p99 and CPU seconds per 100k
//! requests of each proxy. Then the gateway's memory at rest and with many
//! idle client connections, and the same load through a `skyclaw dev`
//! network's gateway to the ts-api and hello-http examples.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use skyclaw_api::Client;
use skyclaw_api::hosts::{Heartbeat, RegisterHost};
use skyclaw_api::services::{InstanceReport, InstanceReports, InstanceState, ServiceCaps};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{TOKEN, start_coordinator, token_client};

/// The service the static backend is published as.
const STATIC_SERVICE: &str = "static";
/// What the static backend answers to every request.
const STATIC_BODY: &str = "hello\n";
/// How long a started process may take to answer.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Heartbeats of the fake host: well within the default host TTL.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Longest assignments long-poll of the fake host.
const ASSIGNMENTS_WAIT: Duration = Duration::from_secs(10);
/// Idle connections opened at once while measuring memory: enough to be
/// quick, few enough not to overflow the gateway's accept backlog.
const IDLE_BATCH: usize = 256;
/// Client connections the gateway accepts in this benchmark: above the idle
/// connections it is asked to hold.
const GATEWAY_MAX_CONNECTIONS: &str = "50000";
/// Path of ts-api that does some work: query parsing and a JSON answer.
const TS_API_PATH: &str = "/hello?name=Ada";

/// The knobs of `skyclaw-bench gateway`.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Seconds each wrk run lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections wrk keeps open in each run.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// wrk threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// How many times nginx and the gateway are each measured, alternately.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Idle client connections held open while the gateway's memory is read.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// The skyclaw binary; by default the one beside this benchmark's (so
    /// `cargo build --release` first).
    #[arg(long)]
    skyclaw: Option<PathBuf>,
    /// Worker threads of the gateway under test (`skyclaw gateway
    /// --workers`): one by default, as nginx runs one worker process here.
    #[arg(long, default_value_t = 1)]
    gateway_workers: usize,
    /// Skip the ts-api and hello-http part (which builds both examples).
    #[arg(long)]
    no_services: bool,
}

pub async fn run(args: GatewayArgs) -> Result<()> {
    for tool in ["wrk", "nginx"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()?
            .code()
            != Some(0)
        {
            bail!("{tool} is not installed (on Debian: apt-get install wrk nginx-light)");
        }
    }
    let skyclaw = match &args.skyclaw {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("skyclaw"),
    };
    if !skyclaw.is_file() {
        bail!(
            "{} does not exist: run `cargo build --release` first, or pass --skyclaw",
            skyclaw.display()
        );
    }
    // This process holds the idle connections.
    skyclaw_api::serve::raise_nofile_limit().context("raise the open-file limit")?;
    let tmp = tempfile::tempdir()?;
    let wrk = Wrk {
        threads: args.threads,
        connections: args.connections,
        seconds: args.seconds,
    };
    println!(
        "gateway benchmark: wrk --latency -t{} -c{} -d{}s, {} cores, {} (1 worker), gateway --workers {}",
        args.threads,
        args.connections,
        args.seconds,
        crate::cores(),
        nginx_version()?,
        args.gateway_workers,
    );

    let backend = Nginx::start(&tmp.path().join("backend"), NginxRole::Static).await?;
    let proxy = Nginx::start(
        &tmp.path().join("proxy"),
        NginxRole::Proxy {
            backend: backend.port,
        },
    )
    .await?;
    let coordinator = start_coordinator(&tmp.path().join("coordinator")).await?;
    let client = token_client(&coordinator.url)?;
    let host = publish_static(
        &client,
        tmp.path(),
        &format!("http://127.0.0.1:{}", backend.port),
    )
    .await?;
    let gateway = GatewayProcess::start(&skyclaw, &coordinator.url, args.gateway_workers).await?;
    let through_gateway = format!("{}/s/{STATIC_SERVICE}/", gateway.url);
    wait_for_200(&through_gateway).await?;
    let at_rest = rss_kib(gateway.pid())?;

    print_header();
    let direct = wrk.run(&format!("http://127.0.0.1:{}/", backend.port))?;
    direct.print("direct to the nginx backend", None);
    let (mut nginx_runs, mut gateway_runs) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let measured = wrk.measure(&format!("http://127.0.0.1:{}/", proxy.port), &proxy.pids())?;
        measured
            .0
            .print(&format!("nginx proxy, round {round}"), Some(measured.1));
        nginx_runs.push(measured);
        let measured = wrk.measure(&through_gateway, &[gateway.pid()])?;
        measured
            .0
            .print(&format!("skyclaw gateway, round {round}"), Some(measured.1));
        gateway_runs.push(measured);
    }
    print_ratio(&nginx_runs, &gateway_runs);

    let idle = hold_idle(&gateway.addr, &through_gateway, args.idle_connections).await?;
    let loaded = rss_kib(gateway.pid())?;
    println!(
        "gateway memory: {:.1} MiB at rest, {:.1} MiB holding {} idle client connections \
         ({:.1} KiB each)",
        at_rest as f64 / 1024.0,
        loaded as f64 / 1024.0,
        idle.len(),
        loaded.saturating_sub(at_rest) as f64 / idle.len().max(1) as f64
    );
    drop(idle);
    drop(gateway);
    drop(host);
    coordinator.stop().await;
    drop((proxy, backend));

    if !args.no_services {
        services_through_dev(&skyclaw, tmp.path(), &wrk).await?;
    }
    Ok(())
}

/// `wrk` with the same load for every target.
struct Wrk {
    threads: usize,
    connections: usize,
    seconds: u64,
}

/// What one wrk run printed.
#[derive(Debug, Clone, Copy)]
struct WrkRun {
    requests: u64,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Socket errors and non-2xx/3xx answers.
    errors: u64,
}

impl Wrk {
    fn run(&self, url: &str) -> Result<WrkRun> {
        let out = Command::new("wrk")
            .arg("--latency")
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.seconds))
            .arg(url)
            .output()
            .context("run wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "wrk {url} failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse_wrk(&text).with_context(|| format!("unexpected wrk output for {url}:\n{text}"))
    }

    /// A run, and the CPU seconds per 100k requests the processes `pids`
    /// spent during it.
    fn measure(&self, url: &str, pids: &[u32]) -> Result<(WrkRun, f64)> {
        let before = cpu_seconds(pids)?;
        let run = self.run(url)?;
        let spent = cpu_seconds(pids)? - before;
        Ok((run, spent * 100_000.0 / run.requests.max(1) as f64))
    }
}

fn parse_wrk(text: &str) -> Option<WrkRun> {
    let mut run = WrkRun {
        requests: 0,
        per_sec: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
    };
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", latency] => run.p50_ms = millis(latency)?,
            ["99%", latency] => run.p99_ms = millis(latency)?,
            [n, "requests", "in", ..] => run.requests = n.parse().ok()?,
            ["Requests/sec:", n] => run.per_sec = n.parse().ok()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => run.errors += n.parse::<u64>().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                for n in rest.iter().skip(1).step_by(2) {
                    run.errors += n.trim_end_matches(',').parse::<u64>().ok()?;
                }
            }
            _ => {}
        }
    }
    (run.requests > 0).then_some(run)
}

/// A wrk latency such as `612.00us`, `1.20ms` or `1.01s`, in milliseconds.
fn millis(latency: &str) -> Option<f64> {
    let split = latency.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = latency.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

fn print_header() {
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>13} {:>7}",
        "target", "req/s", "p50 ms", "p99 ms", "CPU s/100k", "errors"
    );
}

impl WrkRun {
    fn print(&self, name: &str, cpu_per_100k: Option<f64>) {
        let cpu = cpu_per_100k.map_or("-".to_string(), |c| format!("{c:.2}"));
        println!(
            "{name:<34} {:>10.0} {:>9.2} {:>9.2} {cpu:>13} {:>7}",
            self.per_sec, self.p50_ms, self.p99_ms, self.errors
        );
    }
}

/// The gateway against nginx over all rounds: throughput as the ratio of the
/// mean requests/s, latency as the worst p99 of each.
fn print_ratio(nginx: &[(WrkRun, f64)], gateway: &[(WrkRun, f64)]) {
    let mean = |runs: &[(WrkRun, f64)]| {
        runs.iter().map(|r| r.0.per_sec).sum::<f64>() / runs.len().max(1) as f64
    };
    let worst_p99 = |runs: &[(WrkRun, f64)]| runs.iter().map(|r| r.0.p99_ms).fold(0.0, f64::max);
    let cpu =
        |runs: &[(WrkRun, f64)]| runs.iter().map(|r| r.1).sum::<f64>() / runs.len().max(1) as f64;
    println!(
        "gateway / nginx: {:.2}x the requests/s ({:.0} vs {:.0}), worst p99 {:.2} ms vs {:.2} ms, \
         {:.2} vs {:.2} CPU s per 100k requests",
        mean(gateway) / mean(nginx),
        mean(gateway),
        mean(nginx),
        worst_p99(gateway),
        worst_p99(nginx),
        cpu(gateway),
        cpu(nginx)
    );
}

/// What an nginx of this benchmark does.
enum NginxRole {
    /// Answers every request with [`STATIC_BODY`].
    Static,
    /// Proxies to the backend on this port, as `../shared/anchors/nginx-proxy.sh`
    /// does: one worker, HTTP/1.1 upstream with keepalive.
    Proxy { backend: u16 },
}

/// An nginx master and its one worker, stopped when dropped.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    async fn start(dir: &Path, role: NginxRole) -> Result<Nginx> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let (upstream, location) = match role {
            NginxRole::Static => (String::new(), format!("return 200 {STATIC_BODY:?};")),
            NginxRole::Proxy { backend } => (
                format!("  upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}\n"),
                "proxy_pass http://backend; proxy_http_version 1.1; \
                 proxy_set_header Connection \"\";"
                    .to_string(),
            ),
        };
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n{upstream}  server {{\n    listen 127.0.0.1:{port};\n    \
             location / {{ {location} }}\n  }}\n}}\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(dir)
            .stdin(Stdio::null())
            .spawn()
            .context("start nginx")?;
        let nginx = Nginx { child, port };
        wait_for_200(&format!("http://127.0.0.1:{port}/")).await?;
        Ok(nginx)
    }

    /// The master and its worker: whose CPU time the proxy spends.
    fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        pids.extend(children(self.child.id()));
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker too.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn nginx_version() -> Result<String> {
    let out = Command::new("nginx").arg("-v").output()?;
    Ok(String::from_utf8_lossy(&out.stderr)
        .trim()
        .trim_start_matches("nginx version: ")
        .to_string())
}

/// A free port on 127.0.0.1 for a process that cannot be told to pick one.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `url` until it answers 200.
async fn wait_for_200(url: &str) -> Result<()> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        match reqwest::get(url).await {
            Ok(answer) if answer.status() == 200 => return Ok(()),
            answer if Instant::now() > deadline => {
                bail!("{url} did not answer 200 within {START_DEADLINE:?}: {answer:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| stat_fields(child).is_some_and(|f| f.get(1) == Some(&pid.to_string())))
        .collect()
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, ….
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User and system CPU seconds the processes `pids` spent so far.
fn cpu_seconds(pids: &[u32]) -> Result<f64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .context("the clock tick rate is unknown")? as f64;
    let mut total = 0.0;
    for &pid in pids {
        let fields = stat_fields(pid).with_context(|| format!("read /proc/{pid}/stat"))?;
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
        for field in &fields[11..13] {
            total += field.parse::<f64>()? / ticks;
        }
    }
    Ok(total)
}

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no VmRSS value")?
        .parse()?)
}

/// Registers a host that runs [`STATIC_SERVICE`]: its one instance is
/// reported healthy at `endpoint`. The returned task keeps the host alive.
async fn publish_static(
    client: &Client,
    dir: &Path,
    endpoint: &str,
) -> Result<tokio::task::JoinHandle<()>> {
    let host_id = "bench-static";
    client
        .register_host(&RegisterHost {
            host_id: host_id.into(),
            incarnation: "bench".into(),
            name: host_id.into(),
            capabilities: vec!["shell".into()],
            max_parallel: 1,
            allowed_commands: vec!["node".into()],
            openclaw_version: None,
            version: env!("CARGO_PKG_VERSION").into(),
            sandbox_only: false,
            wasi: None,
            services: Some(ServiceCaps {
                max_instances: 1,
                control_url: None,
            }),
        })
        .await?;
    // A native service needs a bundle; the fake host never runs it.
    let src = dir.join("static-src");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("server.js"), "")?;
    let bundle = dir.join("static.tar");
    skyclaw_runtime::bundle::build(&src, &[], &[], &bundle)?;
    let (artifact, _) = client.put_artifact(&bundle).await?;
    let spec = serde_json::from_value(serde_json::json!({
        "kind": "native", "artifact": artifact.digest.to_string(), "command": "node",
        "args": ["server.js"], "replicas": 1,
    }))?;
    client.put_service(STATIC_SERVICE, &spec).await?;
    let (client, endpoint) = (client.clone(), endpoint.to_string());
    Ok(tokio::spawn(async move {
        let mut index = None;
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        // The instances last reported healthy. A report is a write that
        // moves the index the next long-poll waits past, so reporting the
        // same instances again would spin, and take the CPU being measured.
        let mut reported: Vec<String> = Vec::new();
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let _ = client.heartbeat(host_id, &Heartbeat::default()).await;
                }
                assigned = client.assignments(host_id, index, ASSIGNMENTS_WAIT) => {
                    let Ok(assigned) = assigned else { continue };
                    index = Some(assigned.index);
                    let reports: Vec<InstanceReport> = assigned
                        .instances
                        .iter()
                        .filter(|a| !a.stop)
                        .map(|a| InstanceReport {
                            instance_id: a.instance_id.clone(),
                            state: InstanceState::Healthy,
                            endpoint: Some(endpoint.clone()),
                            restarts: 0,
                            last_error: None,
                        })
                        .collect();
                    let running: Vec<String> =
                        reports.iter().map(|r| r.instance_id.clone()).collect();
                    if running == reported {
                        continue;
                    }
                    if client.report_instances(host_id, &InstanceReports { reports }).await.is_ok() {
                        reported = running;
                    }
                }
            }
        }
    }))
}

/// `skyclaw gateway` as a process of its own, stopped when dropped.
struct GatewayProcess {
    child: Child,
    url: String,
    /// `IP:PORT` it routes on.
    addr: String,
}

impl GatewayProcess {
    async fn start(skyclaw: &Path, coordinator: &str, workers: usize) -> Result<GatewayProcess> {
        let mut child = Command::new(skyclaw)
            .args(["gateway", "--coordinator", coordinator, "--token", TOKEN])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--max-connections", GATEWAY_MAX_CONNECTIONS])
            .args(["--workers", &workers.to_string()])
            .env("SKYCLAW_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("start skyclaw gateway")?;
        let stdout = child.stdout.take().context("the gateway's stdout")?;
        // "gateway routing on URL; /health and /metrics on URL"
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
                .map(|_| line)
        })
        .await??;
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .map(|w| w.trim_end_matches(';').to_string())
            .with_context(|| format!("unexpected first line from the gateway: {line:?}"))?;
        let addr = url.trim_start_matches("http://").to_string();
        Ok(GatewayProcess { child, url, addr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens `n` client connections to the gateway at `addr`, each of which
/// sends one request to `url`'s path, reads the answer, and then idles.
async fn hold_idle(addr: &str, url: &str, n: usize) -> Result<Vec<TcpStream>> {
    let path = url
        .splitn(4, '/')
        .nth(3)
        .map(|p| format!("/{p}"))
        .unwrap_or("/".into());
    let request = format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n");
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        let batch = IDLE_BATCH.min(n - held.len());
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let (addr, request) = (addr.to_string(), request.clone());
            opening.spawn(async move { one_exchange(&addr, &request).await });
        }
        for opened in opening.join_all().await {
            held.push(opened?);
        }
    }
    Ok(held)
}

/// Connects, sends `request` and reads until the static body has arrived.
async fn one_exchange(addr: &str, request: &str) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(STATIC_BODY.as_bytes()) {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bail!(
                "the gateway closed an idle connection early: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        answer.extend_from_slice(&buf[..n]);
    }
    Ok(stream)
}

/// `skyclaw dev` with ts-api and hello-http deployed by `skyclaw deploy`:
/// each service directly at one endpoint, and through the dev gateway.
async fn services_through_dev(skyclaw: &Path, tmp: &Path, wrk: &Wrk) -> Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = tmp.join("dev");
    let mut dev = Command::new(skyclaw)
        .args(["dev", "--port", "0", "--gateway-port", "0", "--data-dir"])
        .arg(&data)
        .env("SKYCLAW_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("start skyclaw dev")?;
    let stdout = dev.stdout.take().context("dev's stdout")?;
    let banner = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.starts_with("Try,"))
            .collect::<Vec<_>>()
    })
    .await?;
    let field = |name: &str| {
        banner
            .iter()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .map(|u| u.trim_end_matches("/s/<service>/").to_string())
            .with_context(|| format!("no {name} line in dev's banner: {banner:?}"))
    };
    let (coordinator, gateway) = (field("coordinator")?, field("gateway")?);
    let result = async {
        let token = std::fs::read_to_string(data.join("token"))?;
        let client = Client::new(
            &[coordinator],
            skyclaw_api::Credentials::Token(token.trim().to_string()),
        )?;
        println!();
        println!("services on a `skyclaw dev` network, deployed with `skyclaw deploy`:");
        print_header();
        for (service, path) in [("ts-api", TS_API_PATH), ("hello-http", "/")] {
            deploy(skyclaw, &repo.join("examples").join(service), &data)?;
            let endpoint = endpoint_of(&client, service).await?;
            wrk.run(&format!("{endpoint}{path}"))?
                .print(&format!("{service} directly"), None);
            let through = format!("{gateway}/s/{service}{path}");
            wait_for_200(&through).await?;
            wrk.run(&through)?
                .print(&format!("{service} through the gateway"), None);
        }
        anyhow::Ok(())
    }
    .await;
    let pid = nix::unistd::Pid::from_raw(dev.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let _ = dev.wait();
    result
}

/// `skyclaw deploy DIR` against the dev network in `data`.
fn deploy(skyclaw: &Path, dir: &Path, data: &Path) -> Result<()> {
    let out = Command::new(skyclaw)
        .arg("deploy")
        .arg(dir)
        .env("SKYCLAW_DEV_DIR", data)
        .env("SKYCLAW_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .context("run skyclaw deploy")?;
    if !out.status.success() {
        bail!(
            "skyclaw deploy {} failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// One routable endpoint of `service`, as the coordinators list it.
async fn endpoint_of(client: &Client, service: &str) -> Result<String> {
    let endpoints = client.endpoints(None, Duration::ZERO).await?;
    endpoints
        .services
        .iter()
        .find(|s| s.name == service)
        .and_then(|s| s.endpoints.first())
        .map(|e| e.url.trim_end_matches('/').to_string())
        .with_context(|| format!("{service} has no endpoint"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "Running 10s test @ http://127.0.0.1:1/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.22ms  300.00us  12.00ms   90.00%
    Req/Sec    52.00k     1.00k   54.00k    70.00%
  Latency Distribution
     50%  612.00us
     75%    1.30ms
     90%    1.50ms
     99%    2.10ms
  523456 requests in 10.00s, 70.00MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:  52345.60
Transfer/sec:      7.00MB
";

    #[test]
    fn wrk_output_is_read() {
        let run = parse_wrk(WRK_OUTPUT).expect("parsed");
        assert_eq!(run.requests, 523_456);
        assert_eq!(run.per_sec, 52_345.6);
        assert_eq!(run.p50_ms, 0.612);
        assert_eq!(run.p99_ms, 2.1);
        assert_eq!(run.errors, 10);
    }
}
