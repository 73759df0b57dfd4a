//! Reads that belong to no one entity: the outcome recorded under an
//! idempotency key, the applied index, and the one error for a stored value
//! that does not decode.

use rusqlite::{Connection, OptionalExtension};

use super::command::{CommandError, IdempotencyRecord, Output, check_encoding};

/// A stored value (JSON or text) in result column `column` that does not
/// decode: the database was damaged or hand-edited. The one way the state
/// tables and the Raft log's tables say so.
pub fn corrupt(column: usize, detail: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        detail.to_string().into(),
    )
}

/// The outcome recorded under an idempotency key: `None` while the key is
/// unused, a conflict when it was used with another request. An outcome
/// written in a newer encoding than this build's is a fault, not misread.
pub fn recorded_outcome(
    conn: &Connection,
    record: &IdempotencyRecord,
) -> rusqlite::Result<Option<Result<Output, CommandError>>> {
    let stored = conn
        .prepare_cached(
            "SELECT request_hash, outcome, encoding FROM idempotency
             WHERE principal = ?1 AND key = ?2",
        )?
        .query_row([&record.principal, &record.key], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, u32>(2)?,
            ))
        })
        .optional()?;
    let Some((request_hash, outcome, encoding)) = stored else {
        return Ok(None);
    };
    if request_hash != record.request_hash {
        return Ok(Some(Err(CommandError::IdempotencyConflict(
            record.key.clone(),
        ))));
    }
    check_encoding(encoding).map_err(|e| corrupt(1, e))?;
    let outcome = serde_json::from_str(&outcome).map_err(|e| corrupt(1, e))?;
    Ok(Some(outcome))
}

pub fn applied_index(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = 'applied_index'")?
        .query_row([], |r| r.get(0))
}
