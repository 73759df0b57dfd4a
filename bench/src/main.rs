//! Benchmarks that start a real coordinator and real hosts on 127.0.0.1 (in
//! this process, on their own ports and temp dirs) and print figures.
//!
//! `cargo run --release -p skyclaw-bench -- jobs` measures durable enqueue
//! throughput, end-to-end throughput of no-op shell jobs with two hosts, and
//! submit-to-succeeded latency; `-- wasi` measures WASI jobs (see `wasi.rs`);
//! `-- http` serves a wasi:http component for `wrk` (see `http.rs`);
//! `-- gateway` measures `skyclaw gateway` against nginx (see `gateway.rs`).

mod gateway;
mod http;
mod wasi;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use skyclaw_api::jobs::{JobSpec, JobStatus};
use skyclaw_api::{Client, Credentials};
use tokio::sync::oneshot;

const TOKEN: &str = "bench-token-0123456789abcdef";
/// Job uids each benchmark host gets: more than its slots.
const BENCH_UIDS_PER_HOST: u32 = 1024;

#[derive(Parser)]
#[command(about = "Skyclaw benchmarks: start real nodes on 127.0.0.1 and print figures")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Enqueue throughput, end-to-end shell job throughput, and latency.
    Jobs {
        /// Concurrent client connections for the enqueue phase.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Length of the enqueue phase, in seconds.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// No-op jobs pushed through two hosts in the end-to-end phase.
        #[arg(long, default_value_t = 5000)]
        jobs: usize,
        /// Parallel job slots per host.
        #[arg(long, default_value_t = 32)]
        max_parallel: u32,
        /// Jobs whose submit-to-succeeded latency is sampled, one at a time.
        #[arg(long, default_value_t = 300)]
        latency_samples: usize,
    },
    /// In-host overhead of a warm no-op WASI job, compile vs cached load, and
    /// end-to-end WASI job throughput.
    Wasi(wasi::WasiArgs),
    /// Serves a wasi:http component on 127.0.0.1 for a load generator.
    Http(http::HttpArgs),
    /// `skyclaw gateway` against nginx proxying the same static backend, side
    /// by side under wrk; its memory; and the example services through it.
    Gateway(gateway::GatewayArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    match Args::parse().bench {
        Bench::Jobs {
            connections,
            seconds,
            jobs,
            max_parallel,
            latency_samples,
        } => {
            println!("skyclaw jobs benchmark ({} cores)", cores());
            // Each phase starts from an empty coordinator of its own, so the
            // enqueue phase's backlog does not weigh on the next.
            let tmp = tempfile::tempdir()?;
            let coordinator = start_coordinator(&tmp.path().join("enqueue")).await?;
            let client = token_client(&coordinator.url)?;
            enqueue_phase(&client, connections, Duration::from_secs(seconds)).await?;
            coordinator.stop().await;

            let coordinator = start_coordinator(&tmp.path().join("run")).await?;
            let client = token_client(&coordinator.url)?;
            let hosts = start_hosts(&coordinator.url, tmp.path(), max_parallel, &client).await?;
            end_to_end_phase(&client, &noop_job(), jobs, connections, "2 hosts, `true`").await?;
            latency_phase(&client, latency_samples).await?;
            for host in hosts {
                host.stop().await;
            }
            coordinator.stop().await;
            Ok(())
        }
        Bench::Wasi(args) => wasi::run(args).await,
        Bench::Http(args) => http::run(args).await,
        Bench::Gateway(args) => gateway::run(args).await,
    }
}

pub(crate) fn token_client(url: &str) -> Result<Client> {
    Ok(Client::new(
        &[url.to_string()],
        Credentials::Token(TOKEN.into()),
    )?)
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A node running in this process until stopped.
pub(crate) struct Running {
    url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

pub(crate) async fn start_coordinator(dir: &std::path::Path) -> Result<Running> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let config = skyclaw_coordinator::Config::new(dir.join("coordinator"), TOKEN.into());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = skyclaw_coordinator::run(config, listener, shutdown).await {
            eprintln!("coordinator failed: {e}");
        }
    });
    Ok(Running { url, stop, task })
}

