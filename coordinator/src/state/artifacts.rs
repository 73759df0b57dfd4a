//! Artifacts in the replicated state: each digest recorded once, in the
//! order recorded (the blobs themselves live in files, `crate::artifacts`).

use rusqlite::{Connection, params};
use skyclaw_api::Millis;
use skyclaw_api::artifacts::{ArtifactKind, Digest};

use super::apply::CommandResult;
use super::command::Output;
use super::read;

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
    let info = read::artifact(conn, digest)?.expect("artifact recorded a moment ago");
    Ok(Ok(Output::Artifact {
        info,
        created: inserted == 1,
    }))
}
#[cfg(test)]
mod tests {
    use skyclaw_api::artifacts::{ArtifactKind, Digest};

    use crate::state::read;
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
        let listed: Vec<Digest> = read::artifacts(&conn)
            .unwrap()
            .into_iter()
            .map(|a| a.digest)
            .collect();
        assert_eq!(listed, [digest.clone(), other], "in the order recorded");
        assert_eq!(read::artifact(&conn, &digest).unwrap(), Some(info));
    }
}
