//! `skyclaw services`: list and inspect deployed services, read their
//! instances' logs, scale and remove them.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use skyclaw_api::services::{
    InstanceLogs, InstanceState, LogLine, LogStream, LogsQuery, MAX_LOG_TAIL, MAX_REPLICAS,
    Service, ServiceKind,
};
use skyclaw_api::{Client, Millis, now_ms};

use super::between;
use super::output::{self, Layout, NONE};

/// How often `services logs --follow` asks for new lines.
const FOLLOW_POLL: Duration = Duration::from_secs(1);
/// How long `--follow` rides out a coordinator that does not answer.
const FOLLOW_FAILURE_GRACE: Duration = Duration::from_secs(30);
/// Characters of a reason or error shown in a table cell.
const REASON_WIDTH: usize = 60;

#[derive(Debug, clap::Args)]
pub struct ServicesArgs {
    #[command(subcommand)]
    command: ServicesCommand,
}

#[derive(Debug, Subcommand)]
enum ServicesCommand {
    /// List services: kind, current version, its rollout, healthy instances
    /// out of the replicas, and why a rollout failed or instances wait.
    Ls,
    /// Show one service: its current and previous version, what it runs, its
    /// rollout (with the reason a failed one gives) and every instance.
    Get {
        /// The service's name.
        name: String,
    },
    /// Print the recent output of a service's native instances, each line
    /// after its instance's id (stderr lines on stderr); --follow keeps
    /// printing new lines.
    Logs(LogsArgs),
    /// Set how many instances a service runs (0 keeps it defined with none
    /// running); no new version is made.
    Scale {
        /// The service's name.
        name: String,
        /// Replicas, 0 to 64.
        #[arg(value_parser = between(0u32, MAX_REPLICAS))]
        replicas: u32,
    },
    /// Remove a service: every instance stops. Its name keeps counting
    /// versions if it is deployed again. The API answers nothing; --json
    /// prints {"removed": NAME}.
    Rm {
        /// The service's name.
        name: String,
    },
}

#[derive(Debug, clap::Args)]
struct LogsArgs {
    /// The service's name.
    name: String,
    /// Only this instance's lines (an id from `services get`).
    #[arg(long, env = "SKYCLAW_LOGS_INSTANCE", value_name = "ID")]
    instance: Option<String>,
    /// The newest N lines of each instance [default: 100].
    #[arg(long, env = "SKYCLAW_LOGS_TAIL", value_name = "N", value_parser = between(1u64, MAX_LOG_TAIL as u64))]
    tail: Option<u64>,
    /// Keep asking (every second) and print lines newer than those printed;
    /// with --json, one JSON line each. Stop with Ctrl-C.
    #[arg(long, env = "SKYCLAW_LOGS_FOLLOW")]
    follow: bool,
}

