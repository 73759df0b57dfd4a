//! The coordinator's blob store: artifact bytes in files named by their digest
//! under the data directory (`artifacts/sha256/<hex>`). Blobs enter only
//! through [`BlobStore::ingest`], which streams them to a temporary file while
//! hashing and counting, and moves them into place once they match their
//! digest. Their metadata goes through the state machine, never their bytes.

use std::path::{Path, PathBuf};

use futures_util::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use skyclaw_api::artifacts::{ArtifactKind, DIGEST_ALGORITHM, Digest, KIND_SNIFF_BYTES};
use tokio::io::AsyncWriteExt;

/// The blob store's directory, under the data directory.
pub const ARTIFACTS_DIR: &str = "artifacts";
/// Transfers in progress, on the same file system as the blobs so that moving
/// one into place is a rename. Emptied when the store opens: a crash leaves
/// partial files behind.
const PARTIAL_DIR: &str = "partial";

/// Blobs on disk, by digest.
pub struct BlobStore {
    blobs: PathBuf,
    partial: PathBuf,
}

/// A blob that was stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub size: u64,
    pub kind: ArtifactKind,
}

/// Why a blob was not stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the blob's bytes hash to {actual}, not to the expected {expected}")]
    Mismatch { expected: Digest, actual: Digest },
    #[error("the blob is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the blob's transfer broke off: {0}")]
    Transfer(String),
    #[error("blob store: {0}")]
    Io(#[from] std::io::Error),
}

impl BlobStore {
    /// Opens the store under `data_dir`, creating it if needed, and removes
    /// what transfers a crash interrupted.
    pub fn open(data_dir: &Path) -> std::io::Result<BlobStore> {
        let root = data_dir.join(ARTIFACTS_DIR);
        let blobs = root.join(DIGEST_ALGORITHM);
        let partial = root.join(PARTIAL_DIR);
        std::fs::create_dir_all(&blobs)?;
        match std::fs::remove_dir_all(&partial) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&partial)?;
        Ok(BlobStore { blobs, partial })
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.hex())
    }

    /// The blob's file, opened, with its size; `None` when it is not held here.
    pub async fn open_blob(
        &self,
        digest: &Digest,
    ) -> Result<Option<(tokio::fs::File, u64)>, BlobError> {
        let file = match tokio::fs::File::open(self.path(digest)).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata().await?.len();
        Ok(Some((file, size)))
    }

    /// Streams `chunks` into a temporary file, hashing and counting them, and
    /// stores the blob under `expected` once it is complete, no larger than
    /// `limit` and hashes to `expected`. On any error the temporary file is
    /// deleted and nothing is stored. Storing a blob held already replaces it
    /// with the same bytes.
    pub async fn ingest<B, E>(
        &self,
        expected: &Digest,
        limit: u64,
        chunks: impl Stream<Item = Result<B, E>>,
    ) -> Result<Stored, BlobError>
    where
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let mut chunks = std::pin::pin!(chunks);
        // Deleted when dropped, which every early return does.
        let (file, partial) = tempfile::NamedTempFile::new_in(&self.partial)?.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        let mut hasher = Sha256::new();
        let mut head = Vec::with_capacity(KIND_SNIFF_BYTES);
        let mut size = 0u64;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| BlobError::Transfer(e.to_string()))?;
            let chunk = chunk.as_ref();
            size += chunk.len() as u64;
            if size > limit {
                return Err(BlobError::TooLarge { limit });
            }
            let wanted = (KIND_SNIFF_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..wanted]);
            hasher.update(chunk);
            file.write_all(chunk).await?;
        }
        let actual = Digest::from_sha256(&hasher.finalize().into());
        if actual != *expected {
            return Err(BlobError::Mismatch {
                expected: expected.clone(),
                actual,
            });
        }
        file.sync_all().await?;
        drop(file);
        let dest = self.path(expected);
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            partial.persist(&dest).map_err(|e| e.error)?;
            // The rename is durable only once the directory is synced.
            std::fs::File::open(&blobs)?.sync_all()
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(Stored {
            size,
            kind: ArtifactKind::detect(&head),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<&'static [u8], String>> {
        futures_util::stream::iter(parts.iter().map(|p| Ok(*p)).collect::<Vec<_>>())
    }

    fn digest_of(bytes: &[u8]) -> Digest {
        Digest::from_sha256(&Sha256::digest(bytes).into())
    }

    fn partial_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join(ARTIFACTS_DIR).join(PARTIAL_DIR))
            .unwrap()
            .count()
    }

    #[tokio::test]
    async fn blobs_are_stored_only_when_they_match_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = digest_of(b"\0asm\x01\0\0\0rest");
        let stored = store
            .ingest(&digest, 100, chunks(&[b"\0asm", b"\x01\0\0\0", b"rest"]))
            .await
            .unwrap();
        assert_eq!(
            stored,
            Stored {
                size: 12,
                kind: ArtifactKind::WasmModule
            }
        );
        let (_, size) = store.open_blob(&digest).await.unwrap().unwrap();
        assert_eq!(size, 12);

        let other = digest_of(b"other");
        let err = store
            .ingest(&other, 100, chunks(&[b"not other"]))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(other.as_str()) && err.contains(digest_of(b"not other").as_str()),
            "{err}"
        );
        let err = store
            .ingest(&other, 4, chunks(&[b"oth", b"er"]))
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 4 }), "{err}");
        assert!(store.open_blob(&other).await.unwrap().is_none());
        assert_eq!(partial_files(dir.path()), 0, "no partial file is left");
    }

    #[tokio::test]
    async fn opening_removes_interrupted_transfers() {
        let dir = tempfile::tempdir().unwrap();
        BlobStore::open(dir.path()).unwrap();
        let partial = dir.path().join(ARTIFACTS_DIR).join(PARTIAL_DIR);
        std::fs::write(partial.join("left-by-a-crash"), b"x").unwrap();
        BlobStore::open(dir.path()).unwrap();
        assert_eq!(partial_files(dir.path()), 0);
    }
}
