//! WASI engine tests: real wasmtime, real temporary directories, guests
//! written in WAT (preview 1 modules, and small `wasi:cli/run` components).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use skyclaw_api::artifacts::Digest;
use skyclaw_api::jobs::{CodeSource, Requirements, WasiCaps, WasiLimits, WasiSpec};
use tempfile::TempDir;
use tokio::sync::watch;

use super::*;
use crate::workload::{Run, StopReason, StopSignal};

const HOST: &str = "test-host";
/// One thread for all guests: a guest that never yielded would stall the
/// others.
const GUEST_THREADS: usize = 1;
/// Output kept per stream in most tests.
const OUTPUT_LIMIT: usize = 64 * 1024;
/// What `load` says about anything that is not a runnable command.
const NOT_COMMAND: &str = "not a WASI command component or preview1 module: ";

/// Writes "hello\n" and exits with code 3 through `proc_exit`.
const HELLO: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 6))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.const 3))))
"#;

/// Echoes stdin to stdout, then writes its environment block to stdout and
/// its argument block to stderr, and exits with `argc * 10 + envc`.
const ECHO: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func $write (param $fd i32) (param $buf i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $buf))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 1024))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $write (i32.const 1) (i32.const 1024) (i32.load (i32.const 8)))
    (drop (call $environ_sizes_get (i32.const 24) (i32.const 28)))
    (drop (call $environ_get (i32.const 600) (i32.const 700)))
    (call $write (i32.const 1) (i32.const 700) (i32.load (i32.const 28)))
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (drop (call $args_get (i32.const 100) (i32.const 400)))
    (call $write (i32.const 2) (i32.const 400) (i32.load (i32.const 20)))
    (call $proc_exit
      (i32.add
        (i32.mul (i32.load (i32.const 16)) (i32.const 10))
        (i32.load (i32.const 24))))))
"#;

/// Exits with code 200, one of those WASI reserves.
const EXIT_200: &str = r#"
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $proc_exit (i32.const 200))))
"#;

/// Sleeps `nanos` on the monotonic clock in one `poll_oneoff`: the guest
/// waits inside the host call, where no epoch check reaches it.
fn sleep_p1(nanos: u64) -> String {
    format!(
        r#"
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; The subscription at 0: a relative clock (tag 0) on the monotonic clock (id 1).
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const {nanos}))
    (if (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128))
      (then unreachable))))
"#
    )
}

/// Waits in one `poll_oneoff` for stdin to be readable or an hour to pass,
/// and exits 0 when stdin was the one that woke it.
const WAIT_FOR_STDIN: &str = r#"
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; Subscription 0: fd_read (tag 1) on fd 0.
    (i32.store8 (i32.const 8) (i32.const 1))
    (i32.store (i32.const 16) (i32.const 0))
    ;; Subscription 1: an hour on the monotonic clock.
    (i32.store8 (i32.const 56) (i32.const 0))
    (i32.store (i32.const 64) (i32.const 1))
    (i64.store (i32.const 72) (i64.const 3600000000000))
    (if (call $poll (i32.const 0) (i32.const 128) (i32.const 2) (i32.const 256))
      (then unreachable))
    ;; The first event's type, at offset 10: 1 for fd_read.
    (call $proc_exit (i32.sub (i32.load8_u (i32.const 138)) (i32.const 1)))))
"#;

/// An hour, in nanoseconds: longer than any test's time limit.
const HOUR_NANOS: u64 = 3_600_000_000_000;

/// Never ends on its own.
const BUSY: &str = r#"
(module
  (func (export "_start") (loop $forever (br $forever))))
"#;

/// Recurses without end.
const RECURSE: &str = r#"
(module
  (func $deeper (call $deeper))
  (func (export "_start") (call $deeper)))
"#;

