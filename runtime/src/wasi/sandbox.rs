//! One run of a program: a fresh store holding only the job's args, env and
//! stdin, with captured output, its fuel, a memory cap and a deadline; run on
//! the calling (blocking) thread, then described as an exit code and error.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use skyclaw_api::jobs::EffectiveLimits;
use wasmtime::{Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder, WasiCtxView, WasiView};

use super::MIB;
use super::engine::MAX_WASM_STACK;
use super::output::OutputCapture;
use super::program::Program;
use crate::captured::Captured;
use crate::native::{StopReason, StopSignal};

/// Epoch ticks between two checks of a running guest's deadline and stop
/// signal: every tick, so both take effect within one tick.
const TICKS_PER_CHECK: u64 = 1;

/// Everything one run is given.
#[derive(Debug)]
pub(super) struct Job {
    /// `argv`, program name first.
    pub(super) argv: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) stdin: Vec<u8>,
    pub(super) limits: EffectiveLimits,
    pub(super) max_output_bytes: usize,
    pub(super) stop: StopSignal,
}

/// How a run ended.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    pub(super) exit_code: Option<i32>,
    pub(super) error: Option<String>,
    pub(super) stopped: Option<StopReason>,
    pub(super) fuel_consumed: u64,
    pub(super) stdout: Captured,
    pub(super) stderr: Captured,
}

impl Outcome {
    /// A run that never reached the guest.
    pub(super) fn failed(error: String) -> Outcome {
        Outcome {
            error: Some(error),
            ..Outcome::default()
        }
    }

    /// A run stopped before the guest started.
    pub(super) fn stopped(reason: StopReason) -> Outcome {
        Outcome {
            error: Some(reason.message().to_string()),
            stopped: Some(reason),
            ..Outcome::default()
        }
    }
}

/// What a store holds: the guest's WASI context and the host's watch on it.
pub(super) struct Guest {
    wasi: WasiP1Ctx,
    memory: MemoryCap,
    watch: Watch,
}

impl Guest {
    /// The WASI context, as the preview 1 linker wants it.
    pub(super) fn wasi(&mut self) -> &mut WasiP1Ctx {
        &mut self.wasi
    }
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

/// Runs `program` once for `job` on this thread, to its end or a limit.
pub(super) fn execute(engine: &Engine, program: &Program, job: Job) -> Outcome {
    let stdout = OutputCapture::new(job.max_output_bytes);
    let stderr = OutputCapture::new(job.max_output_bytes);
    let limits = job.limits;
    let guest = Guest {
        wasi: sandbox(&job.argv, &job.env, job.stdin, &stdout, &stderr),
        memory: MemoryCap::new(limits.memory_mb),
        watch: Watch::new(Duration::from_millis(limits.timeout_ms), job.stop),
    };
    let mut store = Store::new(engine, guest);
    let ended = arm(&mut store, limits.fuel).and_then(|()| program.start(&mut store));
    let fuel_left = store.get_fuel().unwrap_or(0);
    // Dropping the store frees its instances' pool slots.
    let guest = store.into_data();
    let (exit_code, error, stopped) = describe(ended, &guest, &limits);
    Outcome {
        exit_code,
        error,
        stopped,
        fuel_consumed: limits.fuel.saturating_sub(fuel_left),
        stdout: stdout.take(),
        stderr: stderr.take(),
    }
}

/// The guest's whole world: its args, env and stdin, captured output, and no
/// filesystem (no preopens), network or host environment.
fn sandbox(
    argv: &[String],
    env: &BTreeMap<String, String>,
    stdin: Vec<u8>,
    stdout: &OutputCapture,
    stderr: &OutputCapture,
) -> WasiP1Ctx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(argv)
        .stdin(MemoryInputPipe::new(stdin))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for (name, value) in env {
        builder.env(name, value);
    }
    builder.build_p1()
}

