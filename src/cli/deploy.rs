//! `skyclaw deploy [DIR]`: reads `DIR/skyclaw.toml`, runs its build, ships
//! the service (a bundle of the directory, or its wasm component) unless the
//! cluster holds it already, deploys the spec and follows the rollout until
//! the new version is healthy or has failed.
//!
//! Exit codes are what CI branches on: 0 the version is live (or nothing
//! changed), 1 the build or the rollout failed (the rollout's reason, with the
//! crash's output, is printed), 2 anything else (usage, manifest, credentials,
//! connection).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use skyclaw_api::apikeys::{Scope, Whoami};
use skyclaw_api::services::{DeployOutcome, DeployStatus, InstanceState, Service, ServiceKind};
use skyclaw_api::{Client, ClientError, ErrorCode};
use tokio::time::Instant;

use super::artifact::{self, Pushed};
use super::manifest::{MANIFEST_FILE, Manifest};
use super::output::{self, Layout};
use super::{EXIT_DEPLOY_FAILED, Target};

/// How often the rollout is polled: state changes show within a blink, and a
/// `GET` of one service costs the coordinator a point lookup.
const POLL: Duration = Duration::from_millis(200);
/// How long polls may keep failing (a coordinator restarting, an election)
/// before the wait gives up.
const POLL_FAILURE_GRACE: Duration = Duration::from_secs(30);
/// How long past the rollout's own deadline the wait goes on: the leader
/// fails a rollout at its deadline, so a rollout still rolling after this
/// means the cluster cannot decide (no leader), not a slow service.
const DEADLINE_GRACE: Duration = Duration::from_secs(60);
/// Characters of an instance's last error shown in a progress line.
const ERROR_WIDTH: usize = 120;
/// Ticks of the spinner on a terminal.
const SPINNER_TICK: Duration = Duration::from_millis(100);
/// Variables the build command does not see: it runs the project's scripts
/// (and its dependencies' install scripts), which have no business with the
/// credentials that deploy.
const BUILD_HIDDEN_ENV: [&str; 2] = ["SKYCLAW_TOKEN", "SKYCLAW_API_KEY"];
/// The bundle's file name inside its temp directory.
const BUNDLE_FILE: &str = "bundle.tar";