/// Writes 100 KiB to each of stdout and stderr in 1 KiB writes; traps if any
/// write fails or writes less than asked.
const FLOOD: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $write (param $fd i32) (result i32)
    (if (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))
      (then unreachable))
    (i32.load (i32.const 8)))
  (func (export "_start") (local $i i32) (local $written i32)
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 1024))
    (memory.fill (i32.const 1024) (i32.const 120) (i32.const 1024))
    (loop $more
      (local.set $written (i32.add (local.get $written) (call $write (i32.const 1))))
      (local.set $written (i32.add (local.get $written) (call $write (i32.const 2))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const 100))))
    (if (i32.ne (local.get $written) (i32.const 204800))
      (then unreachable))))
"#;

/// Bytes each stream of [`FLOOD`] gets.
const FLOOD_BYTES: u64 = 100 * 1024;

/// A `wasi:cli/run` component whose `run` returns `result` (0 ok, 1 err).
fn run_component(result: u32) -> String {
    format!(
        r#"
(component
  (core module $main
    (func (export "run") (result i32) (i32.const {result})))
  (core instance $main (instantiate $main))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli)))
"#
    )
}

/// A `wasi:cli/run` component whose `run` never returns.
const BUSY_COMPONENT: &str = r#"
(component
  (core module $main
    (func (export "run") (result i32) (loop $forever (br $forever)) (i32.const 0)))
  (core instance $main (instantiate $main))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli)))
"#;

/// A module that grows its memory by `pages` and traps when that fails, as
/// a Rust guest aborts when an allocation fails.
fn grow(pages: u32) -> String {
    format!(
        r#"
(module
  (memory 1)
  (func (export "_start")
    (if (i32.eq (memory.grow (i32.const {pages})) (i32.const -1))
      (then unreachable))))
"#
    )
}

fn caps() -> WasiCaps {
    WasiCaps {
        default_fuel: 50_000_000,
        default_memory_mb: 16,
        default_timeout_ms: 20_000,
        max_fuel: 1 << 40,
        max_memory_mb: 64,
        max_timeout_ms: 60_000,
    }
}

fn settings(dir: &Path, max_parallel: u32, max_output_bytes: usize) -> WasiSettings {
    WasiSettings {
        caps: caps(),
        max_parallel,
        max_http_requests: 0,
        guest_threads: GUEST_THREADS,
        max_output_bytes,
        code_cache_dir: dir.join("code"),
        host_name: HOST.to_string(),
    }
}

fn engine(dir: &Path) -> WasiEngine {
    WasiEngine::new(settings(dir, 2, OUTPUT_LIMIT)).expect("engine")
}

/// A blob stored under its digest, as the host's artifact cache keeps it.
struct Artifact {
    digest: Digest,
    path: PathBuf,
}

fn store(dir: &Path, bytes: &[u8]) -> Artifact {
    let digest = Digest::from_sha256(&Sha256::digest(bytes).into());
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(&blobs).expect("blob dir");
    let path = blobs.join(digest.hex());
    std::fs::write(&path, bytes).expect("write blob");
    Artifact { digest, path }
}

fn store_wat(dir: &Path, text: &str) -> Artifact {
    store(dir, &wat::parse_str(text).expect("valid WAT"))
}

fn spec(artifact: &Artifact, limits: WasiLimits) -> WasiSpec {
    WasiSpec {
        artifact: artifact.digest.clone(),
        program: None,
        args: Vec::new(),
        env: BTreeMap::new(),
        stdin: String::new(),
        limits,
        max_attempts: 1,
        requirements: Requirements::default(),
        queue_timeout_ms: None,
    }
}

/// A stop signal nobody fires; the sender must be kept alive by the caller.
fn never_stopped() -> (watch::Sender<Option<StopReason>>, StopSignal) {
    watch::channel(None)
}

/// Starts a run of `artifact` on its own task; the sender gives its stop
/// order.
async fn start(
    engine: &WasiEngine,
    artifact: &Artifact,
    limits: WasiLimits,
) -> (
    watch::Sender<Option<StopReason>>,
    tokio::task::JoinHandle<Run>,
) {
    let (program, code) = engine.load(&artifact.digest, &artifact.path).await.unwrap();
    let (stop_tx, stop) = never_stopped();
    let (engine, spec) = (engine.clone(), spec(artifact, limits));
    let running = tokio::spawn(async move { engine.run(program, code, &spec, stop).await });
    (stop_tx, running)
}

