//! The host's artifact cache: blobs downloaded by digest from any coordinator,
//! checked against their digest before every use, capped in size with
//! least-recently-used eviction, and listed for heartbeats.
//!
//! Architecture invariant: no path to a blob leaves this module unless the
//! blob's bytes were hashed and matched its digest just before; a blob that
//! does not match is deleted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use skyclaw_api::Client;
use skyclaw_api::artifacts::{Digest, digest_file};
use skyclaw_api::hosts::MAX_REPORTED_ARTIFACTS;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::HostError;
use crate::turns::Turns;

/// Prefix of partial downloads; they are removed when the cache opens.
const DOWNLOAD_PREFIX: &str = ".download-";

/// Artifacts on disk under one directory, each file named by its digest's hex.
pub(crate) struct ArtifactCache {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// One fetch per digest at a time: a second job for the same artifact
    /// waits for the first download instead of starting its own.
    fetching: Turns,
    /// Fires when the set of held artifacts changes, so it is reported soon.
    changed: Notify,
    /// Told of every artifact evicted, to drop what was derived from it.
    on_evict: Box<dyn Fn(&Digest) + Send + Sync>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Digest, Entry>,
    total_bytes: u64,
    /// Increases on every use; orders entries for eviction.
    clock: u64,
    /// Fetches served from a cached copy, and fetches that downloaded.
    hits: u64,
    downloads: u64,
}

/// What the cache holds and how well it serves, for the host's metrics.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CacheStats {
    pub(crate) bytes: u64,
    pub(crate) hits: u64,
    pub(crate) downloads: u64,
}

struct Entry {
    size: u64,
    last_used: u64,
    /// Jobs using the file now; a pinned entry is never evicted.
    pins: u32,
}

/// A verified blob, kept on disk while this is alive.
pub(crate) struct Pinned {
    cache: Arc<ArtifactCache>,
    digest: Digest,
    path: PathBuf,
}

impl Pinned {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.cache.unpin(&self.digest);
    }
}

