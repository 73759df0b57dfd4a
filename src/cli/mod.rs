//! Command-line parsing for `skyclaw`, logging set-up, and dispatch to one module
//! per command group.

mod apikey;
mod artifact;
mod devtoken;
mod hosts;
mod job;
mod network;
mod node;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use skyclaw_api::{Client, Credentials};
use tracing_subscriber::EnvFilter;

/// Where client commands and hosts look for a coordinator when given none: where
/// `skyclaw dev` listens by default.
pub const DEFAULT_COORDINATOR_URL: &str = "http://127.0.0.1:8787";
/// Log filter of nodes: enough to follow registrations, jobs and failures.
const NODE_LOG_FILTER: &str = "info";
/// Log filter of client commands: their output is the answer; logs only say
/// when something is off.
const CLIENT_LOG_FILTER: &str = "warn";
/// Exit code of `job wait` and `job … --wait` when the job failed or was cancelled.
const EXIT_JOB_FAILED: u8 = 1;
/// Exit code of usage, connection and API errors (clap uses it for usage errors too).
const EXIT_ERROR: u8 = 2;

/// Skyclaw: an opt-in network of machines that run other people's jobs.
///
/// Every flag can also be given as the SKYCLAW_* environment variable shown in
/// its help; a flag wins over the variable.
#[derive(Debug, Parser)]
#[command(name = "skyclaw", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print results exactly as the API returns them (pretty JSON) instead of
    /// tables and plain output.
    #[arg(long, global = true, env = "SKYCLAW_JSON", help_heading = "Output")]
    json: bool,
    /// Log filter in RUST_LOG syntax, such as `debug` or `skyclaw_runtime=debug`
    /// [default: info for nodes, warn for client commands]. Logs go to stderr.
    #[arg(
        long,
        global = true,
        env = "SKYCLAW_LOG",
        value_name = "FILTER",
        help_heading = "Output"
    )]
    log: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a coordinator: the HTTP API that tracks hosts, jobs and API keys.
    Coordinator(node::CoordinatorArgs),
    /// Run a host: register with coordinators, claim jobs and run them.
    Host(node::HostArgs),
    /// Run a coordinator and a host in one process, for trying Skyclaw locally.
    Dev(node::DevArgs),
    /// Submit, list, inspect, wait for and cancel jobs.
    Job(job::JobArgs),
    /// List the hosts the coordinators know.
    Hosts(hosts::HostsArgs),
    /// Create, list and revoke scoped API keys (needs the cluster token).
    Apikey(apikey::ApikeyArgs),
    /// Upload and list artifacts (WASI binaries, bundles), named by their
    /// sha256 digest (needs the cluster token or a key with artifacts:push).
    Artifact(artifact::ArtifactArgs),
    /// List the coordinators of the cluster, or remove one (needs the cluster
    /// token).
    Network(network::NetworkArgs),
}

impl Command {
    /// Nodes run until stopped and log their progress; client commands answer
    /// and exit.
    fn is_node(&self) -> bool {
        matches!(
            self,
            Command::Coordinator(_) | Command::Host(_) | Command::Dev(_)
        )
    }
}

/// How client commands reach coordinators and prove who they are.
///
/// Credentials: the API key when one is given, else the token, else the token
/// of a local `skyclaw dev` cluster serving one of the coordinator URLs.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Connection")]
struct ClientArgs {
    /// Coordinator URLs, comma-separated; one is enough, as the rest of the
    /// cluster is learned from it. A request that finds one unreachable is
    /// tried on the next.
    #[arg(
        long = "coordinator",
        global = true,
        env = "SKYCLAW_COORDINATOR_URLS",
        default_value = DEFAULT_COORDINATOR_URL,
        value_name = "URL[,URL...]"
    )]
    coordinators: String,
    /// The cluster's shared token (prefer the environment variable: flags show
    /// in process lists).
    #[arg(long, global = true, env = "SKYCLAW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A scoped API key; used instead of the token when both are given.
    #[arg(long, global = true, env = "SKYCLAW_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A `skyclaw dev` data directory whose token to use when neither --token
    /// nor --api-key is given [default: the nearest .skyclaw in the current
    /// directory or its ancestors]. Used only if that cluster's URL is among
    /// the coordinator URLs.
    #[arg(long, global = true, env = "SKYCLAW_DEV_DIR", value_name = "DIR")]
    dev_dir: Option<PathBuf>,
}