async fn run_spec(engine: &WasiEngine, artifact: &Artifact, spec: &WasiSpec) -> Run {
    let (program, code) = engine
        .load(&artifact.digest, &artifact.path)
        .await
        .expect("load");
    let (_keep, stop) = never_stopped();
    engine.run(program, code, spec, stop).await
}

async fn run_with(engine: &WasiEngine, artifact: &Artifact, limits: WasiLimits) -> Run {
    run_spec(engine, artifact, &spec(artifact, limits)).await
}

/// The engine still runs a well-behaved guest normally.
async fn assert_hello(engine: &WasiEngine, dir: &Path) {
    let hello = store_wat(dir, HELLO);
    let run = run_with(engine, &hello, WasiLimits::default()).await;
    assert_eq!(run.result.exit_code, Some(3), "{:?}", run.result);
    assert_eq!(run.result.stdout, "hello\n");
    assert_eq!(run.result.error.as_deref(), Some("exited with code 3"));
    assert!(run.stopped.is_none());
}

/// Longest a test waits for a guest to be admitted.
const ADMISSION_DEADLINE: Duration = Duration::from_secs(10);
/// Longest a test waits for a run that should end promptly: a short guest,
/// or one interrupted by its deadline or a stop order.
const RUN_DEADLINE: Duration = Duration::from_secs(10);

/// Awaits `run`, failing the test when it takes longer than [`RUN_DEADLINE`].
async fn promptly<T>(what: &str, run: impl Future<Output = T>) -> T {
    tokio::time::timeout(RUN_DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {RUN_DEADLINE:?}"))
}

/// Polls until at most `free` pool slots are left: the guests started hold
/// the others, so they are running.
async fn wait_until_free_slots(engine: &WasiEngine, free: usize) {
    let deadline = tokio::time::Instant::now() + ADMISSION_DEADLINE;
    while engine.free_slots() > free {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no guest was admitted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `.cwasm` files under the code cache.
fn cwasm_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for engine_dir in std::fs::read_dir(dir.join("code")).expect("code cache") {
        for entry in std::fs::read_dir(engine_dir.expect("entry").path()).expect("engine dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "cwasm") {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn engine_and_program_can_be_shared_across_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<WasiEngine>();
    shared::<Program>();
}

#[tokio::test]
async fn hello_exits_with_its_code_and_output() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let hello = store_wat(dir.path(), HELLO);
    let run = run_with(&engine, &hello, WasiLimits::default()).await;
    let result = &run.result;
    assert_eq!(result.exit_code, Some(3));
    assert_eq!(result.stdout, "hello\n");
    assert_eq!(result.stderr, "");
    assert!(!result.stdout_truncated);
    assert_eq!(result.code, Some(CodeSource::Compiled));
    assert_eq!(result.limits, Some(caps().apply(&WasiLimits::default())));
    assert!(result.fuel_consumed.is_some_and(|f| f > 0));
    assert!(result.output.is_none());

    let again = run_with(&engine, &hello, WasiLimits::default()).await;
    assert_eq!(again.result.exit_code, Some(3));
    assert_eq!(again.result.code, Some(CodeSource::Memory));
}

#[tokio::test]
async fn guest_sees_only_its_args_env_and_stdin() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let echo = store_wat(dir.path(), ECHO);
    let mut spec = spec(&echo, WasiLimits::default());
    spec.args = vec!["a".to_string(), "bc".to_string()];
    spec.env.insert("KEY".to_string(), "value".to_string());
    spec.stdin = "ping".to_string();
    let run = run_spec(&engine, &echo, &spec).await;
    assert_eq!(run.result.stdout, "pingKEY=value\0");
    assert_eq!(run.result.stderr, "main.wasm\0a\0bc\0");
    // Three arguments (the program name first) and exactly the job's one variable.
    assert_eq!(run.result.exit_code, Some(31));
    spec.program = Some("echo.wasm".to_string());
    let run = run_spec(&engine, &echo, &spec).await;
    assert_eq!(
        run.result.stderr, "echo.wasm\0a\0bc\0",
        "the job's own name"
    );
}

#[tokio::test]
async fn busy_loop_runs_out_of_fuel() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let busy = store_wat(dir.path(), BUSY);
    let limits = WasiLimits {
        fuel: Some(100_000),
        ..WasiLimits::default()
    };
    let run = run_with(&engine, &busy, limits).await;
    assert_eq!(
        run.result.error.as_deref(),
        Some("out of fuel after 100000 units")
    );
    assert_eq!(run.result.exit_code, None);
    assert_eq!(run.result.fuel_consumed, Some(100_000));
    assert_hello(&engine, dir.path()).await;
}

#[tokio::test]
async fn busy_loop_times_out() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let busy = store_wat(dir.path(), BUSY);
    let limits = WasiLimits {
        fuel: Some(1 << 40),
        timeout_ms: Some(200),
        ..WasiLimits::default()
    };
    let run = run_with(&engine, &busy, limits).await;
    assert_eq!(run.result.error.as_deref(), Some("timed out after 200 ms"));
    assert_eq!(run.result.exit_code, None);
    assert!(run.result.duration_ms >= 200, "{}", run.result.duration_ms);
    // Set, but only a lower bound: wasmtime does not save a function's fuel
    // counter when an epoch check interrupts it.
    assert!(run.result.fuel_consumed.is_some());
    assert!(run.stopped.is_none());
    assert_hello(&engine, dir.path()).await;
}

