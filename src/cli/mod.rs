//! Command-line parsing for `skyclaw`, logging set-up, and dispatch to one module
//! per command group.

mod apikey;
mod artifact;
mod call;
mod deploy;
mod devtoken;
mod hosts;
mod job;
mod manifest;
mod network;
mod node;
mod output;
mod services;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::builder::TypedValueParser;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use skyclaw_api::{Client, ClientError, Credentials};
use tracing_subscriber::EnvFilter;

/// Where client commands and hosts look for a coordinator when given none: where
/// `skyclaw dev` listens by default.
pub const DEFAULT_COORDINATOR_URL: &str = "http://127.0.0.1:8787";
/// Log filter of coordinators and hosts: enough to follow registrations,
/// jobs, elections and failures, the libraries' included.
const NODE_LOG_FILTER: &str = "info";
/// Log filter of `skyclaw dev`, which shares a terminal with the person trying
/// it: skyclaw's own progress, and only warnings from the libraries under it
/// (openraft's INFO lines are multi-line state dumps).
const DEV_LOG_FILTER: &str =
    "warn,skyclaw=info,skyclaw_api=info,skyclaw_coordinator=info,skyclaw_runtime=info";
/// Log filter of client commands: their output is the answer; logs only say
/// when something is off.
const CLIENT_LOG_FILTER: &str = "warn";
/// The variable most Rust programs take their log filter from; used when
/// neither `--log` nor `SKYCLAW_LOG` is given.
const RUST_LOG: &str = "RUST_LOG";
/// Exit code of `job wait` and `job … --wait` when the job failed or was cancelled.
const EXIT_JOB_FAILED: u8 = 1;
/// Exit code of `deploy` when the build or the rollout failed.
const EXIT_DEPLOY_FAILED: u8 = 1;
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
    #[command(flatten)]
    client: ClientArgs,
    /// Print results exactly as the API returns them (pretty JSON) instead of
    /// tables and plain output.
    #[arg(long, global = true, env = "SKYCLAW_JSON", help_heading = "Output")]
    json: bool,
    /// Log filter in RUST_LOG syntax, such as `debug` or `skyclaw_runtime=debug`
    /// [default: RUST_LOG when set, else info for coordinators and hosts,
    /// skyclaw's info and the libraries' warnings for dev, warn for client
    /// commands]. Logs go to stderr, coloured only on a terminal.
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
    /// Run a gateway: route HTTP to the network's services through healthy
    /// endpoints (needs an API key with the gateway scope, or the token).
    Gateway(node::GatewayArgs),
    /// Run a coordinator, a host and a gateway in one process, for trying
    /// Skyclaw locally.
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
    /// Deploy the service described by DIR/skyclaw.toml: build, upload (only
    /// what the cluster lacks), roll out, and wait until the new version is
    /// healthy. Exit 0 live or unchanged, 1 build or rollout failed, 2 other
    /// errors.
    ///
    /// Runs the manifest's [build] command in DIR, bundles DIR (native) or
    /// takes its wasm component (wasi-http), uploads it unless the cluster
    /// holds it already, deploys the spec, and follows the rollout: old
    /// instances keep serving until new ones are healthy, and a version that
    /// does not become healthy is rolled back.
    #[command(after_long_help = deploy::HELP)]
    Deploy(deploy::DeployArgs),
    /// List, inspect, read the logs of, scale and remove services (needs the
    /// cluster token or a key with services:read; scale and rm need
    /// services:deploy).
    Services(services::ServicesArgs),
    /// Send one HTTP request to a service through the network's gateways and
    /// print the answer's body as it is; exit 0 for a 2xx answer, 1 for
    /// another, 2 when no gateway answered.
    ///
    /// Needs no coordinator: the request goes to PATH of SERVICE through
    /// GATEWAY/s/SERVICE/PATH, failing over between gateways as below. The
    /// body goes to stdout exactly; with -v, what happened goes to stderr.
    #[command(after_long_help = call::HELP)]
    Call(call::CallArgs),
}

impl Command {
    /// Nodes run until stopped and log their progress; client commands answer
    /// and exit.
    fn is_node(&self) -> bool {
        matches!(
            self,
            Command::Coordinator(_) | Command::Host(_) | Command::Gateway(_) | Command::Dev(_)
        )
    }

    /// Runtime worker threads a command asks for (else one per core).
    fn runtime_workers(&self) -> Option<usize> {
        match self {
            Command::Gateway(args) => args.workers(),
            _ => None,
        }
    }