pub async fn run(args: ServicesArgs, client: &Client, json: bool) -> Result<ExitCode> {
    match args.command {
        ServicesCommand::Ls => {
            let list = client.list_services().await?;
            if json {
                output::print_json(&list)?;
            } else {
                output::out(&services_table(&list.services, now_ms()))?;
            }
        }
        ServicesCommand::Get { name } => {
            let service = client.get_service(&name).await?;
            if json {
                output::print_json(&service)?;
            } else {
                output::out(&service_view(&service, now_ms()))?;
            }
        }
        ServicesCommand::Logs(args) => logs(client, args, json).await?,
        ServicesCommand::Scale { name, replicas } => {
            let service = client
                .scale_service(&name, replicas)
                .await
                .with_context(|| format!("cannot scale {name}"))?;
            if json {
                output::print_json(&service)?;
            } else {
                output::out(&output::escape(
                    format!(
                        "scaled {} to {} replicas (version {})\n",
                        service.name, service.replicas, service.current.version
                    ),
                    Layout::Block,
                ))?;
            }
        }
        ServicesCommand::Rm { name } => {
            client
                .delete_service(&name)
                .await
                .with_context(|| format!("cannot remove {name}"))?;
            if json {
                output::print_json(&serde_json::json!({ "removed": name }))?;
            } else {
                output::out(&output::escape(
                    format!("removed {name}: its instances stop\n"),
                    Layout::Block,
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn healthy(service: &Service) -> usize {
    service
        .instances
        .iter()
        .filter(|i| i.state == InstanceState::Healthy)
        .count()
}

/// Why a service needs a look, if it does: a failed rollout's reason, else
/// why instances wait.
fn note(service: &Service) -> String {
    service
        .deploy
        .reason
        .as_deref()
        .or(service.waiting_reason.as_deref())
        .map_or_else(|| NONE.to_string(), |r| output::ellipsize(r, REASON_WIDTH))
}

fn services_table(services: &[Service], now: Millis) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.current.spec.kind.as_str().to_string(),
                s.current.version.to_string(),
                s.deploy.status.as_str().to_string(),
                format!("{}/{}", healthy(s), s.replicas),
                output::age(now.saturating_sub(s.updated_at)),
                note(s),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME", "KIND", "VERSION", "ROLLOUT", "HEALTHY", "UPDATED", "NOTE",
        ],
        &rows,
    )
}

fn service_view(service: &Service, now: Millis) -> String {
    let spec = &service.current.spec;
    let runs = match spec.kind {
        ServiceKind::Native => {
            output::shell_words(spec.command.iter().chain(&spec.args).map(String::as_str))
        }
        ServiceKind::WasiHttp => "its wasi:http component".to_string(),
    };
    let mut fields = vec![
        ("name", service.name.clone()),
        ("kind", spec.kind.as_str().to_string()),
        ("version", service.current.version.to_string()),
        (
            "rollout",
            format!(
                "{} (version {})",
                service.deploy.status.as_str(),
                service.deploy.version
            ),
        ),
        (
            "previous",
            service
                .previous
                .as_ref()
                .map_or_else(|| NONE.to_string(), |p| p.version.to_string()),
        ),
        ("artifact", spec.artifact.to_string()),
        ("runs", runs),
        (
            "replicas",
            format!("{} ({} healthy)", service.replicas, healthy(service)),
        ),
        (
            "health",
            format!(
                "GET {} every {} ms",
                spec.health.path, spec.health.interval_ms
            ),
        ),
        (
            "updated",
            format!(
                "{} ago",
                output::age(now.saturating_sub(service.updated_at))
            ),
        ),
    ];
    if let Some(waiting) = &service.waiting_reason {
        fields.push(("waiting", waiting.clone()));
    }
    let mut text = output::fields(&fields);
    if let Some(reason) = &service.deploy.reason {
        // A crash's output spans lines: shown as it is, indented.
        text.push_str("reason:\n");
        for line in output::escape(reason, Layout::Block).lines() {
            text.push_str(&format!("  {line}\n"));
        }
    }
    text.push('\n');
    let rows: Vec<Vec<String>> = service
        .instances
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.host_id.clone(),
                i.version.to_string(),
                i.state.as_str().to_string(),
                i.endpoint.clone().unwrap_or_else(|| NONE.to_string()),
                i.restarts.to_string(),
                output::age(now.saturating_sub(i.created_at)),
                i.last_error
                    .as_deref()
                    .map_or_else(|| NONE.to_string(), |e| output::ellipsize(e, REASON_WIDTH)),
            ]
        })
        .collect();
    text.push_str(&output::table(
        &[
            "INSTANCE", "HOST", "VERSION", "STATE", "ENDPOINT", "RESTARTS", "AGE", "ERROR",
        ],
        &rows,
    ));
    text
}