#[tokio::test]
async fn exit_codes_above_125_are_reported_as_they_are() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let exit = store_wat(dir.path(), EXIT_200);
    let run = run_with(&engine, &exit, WasiLimits::default()).await;
    assert_eq!(run.result.exit_code, Some(200), "{:?}", run.result);
    assert_eq!(run.result.error.as_deref(), Some("exited with code 200"));
}

#[tokio::test]
async fn guest_asleep_in_a_host_call_times_out() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let nap = store_wat(dir.path(), &sleep_p1(1_000_000));
    let run = run_with(&engine, &nap, WasiLimits::default()).await;
    assert_eq!(run.result.exit_code, Some(0), "{:?}", run.result);
    assert_eq!(run.result.error, None);

    let sleeper = store_wat(dir.path(), &sleep_p1(HOUR_NANOS));
    let limits = WasiLimits {
        timeout_ms: Some(200),
        ..WasiLimits::default()
    };
    let run = promptly("the sleeper", run_with(&engine, &sleeper, limits)).await;
    assert_eq!(run.result.error.as_deref(), Some("timed out after 200 ms"));
    assert_eq!(run.result.exit_code, None);
    assert!(run.result.duration_ms >= 200, "{}", run.result.duration_ms);
    // Saved when the guest made the host call.
    assert!(run.result.fuel_consumed.is_some_and(|f| f > 0));
    assert!(run.stopped.is_none());
    assert_hello(&engine, dir.path()).await;
}

#[tokio::test]
async fn stop_signal_interrupts_a_guest_asleep_in_a_host_call() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let sleeper = store_wat(dir.path(), &sleep_p1(HOUR_NANOS));
    let (stop_tx, running) = start(&engine, &sleeper, WasiLimits::default()).await;
    wait_until_free_slots(&engine, 1).await;
    stop_tx.send_replace(Some(StopReason::ShuttingDown));
    let run = promptly("the stopped sleeper", running).await.unwrap();
    assert_eq!(run.stopped, Some(StopReason::ShuttingDown));
    assert_eq!(
        run.result.error.as_deref(),
        Some(StopReason::ShuttingDown.message())
    );
    assert_eq!(engine.free_slots(), 2, "the slot is given back");
    assert_hello(&engine, dir.path()).await;
}

#[tokio::test]
async fn stdin_the_job_did_not_give_is_at_its_end_and_never_blocks() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let waiter = store_wat(dir.path(), WAIT_FOR_STDIN);
    let run = promptly(
        "the stdin waiter",
        run_with(&engine, &waiter, WasiLimits::default()),
    )
    .await;
    assert_eq!(run.result.exit_code, Some(0), "{:?}", run.result);
}