    /// The log filter when none is given.
    fn default_log_filter(&self) -> &'static str {
        match self {
            Command::Coordinator(_) | Command::Host(_) | Command::Gateway(_) => NODE_LOG_FILTER,
            Command::Dev(_) => DEV_LOG_FILTER,
            _ => CLIENT_LOG_FILTER,
        }
    }
}

/// How client commands reach coordinators and prove who they are. The flags
/// are global: they go before or after the subcommand, as users type them.
///
/// Credentials: the API key when one is given, else the token, else the token
/// of a local `skyclaw dev` cluster serving one of the coordinator URLs.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = CONNECTION_HEADING)]
struct ClientArgs {
    /// Coordinator URLs, comma-separated; one is enough, as the rest of the
    /// cluster is learned from it. A request that finds one unreachable is
    /// tried on the next [default: the URL of the `skyclaw dev` found as for
    /// --dev-dir, else http://127.0.0.1:8787].
    #[arg(
        long = "coordinator",
        global = true,
        env = "SKYCLAW_COORDINATOR_URLS",
        value_name = "URL[,URL...]"
    )]
    coordinators: Option<String>,
    /// The cluster's shared token (prefer the environment variable: flags show
    /// in process lists).
    #[arg(long, global = true, env = "SKYCLAW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A scoped API key; used instead of the token when both are given.
    #[arg(long, global = true, env = "SKYCLAW_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A `skyclaw dev` data directory: its URL is used when --coordinator is
    /// not given, its token when neither --token nor --api-key is and its URL
    /// is among the coordinator URLs [default: the nearest .skyclaw in the
    /// current directory or its ancestors].
    #[arg(long, global = true, env = "SKYCLAW_DEV_DIR", value_name = "DIR")]
    dev_dir: Option<PathBuf>,
}

/// The help heading of [`ClientArgs`]; node commands hide what is under it.
const CONNECTION_HEADING: &str = "Connection";

/// Where a client command's coordinator URLs came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UrlSource {
    /// `--coordinator` or `SKYCLAW_COORDINATOR_URLS`.
    Given,
    /// The URL file of a `skyclaw dev` data directory.
    Dev(PathBuf),
    /// Nothing said where: [`DEFAULT_COORDINATOR_URL`].
    Default,
}

/// What a client command connects to and with which credentials, resolved
/// from the flags and the nearest dev directory.
#[derive(Debug)]
pub(crate) struct Target {
    urls: Vec<String>,
    source: UrlSource,
    credentials: Credentials,
    /// The nearest dev cluster, whether or not it serves `urls`: named when
    /// credentials are missing.
    nearby_dev: Option<devtoken::DevCluster>,
}

impl ClientArgs {
    /// The coordinators to try and the credentials to present. Without
    /// `--coordinator`, the URL of the dev cluster found (see `--dev-dir`) is
    /// used, so a `dev --port P` needs no flags either.
    fn target(&self) -> Target {
        let dev_dir = self.dev_dir.as_deref();
        let nearby_dev = devtoken::find(dev_dir, |_| true);
        let (urls, source, dev) = match non_empty(&self.coordinators) {
            Some(list) => {
                let urls = Client::split_urls(&list);
                let dev = devtoken::find(dev_dir, |dev| urls.iter().any(|u| dev.serves(u)));
                (urls, UrlSource::Given, dev)
            }
            None => match &nearby_dev {
                Some(dev) => (
                    vec![dev.url.clone()],
                    UrlSource::Dev(dev.url_path()),
                    Some(dev.clone()),
                ),
                None => (
                    vec![DEFAULT_COORDINATOR_URL.to_string()],
                    UrlSource::Default,
                    None,
                ),
            },
        };
        Target {
            urls,
            source,
            credentials: self.credentials(dev.as_ref()),
            nearby_dev,
        }
    }

    fn credentials(&self, dev: Option<&devtoken::DevCluster>) -> Credentials {
        if let Some(key) = non_empty(&self.api_key) {
            return Credentials::ApiKey(key);
        }
        if let Some(token) = non_empty(&self.token) {
            return Credentials::Token(token);
        }
        match dev.and_then(devtoken::DevCluster::token) {
            Some(token) => {
                tracing::debug!("using the token of the local dev cluster");
                Credentials::Token(token)
            }
            None => Credentials::None,
        }
    }
}

