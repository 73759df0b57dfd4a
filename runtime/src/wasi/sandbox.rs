//! One run of a program: a fresh store holding only the job's args, env and
//! stdin, with captured output, its fuel and a memory cap; run as a future
//! that yields at every epoch tick and is dropped at the job's deadline or
//! stop order, wherever the guest is (a host call included); then described
//! as an exit code and error.

use std::collections::BTreeMap;
use std::time::Duration;

use skyclaw_api::jobs::EffectiveLimits;
use tokio::time::Instant;
use wasmtime::{Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder, WasiCtxView, WasiView};

use super::MIB;
use super::engine::MAX_WASM_STACK;
use super::output::OutputCapture;
use super::program::Program;
use crate::captured::Captured;
use crate::workload::{StopReason, StopSignal, stop_order};

/// Epoch ticks a guest runs between two yields to the other tasks of its
/// thread: one, so a compute-bound guest holds a worker for at most a tick
/// at a time and sees its deadline and stop order within a tick.
const TICKS_PER_YIELD: u64 = 1;

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

/// What a store holds: the guest's WASI context and its memory cap.
pub(super) struct Guest {
    wasi: WasiP1Ctx,
    memory: MemoryCap,
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

impl Capped for Guest {
    fn memory(&mut self) -> &mut MemoryCap {
        &mut self.memory
    }
}

/// Store data that carries a [`MemoryCap`], so that [`arm`] can limit it.
pub(super) trait Capped {
    fn memory(&mut self) -> &mut MemoryCap;
}

/// Runs `program` once for `job`, to its end, a limit, or a stop order.
pub(super) async fn execute(engine: &Engine, program: &Program, mut job: Job) -> Outcome {
    let stdout = OutputCapture::new(job.max_output_bytes);
    let stderr = OutputCapture::new(job.max_output_bytes);
    let limits = job.limits;
    let guest = Guest {
        wasi: sandbox(&job.argv, &job.env, job.stdin, &stdout, &stderr),
        memory: MemoryCap::new(limits.memory_mb),
    };
    let mut store = Store::new(engine, guest);
    let deadline = Instant::now() + Duration::from_millis(limits.timeout_ms);
    let ended = match arm(&mut store, limits.fuel) {
        // The guest's future is dropped as soon as the interruption comes:
        // that unwinds it even from inside a host call, which no epoch
        // check would reach.
        Ok(()) => tokio::select! {
            biased;
            why = interruption(deadline, &mut job.stop) => Ended::Interrupted(why),
            ran = program.start(&mut store) => Ended::Ran(ran),
        },
        Err(e) => Ended::Ran(Err(e)),
    };
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

/// Sets the store's limits, memory and fuel, and makes the guest yield at
/// every epoch tick so that it shares its thread and can be interrupted.
pub(super) fn arm<T: Capped + 'static>(store: &mut Store<T>, fuel: u64) -> wasmtime::Result<()> {
    store.limiter(|guest| guest.memory());
    store.set_fuel(fuel)?;
    store.set_epoch_deadline(TICKS_PER_YIELD);
    // tokio's own yield, unlike wasmtime's plain one, lets the runtime poll
    // its timers before the guest goes on, so the deadline fires on time.
    store.epoch_deadline_callback(|_| {
        Ok(UpdateDeadline::YieldCustom(
            TICKS_PER_YIELD,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    Ok(())
}

/// Resolves when the run must end: once the job is told to stop, or at its
/// deadline.
async fn interruption(deadline: Instant, stop: &mut StopSignal) -> Interruption {
    tokio::select! {
        biased;
        reason = stop_order(stop) => Interruption::Stopped(reason),
        () = tokio::time::sleep_until(deadline) => Interruption::TimedOut,
    }
}

/// How a guest's run ended.
enum Ended {
    /// The guest returned, exited or trapped.
    Ran(wasmtime::Result<i32>),
    /// The host ended it before it did.
    Interrupted(Interruption),
}

/// The exit code, error and stop reason of a run. A limit the guest hit
/// explains the end better than the trap it caused: an interrupted guest has
/// no exit code, and a denied memory growth fails the job even when the
/// guest handled it and exited on its own (its exit code is kept).
fn describe(
    ended: Ended,
    guest: &Guest,
    limits: &EffectiveLimits,
) -> (Option<i32>, Option<String>, Option<StopReason>) {
    let ended = match ended {
        Ended::Interrupted(Interruption::Stopped(reason)) => {
            return (None, Some(reason.message().to_string()), Some(reason));
        }
        Ended::Interrupted(Interruption::TimedOut) => {
            let error = format!("timed out after {} ms", limits.timeout_ms);
            return (None, Some(error), None);
        }
        Ended::Ran(ended) => ended,
    };
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
pub(super) fn trapped(error: &wasmtime::Error, limits: &EffectiveLimits) -> String {
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
pub(super) struct MemoryCap {
    limit_bytes: u64,
    denied: bool,
}

impl MemoryCap {
    pub(super) fn new(memory_mb: u32) -> MemoryCap {
        MemoryCap {
            limit_bytes: u64::from(memory_mb) * MIB,
            denied: false,
        }
    }

    /// True once a growth past the cap was refused.
    pub(super) fn denied(&self) -> bool {
        self.denied
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