#[tokio::test]
async fn a_busy_guest_yields_its_thread_to_other_guests() {
    // The busy guest and the other share the engine's one guest thread.
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let busy = store_wat(dir.path(), BUSY);
    let limits = WasiLimits {
        fuel: Some(1 << 40),
        ..WasiLimits::default()
    };
    let (stop_tx, running) = start(&engine, &busy, limits).await;
    wait_until_free_slots(&engine, 1).await;
    promptly(
        "a guest beside the busy one",
        assert_hello(&engine, dir.path()),
    )
    .await;
    assert!(!running.is_finished());
    stop_tx.send_replace(Some(StopReason::Revoked));
    let run = promptly("the stopped busy guest", running).await.unwrap();
    assert_eq!(run.stopped, Some(StopReason::Revoked));
}

#[tokio::test]
async fn memory_growth_past_the_limit_fails_the_job() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let limits = WasiLimits {
        memory_mb: Some(2),
        ..WasiLimits::default()
    };
    // One page plus 16 (1 MiB) fits in 2 MiB.
    let within = store_wat(dir.path(), &grow(16));
    let run = run_with(&engine, &within, limits).await;
    assert_eq!(run.result.exit_code, Some(0), "{:?}", run.result);
    assert_eq!(run.result.error, None);

    // One page plus 64 (4 MiB) does not.
    let past = store_wat(dir.path(), &grow(64));
    let run = run_with(&engine, &past, limits).await;
    assert_eq!(
        run.result.error.as_deref(),
        Some("memory limit of 2 MiB exceeded")
    );
    assert_eq!(run.result.exit_code, None);
    assert!(run.result.fuel_consumed.is_some());
    assert_hello(&engine, dir.path()).await;
}

#[tokio::test]
async fn infinite_recursion_overflows_the_stack() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let recurse = store_wat(dir.path(), RECURSE);
    let run = run_with(&engine, &recurse, WasiLimits::default()).await;
    let error = run.result.error.expect("an error");
    assert!(error.contains("stack overflow"), "{error}");
    assert!(error.contains("512 KiB"), "{error}");
    assert_eq!(run.result.exit_code, None);
    assert_hello(&engine, dir.path()).await;
}

#[tokio::test]
async fn output_past_the_limit_is_dropped_and_counted() {
    let dir = TempDir::new().unwrap();
    let limit = 4096;
    let engine = WasiEngine::new(settings(dir.path(), 2, limit)).expect("engine");
    let flood = store_wat(dir.path(), FLOOD);
    let run = run_with(&engine, &flood, WasiLimits::default()).await;
    let result = &run.result;
    assert_eq!(result.exit_code, Some(0), "{result:?}");
    assert_eq!(result.error, None);
    assert_eq!(result.stdout, "x".repeat(limit));
    assert_eq!(result.stderr, "x".repeat(limit));
    assert!(result.stdout_truncated && result.stderr_truncated);
    assert_eq!(result.stdout_dropped_bytes, FLOOD_BYTES - limit as u64);
    assert_eq!(result.stderr_dropped_bytes, FLOOD_BYTES - limit as u64);
}

#[tokio::test]
async fn stop_signal_interrupts_a_running_guest() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let busy = store_wat(dir.path(), BUSY);
    let limits = WasiLimits {
        fuel: Some(1 << 40),
        ..WasiLimits::default()
    };
    let (stop_tx, running) = start(&engine, &busy, limits).await;
    // `engine` has two slots; the busy guest holds one.
    wait_until_free_slots(&engine, 1).await;
    stop_tx.send_replace(Some(StopReason::Revoked));
    let run = running.await.unwrap();
    assert_eq!(run.stopped, Some(StopReason::Revoked));
    assert_eq!(
        run.result.error.as_deref(),
        Some(StopReason::Revoked.message())
    );
    assert_eq!(run.result.exit_code, None);
    assert!(run.result.fuel_consumed.is_some());
    assert_hello(&engine, dir.path()).await;
}