impl Target {
    /// A client for the coordinators with the chosen credentials, which has
    /// learned every coordinator of the cluster, so a command started with one
    /// URL fails over to the others. Every route a client command uses needs
    /// credentials, so having none is an early error, once it is clear that
    /// the URL is not the problem: a dead or wrong URL is the first thing to
    /// fix.
    pub(crate) async fn client(&self) -> Result<Client> {
        let client = Client::new(&self.urls, self.credentials.clone())?;
        if matches!(self.credentials, Credentials::None) {
            client.health().await?;
            bail!("{}", self.no_credentials());
        }
        // Best effort: the command itself reports an unreachable cluster, and
        // the given URLs are still worth trying when the list cannot be read.
        if let Err(e) = client.refresh_urls().await {
            tracing::debug!(error = %e, "cannot learn the cluster's coordinators; using the given ones");
        }
        Ok(client)
    }

    /// What to do without credentials, naming the dev cluster nearby when
    /// it serves another URL than the one tried.
    fn no_credentials(&self) -> String {
        let urls = self.urls.join(",");
        let mut message = format!(
            "no credentials for {urls}: pass --token (SKYCLAW_TOKEN) or --api-key \
             (SKYCLAW_API_KEY), or run from the directory of the `skyclaw dev` serving it"
        );
        if let Some(dev) = &self.nearby_dev
            && !self.urls.iter().any(|u| dev.serves(u))
        {
            message.push_str(&format!(
                "; the `skyclaw dev` of {} serves {}, not {urls}",
                dev.dir.display(),
                dev.url
            ));
        }
        message
    }

    /// Says where the URLs came from when no coordinator could be reached
    /// at all, so a stale or mistyped URL is recognised as such.
    pub(crate) fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        let unreachable = error.chain().any(|cause| {
            matches!(
                cause.downcast_ref::<ClientError>(),
                Some(ClientError::Unavailable {
                    last_code: None,
                    ..
                })
            )
        });
        if !unreachable {
            return error;
        }
        let urls = self.urls.join(",");
        let context = match &self.source {
            UrlSource::Given => format!(
                "cannot reach the coordinators at {urls} (from --coordinator or \
                 SKYCLAW_COORDINATOR_URLS)"
            ),
            UrlSource::Dev(file) => format!(
                "cannot reach the `skyclaw dev` at {urls} (its URL, from {}): is it still \
                 running? Start it again, or pass --coordinator URL",
                file.display()
            ),
            UrlSource::Default => format!(
                "cannot reach a coordinator at {urls} (the default): start `skyclaw dev`, or \
                 pass --coordinator URL (SKYCLAW_COORDINATOR_URLS)"
            ),
        };
        error.context(context)
    }
}

/// Parses a count or duration flag that must be at least 1, saying so when
/// it is not (clap's own range check would print the type's whole range).
fn positive_u64() -> impl TypedValueParser<Value = u64> {
    parse_within(1, None)
}

/// [`positive_u64`] for flags held in a `u32`.
fn positive_u32() -> impl TypedValueParser<Value = u32> {
    parse_within(1, Some(u64::from(u32::MAX)))
}

/// Parses an integer flag in `min..=max`; an error names the range.
fn between<T>(min: T, max: T) -> impl TypedValueParser<Value = T>
where
    T: Into<u64> + TryFrom<u64> + Clone + Send + Sync + 'static,
{
    parse_within(min.into(), Some(max.into()))
}

