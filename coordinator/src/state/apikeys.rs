//! API keys in the replicated state: created with their scopes and the hash
//! of their secret, and revoked.

use rusqlite::{Connection, OptionalExtension, Row, params};
use skyclaw_api::Millis;
use skyclaw_api::apikeys::{ApiKey, Scope};

use super::apply::CommandResult;
use super::command::{CommandError, Output};
use super::read::corrupt;

pub(super) fn create_api_key(
    conn: &Connection,
    id: &str,
    name: &str,
    scopes: &[Scope],
    key_hash: &str,
    now: Millis,
) -> rusqlite::Result<CommandResult> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO api_keys (id, name, scopes, key_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            id,
            name,
            serde_json::to_string(scopes).expect("scopes serialise"),
            key_hash,
            now
        ])?;
    if inserted == 0 {
        return Ok(Err(CommandError::Conflict(format!(
            "api key {id} exists already"
        ))));
    }
    let key = get(conn, id)?.expect("key inserted a moment ago");
    Ok(Ok(Output::ApiKey(key)))
}

pub(super) fn revoke_api_key(
    conn: &Connection,
    id: &str,
    now: Millis,
) -> rusqlite::Result<CommandResult> {
    conn.prepare_cached(
        "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
    )?
    .execute(params![id, now])?;
    match get(conn, id)? {
        Some(key) => Ok(Ok(Output::ApiKey(key))),
        None => Ok(Err(CommandError::NotFound(format!("no api key {id}")))),
    }
}

// Reads, shared by `apply` and the HTTP handlers.

fn key_row(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let scopes: String = row.get(2)?;
    Ok(ApiKey {
        id: row.get(0)?,
        name: row.get(1)?,
        scopes: serde_json::from_str::<Vec<Scope>>(&scopes).map_err(|e| corrupt(2, e))?,
        created_at: row.get(3)?,
        revoked_at: row.get(4)?,
    })
}

const KEY_COLUMNS: &str = "id, name, scopes, created_at, revoked_at";

pub fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<ApiKey>> {
    conn.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"))?
        .query_row([id], key_row)
        .optional()
}

/// The live (unrevoked) key whose secret hashes to `key_hash`.
pub fn by_hash(conn: &Connection, key_hash: &str) -> rusqlite::Result<Option<ApiKey>> {
    conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?1 AND revoked_at IS NULL"
    ))?
    .query_row([key_hash], key_row)
    .optional()
}

pub fn list(conn: &Connection) -> rusqlite::Result<Vec<ApiKey>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
    ))?;
    let rows = stmt.query_map([], key_row)?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use skyclaw_api::apikeys::Scope;

    use crate::state::testkit::*;
    use crate::state::{Command, CommandError, Output};

    #[test]
    fn a_key_is_created_once_and_revoked_once() {
        let conn = db();
        let create = || Command::CreateApiKey {
            id: "k1".into(),
            name: "ci".into(),
            scopes: vec![Scope::JobsRead],
            key_hash: "hash".into(),
            now: 1,
        };
        let Ok(Output::ApiKey(key)) = run(&conn, create()).outcome else {
            panic!("created");
        };
        assert_eq!(
            (key.revoked_at, key.scopes.clone()),
            (None, vec![Scope::JobsRead])
        );
        assert!(matches!(
            run(&conn, create()).outcome,
            Err(CommandError::Conflict(_))
        ));

        let revoke = |now| Command::RevokeApiKey {
            id: "k1".into(),
            now,
        };
        let Ok(Output::ApiKey(revoked)) = run(&conn, revoke(5)).outcome else {
            panic!("revoked");
        };
        assert_eq!(revoked.revoked_at, Some(5));
        // Revoking again keeps the first revocation's time.
        let Ok(Output::ApiKey(again)) = run(&conn, revoke(9)).outcome else {
            panic!("revoked again");
        };
        assert_eq!(again.revoked_at, Some(5));
        let unknown = Command::RevokeApiKey {
            id: "k2".into(),
            now: 9,
        };
        assert!(matches!(
            run(&conn, unknown).outcome,
            Err(CommandError::NotFound(_))
        ));
    }
}
