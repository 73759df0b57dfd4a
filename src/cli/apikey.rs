//! `skyclaw apikey`: scoped API keys for CI and other submitters.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use skyclaw_api::apikeys::{ApiKey, CreateApiKey, Scope};
use skyclaw_api::{Client, Millis};

use super::output::{self, Layout, NONE};

#[derive(Debug, clap::Args)]
pub struct ApikeyArgs {
    #[command(subcommand)]
    command: ApikeyCommand,
}

#[derive(Debug, Subcommand)]
enum ApikeyCommand {
    /// Create a key and print its secret on stdout; it is shown only this once.
    Create {
        /// A name to recognise the key by, such as `ci`.
        #[arg(long, env = "SKYCLAW_APIKEY_NAME")]
        name: String,
        /// What the key may do (repeatable, or comma-separated): jobs:submit
        /// (submit and cancel its jobs), jobs:read (read and wait on its jobs),
        /// artifacts:push (upload, check, download and list artifacts),
        /// services:deploy (deploy, scale and remove its services),
        /// services:read (read its services, instances and logs), gateway
        /// (run a gateway: watch every endpoint, register it; nothing else).
        #[arg(
            long = "scope",
            env = "SKYCLAW_APIKEY_SCOPES",
            value_delimiter = ',',
            required = true,
            value_name = "SCOPE"
        )]
        scopes: Vec<Scope>,
    },
    /// List keys (never their secrets).
    Ls,
    /// Revoke a key: requests carrying it are refused from now on.
    Revoke {
        /// The key's id (not its secret).
        id: String,
    },
}

pub async fn run(args: ApikeyArgs, client: &Client, json: bool) -> Result<ExitCode> {
    match args.command {
        ApikeyCommand::Create { name, scopes } => {
            let created = client
                .create_api_key(&CreateApiKey { name, scopes })
                .await?;
            if json {
                output::print_json(&created)?;
                return Ok(ExitCode::SUCCESS);
            }
            let Some(secret) = &created.secret else {
                bail!(
                    "key {} was created by an earlier request; its secret is not shown again",
                    created.key.id
                );
            };
            // The secret alone on stdout, so `KEY=$(skyclaw apikey create …)` works.
            output::out(&format!("{secret}\n"))?;
            eprintln!(
                "created API key {} ({}) with scopes {}; its secret above will not be shown again",
                created.key.id,
                output::escape(&created.key.name, Layout::Line),
                scope_list(&created.key.scopes)
            );
        }
        ApikeyCommand::Ls => {
            let list = client.list_api_keys().await?;
            if json {
                output::print_json(&list)?;
            } else {
                output::out(&keys_table(&list.keys, skyclaw_api::now_ms()))?;
            }
        }
        ApikeyCommand::Revoke { id } => {
            // Asked first, so that revoking again says so instead of
            // "revoked" (the answer to a revoke is the key either way).
            let listed = client.list_api_keys().await?;
            let already = listed
                .keys
                .into_iter()
                .find(|k| k.id == id && k.revoked_at.is_some());
            let was_revoked = already.is_some();
            let key = match already {
                Some(key) => key,
                None => client.revoke_api_key(&id).await?,
            };
            if json {
                output::print_json(&key)?;
            } else {
                let name = output::escape(&key.name, Layout::Line);
                let line = match key.revoked_at.filter(|_| was_revoked) {
                    Some(at) => format!(
                        "API key {} ({name}) was already revoked, {} ago\n",
                        key.id,
                        output::age(skyclaw_api::now_ms().saturating_sub(at))
                    ),
                    None => format!("revoked API key {} ({name})\n", key.id),
                };
                output::out(&line)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn keys_table(keys: &[ApiKey], now: Millis) -> String {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|key| {
            vec![
                key.id.clone(),
                key.name.clone(),
                scope_list(&key.scopes),
                output::age(now.saturating_sub(key.created_at)),
                key.revoked_at.map_or_else(
                    || NONE.to_string(),
                    |at| format!("{} ago", output::age(now.saturating_sub(at))),
                ),
            ]
        })
        .collect();
    output::table(&["ID", "NAME", "SCOPES", "AGE", "REVOKED"], &rows)
}

fn scope_list(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// What `key` lacks of `wanted` (each scope with why it is needed), as
/// "scope (why)" joined by "and", with the scopes it has; `None` when it has
/// them all. Commands check this before they upload or submit anything.
pub(super) fn lacking(key: &ApiKey, wanted: &[(Scope, &str)]) -> Option<(String, String)> {
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(scope, _)| !key.scopes.contains(scope))
        .map(|(scope, why)| format!("{scope} ({why})"))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let has: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
    Some((missing.join(" and "), has.join(", ")))
}