fn parse_within<T>(min: u64, max: Option<u64>) -> impl TypedValueParser<Value = T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
{
    clap::value_parser!(u64).try_map(move |n| {
        let within = n >= min && max.is_none_or(|max| n <= max);
        T::try_from(n)
            .ok()
            .filter(|_| within)
            .ok_or_else(|| match max {
                Some(max) => format!("must be between {min} and {max}"),
                None => format!("must be at least {min}"),
            })
    })
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
    let cli = match Cli::from_arg_matches(&command_line().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
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

/// The command line as `main` parses it: [`Cli`], with the client flags
/// hidden from the help of node commands (they accept them, being global,
/// and ignore them), and arguments that an environment variable provides no
/// longer required, so usage lines do not list them as missing.
fn command_line() -> clap::Command {
    let mut cmd = Cli::command();
    let connection: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.get_help_heading() == Some(CONNECTION_HEADING))
        .cloned()
        .collect();
    // `call` speaks to gateways, not coordinators: the flags mean nothing to it either.
    for node in ["coordinator", "host", "dev", "call"] {
        cmd = cmd.mut_subcommand(node, |mut sub| {
            for arg in &connection {
                // A node's own flag of the same id (a host's --coordinator)
                // stays as it is; global values still reach it by id.
                if !sub.get_arguments().any(|a| a.get_id() == arg.get_id()) {
                    sub = sub.arg(arg.clone().global(false).hide(true));
                }
            }
            sub
        });
    }
    without_env_provided_requirements(cmd)
}

/// `cmd` and its subcommands with every argument (and group of arguments)
/// that a set environment variable provides made optional: clap takes the
/// value from the variable either way, but would list the argument as
/// required in every usage line.
fn without_env_provided_requirements(mut cmd: clap::Command) -> clap::Command {
    let provided: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| {
            a.get_env()
                .and_then(std::env::var_os)
                .is_some_and(|v| !v.is_empty())
        })
        .map(|a| a.get_id().clone())
        .collect();
    let groups: Vec<clap::Id> = cmd
        .get_groups()
        .filter(|g| g.is_required_set() && g.get_args().any(|id| provided.contains(id)))
        .map(|g| g.get_id().clone())
        .collect();
    for id in &provided {
        cmd = cmd.mut_arg(id, |a| a.required(false));
    }
    for id in &groups {
        cmd = cmd.mut_group(id, |g| g.required(false));
    }
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in subcommands {
        cmd = cmd.mut_subcommand(name, without_env_provided_requirements);
    }
    cmd
}

