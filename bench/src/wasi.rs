//! The WASI benchmark: the host's own overhead per no-op WASI job (warm),
//! compile time against a cached load of the same artifact, end-to-end no-op
//! WASI jobs per second through one coordinator and two hosts (the median of
//! a few rounds), and how fast two hosts drain a queued backlog.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use skyclaw_api::artifacts::Digest;
use skyclaw_api::jobs::{CodeSource, JobSpec, WasiSpec};
use skyclaw_runtime::wasi::{WasiEngine, WasiSettings};
use skyclaw_runtime::{DEFAULT_MAX_OUTPUT_BYTES, HostConfig};
use tokio::sync::watch;

use crate::{
    end_to_end_phase, fmt, percentile, start_coordinator, start_hosts, submit_all, token_client,
    wait_all_succeeded,
};

/// Runs before the timed ones in the overhead phase.
const WARMUP_RUNS: usize = 200;

/// The knobs of `skyclaw-bench wasi`.
#[derive(Debug, clap::Args)]
pub struct WasiArgs {
    /// Warm runs timed one at a time for the in-host overhead.
    #[arg(long, default_value_t = 5000)]
    runs: usize,
    /// No-op WASI jobs pushed through two hosts in the end-to-end phase.
    #[arg(long, default_value_t = 20000)]
    jobs: usize,
    /// Concurrent submitting connections in the end-to-end phase.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Parallel job slots per host.
    #[arg(long, default_value_t = 32)]
    max_parallel: u32,
    /// End-to-end rounds, each on a fresh coordinator and hosts; their
    /// median is the figure (these shared machines are noisy).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

pub async fn run(args: WasiArgs) -> Result<()> {
    println!("skyclaw wasi benchmark ({} cores)", crate::cores());
    let noop = build_guest("tests/guests/Cargo.toml", "noop")?;
    let hello = build_guest("examples/hello-job/Cargo.toml", "hello-job")?;
    let tmp = tempfile::tempdir()?;
    overhead_phase(&noop, &tmp.path().join("overhead"), args.runs).await?;
    for (name, path) in [("noop", &noop), ("hello-job", &hello)] {
        compile_phase(name, path, &tmp.path().join(format!("compile-{name}"))).await?;
    }
    let mut rates = Vec::new();
    for round in 1..=args.rounds {
        let dir = tmp.path().join(format!("e2e-{round}"));
        rates.push(end_to_end_round(&noop, &dir, &args).await?);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "end to end, median of {} rounds: {:.0} jobs/s (slowest {:.0}, fastest {:.0})",
        rates.len(),
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1],
    );
    drain_phase(&noop, &tmp.path().join("drain"), &args).await
}

/// One coordinator and two hosts, fresh: jobs submitted while the hosts run
/// them. Returns the jobs/s.
async fn end_to_end_round(noop: &Path, dir: &Path, args: &WasiArgs) -> Result<f64> {
    let coordinator = start_coordinator(dir).await?;
    let client = token_client(&coordinator.url)?;
    let hosts = start_hosts(&coordinator.url, dir, args.max_parallel, &client).await?;
    let (info, _) = client.put_artifact(noop).await?;
    let spec = JobSpec::Wasi(spec_for(info.digest));
    let label = "1 coordinator, 2 hosts, no-op WASI component";
    let rate = end_to_end_phase(&client, &spec, args.jobs, args.connections, label).await?;
    stop_all(hosts, coordinator).await;
    Ok(rate)
}

/// Queues the jobs first, then starts the hosts: how fast one coordinator
/// leases, and two hosts run and report, a backlog of no-op WASI jobs.
async fn drain_phase(noop: &Path, dir: &Path, args: &WasiArgs) -> Result<()> {
    let coordinator = start_coordinator(dir).await?;
    let client = token_client(&coordinator.url)?;
    let (info, _) = client.put_artifact(noop).await?;
    let spec = JobSpec::Wasi(spec_for(info.digest));
    submit_all(&client, &spec, args.jobs, args.connections).await?;
    let start = Instant::now();
    let hosts = start_hosts(&coordinator.url, dir, args.max_parallel, &client).await?;
    wait_all_succeeded(&client, args.jobs).await?;
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "backlog drained (2 hosts started on {} queued no-op WASI jobs): {elapsed:.2} s = {:.0} jobs/s",
        args.jobs,
        args.jobs as f64 / elapsed
    );
    stop_all(hosts, coordinator).await;
    Ok(())
}

