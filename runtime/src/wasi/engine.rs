//! The engine: one wasmtime engine with a pooling allocator sized for the
//! host's parallel jobs (their instances and the fibers guests run on), an
//! admission limit in front of the pool, a tokio runtime of its own that
//! guests run on as futures, an epoch ticker that makes running guests
//! yield, and the caches of compiled programs.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use skyclaw_api::artifacts::Digest;
use skyclaw_api::jobs::{CodeSource, EffectiveLimits, JobResult, WasiSpec};
use tokio::runtime::{Handle, Runtime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, warn};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
    WasmBacktraceDetails,
};

use super::code::{DiskCache, Loaded};
use super::http::HttpEngine;
use super::program::{Code, Linkers, LoadError, Program, WasmKind};
use super::sandbox::{self, Job, Outcome};
use super::{MIB, WasiSettings};
use crate::HostError;
use crate::captured::output_result;
use crate::turns::Turns;
use crate::workload::{Run, StopSignal, stop_order};

/// How often the epoch advances, and so how long a running guest keeps its
/// thread before it yields to other tasks (and notices its deadline or stop
/// order); 5 ms is precise enough for millisecond limits and costs one
/// wakeup per tick however many guests run.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Native stack a guest's wasm frames may use; wasmtime's default.
pub(super) const MAX_WASM_STACK: usize = 512 * 1024;
/// Native stack of the fiber each guest runs on: its wasm frames (up to
/// [`MAX_WASM_STACK`]) and the host calls they make. wasmtime's default of
/// 2 MiB leaves 1.5 MiB to host calls made from the deepest guest frames.
const FIBER_STACK: usize = 2 * 1024 * 1024;
/// Core instances one component may hold. A Rust `wasm32-wasip2` command has
/// about four (program, WASI adapter, shim, fixup); other toolchains add a
/// few. Security: bounds what one job takes from the pool.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 16;
/// Linear memories one component may hold: a Rust command has two (program
/// and adapter). Security: each reserves address space in the pool.
const MAX_MEMORIES_PER_COMPONENT: u32 = 4;
/// Tables one component may hold: a Rust command has three or four.
const MAX_TABLES_PER_COMPONENT: u32 = 8;
/// Bytes of each pooled linear memory reset in place rather than returned to
/// the kernel between jobs: small guests then reuse warm pages instead of
/// faulting them in again, and no TLB shootdown hits every core. Where the
/// kernel has `PAGEMAP_SCAN` (Linux 6.7+), only the pages a guest wrote are
/// reset; elsewhere all of it is cleared with memset.
const KEEP_RESIDENT_MEMORY: usize = 2 * 1024 * 1024;
/// The same for tables: a Rust command's tables fit in a few pages.
const KEEP_RESIDENT_TABLE: usize = 64 * 1024;
/// Elements any table may hold: large Rust programs have tens of thousands
/// of indirect-call targets. Security: caps `table.grow`.
const TABLE_ELEMENTS: usize = 100_000;

/// Runs WASI programs. Cheap to clone: clones share the engine, pool,
/// guest runtime, ticker and caches.
#[derive(Clone)]
pub struct WasiEngine {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) engine: Engine,
    linkers: Linkers,
    pub(super) settings: WasiSettings,
    /// One permit per instance slot of the pool that jobs may take, held
    /// from before a job instantiates until its store is gone: a full pool
    /// makes jobs wait, never fail. HTTP requests have slots of their own
    /// (`http.slots`), so neither kind of work can starve the other.
    slots: Arc<Semaphore>,
    loaded: Loaded,
    disk: DiskCache,
    /// One lock per artifact being loaded, so that it is compiled once.
    pub(super) loading: Turns,
    pub(super) guests: GuestRuntime,
    /// wasi:http serving: its linker, admission, programs and counters.
    pub(super) http: HttpEngine,
    /// Kept for its `Drop`, which stops the ticker thread.
    _ticker: Ticker,
}

impl WasiEngine {
    /// Builds the engine and its pool, starts the epoch ticker and opens the
    /// on-disk code cache.
    pub fn new(settings: WasiSettings) -> Result<WasiEngine, HostError> {
        settings
            .caps
            .validate()
            .map_err(|e| HostError::Wasi(format!("invalid limits: {e}")))?;
        let engine = Engine::new(&engine_config(&settings)?)
            .map_err(|e| HostError::Wasi(format!("{e:#}")))?;
        let linkers = Linkers::new(&engine).map_err(|e| HostError::Wasi(format!("{e:#}")))?;
        let disk = DiskCache::open(&settings.code_cache_dir, &engine).map_err(|source| {
            HostError::DataDir {
                action: "create",
                path: settings.code_cache_dir.clone(),
                source,
            }
        })?;
        let guests = GuestRuntime::start(settings.guest_threads)
            .map_err(|e| HostError::Wasi(format!("cannot start the guest runtime: {e}")))?;
        let ticker = Ticker::start(engine.clone())
            .map_err(|e| HostError::Wasi(format!("cannot start the epoch ticker: {e}")))?;
        let http = HttpEngine::new(&engine, settings.max_http_requests)
            .map_err(|e| HostError::Wasi(format!("{e:#}")))?;
        Ok(WasiEngine {
            inner: Arc::new(Inner {
                engine,
                linkers,
                slots: Arc::new(Semaphore::new(settings.max_parallel as usize)),
                settings,
                loaded: Loaded::default(),
                disk,
                loading: Turns::default(),
                guests,
                http,
                _ticker: ticker,
            }),
        })
    }

