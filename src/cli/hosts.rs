//! `skyclaw hosts`: what the coordinators know about the hosts.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use skyclaw_api::Client;
use skyclaw_api::hosts::Host;

use super::output::{self, NONE};

#[derive(Debug, clap::Args)]
pub struct HostsArgs {
    #[command(subcommand)]
    command: HostsCommand,
}

#[derive(Debug, Subcommand)]
enum HostsCommand {
    /// List hosts: status, mode (sandbox-only or native), capabilities, the
    /// commands shell jobs may run, load, artifacts held, last heartbeat,
    /// OpenClaw version.
    Ls,
}

pub async fn run(args: HostsArgs, client: &Client, json: bool) -> Result<ExitCode> {
    match args.command {
        HostsCommand::Ls => {
            let list = client.list_hosts().await?;
            if json {
                output::print_json(&list)?;
            } else {
                output::out(&hosts_table(&list.hosts))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn hosts_table(hosts: &[Host]) -> String {
    let rows: Vec<Vec<String>> = hosts.iter().map(host_row).collect();
    output::table(
        &[
            "ID",
            "NAME",
            "STATUS",
            "MODE",
            "CAPABILITIES",
            "COMMANDS",
            "RUNNING",
            "ARTIFACTS",
            "HEARTBEAT",
            "OPENCLAW",
        ],
        &rows,
    )
}

fn host_row(host: &Host) -> Vec<String> {
    vec![
        host.id.clone(),
        host.name.clone(),
        host.status.as_str().to_string(),
        if host.sandbox_only {
            "sandbox-only"
        } else {
            "native+wasi"
        }
        .to_string(),
        host.capabilities.join(","),
        if host.allowed_commands.is_empty() {
            NONE.to_string()
        } else {
            host.allowed_commands.join(",")
        },
        format!("{}/{}", host.running_jobs, host.max_parallel),
        host.artifacts.len().to_string(),
        host.last_heartbeat_ms_ago.map_or_else(
            || "never".to_string(),
            |ms| format!("{} ago", output::age(ms)),
        ),
        host.openclaw_version
            .clone()
            .unwrap_or_else(|| NONE.to_string()),
    ]
}
