//! The wasi:http benchmark's server: serves a component (the hello-http
//! example unless told otherwise) through the runtime's WASI engine on a
//! fixed 127.0.0.1 port for a while, so that a load generator such as `wrk`
//! can be pointed at it (and at `wasmtime serve` on the same component),
//! then prints what the engine counted.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use skyclaw_api::jobs::WasiLimits;
use skyclaw_runtime::wasi::{HttpOptions, WasiEngine, WasiSettings};
use skyclaw_runtime::{DEFAULT_MAX_OUTPUT_BYTES, HostConfig};

use crate::wasi::build_guest;

/// The knobs of `skyclaw-bench http`.
#[derive(Debug, clap::Args)]
pub struct HttpArgs {
    /// Port on 127.0.0.1 to serve on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// How long to serve before printing the counters and stopping.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The component to serve; the hello-http example when not given.
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// Requests that may run at once.
    #[arg(long, default_value_t = skyclaw_runtime::wasi::DEFAULT_MAX_HTTP_REQUESTS)]
    max_http_requests: u32,
}

pub async fn run(args: HttpArgs) -> Result<()> {
    let wasm = match args.wasm {
        Some(path) => path,
        None => build_guest("examples/hello-http/Cargo.toml", "hello_http")?,
    };
    let tmp = tempfile::tempdir()?;
    let config = HostConfig::new(Vec::new(), String::new(), tmp.path().to_path_buf());
    let engine = WasiEngine::new(WasiSettings {
        caps: config.wasi_caps(),
        max_parallel: 1,
        max_http_requests: args.max_http_requests,
        guest_threads: crate::cores(),
        max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        code_cache_dir: tmp.path().join("code"),
        host_name: "bench".into(),
    })?;
    let (digest, _) = skyclaw_api::artifacts::digest_file(&wasm).await?;
    let program = engine
        .load_http(&digest, &wasm)
        .await
        .map_err(anyhow::Error::msg)
        .context("load the component")?;
    let listener = skyclaw_api::serve::bind(("127.0.0.1", args.port)).await?;
    let options = HttpOptions {
        service: "bench".to_string(),
        limits: WasiLimits::default(),
        outbound: Vec::new(),
    };
    let server = engine.serve_http(program, listener, options)?;
    println!(
        "serving {} on http://{}",
        wasm.display(),
        server.local_addr()
    );
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    server.shutdown(Duration::from_secs(1)).await;
    print_stats(&engine);
    Ok(())
}

fn print_stats(engine: &WasiEngine) {
    let stats = engine.http_stats();
    println!("requests {} by status {:?}", stats.requests, stats.statuses);
    println!(
        "host answers: timed out {}, failed {}, unavailable {}",
        stats.timed_out, stats.failed, stats.unavailable
    );
    let bounds = skyclaw_runtime::wasi::LATENCY_BUCKETS_MS;
    for (i, count) in stats.latency_buckets.iter().enumerate() {
        let le = bounds
            .get(i)
            .map_or("+Inf".to_string(), |b| format!("{b} ms"));
        println!("  <= {le}: {count}");
    }
}