    /// The program of an artifact, when it is loaded already.
    pub fn loaded(&self, digest: &Digest) -> Option<Arc<Program>> {
        self.inner.loaded.get(digest)
    }

    /// Forgets an artifact's code, in memory and on disk: its blob left the
    /// host's artifact cache, and its code goes with it so that the code
    /// cache is bounded by the artifact cache.
    pub fn forget(&self, digest: &Digest) {
        self.inner.loaded.remove(digest);
        self.inner.http.forget(digest);
        self.inner.disk.discard(digest);
    }

    /// Makes a program of an artifact whose blob (already checked against
    /// its digest) is at `blob`: from memory, from compiled code on disk, or
    /// by compiling it. Concurrent loads of one artifact compile it once.
    pub async fn load(
        &self,
        digest: &Digest,
        blob: &Path,
    ) -> Result<(Arc<Program>, CodeSource), String> {
        if let Some(program) = self.loaded(digest) {
            return Ok((program, CodeSource::Memory));
        }
        let _turn = self.inner.loading.take(digest).await;
        if let Some(program) = self.loaded(digest) {
            return Ok((program, CodeSource::Memory));
        }
        let inner = Arc::clone(&self.inner);
        let (key, path) = (digest.clone(), blob.to_path_buf());
        let prepared = tokio::task::spawn_blocking(move || inner.prepare(&key, &path)).await;
        let prepared = match prepared {
            Ok(prepared) => prepared.map_err(|e| e.to_string()),
            Err(e) => Err(format!(
                "loading {digest} on host {} failed: {e}",
                self.inner.settings.host_name
            )),
        };
        if let Ok((program, _)) = &prepared {
            self.inner
                .loaded
                .insert(digest.clone(), Arc::clone(program));
        }
        prepared
    }

    /// Runs one job of `program`, waiting for a pool slot first. `code` is
    /// where the program came from, as `load` or `loaded` said.
    pub async fn run(
        &self,
        program: Arc<Program>,
        code: CodeSource,
        spec: &WasiSpec,
        mut stop: StopSignal,
    ) -> Run {
        let started = Instant::now();
        let limits = self.inner.settings.caps.apply(&spec.limits);
        let job = Job {
            argv: std::iter::once(spec.program_name().to_string())
                .chain(spec.args.iter().cloned())
                .collect(),
            env: spec.env.clone(),
            stdin: spec.stdin.clone().into_bytes(),
            limits,
            max_output_bytes: self.inner.settings.max_output_bytes,
            stop: stop.clone(),
        };
        let outcome = match self.admit(&mut stop).await {
            Ok(slot) => self.execute(program, job, slot).await,
            Err(refused) => refused,
        };
        debug!(artifact = %spec.artifact, error = ?outcome.error, "WASI job ended");
        finish(outcome, code, limits, started.elapsed())
    }
}

impl WasiEngine {
    /// Pool slots no job holds, for tests that wait until a guest runs.
    #[cfg(test)]
    pub(super) fn free_slots(&self) -> usize {
        self.inner.slots.available_permits()
    }

    /// Runs the job on the guest runtime, holding its pool slot until the
    /// store is gone. Dropping the future aborts the run.
    async fn execute(
        &self,
        program: Arc<Program>,
        job: Job,
        slot: OwnedSemaphorePermit,
    ) -> Outcome {
        let engine = self.inner.engine.clone();
        // A set of one, for its abort on drop.
        let mut running = JoinSet::new();
        running.spawn_on(
            async move {
                let outcome = sandbox::execute(&engine, &program, job).await;
                drop(slot);
                outcome
            },
            self.inner.guests.handle(),
        );
        let ran = running.join_next().await.expect("the set holds the run");
        ran.unwrap_or_else(|e| {
            Outcome::failed(format!(
                "the WASI run on host {} failed: {e}",
                self.inner.settings.host_name
            ))
        })
    }

    /// Waits for a pool slot, unless the job is told to stop first.
    async fn admit(&self, stop: &mut StopSignal) -> Result<OwnedSemaphorePermit, Outcome> {
        let slots = Arc::clone(&self.inner.slots);
        tokio::select! {
            slot = slots.acquire_owned() => {
                slot.map_err(|e| Outcome::failed(format!("no WASI slot: {e}")))
            }
            reason = stop_order(stop) => Err(Outcome::stopped(reason)),
        }
    }
}

