//! Artifacts in the replicated state: each digest recorded once, in the
//! order recorded (the blobs themselves live in files, `crate::artifacts`).

use rusqlite::{Connection, OptionalExtension, Row, params};
use skyclaw_api::Millis;
use skyclaw_api::artifacts::{ArtifactInfo, ArtifactKind, Digest};

use super::apply::CommandResult;
use super::command::Output;
use super::read::corrupt;

/// Records an artifact once: the digest names the bytes, so a second record
/// of the same digest can only repeat the first.
pub(super) fn add_artifact(
    conn: &Connection,
    digest: &Digest,
    size: u64,
    kind: ArtifactKind,
    now: Millis,
) -> rusqlite::Result<CommandResult> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO artifacts (digest, size, kind, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (digest) DO NOTHING",
        )?
        .execute(params![digest.as_str(), size, kind.as_str(), now])?;
    let info = get(conn, digest)?.expect("artifact recorded a moment ago");
    Ok(Ok(Output::Artifact {
        info,
        created: inserted == 1,
    }))
}
// Reads, shared by `apply` and the HTTP handlers.

const ARTIFACT_COLUMNS: &str = "digest, size, kind, created_at";

fn artifact_row(row: &Row<'_>) -> rusqlite::Result<ArtifactInfo> {
    let digest: String = row.get(0)?;
    let kind: String = row.get(2)?;
    Ok(ArtifactInfo {
        digest: digest.parse().map_err(|e: String| corrupt(0, e))?,
        size: row.get(1)?,
        kind: kind.parse().map_err(|e: String| corrupt(2, e))?,
        created_at: row.get(3)?,
    })
}

pub fn get(conn: &Connection, digest: &Digest) -> rusqlite::Result<Option<ArtifactInfo>> {
    conn.prepare_cached(&format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE digest = ?1"
    ))?
    .query_row([digest.as_str()], artifact_row)
    .optional()
}

/// Every artifact, in the order they were recorded.
pub fn list(conn: &Connection) -> rusqlite::Result<Vec<ArtifactInfo>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts ORDER BY seq"
    ))?;
    let rows = stmt.query_map([], artifact_row)?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use skyclaw_api::artifacts::{ArtifactKind, Digest};

    use crate::state::testkit::*;
    use crate::state::{Command, Output};

    #[test]
    fn artifacts_are_recorded_once() {
        let conn = db();
        let digest: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let add = |size, kind, now| Command::AddArtifact {
            digest: digest.clone(),
            size,
            kind,
            now,
        };
        let first = run(&conn, add(10, ArtifactKind::WasmModule, 5)).outcome;
        let Ok(Output::Artifact { info, created }) = first else {
            panic!("{first:?}")
        };
        assert!(created);
        assert_eq!(
            (info.size, info.kind, info.created_at),
            (10, ArtifactKind::WasmModule, 5)
        );
        let again = run(&conn, add(10, ArtifactKind::WasmModule, 9)).outcome;
        assert_eq!(
            again,
            Ok(Output::Artifact {
                info: info.clone(),
                created: false
            }),
            "the first record stands"
        );
        let other: Digest = format!("sha256:{}", "cd".repeat(32)).parse().unwrap();
        run(
            &conn,
            Command::AddArtifact {
                digest: other.clone(),
                size: 3,
                kind: ArtifactKind::Blob,
                now: 1,
            },
        );
        let listed: Vec<Digest> = super::list(&conn)
            .unwrap()
            .into_iter()
            .map(|a| a.digest)
            .collect();
        assert_eq!(listed, [digest.clone(), other], "in the order recorded");
        assert_eq!(super::get(&conn, &digest).unwrap(), Some(info));
    }
}