#[tokio::test]
async fn full_pool_queues_jobs_and_a_queued_job_can_be_stopped() {
    let dir = TempDir::new().unwrap();
    let engine = WasiEngine::new(settings(dir.path(), 1, OUTPUT_LIMIT)).expect("engine");
    let hello = store_wat(dir.path(), HELLO);
    let job = || run_with(&engine, &hello, WasiLimits::default());
    let (a, b, c, d) = tokio::join!(job(), job(), job(), job());
    for run in [a, b, c, d] {
        assert_eq!(run.result.exit_code, Some(3), "{:?}", run.result);
    }

    // One slot, held by a busy guest: a second job waits until stopped.
    let busy = store_wat(dir.path(), BUSY);
    let (program, code) = engine.load(&busy.digest, &busy.path).await.unwrap();
    let limits = WasiLimits {
        fuel: Some(1 << 40),
        ..WasiLimits::default()
    };
    let spec = spec(&busy, limits);
    let (first_tx, first_stop) = never_stopped();
    let (second_tx, second_stop) = never_stopped();
    let first = tokio::spawn({
        let (engine, program, spec) = (engine.clone(), Arc::clone(&program), spec.clone());
        async move { engine.run(program, code, &spec, first_stop).await }
    });
    wait_until_free_slots(&engine, 0).await;
    second_tx.send_replace(Some(StopReason::ShuttingDown));
    let second = engine.run(program, code, &spec, second_stop).await;
    assert_eq!(second.stopped, Some(StopReason::ShuttingDown));
    assert_eq!(second.result.fuel_consumed, Some(0));
    assert!(!first.is_finished());
    first_tx.send_replace(Some(StopReason::Revoked));
    let first = first.await.unwrap();
    assert_eq!(first.stopped, Some(StopReason::Revoked));
    assert_hello(&engine, dir.path()).await;
}

#[tokio::test]
async fn anything_but_a_command_is_refused_at_load() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let cases = [
        store(dir.path(), b"#!/bin/sh\necho not wasm\n"),
        store(dir.path(), b"\0asm\x01\0\0\0 not a module"),
        store_wat(dir.path(), r#"(module (func (export "main")))"#),
        store_wat(
            dir.path(),
            r#"(module (import "env" "host_secret" (func)) (func (export "_start")))"#,
        ),
        store_wat(dir.path(), "(component)"),
    ];
    for artifact in &cases {
        let error = match engine.load(&artifact.digest, &artifact.path).await {
            Ok(_) => panic!("{} loaded", artifact.path.display()),
            Err(error) => error,
        };
        assert!(error.starts_with(NOT_COMMAND), "{error}");
        assert!(engine.loaded(&artifact.digest).is_none());
    }
    assert_hello(&engine, dir.path()).await;
}

#[tokio::test]
async fn compiled_code_is_reused_from_disk_by_a_new_engine() {
    let dir = TempDir::new().unwrap();
    let hello = store_wat(dir.path(), HELLO);
    let first = engine(dir.path());
    let (_, code) = first.load(&hello.digest, &hello.path).await.unwrap();
    assert_eq!(code, CodeSource::Compiled);
    let (_, code) = first.load(&hello.digest, &hello.path).await.unwrap();
    assert_eq!(code, CodeSource::Memory);
    assert!(first.loaded(&hello.digest).is_some());
    drop(first);

    let restarted = engine(dir.path());
    assert!(restarted.loaded(&hello.digest).is_none());
    let run = run_with(&restarted, &hello, WasiLimits::default()).await;
    assert_eq!(run.result.code, Some(CodeSource::DiskCache));
    assert_eq!(run.result.exit_code, Some(3));
}