impl ArtifactCache {
    /// Opens (creating) the cache directory, forgets partial downloads and
    /// indexes the blobs already there; they are checked when first used.
    /// `on_evict` is called with each artifact evicted to make room.
    pub(crate) fn open(
        dir: PathBuf,
        max_bytes: u64,
        on_evict: impl Fn(&Digest) + Send + Sync + 'static,
    ) -> Result<ArtifactCache, HostError> {
        let data_err = |action, path: &Path, source| HostError::DataDir {
            action,
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(|e| data_err("cannot create", &dir, e))?;
        let mut state = State::default();
        for item in std::fs::read_dir(&dir).map_err(|e| data_err("cannot read", &dir, e))? {
            let item = item.map_err(|e| data_err("cannot read", &dir, e))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let path = item.path();
            let digest = format!("sha256:{name}").parse::<Digest>();
            match (digest, item.metadata()) {
                (Ok(digest), Ok(meta)) if meta.is_file() => {
                    state.total_bytes += meta.len();
                    state.entries.insert(
                        digest,
                        Entry {
                            size: meta.len(),
                            last_used: 0,
                            pins: 0,
                        },
                    );
                }
                _ => {
                    if !name.starts_with(DOWNLOAD_PREFIX) {
                        warn!(file = %path.display(), "removing a stray file from the artifact cache");
                    }
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let cache = ArtifactCache {
            dir,
            max_bytes,
            state: Mutex::new(state),
            fetching: Turns::default(),
            changed: Notify::new(),
            on_evict: Box::new(on_evict),
        };
        cache.evict();
        Ok(cache)
    }

    /// The verified blob of `digest`: from the cache when it holds a copy whose
    /// bytes still match, else downloaded from the coordinators. The error is
    /// a sentence for the job's result.
    pub(crate) async fn fetch(
        self: &Arc<Self>,
        client: &Client,
        digest: &Digest,
    ) -> Result<Pinned, String> {
        let _turn = self.fetching.take(digest).await;
        match self.pin_existing(digest) {
            Some(pinned) => {
                self.lock().hits += 1;
                self.verify_cached(pinned).await
            }
            None => {
                self.lock().downloads += 1;
                self.download(client, digest).await
            }
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let state = self.lock();
        CacheStats {
            bytes: state.total_bytes,
            hits: state.hits,
            downloads: state.downloads,
        }
    }

    /// Marks an artifact as just used (its compiled code was, without the blob).
    pub(crate) fn touch(&self, digest: &Digest) {
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        if let Some(entry) = state.entries.get_mut(digest) {
            entry.last_used = now;
        }
    }

    /// The held artifacts, most recently used first, at most as many as a
    /// heartbeat reports.
    pub(crate) fn held(&self) -> Vec<Digest> {
        let state = self.lock();
        let mut held: Vec<(&Digest, u64)> = state
            .entries
            .iter()
            .map(|(d, e)| (d, e.last_used))
            .collect();
        held.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        held.into_iter()
            .take(MAX_REPORTED_ARTIFACTS)
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Resolves when the set of held artifacts changed since the last call.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    fn pin_existing(self: &Arc<Self>, digest: &Digest) -> Option<Pinned> {
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        let entry = state.entries.get_mut(digest)?;
        entry.pins += 1;
        entry.last_used = now;
        Some(self.pinned(digest))
    }

    fn pinned(self: &Arc<Self>, digest: &Digest) -> Pinned {
        Pinned {
            cache: Arc::clone(self),
            digest: digest.clone(),
            path: self.dir.join(digest.hex()),
        }
    }

    /// Hashes a cached blob; one that no longer matches is deleted.
    async fn verify_cached(self: &Arc<Self>, pinned: Pinned) -> Result<Pinned, String> {
        let actual = digest_file(&pinned.path).await.map(|(digest, _)| digest);
        match actual {
            Ok(actual) if actual == pinned.digest => Ok(pinned),
            Ok(actual) => {
                let digest = pinned.digest.clone();
                drop(pinned);
                self.forget(&digest);
                warn!(%digest, %actual, "cached artifact does not match its digest; deleted it");
                Err(format!(
                    "artifact {digest} in the host cache is corrupt (its bytes hash to {actual}); deleted it and did not run it"
                ))
            }
            Err(e) => {
                let digest = pinned.digest.clone();
                drop(pinned);
                self.forget(&digest);
                Err(format!("cannot read cached artifact {digest}: {e}"))
            }
        }
    }

    /// Downloads a blob into a temporary file and keeps it only if its bytes
    /// match the digest.
    async fn download(
        self: &Arc<Self>,
        client: &Client,
        digest: &Digest,
    ) -> Result<Pinned, String> {
        let partial = self.dir.join(format!(
            "{DOWNLOAD_PREFIX}{}-{}",
            digest.hex(),
            uuid::Uuid::now_v7().simple()
        ));
        let answer = client.download_artifact(digest, &partial).await;
        let (actual, size) = match answer {
            Ok(got) => got,
            Err(e) => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(format!("cannot download artifact {digest}: {e}"));
            }
        };
        if actual != *digest {
            let _ = tokio::fs::remove_file(&partial).await;
            warn!(%digest, %actual, "downloaded artifact does not match its digest; deleted it");
            return Err(format!(
                "artifact {digest} as downloaded hashes to {actual}; deleted it and did not run it"
            ));
        }
        let path = self.dir.join(digest.hex());
        if let Err(e) = tokio::fs::rename(&partial, &path).await {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(format!(
                "cannot store artifact {digest} in the host cache: {e}"
            ));
        }
        info!(%digest, bytes = size, "artifact downloaded");
        let pinned = self.insert_pinned(digest, size);
        self.evict();
        self.changed.notify_one();
        Ok(pinned)
    }

    fn insert_pinned(self: &Arc<Self>, digest: &Digest, size: u64) -> Pinned {
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        state.total_bytes += size;
        state.entries.insert(
            digest.clone(),
            Entry {
                size,
                last_used: now,
                pins: 1,
            },
        );
        drop(state);
        self.pinned(digest)
    }

    fn unpin(&self, digest: &Digest) {
        if let Some(entry) = self.lock().entries.get_mut(digest) {
            entry.pins = entry.pins.saturating_sub(1);
        }
        self.evict();
    }

    /// Drops an entry and its file.
    fn forget(&self, digest: &Digest) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.remove(digest) {
            state.total_bytes -= entry.size;
        }
        drop(state);
        let _ = std::fs::remove_file(self.dir.join(digest.hex()));
        self.changed.notify_one();
    }

    /// Removes least recently used, unpinned blobs until the cache fits.
    fn evict(&self) {
        let mut removed = Vec::new();
        {
            let mut state = self.lock();
            while state.total_bytes > self.max_bytes {
                let victim = state
                    .entries
                    .iter()
                    .filter(|(_, e)| e.pins == 0)
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(d, _)| d.clone());
                let Some(victim) = victim else { break };
                let entry = state.entries.remove(&victim).expect("victim is present");
                state.total_bytes -= entry.size;
                removed.push(victim);
            }
        }
        for digest in &removed {
            info!(%digest, "evicting artifact from the host cache");
            let _ = std::fs::remove_file(self.dir.join(digest.hex()));
            (self.on_evict)(digest);
        }
        if !removed.is_empty() {
            self.changed.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("artifact cache lock")
    }
}

#[cfg(test)]
mod tests {
    use sha2::{Digest as _, Sha256};

    use super::*;

    fn digest_of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(&Sha256::digest(bytes).into())
    }

    fn put(dir: &Path, bytes: &[u8]) -> Digest {
        let d = digest_of(bytes);
        std::fs::write(dir.join(d.hex()), bytes).unwrap();
        d
    }

    fn offline_client() -> Client {
        Client::new(
            &["http://127.0.0.1:9".to_string()],
            skyclaw_api::Credentials::None,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn cached_blobs_are_checked_and_tampered_ones_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let good = put(dir.path(), b"good bytes");
        let bad = put(dir.path(), b"original");
        std::fs::write(dir.path().join(bad.hex()), b"tampered").unwrap();
        std::fs::write(dir.path().join(".download-x"), b"partial").unwrap();
        let cache =
            Arc::new(ArtifactCache::open(dir.path().to_path_buf(), 1 << 20, |_| {}).unwrap());
        assert!(!dir.path().join(".download-x").exists());
        let client = offline_client();
        let pinned = cache.fetch(&client, &good).await.unwrap();
        assert_eq!(std::fs::read(pinned.path()).unwrap(), b"good bytes");
        let err = cache.fetch(&client, &bad).await.err().unwrap();
        assert!(err.contains("corrupt"), "{err}");
        assert!(!dir.path().join(bad.hex()).exists());
        assert_eq!(cache.held(), vec![good]);
    }

    #[tokio::test]
    async fn least_recently_used_unpinned_blobs_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let a = put(dir.path(), &[1u8; 100]);
        let b = put(dir.path(), &[2u8; 100]);
        let evicted = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&evicted);
        let cache = Arc::new(
            ArtifactCache::open(dir.path().to_path_buf(), 250, move |d| {
                seen.lock().unwrap().push(d.clone())
            })
            .unwrap(),
        );
        let client = offline_client();
        let _a = cache.fetch(&client, &a).await.unwrap();
        cache.touch(&b);
        let c = put(dir.path(), &[3u8; 100]);
        // Index the third blob as a download would, then let eviction run.
        let pinned_c = cache.insert_pinned(&c, 100);
        cache.evict();
        // `a` is pinned, so `b` goes although `a` was used earlier.
        assert!(dir.path().join(a.hex()).exists());
        assert!(!dir.path().join(b.hex()).exists());
        assert_eq!(*evicted.lock().unwrap(), vec![b.clone()]);
        drop(pinned_c);
        drop(_a);
        let held = cache.held();
        assert_eq!(held.len(), 2, "{held:?}");
        assert!(held.contains(&a) && held.contains(&c));
    }
}
