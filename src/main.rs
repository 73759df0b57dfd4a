//! The `skyclaw` command: runs coordinators, hosts and a local dev cluster, and
//! drives them (jobs, hosts, API keys). Everything lives in [`cli`].

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
