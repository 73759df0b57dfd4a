//! The Raft type configuration: what goes through the log (a [`Batch`] of
//! proposals: one entry, one fsync, for many concurrent writes) and what
//! applying it answers (a [`Response`] per proposal).

use std::io::Cursor;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::state::{COMMAND_ENCODING, CommandError, Output, Proposal, check_encoding};

openraft::declare_raft_types!(
    /// Skyclaw's Raft: proposals in, responses out, nodes named by URL.
    pub TypeConfig:
        D = Batch,
        R = Vec<Response>,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type Entry = openraft::Entry<TypeConfig>;

/// Proposals that travel in one log entry, applied in order. Encoded as
/// `{"v": COMMAND_ENCODING, "proposals": [...]}`, the version first, so that
/// a build meeting an entry from a newer one stops with that reason before
/// it misreads a command; entries from before the version was written are a
/// bare array of proposals.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch(pub Vec<Proposal>);

impl Serialize for Batch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut batch = serializer.serialize_struct("Batch", 2)?;
        batch.serialize_field("v", &COMMAND_ENCODING)?;
        batch.serialize_field("proposals", &self.0)?;
        batch.end()
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Batch, D::Error> {
        deserializer.deserialize_any(BatchVisitor)
    }
}

struct BatchVisitor;

impl<'de> Visitor<'de> for BatchVisitor {
    type Value = Batch;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a batch of proposals")
    }

    /// An entry written before the encoding carried its version.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Batch, A::Error> {
        Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(Batch)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Batch, A::Error> {
        if map.next_key::<String>()?.as_deref() != Some("v") {
            return Err(de::Error::custom(
                "a batch must start with its encoding version",
            ));
        }
        check_encoding(map.next_value()?).map_err(de::Error::custom)?;
        if map.next_key::<String>()?.as_deref() != Some("proposals") {
            return Err(de::Error::missing_field("proposals"));
        }
        let proposals = map.next_value()?;
        if let Some(key) = map.next_key::<String>()? {
            return Err(de::Error::unknown_field(&key, &["v", "proposals"]));
        }
        Ok(Batch(proposals))
    }
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} proposals", self.0.len())
    }
}

/// How many bytes `value` takes encoded as JSON, as log entries and Raft
/// RPCs carry it, counted without building the encoding.
pub fn encoded_len(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).expect("proposals serialise");
    count.0
}

/// What applying one proposal answered. Entries that carry no proposal (blank
/// and membership entries) answer `outcome: None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub outcome: Result<Output, CommandError>,
    /// The outcome was recorded earlier under the same idempotency key.
    pub replayed: bool,
}

/// Wraps any error as the error type openraft's storage traits return.
pub fn storage_error(
    make: fn(openraft::AnyError) -> openraft::StorageIOError<NodeId>,
    e: &(impl std::error::Error + 'static),
) -> StorageError {
    make(openraft::AnyError::new(e)).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;

    fn batch() -> Batch {
        Batch(vec![Proposal::new(Command::PruneIdempotency { before: 7 })])
    }

    #[test]
    fn a_batch_carries_its_encoding_version_first() {
        let text = serde_json::to_string(&batch()).unwrap();
        assert!(
            text.starts_with(&format!("{{\"v\":{COMMAND_ENCODING},")),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Batch>(&text).unwrap(), batch());
    }

    #[test]
    fn a_batch_from_before_versions_still_reads() {
        let legacy = serde_json::to_string(&batch().0).unwrap();
        assert_eq!(serde_json::from_str::<Batch>(&legacy).unwrap(), batch());
    }

    #[test]
    fn a_batch_from_a_newer_build_is_refused_before_its_commands_are_read() {
        let newer = format!(
            "{{\"v\":{},\"proposals\":[{{\"command\":{{\"type\":\"from_the_future\"}}}}]}}",
            COMMAND_ENCODING + 1
        );
        let err = serde_json::from_str::<Batch>(&newer)
            .unwrap_err()
            .to_string();
        assert!(err.contains("newer skyclaw"), "{err}");
    }
}