impl ClientArgs {
    /// A client for the coordinators with the chosen credentials, which has
    /// learned every coordinator of the cluster, so a command started with one
    /// URL fails over to the others. Every route a client command uses needs
    /// credentials, so having none is an early error.
    async fn client(&self) -> Result<Client> {
        let urls = Client::split_urls(&self.coordinators);
        let credentials = self.credentials(&urls);
        let no_credentials = matches!(credentials, Credentials::None);
        let client = Client::new(&urls, credentials)?;
        if no_credentials {
            bail!(
                "no credentials: pass --token (SKYCLAW_TOKEN) or --api-key (SKYCLAW_API_KEY), \
                 or run from the directory of a `skyclaw dev` serving {}",
                client.urls().join(",")
            );
        }
        // Best effort: the command itself reports an unreachable cluster, and
        // the given URLs are still worth trying when the list cannot be read.
        if let Err(e) = client.refresh_urls().await {
            tracing::debug!(error = %e, "cannot learn the cluster's coordinators; using the given ones");
        }
        Ok(client)
    }

    fn credentials(&self, urls: &[String]) -> Credentials {
        if let Some(key) = non_empty(&self.api_key) {
            return Credentials::ApiKey(key);
        }
        if let Some(token) = non_empty(&self.token) {
            return Credentials::Token(token);
        }
        match devtoken::find(self.dev_dir.as_deref(), urls) {
            Some(token) => {
                tracing::debug!("using the token of the local dev cluster");
                Credentials::Token(token)
            }
            None => Credentials::None,
        }
    }
}

/// A secret given as an empty string (an unset-but-exported variable) counts
/// as not given.
fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(String::from)
}

/// Parses the command line, runs the command and turns errors into exit code 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Messages quote what others chose (names, commands, answers).
            let message = output::escape(format!("{e:#}"), output::Layout::Block);
            eprintln!("error: {message}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let default_filter = if cli.command.is_node() {
        NODE_LOG_FILTER
    } else {
        CLIENT_LOG_FILTER
    };
    init_logging(cli.log.as_deref().unwrap_or(default_filter))?;
    if cli.command.is_node() {
        raise_open_file_limit();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dispatch(cli.command, cli.json))
}

/// A node holds a descriptor per connection, job pipe and open file: the usual
/// soft limit of 1024 is hit long before memory or CPU run out. A node that
/// cannot raise it still runs, under a lower connection cap.
fn raise_open_file_limit() {
    match skyclaw_api::serve::raise_nofile_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

fn init_logging(filter: &str) -> Result<()> {
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

async fn dispatch(command: Command, json: bool) -> Result<ExitCode> {
    match command {
        Command::Coordinator(args) => node::coordinator(args).await,
        Command::Host(args) => node::host(args).await,
        Command::Dev(args) => node::dev(args).await,
        Command::Job(args) => job::run(args, json).await,
        Command::Hosts(args) => hosts::run(args, json).await,
        Command::Apikey(args) => apikey::run(args, json).await,
        Command::Artifact(args) => artifact::run(args, json).await,
        Command::Network(args) => network::run(args, json).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The contract: every flag can be set from a SKYCLAW_* environment variable.
    #[test]
    fn every_flag_has_an_environment_variable() {
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_positional() || id == "help" || id == "version" {
                    continue;
                }
                let env = arg.get_env().and_then(|e| e.to_str());
                assert!(
                    env.is_some_and(|e| e.starts_with("SKYCLAW_")),
                    "`{path} --{id}` has no SKYCLAW_* environment variable"
                );
            }
            for sub in cmd.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        check(&cmd, "skyclaw");
    }

    #[test]
    fn json_and_client_flags_are_accepted_after_any_subcommand() {
        let cli = Cli::try_parse_from([
            "skyclaw",
            "job",
            "ls",
            "--json",
            "--coordinator",
            "http://a:1,http://b:2",
        ])
        .unwrap();
        assert!(cli.json);
        let Command::Job(args) = cli.command else {
            panic!("not a job command")
        };
        assert_eq!(args.client.coordinators, "http://a:1,http://b:2");
    }

    #[test]
    fn api_key_wins_over_token() {
        let args = ClientArgs {
            coordinators: DEFAULT_COORDINATOR_URL.into(),
            token: Some("t".into()),
            api_key: Some("k".into()),
            dev_dir: None,
        };
        let urls = [DEFAULT_COORDINATOR_URL.to_string()];
        assert!(matches!(args.credentials(&urls), Credentials::ApiKey(k) if k == "k"));
        let args = ClientArgs {
            api_key: Some(" ".into()),
            ..args
        };
        assert!(matches!(args.credentials(&urls), Credentials::Token(t) if t == "t"));
    }
}
