//! `openclaw-run` jobs: one turn of the host's OpenClaw agent, run through the
//! native runner's process machinery, and the `--version` probe that decides
//! whether the host offers the `openclaw` capability at all.

use std::collections::BTreeMap;
use std::time::Duration;

use skyclaw_api::jobs::OpenclawSpec;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::native::{Invocation, Runner};
use crate::workload::{Run, StopSignal};

/// How long `openclaw --version` may take before the host decides it has no
/// working OpenClaw; a healthy CLI answers in well under a second.
pub const OPENCLAW_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Characters of the version string reported to coordinators: anything longer
/// is not a version, and coordinators store it.
const MAX_VERSION_CHARS: usize = 200;

impl Runner {
    /// Runs `<openclaw> agent --message M --agent A --json [...]`. When stdout
    /// is JSON it is also returned parsed, in `result.output`.
    pub(crate) async fn run_openclaw(
        &self,
        job_id: &str,
        spec: &OpenclawSpec,
        stop: StopSignal,
    ) -> Run {
        if self.openclaw_version.is_none() {
            return Run::refused(format!(
                "openclaw is not available on host {}",
                self.host_name
            ));
        }
        let Some(program) = self.resolve(&self.openclaw_command) else {
            return Run::refused(format!(
                "command not found on host {}: {}",
                self.host_name, self.openclaw_command
            ));
        };
        let args = agent_args(spec);
        let invocation = Invocation {
            program: &program,
            args: &args,
            env: &BTreeMap::new(),
            stdin: b"",
            timeout: Duration::from_millis(spec.timeout_ms),
        };
        let mut run = self.execute(job_id, invocation, stop).await;
        // Base64 text could happen to parse as JSON (a number); only text is
        // the agent's answer.
        if !run.result.stdout_truncated && run.result.stdout_encoding.is_utf8() {
            run.result.output = serde_json::from_str(run.result.stdout.trim()).ok();
        }
        run
    }

    /// Asks `<openclaw> --version`; the trimmed answer when it exits 0 in time.
    pub(crate) async fn probe_openclaw(&self) -> Option<String> {
        let Some(program) = self.resolve(&self.openclaw_command) else {
            info!(command = %self.openclaw_command, "openclaw not found; not offering openclaw-run");
            return None;
        };
        // Nobody stops a probe; its timeout bounds it.
        let (_never, stop) = watch::channel(None);
        let invocation = Invocation {
            program: &program,
            args: &["--version".to_string()],
            env: &BTreeMap::new(),
            stdin: b"",
            timeout: OPENCLAW_PROBE_TIMEOUT,
        };
        let run = self.execute("openclaw-probe", invocation, stop).await;
        if run.result.exit_code != Some(0) || run.result.error.is_some() {
            info!(
                command = %program.display(),
                error = run.result.error.as_deref().unwrap_or(""),
                "openclaw --version failed; not offering openclaw-run"
            );
            return None;
        }
        let stdout = run.result.stdout_bytes().unwrap_or_default();
        let version: String = String::from_utf8_lossy(&stdout)
            .trim()
            .chars()
            .take(MAX_VERSION_CHARS)
            .collect();
        debug!(%version, "openclaw answered");
        Some(version)
    }
}

/// The agent's command line, flags only when the spec sets them.
fn agent_args(spec: &OpenclawSpec) -> Vec<String> {
    let mut args = vec![
        "agent".to_string(),
        "--message".to_string(),
        spec.message.clone(),
        "--agent".to_string(),
        spec.agent.clone(),
        "--json".to_string(),
    ];
    if let Some(thinking) = &spec.thinking {
        args.extend(["--thinking".to_string(), thinking.clone()]);
    }
    if let Some(model) = &spec.model {
        args.extend(["--model".to_string(), model.clone()]);
    }
    if spec.local {
        args.push("--local".to_string());
    }
    args
}
