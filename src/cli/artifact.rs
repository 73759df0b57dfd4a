//! `skyclaw artifact`: content-addressed artifacts (WASI binaries, bundles)
//! uploaded to the coordinators and named by their sha256 digest.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use skyclaw_api::artifacts::{ArtifactInfo, Digest, digest_file};
use skyclaw_api::{Client, Millis};

use super::output;

/// Units of [`size`], each 1024 times the one before.
const SIZE_UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

#[derive(Debug, clap::Args)]
pub struct ArtifactArgs {
    #[command(subcommand)]
    command: ArtifactCommand,
}

#[derive(Debug, Subcommand)]
enum ArtifactCommand {
    /// Upload a file unless the cluster holds it already, and print its digest
    /// (sha256:…), the name jobs and services use for it. The coordinators
    /// verify the upload against the digest.
    Push {
        /// The file: a WASI component or module, a tar bundle, or any blob.
        file: PathBuf,
    },
    /// List artifacts: digest, kind, size, age.
    Ls,
}

pub async fn run(args: ArtifactArgs, client: &Client, json: bool) -> Result<ExitCode> {
    match args.command {
        ArtifactCommand::Push { file } => push(client, &file, json).await?,
        ArtifactCommand::Ls => {
            let list = client.list_artifacts().await?;
            if json {
                output::print_json(&list)?;
            } else {
                output::out(&artifacts_table(&list.artifacts, skyclaw_api::now_ms()))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What [`push_if_missing`] found or did.
#[derive(Debug)]
pub struct Pushed {
    pub digest: Digest,
    pub size: u64,
    /// The coordinators' record when this push uploaded the file; `None`
    /// when they held it already.
    pub uploaded: Option<ArtifactInfo>,
}

/// Hashes the file, asks the coordinators whether they hold it, and uploads
/// it only if not.
pub async fn push_if_missing(client: &Client, file: &Path) -> Result<Pushed> {
    let (digest, size) = digest_file(file)
        .await
        .with_context(|| file.display().to_string())?;
    if client.head_artifact(&digest).await?.is_some() {
        return Ok(Pushed {
            digest,
            size,
            uploaded: None,
        });
    }
    let (info, _) = client.upload_artifact(file, &digest).await?;
    Ok(Pushed {
        digest,
        size,
        uploaded: Some(info),
    })
}

/// `artifact push`: the digest alone goes to stdout, so
/// `D=$(skyclaw artifact push f)` works; what happened goes to stderr.
async fn push(client: &Client, file: &Path, json: bool) -> Result<()> {
    let pushed = push_if_missing(client, file).await?;
    match &pushed.uploaded {
        Some(info) => eprintln!("uploaded {} bytes ({})", pushed.size, info.kind),
        None => eprintln!("{} is already present; not uploaded", pushed.digest),
    }
    if !json {
        return output::out(&format!("{}\n", pushed.digest));
    }
    let info = match pushed.uploaded {
        Some(info) => info,
        None => info_of(client, &pushed.digest).await?,
    };
    output::print_json(&info)
}

/// The record of an artifact the cluster holds.
async fn info_of(client: &Client, digest: &Digest) -> Result<ArtifactInfo> {
    client
        .list_artifacts()
        .await?
        .artifacts
        .into_iter()
        .find(|a| a.digest == *digest)
        .with_context(|| format!("the coordinator holds {digest} but does not list it"))
}

fn artifacts_table(artifacts: &[ArtifactInfo], now: Millis) -> String {
    let rows: Vec<Vec<String>> = artifacts
        .iter()
        .map(|a| {
            vec![
                a.digest.to_string(),
                a.kind.to_string(),
                size(a.size),
                output::age(now.saturating_sub(a.created_at)),
            ]
        })
        .collect();
    output::table(&["DIGEST", "KIND", "SIZE", "AGE"], &rows)
}

/// A byte count in its largest unit, with one decimal above bytes: `512 B`,
/// `1.5 KiB`, `256.0 MiB`.
pub fn size(bytes: u64) -> String {
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < SIZE_UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", SIZE_UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_the_largest_unit() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(256 * 1024 * 1024), "256.0 MiB");
        assert_eq!(size(3 << 40), "3.0 TiB");
    }
}
