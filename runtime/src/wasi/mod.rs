//! The WASI engine of the host daemon: runs WASI commands (components and
//! preview 1 modules) in wasmtime, each in its own store with fuel, a memory
//! cap, a wall-clock limit and no filesystem, network or host environment.
//!
//! [`WasiEngine::load`] turns a verified artifact into a pre-instantiated
//! [`Program`] (compiled once, cached on disk and in memory);
//! [`WasiEngine::run`] runs one job of it and reports a [`crate::Run`].
//!
//! [`WasiEngine::load_http`] and [`WasiEngine::serve_http`] do the same for
//! wasi:http proxy components: a fresh instance per request, with the same
//! limits per request, and no filesystem or host environment either.

mod code;
mod engine;
mod http;
mod output;
mod program;
mod sandbox;

use std::path::PathBuf;

use skyclaw_api::jobs::WasiCaps;

pub use engine::WasiEngine;
pub use http::{
    DEFAULT_MAX_HTTP_REQUESTS, HttpOptions, HttpProgram, HttpServer, HttpStatsSnapshot,
    LATENCY_BUCKETS_MS,
};
pub use program::Program;

/// Bytes in a MiB, the unit of memory limits.
const MIB: u64 = 1024 * 1024;

/// What the host gives its WASI engine.
#[derive(Debug, Clone)]
pub struct WasiSettings {
    /// The limits jobs get by default and at most.
    pub caps: WasiCaps,
    /// Jobs that may run at once: the pool holds instances for this many.
    pub max_parallel: u32,
    /// wasi:http requests that may run at once, over all services: the pool
    /// holds instances for this many beside the jobs' ([`max_parallel`]);
    /// more requests wait for a slot within their time limit.
    /// [`DEFAULT_MAX_HTTP_REQUESTS`] suits most hosts.
    ///
    /// [`max_parallel`]: WasiSettings::max_parallel
    pub max_http_requests: u32,
    /// Threads guests run on: one per core lets guests use every core while
    /// the host's own threads stay free for its control work.
    pub guest_threads: usize,
    /// Bytes kept of each of a job's stdout and stderr.
    pub max_output_bytes: usize,
    /// Where compiled code (`.cwasm`) is kept across restarts.
    pub code_cache_dir: PathBuf,
    /// Named in errors, as the native runner does.
    pub host_name: String,
}

#[cfg(test)]
mod tests;
