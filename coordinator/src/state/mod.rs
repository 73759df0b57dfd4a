//! The coordinator's replicated state: typed commands, the one deterministic
//! `apply` (dispatch, idempotency replays, savepoints) over one module per
//! entity (`jobs`, `hosts`, `apikeys`, `artifacts`, `services`, `gateways`)
//! holding its commands' effects, its reads and their tests, the schema, and
//! the reads that belong to no one entity.
//!
//! Architecture invariant: nothing in here looks at a clock, draws a random
//! number or does network IO. Everything a command needs (times, ids, tokens)
//! is chosen by the node that proposes it and travels inside it, so applying
//! the same sequence of proposals on any replica gives the same database.

pub mod apikeys;
pub mod apply;
pub mod artifacts;
pub mod command;
pub mod gateways;
pub mod hosts;
pub mod jobs;
pub mod read;
pub mod schema;
pub mod services;
#[cfg(test)]
mod testkit;

pub use apply::{Effects, apply};
pub use command::{
    Answer, COMMAND_ENCODING, Command, CommandError, IdempotencyRecord, Leases, Output, Owner,
    Proposal, check_encoding,
};
pub use jobs::JobRow;
pub use read::corrupt;