pub(crate) async fn start_hosts(
    url: &str,
    dir: &std::path::Path,
    max_parallel: u32,
    client: &Client,
) -> Result<Vec<Running>> {
    let mut hosts = Vec::new();
    for n in 0..2 {
        let mut config = skyclaw_runtime::HostConfig::new(
            vec![url.to_string()],
            TOKEN.into(),
            dir.join(format!("host{n}")),
        );
        config.name = format!("bench-{n}");
        config.allowed_commands = vec!["true".into()];
        // Hosts of one machine each need job uids of their own.
        let first = skyclaw_runtime::DEFAULT_JOB_UIDS.first + n as u32 * BENCH_UIDS_PER_HOST;
        config.job_users = Some(skyclaw_runtime::JobUsers::Range(
            skyclaw_runtime::UidRange {
                first,
                last: first + BENCH_UIDS_PER_HOST - 1,
            },
        ));
        config.max_parallel = max_parallel;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = skyclaw_runtime::run(config, shutdown).await {
                eprintln!("host failed: {e}");
            }
        });
        hosts.push(Running {
            url: url.to_string(),
            stop,
            task,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.list_hosts().await?.hosts.len() < 2 {
        if Instant::now() > deadline {
            bail!("hosts did not register within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(hosts)
}

fn noop_job() -> JobSpec {
    serde_json::from_value(serde_json::json!({"kind": "shell", "command": "true"}))
        .expect("valid spec")
}

/// Clients submit as fast as they can for `length`; every 2xx is durable.
async fn enqueue_phase(client: &Client, connections: usize, length: Duration) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let spec = noop_job();
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..connections {
        let (client, stop, accepted, spec) =
            (client.clone(), stop.clone(), accepted.clone(), spec.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if client.submit_job(&spec, None).await.is_ok() {
                    latencies.push(t.elapsed());
                    accepted.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = accepted.load(Ordering::Relaxed);
    println!(
        "enqueue (durable, {connections} connections): {n} jobs in {elapsed:.1} s = {:.0} jobs/s; latency p50 {} p99 {}",
        n as f64 / elapsed,
        fmt(percentile(&mut latencies, 0.50)),
        fmt(percentile(&mut latencies, 0.99)),
    );
    Ok(())
}

/// Submits `jobs` copies of `spec` over `connections` connections, waits
/// until all have succeeded, prints the figures and returns the jobs/s.
pub(crate) async fn end_to_end_phase(
    client: &Client,
    spec: &JobSpec,
    jobs: usize,
    connections: usize,
    label: &str,
) -> Result<f64> {
    let start = Instant::now();
    let cpu_start = cpu_time()?;
    submit_all(client, spec, jobs, connections).await?;
    let submitted = start.elapsed();
    wait_all_succeeded(client, jobs).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_time()? - cpu_start;
    let rate = jobs as f64 / elapsed;
    println!(
        "end to end ({label}): {jobs} jobs succeeded in {elapsed:.2} s = {rate:.0} jobs/s (all submitted after {:.2} s; {:.0} µs of CPU per job, all nodes and clients together)",
        submitted.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / jobs as f64,
    );
    Ok(rate)
}

/// CPU time (user and system) this process has used: every node and client
/// of a benchmark runs in it, so this is what the whole network spent. Less
/// noisy than wall time on a shared machine.
fn cpu_time() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("read /proc/self/stat")?;
    // The rest of the line after the command name (field 2), which is in
    // parentheses and may hold spaces: field 3 is at index 0.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime: fields 14 and 15 of the line, counted from 1.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("unexpected /proc/self/stat format")
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_secs_f64(total as f64 / CLOCK_TICKS_PER_SEC))
}

/// The unit of `/proc/self/stat` times (`USER_HZ`), 100 on every Linux ABI.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Submits `jobs` copies of `spec`, spread over `connections` connections.
pub(crate) async fn submit_all(
    client: &Client,
    spec: &JobSpec,
    jobs: usize,
    connections: usize,
) -> Result<()> {
    let per_task = jobs.div_ceil(connections);
    let mut tasks = Vec::new();
    for t in 0..connections {
        let (client, spec) = (client.clone(), spec.clone());
        let count = per_task.min(jobs.saturating_sub(t * per_task));
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                client.submit_job(&spec, None).await?;
            }
            Ok::<_, skyclaw_api::ClientError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Waits until the coordinator counts `jobs` ended jobs; fails unless all
/// succeeded. It watches the counts rather than fetching every job: the
/// figure is how fast the network finishes jobs, not how fast one client
/// reads them back.
pub(crate) async fn wait_all_succeeded(client: &Client, jobs: usize) -> Result<()> {
    let url = format!("{}/metrics", client.urls()[0]);
    loop {
        let (succeeded, failed) = terminal_counts(&url).await?;
        if failed > 0 {
            bail!("{failed} of {jobs} no-op jobs did not succeed");
        }
        if succeeded >= jobs as u64 {
            return Ok(());
        }
        tokio::time::sleep(COUNT_POLL).await;
    }
}

/// How often the end-to-end phase reads the job counts: often enough that
/// the figure is at most 1% late over a run of a few seconds, seldom enough
/// that counting (a scan of the status index) costs the run little.
const COUNT_POLL: Duration = Duration::from_millis(25);

/// Succeeded and failed-or-cancelled jobs, from a coordinator's `/metrics`.
async fn terminal_counts(metrics_url: &str) -> Result<(u64, u64)> {
    let text = reqwest::get(metrics_url)
        .await?
        .error_for_status()?
        .text()
        .await?;
    let count = |status: &str| {
        let prefix = format!("skyclaw_jobs{{status=\"{status}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((count("succeeded"), count("failed") + count("cancelled")))
}

/// One job at a time: submit, then wait until it has succeeded.
async fn latency_phase(client: &Client, samples: usize) -> Result<()> {
    let spec = noop_job();
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        let job = client.submit_job(&spec, None).await?;
        let done = client
            .wait_job_once(&job.id, Duration::from_secs(30))
            .await?;
        if done.status != JobStatus::Succeeded {
            bail!("latency job {} ended {:?}", done.id, done.status);
        }
        latencies.push(t.elapsed());
    }
    println!(
        "submit -> succeeded latency ({samples} sequential jobs): p50 {} p99 {}",
        fmt(percentile(&mut latencies, 0.50)),
        fmt(percentile(&mut latencies, 0.99)),
    );
    Ok(())
}

pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let index = ((samples.len() - 1) as f64 * p).round() as usize;
    samples[index]
}

pub(crate) fn fmt(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