async fn stop_all(hosts: Vec<crate::Running>, coordinator: crate::Running) {
    for host in hosts {
        host.stop().await;
    }
    coordinator.stop().await;
}

/// Builds a guest project for wasm32-wasip2 into `target/guests`, as the
/// test harness does, and returns the `.wasm` of program `name`.
pub(crate) fn build_guest(manifest: &str, name: &str) -> Result<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir = repo.join("target/guests");
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(repo.join(manifest))
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .context("run cargo to build the guests")?;
    if !out.status.success() {
        bail!(
            "building {manifest} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(target_dir.join(format!("wasm32-wasip2/release/{name}.wasm")))
}

fn engine(dir: &Path, max_parallel: u32) -> Result<WasiEngine> {
    let config = HostConfig::new(Vec::new(), String::new(), dir.to_path_buf());
    Ok(WasiEngine::new(WasiSettings {
        caps: config.wasi_caps(),
        max_parallel,
        max_http_requests: 0,
        guest_threads: crate::cores(),
        max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        code_cache_dir: dir.join("code"),
        host_name: "bench".into(),
    })?)
}

fn spec_for(digest: Digest) -> WasiSpec {
    let spec = serde_json::json!({"kind": "wasi", "artifact": digest});
    match serde_json::from_value(spec).expect("valid spec") {
        JobSpec::Wasi(wasi) => wasi,
        _ => unreachable!("the spec is a wasi spec"),
    }
}

fn digest_of(path: &Path) -> Result<Digest> {
    use sha2::Digest as _;
    let bytes = std::fs::read(path)?;
    Ok(Digest::from_sha256(&sha2::Sha256::digest(&bytes).into()))
}

/// Times `engine.run` of a loaded no-op component, one run at a time: slot
/// admission, the hop to the guest runtime and back, a fresh store and WASI
/// context, instantiation, the guest's run, and collecting its result.
async fn overhead_phase(noop: &Path, dir: &Path, runs: usize) -> Result<()> {
    let engine = engine(dir, 4)?;
    let digest = digest_of(noop)?;
    let spec = spec_for(digest.clone());
    let (program, _) = engine
        .load(&digest, noop)
        .await
        .map_err(anyhow::Error::msg)?;
    let (_keep, stop) = watch::channel(None);
    let mut samples = Vec::with_capacity(runs);
    // The first runs warm up allocator slots, fiber stacks and caches.
    for i in 0..WARMUP_RUNS + runs {
        let t = Instant::now();
        let run = engine
            .run(
                Arc::clone(&program),
                CodeSource::Memory,
                &spec,
                stop.clone(),
            )
            .await;
        if i >= WARMUP_RUNS {
            samples.push(t.elapsed());
        }
        if run.result.exit_code != Some(0) {
            bail!("the no-op guest failed: {:?}", run.result.error);
        }
    }
    println!(
        "in-host overhead of a no-op WASI job, warm ({runs} runs, one at a time): p50 {} p99 {}",
        fmt_us(percentile(&mut samples, 0.50)),
        fmt_us(percentile(&mut samples, 0.99)),
    );
    Ok(())
}

/// Loads an artifact on a fresh engine (compiles it and keeps the code), then
/// on a second engine sharing the code cache (loads the compiled code).
async fn compile_phase(name: &str, wasm: &Path, dir: &Path) -> Result<()> {
    let digest = digest_of(wasm)?;
    let mut times = Vec::new();
    for expected in [CodeSource::Compiled, CodeSource::DiskCache] {
        let engine = engine(dir, 1)?;
        let t = Instant::now();
        let (_, source) = engine
            .load(&digest, wasm)
            .await
            .map_err(anyhow::Error::msg)?;
        times.push(t.elapsed());
        if source != expected {
            bail!("expected {expected:?} loading {name}, got {source:?}");
        }
    }
    println!(
        "{name} ({} KiB): compile {} vs load from the code cache {}",
        std::fs::metadata(wasm)?.len() / 1024,
        fmt(times[0]),
        fmt(times[1]),
    );
    Ok(())
}

fn fmt_us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}