/// Sets the store's limits: memory, fuel, and the epoch check that enforces
/// the deadline and the stop signal.
fn arm(store: &mut Store<Guest>, fuel: u64) -> wasmtime::Result<()> {
    store.limiter(|guest| &mut guest.memory);
    store.set_fuel(fuel)?;
    store.set_epoch_deadline(TICKS_PER_CHECK);
    store.epoch_deadline_callback(|mut store| Ok(store.data_mut().watch.check()));
    Ok(())
}

/// The exit code, error and stop reason of a run. A limit the guest hit
/// explains the end better than the trap it caused: an interrupted guest has
/// no exit code, and a denied memory growth fails the job even when the
/// guest handled it and exited on its own (its exit code is kept).
fn describe(
    ended: wasmtime::Result<i32>,
    guest: &Guest,
    limits: &EffectiveLimits,
) -> (Option<i32>, Option<String>, Option<StopReason>) {
    match guest.watch.why {
        Some(Interruption::Stopped(reason)) => {
            return (None, Some(reason.message().to_string()), Some(reason));
        }
        Some(Interruption::TimedOut) => {
            let error = format!("timed out after {} ms", limits.timeout_ms);
            return (None, Some(error), None);
        }
        None => {}
    }
    let (exit_code, error) = match ended {
        Ok(code) => exited(code),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(I32Exit(code)) => exited(*code),
            None => (None, Some(trapped(&e, limits))),
        },
    };
    if guest.memory.denied {
        let error = format!("memory limit of {} MiB exceeded", limits.memory_mb);
        return (exit_code, Some(error), None);
    }
    (exit_code, error, None)
}

fn exited(code: i32) -> (Option<i32>, Option<String>) {
    let error = (code != 0).then(|| format!("exited with code {code}"));
    (Some(code), error)
}

/// Describes a run that ended in a trap or another error.
fn trapped(error: &wasmtime::Error, limits: &EffectiveLimits) -> String {
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => format!("out of fuel after {} units", limits.fuel),
        Some(Trap::StackOverflow) => format!(
            "stack overflow: the guest used more than its {} KiB wasm stack",
            MAX_WASM_STACK / 1024
        ),
        Some(trap) => trap.to_string(),
        None => format!("{error:#}"),
    }
}

/// Caps every linear memory of a store and remembers a denied growth:
/// guests usually abort when an allocation fails, and the cap, not that
/// abort, is what the job should be told.
struct MemoryCap {
    limit_bytes: u64,
    denied: bool,
}

impl MemoryCap {
    fn new(memory_mb: u32) -> MemoryCap {
        MemoryCap {
            limit_bytes: u64::from(memory_mb) * MIB,
            denied: false,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = u64::try_from(desired).is_ok_and(|desired| desired <= self.limit_bytes);
        self.denied |= !allowed;
        Ok(allowed)
    }

    /// Tables are bounded by the pool's per-table element limit.
    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// Why the host interrupted a guest.
#[derive(Debug, Clone, Copy)]
enum Interruption {
    TimedOut,
    Stopped(StopReason),
}

/// The wall-clock deadline and stop signal of a run, checked at epoch ticks.
struct Watch {
    deadline: Instant,
    stop: StopSignal,
    why: Option<Interruption>,
}

impl Watch {
    fn new(timeout: Duration, stop: StopSignal) -> Watch {
        Watch {
            deadline: Instant::now() + timeout,
            stop,
            why: None,
        }
    }

    /// Interrupts the guest once it was told to stop or is past its deadline.
    fn check(&mut self) -> UpdateDeadline {
        let stop = *self.stop.borrow();
        self.why = match stop {
            Some(reason) => Some(Interruption::Stopped(reason)),
            None if Instant::now() >= self.deadline => Some(Interruption::TimedOut),
            None => return UpdateDeadline::Continue(TICKS_PER_CHECK),
        };
        UpdateDeadline::Interrupt
    }
}