fn run(cli: Cli) -> Result<ExitCode> {
    let from_env = std::env::var(RUST_LOG)
        .ok()
        .filter(|f| !f.trim().is_empty());
    let filter = cli
        .log
        .clone()
        .or(from_env)
        .unwrap_or_else(|| cli.command.default_log_filter().to_string());
    init_logging(&filter)?;
    if cli.command.is_node() {
        raise_open_file_limit();
    }
    let mut runtime = match cli.command.runtime_workers() {
        // One thread: everything runs where it is woken, with none of the
        // work-stealing scheduler's hand-offs.
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.worker_threads(workers);
            runtime
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(dispatch(cli))
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
    // Colours are escape sequences: in a file or a pipe they are noise.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let json = cli.json;
    let command = match cli.command {
        Command::Coordinator(args) => return node::coordinator(args).await,
        Command::Host(args) => return node::host(args).await,
        Command::Gateway(args) => return node::gateway(args).await,
        Command::Dev(args) => return node::dev(args).await,
        client_command => client_command,
    };
    let target = cli.client.target();
    if let Command::Call(args) = command {
        // Gateways, not coordinators: the coordinators are asked only for
        // the gateway list, when no --gateway is given.
        return call::run(args, &target).await;
    }
    if let Command::Deploy(args) = command {
        // Deploy reads its manifest before it connects.
        return deploy::run(args, &target, json)
            .await
            .map_err(|e| target.explain(e));
    }
    let result = async {
        let client = target.client().await?;
        match command {
            Command::Job(args) => job::run(args, &client, json).await,
            Command::Hosts(args) => hosts::run(args, &client, json).await,
            Command::Apikey(args) => apikey::run(args, &client, json).await,
            Command::Artifact(args) => artifact::run(args, &client, json).await,
            Command::Network(args) => network::run(args, &client, json).await,
            Command::Services(args) => services::run(args, &client, json).await,
            Command::Coordinator(_)
            | Command::Host(_)
            | Command::Gateway(_)
            | Command::Dev(_)
            | Command::Deploy(_)
            | Command::Call(_) => {
                unreachable!("node commands, deploy and call returned above")
            }
        }
    }
    .await;
    result.map_err(|e| target.explain(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let matches = command_line().try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
        command_line().debug_assert();
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
        let mut cmd = command_line();
        cmd.build();
        check(&cmd, "skyclaw");
    }

    #[test]
    fn json_and_client_flags_are_accepted_before_and_after_any_subcommand() {
        for args in [
            &[
                "skyclaw",
                "job",
                "ls",
                "--json",
                "--coordinator",
                "http://a:1,http://b:2",
            ][..],
            &[
                "skyclaw",
                "--json",
                "--coordinator",
                "http://a:1,http://b:2",
                "job",
                "ls",
            ],
            &[
                "skyclaw",
                "--coordinator",
                "http://a:1,http://b:2",
                "job",
                "--json",
                "ls",
            ],
        ] {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(cli.json, "{args:?}");
            assert!(matches!(cli.command, Command::Job(_)), "{args:?}");
            assert_eq!(
                cli.client.coordinators.as_deref(),
                Some("http://a:1,http://b:2"),
                "{args:?}"
            );
        }
        let cli = parse(&["skyclaw", "--token", "t", "--api-key", "k", "hosts", "ls"]).unwrap();
        assert_eq!(
            (cli.client.token.as_deref(), cli.client.api_key.as_deref()),
            (Some("t"), Some("k"))
        );
    }

    /// A host's own --coordinator and --token take values given before the
    /// subcommand too; flags that mean nothing to a node are accepted but
    /// left out of its help.
    #[test]
    fn node_commands_share_the_connection_flags_they_use() {
        let cli = parse(&[
            "skyclaw",
            "--coordinator",
            "http://c:1",
            "--token",
            "t",
            "host",
            "--data-dir",
            "d",
            "--sandbox-only",
        ])
        .unwrap();
        let Command::Host(host) = cli.command else {
            panic!("not host")
        };
        assert_eq!(host.coordinators(), ("http://c:1", Some("t")));
        for node in ["coordinator", "host", "dev"] {
            let help = command_line()
                .try_get_matches_from(["skyclaw", node, "--help"])
                .unwrap_err()
                .to_string();
            assert!(help.contains("--data-dir"), "{node}: {help}");
            assert!(!help.contains("--api-key"), "{node}: {help}");
            assert!(!help.contains("--dev-dir"), "{node}: {help}");
        }
        let help = command_line()
            .try_get_matches_from(["skyclaw", "job", "ls", "--help"])
            .unwrap_err()
            .to_string();
        assert!(
            help.contains("--api-key") && help.contains("--coordinator"),
            "{help}"
        );
    }

    /// Range errors say the range a flag takes, not its type's.
    #[test]
    fn ranges_are_said_as_they_are() {
        #[derive(Debug, Parser)]
        struct Flags {
            #[arg(long, value_parser = positive_u64())]
            fuel: Option<u64>,
            #[arg(long, value_parser = between(1u32, 4096))]
            memory: Option<u32>,
        }
        let error = |args: &[&str]| Flags::try_parse_from(args).unwrap_err().to_string();
        assert!(error(&["x", "--fuel", "0"]).contains("must be at least 1"));
        assert!(error(&["x", "--memory", "0"]).contains("must be between 1 and 4096"));
        assert!(error(&["x", "--memory", "99999999999"]).contains("must be between 1 and 4096"));
        let flags = Flags::try_parse_from(["x", "--fuel", "5", "--memory", "4096"]).unwrap();
        assert_eq!((flags.fuel, flags.memory), (Some(5), Some(4096)));
    }

    #[test]
    fn api_key_wins_over_token() {
        let args = ClientArgs {
            coordinators: None,
            token: Some("t".into()),
            api_key: Some("k".into()),
            dev_dir: None,
        };
        assert!(matches!(args.credentials(None), Credentials::ApiKey(k) if k == "k"));
        let args = ClientArgs {
            api_key: Some(" ".into()),
            ..args
        };
        assert!(matches!(args.credentials(None), Credentials::Token(t) if t == "t"));
    }

    #[test]
    fn a_dev_directory_gives_the_url_unless_one_is_given() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(devtoken::DEFAULT_DEV_DIR);
        std::fs::create_dir(&dir).unwrap();
        let token = devtoken::load_or_create_token(&dir).unwrap();
        devtoken::write_url(&dir, "http://127.0.0.1:4000").unwrap();
        let args = ClientArgs {
            coordinators: None,
            token: None,
            api_key: None,
            dev_dir: Some(dir.clone()),
        };
        let target = args.target();
        assert_eq!(target.urls, ["http://127.0.0.1:4000"]);
        assert_eq!(target.source, UrlSource::Dev(dir.join("url")));
        assert!(matches!(target.credentials, Credentials::Token(t) if t == token));
        let args = ClientArgs {
            coordinators: Some(DEFAULT_COORDINATOR_URL.into()),
            ..args
        };
        let target = args.target();
        assert_eq!(target.source, UrlSource::Given);
        assert!(matches!(target.credentials, Credentials::None));
        let message = target.no_credentials();
        assert!(
            message.contains("serves http://127.0.0.1:4000, not http://127.0.0.1:8787"),
            "{message}"
        );
    }
}
