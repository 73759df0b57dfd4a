//! Jobs end to end: a coordinator and a host as real processes, driven through
//! the CLI and the client, running real commands.

use crate::common;

use common::{Network, run_job, wait_no_processes, wait_processes};
use serde_json::json;
use skyclaw_api::jobs::JobStatus;

#[tokio::test]
async fn shell_job_prints_its_stdout_through_the_cli() {
    let net = Network::start("echo,false", &[]).await;
    let out = net.cli(&["job", "shell", "--wait", "--", "echo", "hello"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    let out = net.cli(&["job", "shell", "--wait", "--", "false"]);
    assert_eq!(out.status.code(), Some(1), "a failed job exits 1: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("exited with code 1"));

    let out = net.cli(&["job", "shell", "--wait", "--json", "--", "echo", "hi"]);
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json job");
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["result"]["stdout"], "hi\n");
    assert_eq!(job["host_id"], net.host_id.as_str());

    let out = net.cli(&["job", "ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json list");
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn disallowed_command_fails_and_never_runs() {
    let net = Network::start("echo", &[]).await;
    let marker = net.tmp.path().join("touched");
    let job = run_job(
        &net.client(),
        json!({"kind": "shell", "command": "touch", "args": [marker]}),
    )
    .await;
    assert_eq!(job.status, JobStatus::Failed);
    let error = job.result.unwrap().error.unwrap();
    assert!(error.starts_with("command not allowed on host"), "{error}");
    assert!(error.ends_with(": touch"), "{error}");
    assert!(!marker.exists(), "the command must never be spawned");
}

#[tokio::test]
async fn timeout_kills_the_whole_job() {
    let net = Network::start("sh", &[]).await;
    let script = "setsid sleep 300.11 & sleep 300.11";
    let job = run_job(
        &net.client(),
        json!({"kind": "shell", "command": "sh", "args": ["-c", script], "timeout_ms": 700}),
    )
    .await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(
        job.result.unwrap().error.as_deref(),
        Some("timed out after 700 ms")
    );
    wait_no_processes("sleep 300.11").await;
}

#[tokio::test]
async fn output_beyond_the_limit_is_cut_and_counted() {
    let net = Network::start("sh", &["--max-output-bytes", "1000"]).await;
    let job = run_job(
        &net.client(),
        json!({"kind": "shell", "command": "sh",
               "args": ["-c", "head -c 5000 /dev/zero | tr '\\0' a; echo err >&2"]}),
    )
    .await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let result = job.result.unwrap();
    assert_eq!(result.stdout.len(), 1000);
    assert!(result.stdout_truncated);
    assert_eq!(result.stdout_dropped_bytes, 4000);
    assert_eq!(result.stderr, "err\n");
    assert!(!result.stderr_truncated);

    // "é\n" is three bytes: the limit falls inside the 334th "é", which is
    // dropped whole, so the output stays text.
    let job = run_job(
        &net.client(),
        json!({"kind": "shell", "command": "sh", "args": ["-c", "yes é | head -c 3000"]}),
    )
    .await;
    let result = job.result.unwrap();
    assert!(result.stdout_encoding.is_utf8(), "{result:?}");
    assert_eq!(result.stdout, "é\n".repeat(333));
    assert_eq!(result.stdout_dropped_bytes, 3000 - 999);
}

/// Output is never altered: bytes that are not UTF-8 travel as base64 and
/// `job wait` writes them back exactly; people's views escape what could act
/// on a terminal, while `--json` and the job's own streams stay exact.
#[tokio::test]
async fn output_is_kept_exact_and_shown_escaped() {
    let net = Network::start("sh,echo", &[]).await;
    let out = net.cli(&[
        "job",
        "shell",
        "--json",
        "--",
        "sh",
        "-c",
        "printf '\\377\\376'",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = job["id"].as_str().unwrap().to_string();
    let out = net.cli(&["job", "wait", &id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(out.stdout, [0xff, 0xfe], "the exact bytes");
    let out = net.cli(&["job", "get", &id, "--json"]);
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["result"]["stdout"], "//4=");
    assert_eq!(job["result"]["stdout_encoding"], "base64");
    assert!(job["result"].get("stderr_encoding").is_none(), "{job}");
    let shown = String::from_utf8(net.cli(&["job", "get", &id]).stdout).unwrap();
    assert!(shown.contains("stdout (not UTF-8"), "{shown}");
    assert!(shown.contains("\\xff\\xfe"), "{shown}");

    // An escape sequence and a right-to-left override, in the command and so
    // in its output.
    let hostile = "\u{1b}]0;owned\u{7}red\u{202e}txt.exe";
    let out = net.cli(&["job", "shell", "--wait", "--", "echo", hostile]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        out.stdout,
        format!("{hostile}\n").as_bytes(),
        "the job's data, raw"
    );
    let escaped = "\\u{1b}]0;owned\\u{7}red\\u{202e}txt.exe";
    let listed = String::from_utf8(net.cli(&["job", "ls"]).stdout).unwrap();
    assert!(listed.contains(&format!("echo '{escaped}'")), "{listed}");
    let list: serde_json::Value =
        serde_json::from_slice(&net.cli(&["job", "ls", "--json"]).stdout).unwrap();
    let last = list["jobs"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last["result"]["stdout"],
        format!("{hostile}\n"),
        "--json is exact"
    );
    let shown = String::from_utf8(
        net.cli(&["job", "get", last["id"].as_str().unwrap()])
            .stdout,
    )
    .unwrap();
    assert!(shown.contains(&format!("stdout:\n{escaped}\n")), "{shown}");
    for text in [&listed, &shown] {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}') && !text.contains('\u{7}'),
            "{text:?}"
        );
    }
}

/// Names others chose (a key's, a host's capabilities) reach tables escaped.
#[tokio::test]
async fn names_in_tables_are_escaped() {
    use skyclaw_api::apikeys::{CreateApiKey, Scope};

    let dir = tempfile::tempdir().unwrap();
    let coordinator = common::Coordinator::start(dir.path(), &[]).await;
    let client = coordinator.client();
    let hostile = "ci\u{1b}[2J\u{202e}";
    client
        .create_api_key(&CreateApiKey {
            name: hostile.into(),
            scopes: vec![Scope::JobsRead],
        })
        .await
        .unwrap();
    client
        .register_host(&common::fake_host("h-named", &["shell", hostile]))
        .await
        .unwrap();
    for args in [["apikey", "ls"], ["hosts", "ls"]] {
        let out = coordinator.cli_command(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let table = String::from_utf8(out.stdout).unwrap();
        assert!(table.contains("ci\\u{1b}[2J\\u{202e}"), "{args:?}: {table}");
        assert!(
            !table.contains('\u{1b}') && !table.contains('\u{202e}'),
            "{table:?}"
        );
    }
}

/// Loader variables would make an allowlisted command load code of the
/// job's choosing: the CLI's own check refuses them, naming each.
#[tokio::test]
async fn loader_variables_and_option_like_names_are_refused_before_submitting() {
    let net = Network::start("echo", &[]).await;
    let out = net.cli(&[
        "job",
        "shell",
        "--env",
        "LD_PRELOAD=/tmp/evil.so",
        "--env",
        "LD_AUDIT=x",
        "--",
        "echo",
        "hi",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("LD_AUDIT, LD_PRELOAD"), "{stderr}");
    let out = net.cli(&["job", "openclaw", "--message", "hi", "--agent=-x"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("agent is a name and may not begin with '-'"),
        "{stderr}"
    );
    let list = net.client().list_jobs(&Default::default()).await.unwrap();
    assert!(list.jobs.is_empty(), "nothing was submitted: {list:?}");
}

#[tokio::test]
async fn jobs_get_a_clean_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = common::Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let host_dir = tmp.path().join("host");
    let mut cmd = common::skyclaw();
    cmd.args([
        "host",
        "--coordinator",
        &coordinator.url,
        "--token",
        common::TOKEN,
    ])
    .args([
        "--allow-commands",
        "env",
        "--pass-env",
        "PASSED",
        "--data-dir",
    ])
    .arg(&host_dir)
    .env("HOST_SECRET", "do-not-leak")
    .env("PASSED", "yes");
    let mut child = cmd.spawn().unwrap();
    let job = run_job(
        &coordinator.client(),
        json!({"kind": "shell", "command": "env", "env": {"MINE": "1"}}),
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let stdout = job.result.unwrap().stdout;
    assert!(stdout.contains("MINE=1"), "{stdout}");
    assert!(stdout.contains("PASSED=yes"), "{stdout}");
    assert!(stdout.contains("PATH="), "{stdout}");
    assert!(!stdout.contains("do-not-leak"), "{stdout}");
    assert!(
        !stdout.contains(common::TOKEN),
        "the host's token leaked: {stdout}"
    );
}

#[tokio::test]
async fn openclaw_run_calls_the_configured_command() {
    let (_scripts, fake) = common::fake_openclaw();
    let net = Network::start("echo", &["--openclaw-command", fake.to_str().unwrap()]).await;
    let hosts = net.client().list_hosts().await.unwrap();
    assert!(
        hosts.hosts[0]
            .capabilities
            .contains(&"openclaw".to_string())
    );
    assert_eq!(
        hosts.hosts[0].openclaw_version.as_deref(),
        Some("openclaw 9.9.9")
    );

    let out = net.cli(&[
        "job",
        "openclaw",
        "--wait",
        "--json",
        "--agent",
        "ops",
        "--message",
        "summarise the inbox",
        "--thinking",
        "low",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let args = &job["result"]["output"]["args"];
    assert_eq!(
        args,
        &json!([
            "agent",
            "--message",
            "summarise the inbox",
            "--agent",
            "ops",
            "--json",
            "--thinking",
            "low"
        ])
    );
}

#[tokio::test]
async fn cancel_stops_a_running_job() {
    let net = Network::start("sh", &[]).await;
    let client = net.client();
    let spec = serde_json::from_value(json!({"kind": "shell", "command": "sh",
        "args": ["-c", "exec sleep 300.12"]}))
    .unwrap();
    let job = client.submit_job(&spec, None).await.unwrap();
    wait_processes("sleep 300.12", 1).await;
    let out = net.cli(&["job", "cancel", &job.id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = net.cli(&["job", "wait", &job.id]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a cancelled job exits 1: {out:?}"
    );
    // The host learns of the cancel from its next heartbeat and kills the job.
    wait_no_processes("sleep 300.12").await;
    let again = client.cancel_job(&job.id).await.unwrap_err();
    assert_eq!(again.code(), Some(skyclaw_api::ErrorCode::Conflict));
    assert!(
        again.to_string().contains("was already cancelled"),
        "{again}"
    );
}

/// `job get` of a cancelled job reads as a cancel, not as an error, and
/// claims no run time the coordinator never measured; cancelling an ended
/// job says how it ended, in words that read right.
#[tokio::test]
async fn a_cancelled_job_reads_as_one() {
    let net = Network::start("sh,true", &[]).await;
    let out = net.cli(&["job", "shell", "--", "sh", "-c", "exec sleep 300.14"]);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    wait_processes("sleep 300.14", 1).await;
    let out = net.cli(&["job", "cancel", &id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("cancelled job {id} (it was running)\n")
    );
    let out = net.cli(&["job", "get", &id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(field(&shown, "status") == "cancelled", "{shown}");
    assert!(
        field(&shown, "reason") == "cancelled while running",
        "{shown}"
    );
    assert!(!shown.contains("error"), "a cancel is no error: {shown}");
    assert!(
        !shown.contains("exit code") && !shown.contains("0 ms"),
        "{shown}"
    );
    let out = net.cli(&["job", "cancel", &id]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("job {id} was already cancelled")),
        "{stderr}"
    );

    let out = net.cli(&["job", "shell", "--wait", "--json", "--", "true"]);
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = net.cli(&["job", "cancel", done["id"].as_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(" already succeeded"), "{stderr}");
    assert!(!stderr.contains("is already"), "{stderr}");
    wait_no_processes("sleep 300.14").await;
}

/// The value of the `label  value` line of a `job get` view.
fn field<'a>(view: &'a str, label: &str) -> &'a str {
    view.lines()
        .find_map(|line| line.strip_prefix(label)?.strip_prefix("  ").map(str::trim))
        .unwrap_or_else(|| panic!("no {label} in {view}"))
}

/// `job get` shows how a job ended, why, and the end of its output with a
/// pointer to `job logs`, which prints every byte of each stream where it
/// belongs; `--follow` waits for a job that has not ended.
#[tokio::test]
async fn get_shows_the_end_of_the_output_and_logs_prints_it_all() {
    let (shared, _) = common::execution_log();
    let go = shared.path().join("go");
    let net = Network::start("sh", &["--name", "builder-7"]).await;
    let script = "seq 1 100; printf \"err\\377\\n\" >&2; exit 3";
    let out = net.cli(&["job", "shell", "--wait", "--json", "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = job["id"].as_str().unwrap().to_string();

    let out = net.cli(&["job", "get", &id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let shown = String::from_utf8(out.stdout).unwrap();
    assert_eq!(field(&shown, "status"), "failed", "{shown}");
    assert_eq!(field(&shown, "reason"), "exited with code 3", "{shown}");
    assert_eq!(field(&shown, "exit code"), "3", "{shown}");
    assert_eq!(
        field(&shown, "command"),
        format!("sh -c '{script}'"),
        "{shown}"
    );
    assert_eq!(
        field(&shown, "host"),
        format!("builder-7 ({})", net.host_id),
        "{shown}"
    );
    let tail: String = (81..=100).map(|n| format!("{n}\n")).collect();
    assert!(
        shown.contains(&format!("; all of it: skyclaw job logs {id}):\n{tail}")),
        "the last lines, and where the rest is: {shown}"
    );
    assert!(!shown.contains("\n80\n"), "{shown}");
    assert!(shown.contains("stderr (not UTF-8"), "{shown}");
    assert!(shown.contains("err\\xff\n"), "{shown}");

    let out = net.cli(&["job", "logs", &id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let all: String = (1..=100).map(|n| format!("{n}\n")).collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        all,
        "every line, on stdout"
    );
    assert_eq!(out.stderr, b"err\xff\n", "the exact bytes, on stderr");

    let script = format!(
        "while [ ! -e {} ]; do sleep 0.02; done; echo done",
        go.display()
    );
    let out = net.cli(&["job", "shell", "--", "sh", "-c", &script]);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    common::wait_status(&net.client(), &id, JobStatus::Running).await;
    let out = net.cli(&["job", "logs", &id]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("add --follow"),
        "{out:?}"
    );
    let follow = net
        .cli_command(&["job", "logs", "--follow", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(&go, "").unwrap();
    let out = tokio::task::spawn_blocking(move || follow.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
}

/// `job ls` shows commands as they were typed (quoted), hosts by name and
/// why jobs failed or wait; `hosts ls` shows what each host allows.
#[tokio::test]
async fn lists_show_commands_hosts_and_reasons() {
    let net = Network::start("sh,echo", &["--name", "builder-7"]).await;
    let out = net.cli(&["job", "shell", "--wait", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = net.cli(&["job", "shell", "--require", "gpu", "--", "echo", "it's"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let listed = String::from_utf8(net.cli(&["job", "ls"]).stdout).unwrap();
    let mut rows = listed.lines();
    let header = rows.next().unwrap();
    assert!(header.ends_with("AGE  REASON"), "{listed}");
    let failed = rows.next().unwrap();
    assert!(failed.contains("sh -c 'exit 3'"), "{listed}");
    assert!(failed.contains("builder-7"), "the host's name: {listed}");
    assert!(!failed.contains(&net.host_id), "{listed}");
    assert!(failed.ends_with("exited with code 3"), "{listed}");
    let waiting = rows.next().unwrap();
    assert!(waiting.contains("echo 'it'\\''s'"), "{listed}");
    assert!(
        waiting.ends_with("no live host offers capability gpu"),
        "{listed}"
    );

    let hosts = String::from_utf8(net.cli(&["hosts", "ls"]).stdout).unwrap();
    assert!(
        hosts.lines().next().unwrap().contains("COMMANDS"),
        "{hosts}"
    );
    let row = hosts.lines().find(|l| l.contains("builder-7")).unwrap();
    assert!(row.contains(" sh,echo "), "{hosts}");
}

#[tokio::test]
async fn hosts_and_clients_fail_over_to_a_coordinator_that_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = common::Coordinator::start(&tmp.path().join("coord"), &[]).await;
    // Nothing listens on the first URL: a port bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let urls = format!("{dead_url},{}", coordinator.url);
    let host = common::Host::start(&urls, &tmp.path().join("host"), "echo", &[]);
    common::host_up(&coordinator.client(), &host.id().await).await;
    let out = common::skyclaw()
        .args([
            "job",
            "shell",
            "--wait",
            "--coordinator",
            &urls,
            "--",
            "echo",
            "failover",
        ])
        .env("SKYCLAW_TOKEN", common::TOKEN)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "failover\n");
}

#[tokio::test]
async fn batched_completions_are_settled_one_by_one() {
    use skyclaw_api::hosts::{Complete, CompleteMany, Completion, Outcome};
    use skyclaw_api::jobs::JobResult;

    let net = Network::start("true", &[]).await;
    let client = net.client();
    let done = run_job(&client, json!({"kind": "shell", "command": "true"})).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    let completion = |job_id: &str, lease: &str| Completion {
        job_id: job_id.to_string(),
        complete: Complete {
            lease_token: lease.to_string(),
            outcome: Outcome::Succeeded,
            result: JobResult::default(),
        },
    };
    let batch = CompleteMany {
        completions: vec![
            completion(&done.id, "not-the-lease"),
            completion("j-missing", "x"),
        ],
    };
    let answer = client.complete_many(&net.host_id, &batch).await.unwrap();
    let codes: Vec<_> = answer
        .results
        .iter()
        .map(|r| (r.job_id.as_str(), r.error.as_ref().map(|e| e.code.as_str())))
        .collect();
    assert_eq!(
        codes,
        [
            (done.id.as_str(), Some("stale_lease")),
            ("j-missing", Some("not_found"))
        ]
    );
    // The finished job kept the result its host reported.
    let job = client.get_job(&done.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Succeeded);

    let empty = CompleteMany {
        completions: Vec::new(),
    };
    let err = client
        .complete_many(&net.host_id, &empty)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(skyclaw_api::ErrorCode::BadRequest));
}

/// A host that lost a claim's answer asks again under the same key and gets
/// the same leases; a completion sent again under its lease is recorded once.
#[tokio::test]
async fn claims_replay_by_key_and_completions_count_once_per_lease() {
    use skyclaw_api::hosts::{Claim, Complete, CompleteMany, Completion, Outcome};
    use skyclaw_api::jobs::JobResult;

    let dir = tempfile::tempdir().unwrap();
    let coordinator = common::Coordinator::start(dir.path(), &[]).await;
    let client = coordinator.client();
    let host_id = "h-by-hand";
    client
        .register_host(&common::fake_host(host_id, &["shell"]))
        .await
        .unwrap();
    let spec = serde_json::from_value(json!({"kind": "shell", "command": "true"})).unwrap();
    let job = client.submit_job(&spec, None).await.unwrap();

    let claim = Claim {
        max_jobs: 2,
        wait_ms: 2_000,
    };
    let first = client.claim(host_id, &claim, "claim-1").await.unwrap();
    assert_eq!(first.jobs.len(), 1);
    let leased = &first.jobs[0];
    assert_eq!(leased.job.id, job.id);
    assert_eq!(leased.job.status, JobStatus::Running);
    assert_eq!(leased.job.attempts, 1);
    assert_eq!(leased.job.host_id.as_deref(), Some(host_id));
    let again = client.claim(host_id, &claim, "claim-1").await.unwrap();
    assert_eq!(again, first, "the same key answers the same leases");
    let other = Claim {
        max_jobs: 1,
        ..claim
    };
    let err = client.claim(host_id, &other, "claim-1").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(skyclaw_api::ErrorCode::IdempotencyConflict)
    );

    let report = |lease: &str, exit_code| CompleteMany {
        completions: vec![Completion {
            job_id: job.id.clone(),
            complete: Complete {
                lease_token: lease.to_string(),
                outcome: Outcome::Succeeded,
                result: JobResult {
                    exit_code: Some(exit_code),
                    ..JobResult::default()
                },
            },
        }],
    };
    for exit_code in [0, 7] {
        let answer = client
            .complete_many(host_id, &report(&leased.lease_token, exit_code))
            .await
            .unwrap();
        assert_eq!(
            answer.results[0].error, None,
            "recorded, or recorded already"
        );
    }
    let answer = client
        .complete_many(host_id, &report("not-the-lease", 0))
        .await
        .unwrap();
    assert_eq!(
        answer.results[0].error.as_ref().map(|e| e.code.as_str()),
        Some("stale_lease")
    );
    let done = client.get_job(&job.id).await.unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(
        done.result.unwrap().exit_code,
        Some(0),
        "the first report stands"
    );
}
