//! Caches of compiled code: `.cwasm` files on disk, so that a restarted host
//! does not compile again, and pre-instantiated programs in memory, so that a
//! warm job only instantiates.

use std::collections::HashMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest as _, Sha256};
use skyclaw_api::artifacts::Digest;
use tracing::warn;
use wasmtime::Engine;

use super::program::Program;

/// Programs kept loaded in memory. Each holds its machine code (a few MiB for
/// a Rust component), so this bounds the host's resident code; hosts rarely
/// run more distinct artifacts than this in a row.
pub(super) const MAX_LOADED_PROGRAMS: usize = 32;
/// Extension of compiled code files.
const CODE_EXTENSION: &str = "cwasm";
/// Extension of the file holding the sha256 (hex) of a compiled code file.
const CHECKSUM_EXTENSION: &str = "sha256";

/// Compiled code on disk, in a directory of its own per engine configuration:
/// `<root>/<engine key>/<artifact digest hex>.cwasm`, each beside a `.sha256`
/// that is checked before the code is loaded.
#[derive(Debug)]
pub(super) struct DiskCache {
    dir: PathBuf,
}

impl DiskCache {
    /// Opens (creating it if needed) the directory of `engine`'s code.
    pub(super) fn open(root: &Path, engine: &Engine) -> io::Result<DiskCache> {
        let dir = root.join(engine_key(engine));
        fs::create_dir_all(&dir)?;
        Ok(DiskCache { dir })
    }

    /// The compiled code of an artifact, when it is there and matches its
    /// checksum. Code that does not match is deleted.
    pub(super) fn read(&self, digest: &Digest) -> Option<Vec<u8>> {
        let (code_path, sum_path) = self.paths(digest);
        let code = match fs::read(&code_path) {
            Ok(code) => code,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %code_path.display(), error = %e, "cannot read compiled code; recompiling");
                self.discard(digest);
                return None;
            }
        };
        let recorded = fs::read_to_string(&sum_path).unwrap_or_default();
        if recorded.trim() != sha256_hex(&code) {
            warn!(path = %code_path.display(), "compiled code does not match its checksum; recompiling");
            self.discard(digest);
            return None;
        }
        Some(code)
    }

    /// Keeps an artifact's compiled code, each file written whole or not at all.
    pub(super) fn write(&self, digest: &Digest, code: &[u8]) -> io::Result<()> {
        let (code_path, sum_path) = self.paths(digest);
        write_atomically(&code_path, code)?;
        write_atomically(&sum_path, sha256_hex(code).as_bytes())
    }

    /// Deletes an artifact's compiled code and checksum, whatever is there.
    pub(super) fn discard(&self, digest: &Digest) {
        let (code_path, sum_path) = self.paths(digest);
        for path in [code_path, sum_path] {
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                warn!(path = %path.display(), error = %e, "cannot delete compiled code");
            }
        }
    }

    fn paths(&self, digest: &Digest) -> (PathBuf, PathBuf) {
        let stem = self.dir.join(digest.hex());
        (
            stem.with_extension(CODE_EXTENSION),
            stem.with_extension(CHECKSUM_EXTENSION),
        )
    }
}

/// A short hex name for everything about `engine` that compiled code depends
/// on (target, compiler flags, wasm features, wasmtime version).
fn engine_key(engine: &Engine) -> String {
    let mut hasher = Sha256Hasher::default();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// A [`Hasher`] over sha256: unlike std's, its output is the same in every
/// build and process, as a name on disk must be.
#[derive(Default)]
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `path` through a temporary file renamed over it, so that readers
/// see the old file or the whole new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7()));
    let written = fs::write(&temp, bytes).and_then(|()| fs::rename(&temp, path));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Pre-instantiated programs by artifact, at most [`MAX_LOADED_PROGRAMS`];
/// the least recently used goes first.
#[derive(Default)]
pub(super) struct Loaded {
    state: Mutex<LoadedState>,
}

#[derive(Default)]
struct LoadedState {
    /// Each program with the tick of its last use.
    programs: HashMap<Digest, (Arc<Program>, u64)>,
    /// Counts uses; orders programs by recency.
    clock: u64,
}

impl Loaded {
    /// The program of an artifact, if loaded; counts as a use.
    pub(super) fn get(&self, digest: &Digest) -> Option<Arc<Program>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.clock += 1;
        let now = state.clock;
        let (program, last_used) = state.programs.get_mut(digest)?;
        *last_used = now;
        Some(Arc::clone(program))
    }

    /// Drops a program; jobs that hold it finish with it.
    pub(super) fn remove(&self, digest: &Digest) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.programs.remove(digest);
    }

    /// Keeps a program, evicting the least recently used one when full.
    pub(super) fn insert(&self, digest: Digest, program: Arc<Program>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.programs.contains_key(&digest) && state.programs.len() >= MAX_LOADED_PROGRAMS {
            let oldest = state
                .programs
                .iter()
                .min_by_key(|(_, (_, last_used))| *last_used)
                .map(|(digest, _)| digest.clone());
            if let Some(oldest) = oldest {
                state.programs.remove(&oldest);
            }
        }
        state.clock += 1;
        let now = state.clock;
        state.programs.insert(digest, (program, now));
    }
}