/// `services logs`: one fetch, or with --follow one a second, each printing
/// only what the previous ones did not.
async fn logs(client: &Client, args: LogsArgs, json: bool) -> Result<()> {
    let query = LogsQuery {
        instance: args.instance.clone(),
        tail: args
            .tail
            .map(|t| usize::try_from(t).expect("at most MAX_LOG_TAIL")),
    };
    // Every instance's lines carry its id, unless only one was asked for.
    let prefixed = args.instance.is_none();
    if !args.follow {
        let logs = client.service_logs(&args.name, &query).await?;
        if json {
            return output::print_json(&logs);
        }
        let mut cursors = Cursors::default();
        return print_lines(
            &cursors.fresh(&logs.instances),
            prefixed,
            &mut HashSet::new(),
        );
    }
    let mut cursors = Cursors::default();
    let mut said = HashSet::new();
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        match client.service_logs(&args.name, &query).await {
            Ok(logs) => {
                failing_since = None;
                let fresh = cursors.fresh(&logs.instances);
                if json {
                    for line in &fresh {
                        let value = serde_json::json!({
                            "instance_id": line.instance_id,
                            "host_id": line.host_id,
                            "stream": line.line.stream,
                            "at": line.line.at,
                            "text": line.line.text,
                        });
                        output::out(&format!("{value}\n"))?;
                    }
                } else {
                    print_lines(&fresh, prefixed, &mut said)?;
                }
            }
            Err(e) if e.is_transient() => {
                let since = *failing_since.get_or_insert_with(|| {
                    eprintln!("cannot reach the coordinators; retrying: {e}");
                    tokio::time::Instant::now()
                });
                if since.elapsed() > FOLLOW_FAILURE_GRACE {
                    return Err(e.into());
                }
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

/// One line to print, with the instance it came from.
#[derive(Debug)]
struct Fresh<'a> {
    instance_id: &'a str,
    host_id: &'a str,
    /// Why the instance's lines could not be fetched, instead of a line.
    error: Option<&'a str>,
    line: &'a LogLine,
}

/// Prints lines on stdout (stderr lines on stderr), and each instance's
/// fetch error once per distinct error.
fn print_lines(
    fresh: &[Fresh<'_>],
    prefixed: bool,
    said: &mut HashSet<(String, String)>,
) -> Result<()> {
    for item in fresh {
        if let Some(error) = item.error {
            if said.insert((item.instance_id.to_string(), error.to_string())) {
                eprintln!(
                    "{}",
                    output::escape(
                        format!(
                            "instance {} on host {}: no logs: {error}",
                            item.instance_id, item.host_id
                        ),
                        Layout::Line
                    )
                );
            }
            continue;
        }
        let text = if prefixed {
            format!("{}  {}", item.instance_id, item.line.text)
        } else {
            item.line.text.clone()
        };
        let text = format!("{}\n", output::escape(text, Layout::Line));
        match item.line.stream {
            LogStream::Stdout => output::out(&text)?,
            LogStream::Stderr => output::err_bytes(text.as_bytes())?,
        }
    }
    Ok(())
}

/// Where each instance's printed lines end: the newest `at` printed and how
/// many lines at exactly that millisecond were, so a line written in the
/// same millisecond as the last one printed is not lost, nor one printed
/// twice.
#[derive(Debug, Default)]
struct Cursors {
    ends: HashMap<String, (Millis, usize)>,
}

/// Stands in for a line where an instance reports an error instead.
static NO_LINE: LogLine = LogLine {
    stream: LogStream::Stderr,
    at: 0,
    text: String::new(),
};

impl Cursors {
    /// The lines of `instances` not yet printed, oldest first across
    /// instances, with each instance's error (if any) first.
    fn fresh<'a>(&mut self, instances: &'a [InstanceLogs]) -> Vec<Fresh<'a>> {
        let mut fresh = Vec::new();
        for instance in instances {
            if let Some(error) = &instance.error {
                fresh.push(Fresh {
                    instance_id: &instance.instance_id,
                    host_id: &instance.host_id,
                    error: Some(error),
                    line: &NO_LINE,
                });
            }
            let (last_at, printed_at_last) = self
                .ends
                .get(&instance.instance_id)
                .copied()
                .unwrap_or((0, 0));
            let mut lines: Vec<&LogLine> = instance.lines.iter().collect();
            lines.sort_by_key(|l| l.at);
            let mut at_last = 0;
            for line in &lines {
                if line.at < last_at {
                    continue;
                }
                if line.at == last_at && self.ends.contains_key(&instance.instance_id) {
                    at_last += 1;
                    if at_last <= printed_at_last {
                        continue;
                    }
                }
                fresh.push(Fresh {
                    instance_id: &instance.instance_id,
                    host_id: &instance.host_id,
                    error: None,
                    line,
                });
            }
            if let Some(newest) = lines.last() {
                let count = lines.iter().filter(|l| l.at == newest.at).count();
                let end = if newest.at == last_at {
                    (last_at, count.max(printed_at_last))
                } else {
                    (newest.at, count)
                };
                self.ends.insert(instance.instance_id.clone(), end);
            }
        }
        // Errors first, then lines by time; the sort is stable, so lines of
        // one millisecond keep their order.
        fresh.sort_by_key(|f| (f.error.is_none(), f.line.at));
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(at: Millis, text: &str) -> LogLine {
        LogLine {
            stream: LogStream::Stdout,
            at,
            text: text.into(),
        }
    }

    fn instance(id: &str, lines: Vec<LogLine>) -> InstanceLogs {
        InstanceLogs {
            instance_id: id.into(),
            host_id: "h1".into(),
            lines,
            error: None,
        }
    }

    fn texts(fresh: &[Fresh<'_>]) -> Vec<String> {
        fresh
            .iter()
            .map(|f| match f.error {
                Some(e) => format!("{}: error {e}", f.instance_id),
                None => format!("{}: {}", f.instance_id, f.line.text),
            })
            .collect()
    }

    #[test]
    fn following_prints_each_line_once_in_time_order() {
        let mut cursors = Cursors::default();
        let first = [
            instance("a", vec![line(10, "a1"), line(30, "a2")]),
            instance("b", vec![line(20, "b1")]),
        ];
        assert_eq!(texts(&cursors.fresh(&first)), ["a: a1", "b: b1", "a: a2"]);
        assert!(cursors.fresh(&first).is_empty(), "nothing new");
        // A line in the same millisecond as the last one printed is new;
        // the oldest line fell out of the tail.
        let second = [
            instance("a", vec![line(30, "a2"), line(30, "a3"), line(40, "a4")]),
            instance("b", vec![line(20, "b1")]),
        ];
        assert_eq!(texts(&cursors.fresh(&second)), ["a: a3", "a: a4"]);
        let mut broken = instance("c", vec![]);
        broken.error = Some("host h2 did not answer".into());
        assert_eq!(
            texts(&cursors.fresh(&[broken])),
            ["c: error host h2 did not answer"]
        );
    }

    #[test]
    fn lines_at_time_zero_print_the_first_time() {
        let mut cursors = Cursors::default();
        let logs = [instance("a", vec![line(0, "x"), line(0, "y")])];
        assert_eq!(texts(&cursors.fresh(&logs)), ["a: x", "a: y"]);
        assert!(cursors.fresh(&logs).is_empty());
    }
}
