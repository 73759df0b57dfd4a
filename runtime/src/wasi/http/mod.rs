//! wasi:http serving: a proxy component (`wasi:http/incoming-handler`)
//! compiled once per digest and pre-instantiated, then served on a listener
//! with a fresh instance from the pool for every request, each with its own
//! fuel, memory cap and time limit, and outbound HTTP only to the hosts its
//! service allows.
//!
//! [`WasiEngine::load_http`] makes an [`HttpProgram`] of a verified blob,
//! [`WasiEngine::serve_http`] serves it until [`HttpServer::shutdown`], and
//! [`WasiEngine::http_stats`] counts what every server answered.
//!
//! Connections and guests both live on the engine's guest runtime: a
//! request goes from its socket to its guest without crossing runtimes, and
//! a flood of requests queues there, never in front of the host's own work.
//! An idle service costs one parked accept task and its listener.

mod guest;
mod program;
mod request;
mod server;
mod stats;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use skyclaw_api::artifacts::Digest;
use skyclaw_api::jobs::WasiLimits;
use skyclaw_api::services::OutboundRule;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::Linker;

pub use program::HttpProgram;
pub use server::HttpServer;
pub use stats::{HttpStatsSnapshot, LATENCY_BUCKETS_MS};

use super::WasiEngine;
use guest::HttpGuest;
use stats::HttpStats;

/// wasi:http requests that may run at once over all of a host's services,
/// unless the host says otherwise ([`super::WasiSettings::max_http_requests`]).
/// A handler that answers from memory holds its slot for well under a
/// millisecond, so a few per core keep every core busy; the rest leaves room
/// for handlers waiting on outbound calls or clocks. Each slot reserves
/// address space for its memories in the pool, so it is not unbounded.
pub const DEFAULT_MAX_HTTP_REQUESTS: u32 = 64;

/// How one service is served.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The service's name, for logs.
    pub service: String,
    /// Each request's limits; absent ones take the host's defaults, and all
    /// are capped at the host's maxima (`WasiCaps::apply`).
    pub limits: WasiLimits,
    /// Where the component may send HTTP requests; nowhere when empty.
    pub outbound: Vec<OutboundRule>,
}

/// The engine's wasi:http state, shared by every service it serves.
pub(super) struct HttpEngine {
    /// WASI 0.2 (which components built by Rust import whole) and wasi:http.
    linker: Linker<HttpGuest>,
    /// One permit per pool slot kept for HTTP requests, held from before a
    /// request instantiates until its store is gone.
    slots: Arc<Semaphore>,
    /// Every program still held by a server or a caller, so that one digest
    /// is compiled and held in memory once however many services run it.
    programs: Mutex<HashMap<Digest, Weak<HttpProgram>>>,
    stats: Arc<HttpStats>,
    /// The connections of every server, as the shared HTTP serving counts them.
    connections: Arc<skyclaw_api::serve::Stats>,
}

impl HttpEngine {
    pub(super) fn new(engine: &Engine, max_http_requests: u32) -> wasmtime::Result<HttpEngine> {
        Ok(HttpEngine {
            linker: program::linker(engine)?,
            slots: Arc::new(Semaphore::new(max_http_requests as usize)),
            programs: Mutex::default(),
            stats: Arc::default(),
            connections: Arc::default(),
        })
    }

    /// The program of a digest, while anything holds it.
    fn loaded(&self, digest: &Digest) -> Option<Arc<HttpProgram>> {
        let programs = self.programs.lock().unwrap_or_else(PoisonError::into_inner);
        programs.get(digest).and_then(Weak::upgrade)
    }

    /// Remembers a program, and forgets those nothing holds any more.
    fn keep(&self, digest: &Digest, program: &Arc<HttpProgram>) {
        let mut programs = self.programs.lock().unwrap_or_else(PoisonError::into_inner);
        programs.retain(|_, held| held.strong_count() > 0);
        programs.insert(digest.clone(), Arc::downgrade(program));
    }

    /// Forgets a digest's program: servers that hold it keep serving it.
    pub(super) fn forget(&self, digest: &Digest) {
        let mut programs = self.programs.lock().unwrap_or_else(PoisonError::into_inner);
        programs.remove(digest);
    }
}

impl WasiEngine {
    /// Loads a wasi:http proxy component whose blob (already checked against
    /// its digest) is at `blob`: the program a running service already holds,
    /// or its compiled code from the on-disk cache (the jobs' cache, keyed by
    /// digest alike), or compiled now. Concurrent loads of one digest compile
    /// it once; compiling and reading run on blocking threads.
    pub async fn load_http(
        &self,
        digest: &Digest,
        blob: &Path,
    ) -> Result<Arc<HttpProgram>, String> {
        let http = &self.inner.http;
        if let Some(program) = http.loaded(digest) {
            return Ok(program);
        }
        let _turn = self.inner.loading.take(digest).await;
        if let Some(program) = http.loaded(digest) {
            return Ok(program);
        }
        let inner = Arc::clone(&self.inner);
        let (key, path) = (digest.clone(), blob.to_path_buf());
        let prepared = tokio::task::spawn_blocking(move || inner.prepare_http(&key, &path)).await;
        let program = match prepared {
            Ok(Ok(program)) => Arc::new(program),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(e) => {
                return Err(format!(
                    "loading {digest} on host {} failed: {e}",
                    self.inner.settings.host_name
                ));
            }
        };
        http.keep(digest, &program);
        Ok(program)
    }

    /// Serves `program` on `listener` (HTTP/1.1 with keep-alive) until
    /// [`HttpServer::shutdown`], or until the server is dropped. Call it
    /// from within a tokio runtime (the listener's); the listener moves to
    /// the engine's guest runtime, where its connections and guests run.
    pub fn serve_http(
        &self,
        program: Arc<HttpProgram>,
        listener: TcpListener,
        options: HttpOptions,
    ) -> std::io::Result<HttpServer> {
        server::start(Arc::clone(&self.inner), program, listener, options)
    }

    /// What every server of this engine has answered so far.
    pub fn http_stats(&self) -> HttpStatsSnapshot {
        let http = &self.inner.http;
        http.stats.snapshot(
            &http.connections,
            self.inner.settings.max_http_requests,
            http.slots.available_permits(),
        )
    }
}
