//! Artifacts on the wire: content digests ([`Digest`], and [`digest_file`],
//! the one way a file is hashed), the kinds of blob the network stores
//! ([`ArtifactKind`], told from a blob's first bytes) and the listing
//! `GET /v1/artifacts` returns.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::Millis;

/// The only digest algorithm artifacts are named by.
pub const DIGEST_ALGORITHM: &str = "sha256";
/// Hex characters in a sha256 digest.
const SHA256_HEX_LEN: usize = 64;
/// Bytes of a blob's start that [`ArtifactKind::detect`] needs: enough for a
/// wasm header (8) and a tar header's `ustar` magic (257..262).
pub const KIND_SNIFF_BYTES: usize = 512;
/// Bytes read per step when hashing a file: large enough to keep the disk busy,
/// small enough to never matter for memory.
const HASH_CHUNK_BYTES: usize = 256 * 1024;

/// A content digest, always `sha256:` and 64 lowercase hex characters. Parsing
/// refuses anything else, so a digest can be used in paths and file names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// The digest of bytes already computed as 32 raw bytes.
    pub fn from_sha256(bytes: &[u8; 32]) -> Digest {
        Digest(format!("{DIGEST_ALGORITHM}:{}", hex_lower(bytes)))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex characters, usable as a file name.
    pub fn hex(&self) -> &str {
        &self.0[DIGEST_ALGORITHM.len() + 1..]
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::str::FromStr for Digest {
    type Err = String;
    fn from_str(s: &str) -> Result<Digest, String> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| {
            format!("digest {s:?} must start with \"sha256:\" followed by 64 hex characters")
        })?;
        let ok = hex.len() == SHA256_HEX_LEN
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(format!(
                "digest {s:?} must be \"sha256:\" followed by 64 lowercase hex characters"
            ));
        }
        Ok(Digest(s.to_string()))
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(s: String) -> Result<Digest, String> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The sha256 digest and size of a file, read in chunks on a blocking
/// thread, never on an async worker.
pub async fn digest_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; HASH_CHUNK_BYTES];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok((Digest::from_sha256(&hasher.finalize().into()), size));
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

/// What a stored blob is, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    /// A WebAssembly component (WASI preview 2).
    WasmComponent,
    /// A WebAssembly core module (WASI preview 1).
    WasmModule,
    /// A tar archive of a directory, for native services.
    Bundle,
    /// Anything else: stored, but no host runs it.
    Blob,
}

/// `\0asm`: every WebAssembly binary starts with it.
const WASM_MAGIC: [u8; 4] = *b"\0asm";
/// Version and layer of a core module (version 1, layer 0).
const WASM_MODULE_VERSION: [u8; 4] = [0x01, 0x00, 0x00, 0x00];
/// Version and layer of a component (version 0x0d, layer 1).
const WASM_COMPONENT_VERSION: [u8; 4] = [0x0d, 0x00, 0x01, 0x00];
/// Where a POSIX tar header keeps its `ustar` magic.
const TAR_MAGIC_OFFSET: usize = 257;

impl ArtifactKind {
    pub const ALL: [ArtifactKind; 4] = [
        ArtifactKind::WasmComponent,
        ArtifactKind::WasmModule,
        ArtifactKind::Bundle,
        ArtifactKind::Blob,
    ];

    /// Classifies a blob by its first bytes (at least [`KIND_SNIFF_BYTES`] of
    /// them when the blob is that long).
    pub fn detect(head: &[u8]) -> ArtifactKind {
        if head.len() >= 8 && head[..4] == WASM_MAGIC {
            let version = &head[4..8];
            if version == WASM_MODULE_VERSION {
                return ArtifactKind::WasmModule;
            }
            if version == WASM_COMPONENT_VERSION {
                return ArtifactKind::WasmComponent;
            }
        }
        if head.len() >= TAR_MAGIC_OFFSET + 5
            && &head[TAR_MAGIC_OFFSET..TAR_MAGIC_OFFSET + 5] == b"ustar"
        {
            return ArtifactKind::Bundle;
        }
        ArtifactKind::Blob
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::WasmComponent => "wasm-component",
            ArtifactKind::WasmModule => "wasm-module",
            ArtifactKind::Bundle => "bundle",
            ArtifactKind::Blob => "blob",
        }
    }

    /// True for the kinds a WASI job can run.
    pub fn is_wasm(self) -> bool {
        matches!(self, ArtifactKind::WasmComponent | ArtifactKind::WasmModule)
    }
}

impl std::str::FromStr for ArtifactKind {
    type Err = String;
    fn from_str(s: &str) -> Result<ArtifactKind, String> {
        ArtifactKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown artifact kind {s:?}"))
    }
}

impl std::fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored artifact as `GET /v1/artifacts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactInfo {
    pub digest: Digest,
    pub size: u64,
    pub kind: ArtifactKind,
    pub created_at: Millis,
}

/// `GET /v1/artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactList {
    pub artifacts: Vec<ArtifactInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_strictly() {
        let good = format!("sha256:{}", "ab".repeat(32));
        let d: Digest = good.parse().unwrap();
        assert_eq!(d.hex(), "ab".repeat(32));
        assert_eq!(d.to_string(), good);
        for bad in [
            "ab".repeat(32),
            format!("sha256:{}", "AB".repeat(32)),
            format!("sha256:{}", "ab".repeat(31)),
            format!("sha512:{}", "ab".repeat(32)),
            format!("sha256:../{}", "a".repeat(61)),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:xyz\"").is_err());
    }

    #[tokio::test]
    async fn files_hash_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        // More than one chunk, and not a multiple of it.
        let bytes: Vec<u8> = (0..HASH_CHUNK_BYTES * 2 + 7).map(|i| i as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let expected = Digest::from_sha256(&Sha256::digest(&bytes).into());
        assert_eq!(
            digest_file(&path).await.unwrap(),
            (expected, bytes.len() as u64)
        );
        let missing = digest_file(&dir.path().join("missing")).await.unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn kinds_are_told_from_headers() {
        assert_eq!(
            ArtifactKind::detect(b"\0asm\x01\0\0\0rest"),
            ArtifactKind::WasmModule
        );
        assert_eq!(
            ArtifactKind::detect(b"\0asm\x0d\0\x01\0rest"),
            ArtifactKind::WasmComponent
        );
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(ArtifactKind::detect(&tar), ArtifactKind::Bundle);
        assert_eq!(ArtifactKind::detect(b"hello"), ArtifactKind::Blob);
        assert_eq!(ArtifactKind::detect(b"\0asm\x02\0\0\0"), ArtifactKind::Blob);
    }

    #[test]
    fn kinds_parse_from_their_names() {
        for kind in ArtifactKind::ALL {
            assert_eq!(kind.as_str().parse::<ArtifactKind>(), Ok(kind));
        }
        assert!("wasm".parse::<ArtifactKind>().is_err());
    }
}
