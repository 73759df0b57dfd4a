//! The integration tests, one binary: each module exercises one part of
//! Skyclaw through real processes and the interfaces its users meet, with
//! the shared kit in `common`. One binary links the workspace once, where
//! a binary per file linked it once per file.

mod common;

mod artifacts;
mod auth;
mod call;
mod cli;
mod cluster;
mod conventions;
mod deploy;
mod dev;
mod failures;
mod floods;
mod gateways;
mod guests;
mod host;
mod http;
mod idempotency;
mod instances;
mod isolation;
mod jobs;
mod proxying;
mod queue;
mod recovery;
mod routing;
mod services;
mod wasi;