#[tokio::test]
async fn corrupted_compiled_code_is_detected_and_recompiled() {
    let dir = TempDir::new().unwrap();
    let hello = store_wat(dir.path(), HELLO);
    let (_, code) = engine(dir.path())
        .load(&hello.digest, &hello.path)
        .await
        .unwrap();
    assert_eq!(code, CodeSource::Compiled);
    let [cwasm] = cwasm_files(dir.path()).try_into().expect("one .cwasm");

    // Bytes changed behind the cache's back: the checksum no longer matches.
    let mut bytes = std::fs::read(&cwasm).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&cwasm, &bytes).unwrap();
    let restarted = engine(dir.path());
    let run = run_with(&restarted, &hello, WasiLimits::default()).await;
    assert_eq!(run.result.code, Some(CodeSource::Compiled));
    assert_eq!(run.result.exit_code, Some(3));

    // Garbage with a matching checksum: wasmtime refuses it, and it is
    // replaced as well.
    let garbage = b"not compiled code".to_vec();
    std::fs::write(&cwasm, &garbage).unwrap();
    std::fs::write(
        cwasm.with_extension("sha256"),
        hex::encode(Sha256::digest(&garbage)),
    )
    .unwrap();
    let (_, code) = engine(dir.path())
        .load(&hello.digest, &hello.path)
        .await
        .unwrap();
    assert_eq!(code, CodeSource::Compiled);
    let (_, code) = engine(dir.path())
        .load(&hello.digest, &hello.path)
        .await
        .unwrap();
    assert_eq!(code, CodeSource::DiskCache);
}

#[tokio::test]
async fn concurrent_loads_compile_once() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let hello = store_wat(dir.path(), HELLO);
    let load = || engine.load(&hello.digest, &hello.path);
    let (a, b, c, d) = tokio::join!(load(), load(), load(), load());
    let codes: Vec<CodeSource> = [a, b, c, d]
        .into_iter()
        .map(|loaded| loaded.expect("load").1)
        .collect();
    let compiled = codes.iter().filter(|c| **c == CodeSource::Compiled).count();
    assert_eq!(compiled, 1, "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|c| matches!(c, CodeSource::Compiled | CodeSource::Memory))
    );
}

#[tokio::test]
async fn command_components_run_and_report_their_exit() {
    let dir = TempDir::new().unwrap();
    let engine = engine(dir.path());
    let ok = store_wat(dir.path(), &run_component(0));
    let run = run_with(&engine, &ok, WasiLimits::default()).await;
    assert_eq!(run.result.exit_code, Some(0), "{:?}", run.result);
    assert_eq!(run.result.error, None);
    assert_eq!(run.result.code, Some(CodeSource::Compiled));

    let failing = store_wat(dir.path(), &run_component(1));
    let run = run_with(&engine, &failing, WasiLimits::default()).await;
    assert_eq!(run.result.exit_code, Some(1));
    assert_eq!(run.result.error.as_deref(), Some("exited with code 1"));

    let busy = store_wat(dir.path(), BUSY_COMPONENT);
    let limits = WasiLimits {
        fuel: Some(50_000),
        ..WasiLimits::default()
    };
    let run = run_with(&engine, &busy, limits).await;
    assert_eq!(
        run.result.error.as_deref(),
        Some("out of fuel after 50000 units")
    );
    assert_hello(&engine, dir.path()).await;

    let restarted = self::engine(dir.path());
    let run = run_with(&restarted, &ok, WasiLimits::default()).await;
    assert_eq!(run.result.code, Some(CodeSource::DiskCache));
    assert_eq!(run.result.exit_code, Some(0));
}

#[tokio::test]
async fn forgotten_code_is_gone_from_memory_and_disk() {
    let dir = TempDir::new().unwrap();
    let hello = store_wat(dir.path(), HELLO);
    let engine = engine(dir.path());
    let (_, code) = engine.load(&hello.digest, &hello.path).await.unwrap();
    assert_eq!(code, CodeSource::Compiled);
    assert_eq!(cwasm_files(dir.path()).len(), 1);
    engine.forget(&hello.digest);
    assert!(engine.loaded(&hello.digest).is_none());
    assert!(cwasm_files(dir.path()).is_empty());
    let (_, code) = engine.load(&hello.digest, &hello.path).await.unwrap();
    assert_eq!(code, CodeSource::Compiled);
}