/// The long help of `skyclaw deploy`: the manifest and the exit codes.
pub const HELP: &str = "\
The manifest, DIR/skyclaw.toml (unknown keys are errors, named with their line):

  [service]
  name = \"ts-api\"                 # a DNS label
  kind = \"native\"                 # or \"wasi-http\"
  command = \"node\"                # native: a program on the hosts' allowlists
  args = [\"dist/server.js\"]       # native; run in the unpacked bundle, PORT and HOST set
  replicas = 2                    # default 1
  wasm = \"app.wasm\"               # wasi-http: the component, relative to DIR
  allowed_outbound_hosts = [\"https://api.example.com\"]   # wasi-http
  [service.env]                   # KEY = \"value\"
  [service.health]                # path, interval_ms, timeout_ms, healthy_threshold, unhealthy_threshold
  [service.limits]                # wasi-http: fuel, memory_mb, timeout_ms
  [service.rollout]               # max_surge, healthy_deadline_ms
  [build]
  command = \"npm ci && npm run build\"   # run with `sh -c` in DIR first; its output goes to stderr
  [bundle]                        # native: globs relative to DIR
  include = [\"**\"]                # default: everything
  exclude = [\"node_modules/**\"]   # default: nothing; .git is never bundled

Bundles are deterministic: the same files give the same digest, so deploying
unchanged files uploads nothing and, with the same manifest, changes nothing.
An API key needs the services:deploy and artifacts:push scopes; give it as
SKYCLAW_API_KEY (and the coordinators as SKYCLAW_COORDINATOR_URLS) in CI.

Progress goes to stderr: a bar on a terminal, else one line per change.
stdout gets the outcome, or with --json only the service as the API returns it.

Exit status: 0 the new version is healthy (or nothing changed), 1 the build
failed or the rollout failed (its reason, with the crash's output, is shown;
the previous version keeps serving), 2 usage, manifest, credential or
connection errors.";

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The directory holding skyclaw.toml; the build runs, and the bundle is
    /// made, there.
    #[arg(default_value = ".", value_name = "DIR")]
    dir: PathBuf,
    /// Return once the coordinators have accepted the new version, without
    /// following its rollout.
    #[arg(long, env = "SKYCLAW_DEPLOY_NO_WAIT")]
    no_wait: bool,
}

pub async fn run(args: DeployArgs, target: &Target, json: bool) -> Result<ExitCode> {
    // The manifest first: its mistakes need no cluster to be found.
    let manifest = Manifest::load(&args.dir)?;
    let name = manifest.service.name.clone();
    let client = target.client().await?;
    check_scopes(&client).await?;
    if let Some(build) = &manifest.build
        && let Err(e) = run_build(&args.dir, &build.command).await
    {
        eprintln!("error: {}", output::escape(format!("{e:#}"), Layout::Block));
        return Ok(ExitCode::from(EXIT_DEPLOY_FAILED));
    }
    let pushed = ship(&client, &manifest, &args.dir).await?;
    let spec = manifest.spec(pushed.digest);
    spec.validate().context("invalid service")?;
    // The client sends the PUT with an idempotency key of its own, reused on
    // every coordinator it fails over to; the PUT is idempotent anyway (the
    // same spec again is `unchanged`), so a rerun of the whole deploy is too.
    let deployed = client
        .put_service(&name, &spec)
        .await
        .with_context(|| format!("cannot deploy {name}"))?;
    let service = deployed.service;
    let version = service.current.version;
    let rolling =
        service.deploy.status == DeployStatus::Rolling && service.deploy.version == version;
    match deployed.outcome {
        DeployOutcome::Created => eprintln!(
            "created {name}: version {version}, {} replicas",
            service.replicas
        ),
        DeployOutcome::Deployed => eprintln!(
            "deployed {name} version {version}{}, {} replicas",
            service
                .previous
                .as_ref()
                .map(|p| format!(" (version {} serves until it is healthy)", p.version))
                .unwrap_or_default(),
            service.replicas
        ),
        DeployOutcome::Scaled => {
            eprintln!(
                "{name} is unchanged at version {version}; scaled to {} replicas",
                service.replicas
            );
            return finish(&client, &service, json)
                .await
                .map(|()| ExitCode::SUCCESS);
        }
        DeployOutcome::Unchanged if !rolling => {
            eprintln!(
                "{name} is unchanged: version {version} is already deployed ({}); nothing to do",
                service.deploy.status.as_str()
            );
            return finish(&client, &service, json)
                .await
                .map(|()| ExitCode::SUCCESS);
        }
        DeployOutcome::Unchanged => eprintln!(
            "{name} is unchanged: version {version} is already deployed and still rolling out"
        ),
    }
    if args.no_wait {
        return finish(&client, &service, json)
            .await
            .map(|()| ExitCode::SUCCESS);
    }
    let service = wait_for_rollout(&client, service, version).await?;
    match service.deploy.status {
        DeployStatus::Done => {
            finish(&client, &service, json).await?;
            Ok(ExitCode::SUCCESS)
        }
        DeployStatus::Failed | DeployStatus::Rolling => {
            let reason = service
                .deploy
                .reason
                .as_deref()
                .unwrap_or("no reason given");
            let serving = match &service.previous {
                Some(previous) => format!("version {} keeps serving", previous.version),
                None => "nothing serves: it was the service's first version".to_string(),
            };
            eprintln!(
                "error: the rollout of {name} version {version} failed; {serving}:\n{}",
                output::escape(reason, Layout::Block)
            );
            if json {
                output::print_json(&service)?;
            }
            Ok(ExitCode::from(EXIT_DEPLOY_FAILED))
        }
    }
}

/// What a deploy that did not fail prints on stdout: the service as JSON, or
/// one line and, when it serves, where each live gateway routes to it.
async fn finish(client: &Client, service: &Service, json: bool) -> Result<()> {
    if json {
        return output::print_json(service);
    }
    let mut lines = status_line(service);
    if healthy_of(service, service.current.version) > 0 {
        for url in gateway_urls(client, &service.name).await {
            lines.push_str(&format!("  {url}\n"));
        }
    }
    output::out(&output::escape(lines, Layout::Block))
}

/// The service at each live gateway (`GET /v1/gateways`); none when the
/// list cannot be read, which does not make the deploy fail.
async fn gateway_urls(client: &Client, name: &str) -> Vec<String> {
    let Ok(list) = client.list_gateways().await else {
        return Vec::new();
    };
    let Ok(path) = skyclaw_api::service_client::service_path(name, "/") else {
        return Vec::new();
    };
    list.gateways
        .iter()
        .map(|g| format!("{}{path}", g.public_url.trim_end_matches('/')))
        .collect()
}

/// One line: the deployed version and how many of its instances are healthy.
fn status_line(service: &Service) -> String {
    let version = service.current.version;
    let healthy = healthy_of(service, version);
    match service.deploy.status {
        DeployStatus::Done => format!(
            "{} version {version} is live: {healthy}/{} instances healthy\n",
            service.name, service.replicas
        ),
        status => format!(
            "{} version {version} is {}: {healthy}/{} instances healthy\n",
            service.name,
            status.as_str(),
            service.replicas
        ),
    }
}

/// Fails before the build when the credentials cannot deploy: wrong ones, or
/// a key lacking a scope, would otherwise build and bundle for nothing. The
/// token may do everything; a coordinator that does not answer `whoami`
/// judges each request by itself.
async fn check_scopes(client: &Client) -> Result<()> {
    let key = match client.whoami().await {
        Ok(Whoami::ApiKey { key }) => key,
        Ok(Whoami::Token) => return Ok(()),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => return Ok(()),
        Err(e @ ClientError::Api { .. }) => {
            return Err(anyhow::Error::new(e).context("the coordinators refused the credentials"));
        }
        Err(e) => return Err(e.into()),
    };
    let wanted = [
        (Scope::ServicesDeploy, "to deploy the service"),
        (Scope::ArtifactsPush, "to upload what it runs"),
    ];
    let Some((missing, has)) = super::apikey::lacking(&key, &wanted) else {
        return Ok(());
    };
    bail!(
        "forbidden: API key {} ({}) lacks {missing}; it has {has}. Nothing was built or \
         deployed: use a key with services:deploy and artifacts:push (skyclaw apikey create \
         --scope …)",
        key.id,
        output::escape(&key.name, Layout::Line),
    )
}

/// Runs the manifest's build command with `sh -c` in `dir`. Its output is
/// streamed to stderr as it comes (stdout stays for the deploy's result);
/// it sees the caller's environment but not the deploy credentials.
async fn run_build(dir: &Path, command: &str) -> Result<()> {
    eprintln!("building: {}", output::escape(command, Layout::Line));
    let to_stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot hand stderr to the build")?;
    let mut build = tokio::process::Command::new("sh");
    build
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(to_stderr));
    for name in BUILD_HIDDEN_ENV {
        build.env_remove(name);
    }
    let status = build
        .status()
        .await
        .with_context(|| format!("cannot run the build command `{command}` (sh -c)"))?;
    if !status.success() {
        bail!("the build command `{command}` failed ({status}); nothing was deployed");
    }
    Ok(())
}

/// Makes what the service runs (a bundle of `dir`, or its wasm component)
/// and uploads it unless the cluster holds it already.
async fn ship(client: &Client, manifest: &Manifest, dir: &Path) -> Result<Pushed> {
    let (pushed, what, _bundle_dir) = match manifest.service.kind {
        ServiceKind::Native => {
            // Outside `dir`, which the bundle would otherwise contain.
            let bundle_dir = tempfile::Builder::new()
                .prefix("skyclaw-bundle-")
                .tempdir()
                .context("cannot make a temp directory for the bundle")?;
            let out = bundle_dir.path().join(BUNDLE_FILE);
            let summary = build_bundle(manifest, dir, &out).await?;
            let what = format!(
                "bundle of {} ({} entries, {} of files)",
                dir.display(),
                summary.entries,
                artifact::size(summary.bytes)
            );
            let pushed = artifact::push_if_missing(client, &out).await?;
            (pushed, what, Some(bundle_dir))
        }
        ServiceKind::WasiHttp => {
            let wasm = manifest
                .service
                .wasm
                .as_deref()
                .expect("checked by Manifest::check");
            let path = dir.join(wasm);
            if !path.is_file() {
                bail!(
                    "{}: no such file (wasm in {MANIFEST_FILE}, relative to {}){}",
                    path.display(),
                    dir.display(),
                    if manifest.build.is_some() {
                        "; did the build make it?"
                    } else {
                        ""
                    }
                );
            }
            let pushed = artifact::push_if_missing(client, &path).await?;
            (pushed, format!("component {}", path.display()), None)
        }
    };
    let what = output::escape(what, Layout::Line);
    match &pushed.uploaded {
        Some(_) => eprintln!(
            "uploaded the {what}: {} ({})",
            pushed.digest,
            artifact::size(pushed.size)
        ),
        None => eprintln!(
            "the {what} is already on the cluster: {}; not uploaded",
            pushed.digest
        ),
    }
    Ok(pushed)
}

async fn build_bundle(
    manifest: &Manifest,
    dir: &Path,
    out: &Path,
) -> Result<skyclaw_runtime::bundle::BuildSummary> {
    let bundle = manifest.bundle();
    let (dir, out) = (dir.to_path_buf(), out.to_path_buf());
    let shown = dir.display().to_string();
    tokio::task::spawn_blocking(move || {
        skyclaw_runtime::bundle::build(&dir, &bundle.include, &bundle.exclude, &out)
    })
    .await
    .context("the bundle build stopped")?
    .with_context(|| format!("cannot bundle {shown}"))
}

/// Polls the service until the rollout of `version` has ended, showing its
/// progress on stderr. Returns the service as it was then.
async fn wait_for_rollout(client: &Client, service: Service, version: u64) -> Result<Service> {
    let name = service.name.clone();
    let progress = Progress::new(&service, version);
    let mut watch = Watch::default();
    for change in watch.changes(&service, version) {
        progress.note(&change);
    }
    let rollout_ms = service
        .deploy
        .deadline_at
        .saturating_sub(service.deploy.started_at);
    let give_up = Instant::now() + Duration::from_millis(rollout_ms) + DEADLINE_GRACE;
    let mut failing_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let service = match client.get_service(&name).await {
            Ok(service) => {
                failing_since = None;
                service
            }
            Err(e) if e.is_transient() => {
                let since = *failing_since.get_or_insert_with(|| {
                    progress.note(&format!("cannot reach the coordinators; retrying: {e}"));
                    Instant::now()
                });
                if since.elapsed() > POLL_FAILURE_GRACE {
                    progress.clear();
                    return Err(anyhow::Error::new(e).context(format!(
                        "lost the coordinators while version {version} of {name} rolled out; \
                         see `skyclaw services get {name}`"
                    )));
                }
                continue;
            }
            Err(e) => {
                progress.clear();
                return Err(
                    anyhow::Error::new(e).context(format!("cannot follow the rollout of {name}"))
                );
            }
        };
        for change in watch.changes(&service, version) {
            progress.note(&change);
        }
        progress.update(&service, version);
        if service.current.version != version {
            progress.clear();
            bail!(
                "version {version} of {name} was replaced by version {} before its rollout ended",
                service.current.version
            );
        }
        if service.deploy.status != DeployStatus::Rolling {
            progress.clear();
            return Ok(service);
        }
        if Instant::now() > give_up {
            progress.clear();
            bail!(
                "version {version} of {name} is still rolling out {}s past its deadline: the \
                 coordinators may have no leader; see `skyclaw services get {name}`",
                DEADLINE_GRACE.as_secs()
            );
        }
    }
}

/// Healthy instances of `version`.
fn healthy_of(service: &Service, version: u64) -> usize {
    service
        .instances
        .iter()
        .filter(|i| i.version == version && i.state == InstanceState::Healthy)
        .count()
}

/// What changed between polls of a rollout, as lines for a log: instance
/// states, the healthy count, why instances wait. Pure, so it is tested
/// without a cluster.
#[derive(Debug, Default)]
struct Watch {
    states: HashMap<String, InstanceState>,
    healthy: Option<usize>,
    waiting: Option<String>,
}

impl Watch {
    fn changes(&mut self, service: &Service, version: u64) -> Vec<String> {
        let mut lines = Vec::new();
        for instance in &service.instances {
            let before = self.states.insert(instance.id.clone(), instance.state);
            if before == Some(instance.state) {
                continue;
            }
            // Instances of older versions are news only when they change.
            if before.is_none() && instance.version != version {
                continue;
            }
            let mut line = format!(
                "instance {} (version {}) on host {}: ",
                instance.id, instance.version, instance.host_id
            );
            if let Some(before) = before {
                line.push_str(&format!("{} -> ", before.as_str()));
            }
            line.push_str(instance.state.as_str());
            let troubled = matches!(
                instance.state,
                InstanceState::Failed | InstanceState::Unhealthy
            );
            if troubled && let Some(error) = &instance.last_error {
                line.push_str(&format!(": {}", output::ellipsize(error, ERROR_WIDTH)));
            }
            lines.push(line);
        }
        let healthy = healthy_of(service, version);
        if self.healthy != Some(healthy) {
            self.healthy = Some(healthy);
            lines.push(format!(
                "{healthy}/{} instances of version {version} healthy",
                service.replicas
            ));
        }
        if self.waiting != service.waiting_reason {
            self.waiting.clone_from(&service.waiting_reason);
            if let Some(reason) = &service.waiting_reason {
                lines.push(format!("waiting: {reason}"));
            }
        }
        lines
    }
}

/// Where progress goes: a bar on a terminal, plain lines elsewhere (CI logs).
enum Progress {
    Bar(ProgressBar),
    Lines,
}

impl Progress {
    fn new(service: &Service, version: u64) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::Lines;
        }
        let bar = ProgressBar::new(u64::from(service.replicas));
        let style = ProgressStyle::with_template(
            "{spinner} {prefix} [{bar:24}] {pos}/{len} healthy {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(output::escape(
            format!("{} version {version}", service.name),
            Layout::Line,
        ));
        bar.enable_steady_tick(SPINNER_TICK);
        Progress::Bar(bar)
    }

    /// One change: a line above the bar, or a line of the log.
    fn note(&self, line: &str) {
        let line = output::escape(line, Layout::Line);
        match self {
            Progress::Bar(bar) => bar.println(line),
            Progress::Lines => eprintln!("{line}"),
        }
    }

    fn update(&self, service: &Service, version: u64) {
        if let Progress::Bar(bar) = self {
            bar.set_length(u64::from(service.replicas));
            bar.set_position(healthy_of(service, version) as u64);
            let message = service.waiting_reason.as_deref().unwrap_or("");
            bar.set_message(output::escape(message, Layout::Line));
        }
    }

    fn clear(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skyclaw_api::services::{Deploy, Instance, ServiceVersion};

    fn service(instances: Vec<Instance>, waiting: Option<&str>) -> Service {
        let manifest = Manifest::parse(
            "[service]\nname = \"api\"\nkind = \"native\"\ncommand = \"node\"\nreplicas = 2\n",
            "skyclaw.toml",
        )
        .unwrap();
        Service {
            name: "api".into(),
            current: ServiceVersion {
                version: 2,
                spec: manifest.spec(skyclaw_api::artifacts::Digest::from_sha256(&[0; 32])),
                created_at: 0,
            },
            previous: None,
            replicas: 2,
            deploy: Deploy {
                version: 2,
                status: DeployStatus::Rolling,
                reason: None,
                started_at: 0,
                deadline_at: 1,
                finished_at: None,
            },
            waiting_reason: waiting.map(String::from),
            instances,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn instance(id: &str, version: u64, state: InstanceState, error: Option<&str>) -> Instance {
        Instance {
            id: id.into(),
            host_id: "h1".into(),
            version,
            endpoint: None,
            state,
            restarts: 0,
            last_error: error.map(String::from),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn a_watch_reports_each_change_once() {
        let mut watch = Watch::default();
        let first = service(
            vec![instance("old", 1, InstanceState::Healthy, None)],
            Some("no live host runs services"),
        );
        assert_eq!(
            watch.changes(&first, 2),
            [
                "0/2 instances of version 2 healthy",
                "waiting: no live host runs services"
            ]
        );
        assert!(watch.changes(&first, 2).is_empty(), "nothing changed");
        let placed = service(
            vec![
                instance("old", 1, InstanceState::Healthy, None),
                instance("new", 2, InstanceState::Pending, None),
            ],
            None,
        );
        assert_eq!(
            watch.changes(&placed, 2),
            ["instance new (version 2) on host h1: pending"]
        );
        let healthy = service(
            vec![
                instance("old", 1, InstanceState::Stopping, None),
                instance("new", 2, InstanceState::Healthy, None),
            ],
            None,
        );
        assert_eq!(
            watch.changes(&healthy, 2),
            [
                "instance old (version 1) on host h1: healthy -> stopping",
                "instance new (version 2) on host h1: pending -> healthy",
                "1/2 instances of version 2 healthy",
            ]
        );
        let crashed = service(
            vec![instance(
                "new",
                2,
                InstanceState::Failed,
                Some("exit status 1\nError: boom"),
            )],
            None,
        );
        assert_eq!(
            watch.changes(&crashed, 2),
            [
                "instance new (version 2) on host h1: healthy -> failed: exit status 1…",
                "0/2 instances of version 2 healthy",
            ]
        );
    }
}
