//! Programs: a WASI artifact told apart as a component or a preview 1 module,
//! compiled (or taken from compiled code), and pre-instantiated against the
//! host's async WASI imports so that each job only instantiates and calls it,
//! as a future the host may drop while the guest waits in a host call.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use skyclaw_api::artifacts::{ArtifactKind, KIND_SNIFF_BYTES};
use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{Engine, ExternType, InstancePre, Linker, Module, Store};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::bindings::CommandPre;

use super::sandbox::Guest;

/// The function a preview 1 command exports as its `main`.
const START: &str = "_start";
/// The module of every preview 1 import.
const PREVIEW1: &str = "wasi_snapshot_preview1";
/// The preview 1 import a command exits through.
const PROC_EXIT: &str = "proc_exit";

/// Why an artifact could not be made into a [`Program`].
#[derive(Debug, thiserror::Error)]
pub(super) enum LoadError {
    /// The artifact is not something a WASI job can run.
    #[error("not a WASI command component or preview1 module: {0}")]
    NotCommand(String),
    /// The artifact is not something a wasi:http service can serve.
    #[error("not a wasi:http proxy component: {0}")]
    NotProxy(String),
    /// The artifact's blob could not be read.
    #[error("cannot read artifact {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
}

/// The two kinds of WebAssembly binary a WASI job may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WasmKind {
    Component,
    Module,
}

impl WasmKind {
    /// Tells the kind of a blob from its first bytes.
    pub(super) fn sniff(blob: &Path) -> Result<WasmKind, LoadError> {
        let read = |source| LoadError::Read {
            path: blob.to_path_buf(),
            source,
        };
        let mut head = Vec::with_capacity(KIND_SNIFF_BYTES);
        File::open(blob)
            .map_err(read)?
            .take(KIND_SNIFF_BYTES as u64)
            .read_to_end(&mut head)
            .map_err(read)?;
        match ArtifactKind::detect(&head) {
            ArtifactKind::WasmComponent => Ok(WasmKind::Component),
            ArtifactKind::WasmModule => Ok(WasmKind::Module),
            other => Err(LoadError::NotCommand(format!(
                "the artifact is a {other}, not WebAssembly"
            ))),
        }
    }
}

/// Compiled machine code of either kind.
pub(super) enum Code {
    Component(Component),
    Module(Module),
}

impl Code {
    /// Compiles a WebAssembly binary; invalid binaries are refused.
    pub(super) fn compile(engine: &Engine, kind: WasmKind, wasm: &[u8]) -> Result<Code, LoadError> {
        let compiled = match kind {
            WasmKind::Component => Component::new(engine, wasm).map(Code::Component),
            WasmKind::Module => Module::new(engine, wasm).map(Code::Module),
        };
        compiled.map_err(|e| LoadError::NotCommand(format!("invalid WebAssembly: {e:#}")))
    }

    /// Loads code that [`Code::serialize`] wrote with an engine of the same
    /// configuration.
    #[allow(unsafe_code)]
    pub(super) fn deserialize(
        engine: &Engine,
        kind: WasmKind,
        compiled: &[u8],
    ) -> wasmtime::Result<Code> {
        // SAFETY: wasmtime trusts serialized code to be its own output, since
        // it maps it as executable. These bytes are exactly what this host
        // serialized earlier: the caller checked them against the sha256 it
        // wrote beside them, and they stay in memory from that check on, so
        // nothing can swap them in between. wasmtime itself refuses code from
        // another wasmtime version or an incompatible engine configuration.
        unsafe {
            match kind {
                WasmKind::Component => {
                    Component::deserialize(engine, compiled).map(Code::Component)
                }
                WasmKind::Module => Module::deserialize(engine, compiled).map(Code::Module),
            }
        }
    }

    /// The component, for code of that kind.
    pub(super) fn into_component(self) -> Option<Component> {
        match self {
            Code::Component(component) => Some(component),
            Code::Module(_) => None,
        }
    }

    /// The machine code as bytes, to keep on disk.
    pub(super) fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Code::Component(component) => component.serialize(),
            Code::Module(module) => module.serialize(),
        }
    }

    /// Resolves every import against the host's WASI implementation and
    /// checks that the code is a command: a component exporting
    /// `wasi:cli/run`, or a module exporting `_start`.
    pub(super) fn pre_instantiate(&self, linkers: &Linkers) -> Result<Program, LoadError> {
        let not_command = |e: wasmtime::Error| LoadError::NotCommand(format!("{e:#}"));
        let command = match self {
            Code::Component(component) => {
                let pre = linkers
                    .component
                    .instantiate_pre(component)
                    .map_err(not_command)?;
                Command::Component(CommandPre::new(pre).map_err(not_command)?)
            }
            Code::Module(module) => {
                check_start(module)?;
                Command::Module(
                    linkers
                        .module
                        .instantiate_pre(module)
                        .map_err(not_command)?,
                )
            }
        };
        Ok(Program { command })
    }
}

/// A preview 1 command exports `_start` taking and returning nothing.
fn check_start(module: &Module) -> Result<(), LoadError> {
    match module.get_export(START) {
        Some(ExternType::Func(start))
            if start.params().len() == 0 && start.results().len() == 0 =>
        {
            Ok(())
        }
        Some(_) => Err(LoadError::NotCommand(format!(
            "`{START}` is not a function without parameters and results"
        ))),
        None => Err(LoadError::NotCommand(format!(
            "the module exports no `{START}` function"
        ))),
    }
}

/// The host's WASI imports, one linker per kind, built once per engine.
pub(super) struct Linkers {
    component: ComponentLinker<Guest>,
    module: Linker<Guest>,
}

impl Linkers {
    /// WASI 0.2 (`wasi:cli` and everything it imports) for components,
    /// `wasi_snapshot_preview1` for modules, both async: a guest waiting in
    /// a host call (a clock, a stream) leaves its thread to other work.
    pub(super) fn new(engine: &Engine) -> wasmtime::Result<Linkers> {
        let mut component = ComponentLinker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component)?;
        let mut module = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module, |guest: &mut Guest| guest.wasi())?;
        // wasmtime-wasi refuses codes above 125 (reserved by WASI) with an
        // error carrying a wasm backtrace; the job is told the code instead.
        module
            .allow_shadowing(true)
            .func_wrap(PREVIEW1, PROC_EXIT, |code: i32| -> wasmtime::Result<()> {
                Err(I32Exit(code).into())
            })?
            .allow_shadowing(false);
        Ok(Linkers { component, module })
    }
}

/// A compiled, pre-instantiated WASI command, ready to run any number of jobs.
pub struct Program {
    command: Command,
}

enum Command {
    Component(CommandPre<Guest>),
    Module(InstancePre<Guest>),
}

impl Program {
    /// Instantiates the command in `store` and runs it to its end. `Ok` is the
    /// exit code of a command that returned; exits through `wasi:cli/exit` or
    /// `proc_exit`, and traps, are errors. Dropping the future unwinds the
    /// guest wherever it is; the store stays usable.
    pub(super) async fn start(&self, store: &mut Store<Guest>) -> wasmtime::Result<i32> {
        match &self.command {
            Command::Component(pre) => {
                let command = pre.instantiate_async(&mut *store).await?;
                let ran = command.wasi_cli_run().call_run(&mut *store).await?;
                Ok(if ran.is_ok() { 0 } else { 1 })
            }
            Command::Module(pre) => {
                let instance = pre.instantiate_async(&mut *store).await?;
                let start = instance.get_typed_func::<(), ()>(&mut *store, START)?;
                start.call_async(&mut *store, ()).await?;
                Ok(0)
            }
        }
    }
}
