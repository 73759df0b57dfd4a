//! `skyclaw network`: the coordinator cluster's members, and removing one
//! that is gone for good.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use skyclaw_api::Client;
use skyclaw_api::network::Peer;

use super::output::{self, NONE};

#[derive(Debug, clap::Args)]
pub struct NetworkArgs {
    #[command(subcommand)]
    command: NetworkCommand,
}

#[derive(Debug, Subcommand)]
enum NetworkCommand {
    /// List the coordinators: id, URL, role, last contact with the leader,
    /// applied index.
    Peers,
    /// Remove a coordinator from the cluster for good, such as a voter whose
    /// machine is lost; a learner, if any, is promoted in its place. Prints the
    /// coordinators that remain.
    Remove {
        /// The coordinator's node id, as `network peers` shows it.
        id: u64,
    },
}

pub async fn run(args: NetworkArgs, client: &Client, json: bool) -> Result<ExitCode> {
    let list = match args.command {
        NetworkCommand::Peers => client.peers().await?,
        NetworkCommand::Remove { id } => {
            let list = client.remove_peer(id).await?;
            eprintln!("removed coordinator {id}");
            list
        }
    };
    if json {
        output::print_json(&list)?;
    } else {
        output::out(&peers_table(&list.peers))?;
        if list.leader_id.is_none() {
            eprintln!(
                "no leader right now: writes wait for one to be elected or fail with no_quorum"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn peers_table(peers: &[Peer]) -> String {
    let rows: Vec<Vec<String>> = peers.iter().map(peer_row).collect();
    output::table(&["ID", "URL", "ROLE", "CONTACT", "APPLIED"], &rows)
}

fn peer_row(peer: &Peer) -> Vec<String> {
    vec![
        peer.id.to_string(),
        peer.url.clone(),
        peer.role.as_str().to_string(),
        peer.last_contact_ms
            .map_or_else(|| NONE.to_string(), |ms| format!("{} ago", output::age(ms))),
        peer.applied_index
            .map_or_else(|| NONE.to_string(), |i| i.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use skyclaw_api::network::PeerRole;

    #[test]
    fn peers_table_shows_unknowns_as_dashes() {
        let peers = [
            Peer {
                id: 1,
                url: "http://a:8787".into(),
                role: PeerRole::Leader,
                last_contact_ms: Some(0),
                applied_index: Some(42),
            },
            Peer {
                id: 7,
                url: "http://b:8787".into(),
                role: PeerRole::Learner,
                last_contact_ms: None,
                applied_index: None,
            },
        ];
        assert_eq!(
            peers_table(&peers),
            "ID  URL            ROLE     CONTACT  APPLIED\n\
             1   http://a:8787  leader   0s ago   42\n\
             7   http://b:8787  learner  -        -\n"
        );
    }
}
