//! The coordinator's replicated state: typed commands, the one deterministic
//! `apply` that turns a command into SQLite writes, the schema, and the reads.
//!
//! Architecture invariant: nothing in here looks at a clock, draws a random
//! number or does network IO. Everything a command needs (times, ids, tokens)
//! is chosen by the node that proposes it and travels inside it, so applying
//! the same sequence of proposals on any replica gives the same database.

pub mod apply;
pub mod command;
pub mod read;
pub mod schema;

pub use apply::{Effects, apply};
pub use command::{
    COMMAND_ENCODING, Command, CommandError, IdempotencyRecord, Leases, Output, Owner, Proposal,
    check_encoding,
};
pub use read::corrupt;