impl Inner {
    /// Compiled code from disk if it is there and sound, else compiled now
    /// (and written to disk); pre-instantiated either way. Blocking.
    fn prepare(
        &self,
        digest: &Digest,
        blob: &Path,
    ) -> Result<(Arc<Program>, CodeSource), LoadError> {
        let kind = WasmKind::sniff(blob)?;
        if let Some(code) = self.cached_code(digest, kind) {
            let program = code.pre_instantiate(&self.linkers)?;
            return Ok((Arc::new(program), CodeSource::DiskCache));
        }
        let wasm = std::fs::read(blob).map_err(|source| LoadError::Read {
            path: blob.to_path_buf(),
            source,
        })?;
        let code = Code::compile(&self.engine, kind, &wasm)?;
        let program = code.pre_instantiate(&self.linkers)?;
        self.keep_code(digest, &code);
        Ok((Arc::new(program), CodeSource::Compiled))
    }

    /// The artifact's compiled code from disk; code that fails to load is
    /// deleted so that it is compiled again.
    pub(super) fn cached_code(&self, digest: &Digest, kind: WasmKind) -> Option<Code> {
        let bytes = self.disk.read(digest)?;
        match Code::deserialize(&self.engine, kind, &bytes) {
            Ok(code) => Some(code),
            Err(e) => {
                warn!(%digest, error = %format!("{e:#}"), "cannot load compiled code; recompiling");
                self.disk.discard(digest);
                None
            }
        }
    }

    /// Writes compiled code to disk; a failure only costs a later compile.
    pub(super) fn keep_code(&self, digest: &Digest, code: &Code) {
        let kept = code
            .serialize()
            .map_err(|e| format!("{e:#}"))
            .and_then(|bytes| self.disk.write(digest, &bytes).map_err(|e| e.to_string()));
        if let Err(error) = kept {
            warn!(%digest, %error, "cannot keep compiled code on disk");
        }
    }
}

/// The wasmtime configuration: pooled instances and fiber stacks for
/// `max_parallel` jobs and `max_http_requests` HTTP requests, copy-on-write
/// memory images, fuel, epoch interruption and stack limits.
fn engine_config(settings: &WasiSettings) -> Result<Config, HostError> {
    if settings.max_parallel == 0 {
        return Err(HostError::Wasi(
            "max_parallel must be at least 1".to_string(),
        ));
    }
    let slots = settings
        .max_parallel
        .checked_add(settings.max_http_requests)
        .ok_or_else(|| {
            HostError::Wasi("max_parallel and max_http_requests are too large".to_string())
        })?;
    let total = |per_component: u32| {
        slots.checked_mul(per_component).ok_or_else(|| {
            HostError::Wasi(format!(
                "max_parallel {slots} is too large for the instance pool"
            ))
        })
    };
    let max_memory_size = usize::try_from(u64::from(settings.caps.max_memory_mb) * MIB)
        .map_err(|_| HostError::Wasi("max_memory_mb does not fit this platform".to_string()))?;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        // A job or request runs on one fiber at a time: its instantiation,
        // then its command or handler.
        .total_stacks(slots)
        .total_core_instances(total(MAX_CORE_INSTANCES_PER_COMPONENT)?)
        .total_memories(total(MAX_MEMORIES_PER_COMPONENT)?)
        .total_tables(total(MAX_TABLES_PER_COMPONENT)?)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .table_elements(TABLE_ELEMENTS)
        .max_memory_size(max_memory_size)
        .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
        .table_keep_resident(KEEP_RESIDENT_TABLE)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_init_cow(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(FIBER_STACK)
        .wasm_backtrace_details(WasmBacktraceDetails::Disable);
    Ok(config)
}

/// The result to report for a run.
fn finish(outcome: Outcome, code: CodeSource, limits: EffectiveLimits, took: Duration) -> Run {
    let Outcome {
        exit_code,
        error,
        stopped,
        fuel_consumed,
        stdout,
        stderr,
    } = outcome;
    Run {
        result: JobResult {
            exit_code,
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            error,
            fuel_consumed: Some(fuel_consumed),
            code: Some(code),
            limits: Some(limits),
            ..output_result(stdout, stderr)
        },
        stopped,
    }
}

/// The runtime guests run on, apart from the host's own tasks: a burst of
/// guests queues on its threads rather than in front of the host's claims,
/// reports and heartbeats, which the kernel then schedules beside them.
/// wasi:http connections are served on it too, so that a request never
/// hops between runtimes on its way to its guest.
pub(super) struct GuestRuntime {
    /// `Some` until dropped.
    runtime: Option<Runtime>,
}

impl GuestRuntime {
    fn start(threads: usize) -> std::io::Result<GuestRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wasi-guest")
            .enable_all()
            .build()?;
        Ok(GuestRuntime {
            runtime: Some(runtime),
        })
    }

    pub(super) fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("the guest runtime runs until dropped")
            .handle()
    }
}

impl Drop for GuestRuntime {
    /// Drops the guests still running (unwinding them) without waiting: the
    /// engine may be dropped on an async thread, where blocking is refused.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The thread that advances the engine's epoch every [`EPOCH_TICK`] until
/// it is dropped.
struct Ticker {
    /// Dropping it wakes the thread and ends it.
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> std::io::Result<Ticker> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wasi-epoch".to_string())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })?;
        Ok(Ticker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the epoch ticker thread panicked");
        }
    }
}
