//! WASI jobs end to end: real guests built by the harness, pushed as artifacts,
//! run by real host processes in wasmtime under fuel, memory, stack, time and
//! output limits; guests parked in host calls, stopped by their deadline, a
//! cancel or the host's shutdown; sandbox-only hosts; compiled-code and
//! artifact caches; scheduling by artifact locality.

use crate::common;

use std::collections::BTreeSet;

use common::{
    Coordinator, Host, Network, eventually, guest, host_up, run_job, wait_status, wait_terminal,
};
use serde_json::json;
use skyclaw_api::Client;
use skyclaw_api::artifacts::Digest;
use skyclaw_api::jobs::{CodeSource, Job, JobSpec, JobStatus};

/// Uploads a built guest and returns its digest.
async fn push(client: &Client, name: &str) -> Digest {
    let (info, _) = client
        .put_artifact(&guest(name))
        .await
        .expect("push artifact");
    info.digest
}

async fn run_wasi(client: &Client, spec: serde_json::Value) -> Job {
    let mut spec = spec;
    spec["kind"] = json!("wasi");
    run_job(client, spec).await
}

/// Submits a WASI job without waiting for it.
async fn submit_wasi(client: &Client, spec: serde_json::Value) -> Job {
    let mut spec = spec;
    spec["kind"] = json!("wasi");
    let spec: JobSpec = serde_json::from_value(spec).expect("valid spec");
    client.submit_job(&spec, None).await.expect("submit")
}

/// A job of the sleep guest, which parks in a host clock wait for an hour,
/// under a time limit of `timeout_ms`.
fn sleeper(sleep: &Digest, timeout_ms: u64) -> serde_json::Value {
    json!({"artifact": sleep, "limits": {"timeout_ms": timeout_ms}})
}

fn error_of(job: &Job) -> String {
    job.result
        .as_ref()
        .and_then(|r| r.error.clone())
        .unwrap_or_default()
}

/// Runs the echo guest and checks it answered normally: the host still serves.
async fn host_still_serves(client: &Client, echo: &Digest) {
    let job = run_wasi(client, json!({"artifact": echo, "args": ["again"]})).await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let out: serde_json::Value =
        serde_json::from_str(&job.result.unwrap().stdout).expect("echo prints json");
    assert_eq!(out["args"], json!(["again"]));
}

#[tokio::test]
async fn component_gets_only_its_args_env_and_stdin() {
    let net = Network::start("true", &[]).await;
    let client = net.client();
    let echo = push(&client, "echo").await;
    let job = run_wasi(
        &client,
        json!({"artifact": echo, "args": ["a", "b c"], "env": {"GREETING": "hi"},
               "stdin": "some input"}),
    )
    .await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let result = job.result.unwrap();
    assert_eq!(result.exit_code, Some(0));
    assert!(result.fuel_consumed.unwrap() > 0);
    let out: serde_json::Value = serde_json::from_str(&result.stdout).unwrap();
    assert_eq!(out["program"], "main.wasm", "a job that names no program");
    assert_eq!(out["args"], json!(["a", "b c"]));
    assert_eq!(out["env"], json!({"GREETING": "hi"}), "no host environment");
    assert_eq!(out["stdin"], "some input");

    // wasi:cli/exit 0.2 carries only success or failure: a component that
    // exits 7 reports 1 (preview 1 modules keep their code, see below).
    let job = run_wasi(
        &client,
        json!({"artifact": echo, "env": {"EXIT_CODE": "7"}}),
    )
    .await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(job.result.unwrap().exit_code, Some(1));
}

/// A program pushed from a file runs under the file's name (its `argv[0]`,
/// as under `wasmtime run`), which `job ls` shows; names that are not plain
/// file names are refused; limits above what the live hosts grant are
/// refused with what they grant.
#[tokio::test]
async fn a_pushed_program_keeps_its_file_name() {
    let net = Network::start("true", &[]).await;
    let echo = guest("echo");
    let path = echo.to_str().unwrap();
    let out = net.cli(&["job", "wasi", "--wait", path, "--", "a b"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["program"], "echo.wasm", "{printed}");
    assert_eq!(printed["args"], json!(["a b"]));
    let listed = String::from_utf8(net.cli(&["job", "ls"]).stdout).unwrap();
    assert!(listed.contains("echo.wasm 'a b'"), "{listed}");

    let digest = push(&net.client(), "echo").await;
    for bad in ["../echo.wasm", "a\u{1b}[2J", ""] {
        let spec = json!({"kind": "wasi", "artifact": digest, "program": bad});
        let err = net
            .client()
            .submit_job(&serde_json::from_value(spec).unwrap(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("program must be a file name"),
            "{bad:?}: {err}"
        );
    }

    let out = net.cli(&["job", "wasi", "--memory-mb", "2000", path]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("memory_mb 2000 is above 1024"), "{said}");
    assert!(said.contains("--wasi-max-memory-mb"), "{said}");
}

#[tokio::test]
async fn preview1_module_runs_through_the_cli() {
    let net = Network::start("true", &[]).await;
    let module = guest("p1hello");
    let module = module.to_str().unwrap();
    let out = net.cli(&["job", "wasi", "--wait", module, "--", "0", "x"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("hello from preview1"), "{stdout}");

    let out = net.cli(&["job", "wasi", "--wait", "--json", module, "--", "5"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit 5 is a failed job: {out:?}"
    );
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["result"]["exit_code"], 5);

    // Codes above 125, which WASI reserves, are reported as they are too.
    let out = net.cli(&["job", "wasi", "--wait", "--json", module, "--", "200"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["result"]["exit_code"], 200, "{job}");
    assert_eq!(job["result"]["error"], "exited with code 200", "{job}");
}

#[tokio::test]
async fn each_limit_trips_with_its_own_message_and_the_host_keeps_serving() {
    let net = Network::start("true", &["--max-output-bytes", "65536"]).await;
    let client = net.client();
    let echo = push(&client, "echo").await;

    let busy = push(&client, "busy").await;
    let job = run_wasi(
        &client,
        json!({"artifact": busy, "limits": {"fuel": 1_000_000}}),
    )
    .await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(error_of(&job), "out of fuel after 1000000 units");
    assert_eq!(job.result.as_ref().unwrap().fuel_consumed, Some(1_000_000));
    assert_eq!(job.result.as_ref().unwrap().exit_code, None);
    host_still_serves(&client, &echo).await;

    let job = run_wasi(
        &client,
        json!({"artifact": busy, "limits": {"fuel": 1_000_000_000_000u64, "timeout_ms": 300}}),
    )
    .await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(error_of(&job), "timed out after 300 ms");
    assert!(job.result.as_ref().unwrap().fuel_consumed.unwrap() > 0);
    host_still_serves(&client, &echo).await;

    let memhog = push(&client, "memhog").await;
    let job = run_wasi(
        &client,
        json!({"artifact": memhog, "args": ["64"], "limits": {"memory_mb": 16}}),
    )
    .await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(error_of(&job), "memory limit of 16 MiB exceeded");
    host_still_serves(&client, &echo).await;

    let recurse = push(&client, "recurse").await;
    let job = run_wasi(&client, json!({"artifact": recurse})).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert!(error_of(&job).contains("stack overflow"), "{job:?}");
    host_still_serves(&client, &echo).await;

    let flood = push(&client, "flood").await;
    let job = run_wasi(
        &client,
        json!({"artifact": flood, "args": ["1000000", "200000"]}),
    )
    .await;
    assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    let result = job.result.unwrap();
    assert_eq!(result.stdout.len(), 65536);
    assert!(result.stdout_truncated && result.stderr_truncated);
    assert_eq!(result.stdout_dropped_bytes, 1_000_000 - 65536);
    assert_eq!(result.stderr_dropped_bytes, 200_000 - 65536);
    host_still_serves(&client, &echo).await;
}

#[tokio::test]
async fn jobs_that_cannot_run_are_refused_or_failed_clearly() {
    let net = Network::start("true", &["--wasi-max-fuel", "5000000"]).await;
    let client = net.client();
    let echo = push(&client, "echo").await;

    let never_pushed = Digest::from_sha256(&[9; 32]);
    let spec: JobSpec =
        serde_json::from_value(json!({"kind": "wasi", "artifact": never_pushed})).unwrap();
    let err = client
        .submit_job(&spec, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("never uploaded"), "{err}");

    let spec: JobSpec = serde_json::from_value(
        json!({"kind": "wasi", "artifact": echo, "limits": {"fuel": 6_000_000}}),
    )
    .unwrap();
    let err = client
        .submit_job(&spec, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("fuel 6000000 is above 5000000"), "{err}");

    // An empty core module is wasm, but no command: it fails, never runs.
    let empty = net.tmp.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x01\0\0\0").unwrap();
    let (info, _) = client.put_artifact(&empty).await.unwrap();
    let job = run_wasi(&client, json!({"artifact": info.digest})).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert!(
        error_of(&job).starts_with("not a WASI command component or preview1 module: "),
        "{job:?}"
    );
    host_still_serves(&client, &echo).await;
}

#[tokio::test]
async fn sandbox_only_host_never_runs_shell_jobs_while_a_normal_host_does() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let sandbox = Host::start_sandboxed(&coordinator.url, &tmp.path().join("sandbox"), &[]);
    let normal = Host::start(&coordinator.url, &tmp.path().join("normal"), "echo", &[]);
    let (sandbox_id, normal_id) = (sandbox.id().await, normal.id().await);
    host_up(&client, &sandbox_id).await;
    host_up(&client, &normal_id).await;

    let hosts = client.list_hosts().await.unwrap().hosts;
    let listed = hosts.iter().find(|h| h.id == sandbox_id).unwrap();
    assert!(listed.sandbox_only);
    assert_eq!(listed.capabilities, ["wasi"]);

    let submitted: Vec<Job> = {
        let spec: JobSpec =
            serde_json::from_value(json!({"kind": "shell", "command": "echo", "args": ["x"]}))
                .unwrap();
        let mut jobs = Vec::new();
        for _ in 0..20 {
            jobs.push(client.submit_job(&spec, None).await.unwrap());
        }
        jobs
    };
    for job in submitted {
        let job = wait_terminal(&client, &job.id).await;
        assert_eq!(job.status, JobStatus::Succeeded);
        assert_eq!(job.host_id.as_deref(), Some(normal_id.as_str()));
    }

    let echo = push(&client, "echo").await;
    let job = run_wasi(&client, json!({"artifact": echo})).await;
    assert_eq!(job.status, JobStatus::Succeeded);

    // The CLI shows the mode.
    let out = common::skyclaw()
        .args(["hosts", "ls"])
        .env("SKYCLAW_COORDINATOR_URLS", &coordinator.url)
        .env("SKYCLAW_TOKEN", common::TOKEN)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let row = table.lines().find(|l| l.starts_with(&sandbox_id)).unwrap();
    assert!(row.contains("sandbox-only"), "{table}");
}

#[tokio::test]
async fn restarted_host_loads_compiled_code_from_its_cache() {
    let mut net = Network::start("true", &[]).await;
    let client = net.client();
    let echo = push(&client, "echo").await;
    let code = |job: &Job| job.result.as_ref().and_then(|r| r.code);

    let first = run_wasi(&client, json!({"artifact": echo})).await;
    assert_eq!(code(&first), Some(CodeSource::Compiled), "{first:?}");
    let second = run_wasi(&client, json!({"artifact": echo})).await;
    assert_eq!(code(&second), Some(CodeSource::Memory));

    net.host.terminate();
    net.host = Host::start(
        &net.coordinator.url,
        &net.tmp.path().join("host"),
        "true",
        &[],
    );
    host_up(&client, &net.host_id).await;
    let third = run_wasi(&client, json!({"artifact": echo})).await;
    assert_eq!(third.status, JobStatus::Succeeded, "{third:?}");
    assert_eq!(code(&third), Some(CodeSource::DiskCache));
}

#[tokio::test]
async fn tampered_blob_in_the_host_cache_is_detected_and_not_run() {
    let mut net = Network::start("true", &[]).await;
    let client = net.client();
    let echo = push(&client, "echo").await;
    let job = run_wasi(&client, json!({"artifact": echo})).await;
    assert_eq!(job.status, JobStatus::Succeeded);

    net.host.terminate();
    // Put another valid program in the cached blob's place: if it ran, it
    // would print "hello from preview1".
    let cached = net.tmp.path().join("host/artifacts").join(echo.hex());
    assert!(cached.exists(), "the host caches the artifact by digest");
    std::fs::copy(guest("p1hello"), &cached).unwrap();
    net.host = Host::start(
        &net.coordinator.url,
        &net.tmp.path().join("host"),
        "true",
        &[],
    );
    host_up(&client, &net.host_id).await;

    let job = run_wasi(&client, json!({"artifact": echo})).await;
    assert_eq!(job.status, JobStatus::Failed);
    let result = job.result.unwrap();
    assert!(result.error.unwrap().contains("corrupt"));
    assert_eq!(result.stdout, "", "the tampered program never ran");
    assert!(!cached.exists(), "the tampered blob is deleted");

    // The next job downloads a good copy again.
    host_still_serves(&client, &echo).await;
}

#[tokio::test]
async fn jobs_go_to_the_host_that_holds_their_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let a = Host::start_sandboxed(&coordinator.url, &tmp.path().join("a"), &[]);
    let b = Host::start_sandboxed(&coordinator.url, &tmp.path().join("b"), &[]);
    for host in [&a, &b] {
        host_up(&client, &host.id().await).await;
    }
    let echo = push(&client, "echo").await;
    let first = run_wasi(&client, json!({"artifact": echo})).await;
    let holder = first.host_id.clone().expect("ran somewhere");
    eventually("the holder to report the artifact", || async {
        let hosts = client.list_hosts().await.ok()?.hosts;
        hosts
            .iter()
            .any(|h| h.id == holder && h.artifacts.contains(&echo))
            .then_some(())
    })
    .await;

    let mut ran_on = BTreeSet::new();
    for _ in 0..10 {
        let job = run_wasi(&client, json!({"artifact": echo})).await;
        assert_eq!(job.status, JobStatus::Succeeded);
        ran_on.insert(job.host_id.unwrap());
    }
    assert_eq!(ran_on, BTreeSet::from([holder]));
}

#[tokio::test]
async fn a_guest_asleep_in_a_host_call_times_out_at_its_deadline_or_stops_when_cancelled() {
    let net = Network::start("true", &["--max-parallel", "1"]).await;
    let client = net.client();
    let sleep = push(&client, "sleep").await;
    let echo = push(&client, "echo").await;

    let job = run_wasi(&client, json!({"artifact": sleep, "args": ["10"]})).await;
    assert_eq!(
        job.status,
        JobStatus::Succeeded,
        "a short sleep ends: {job:?}"
    );
    assert_eq!(job.result.unwrap().stdout, "awake\n");

    let job = run_wasi(&client, sleeper(&sleep, 500)).await;
    assert_eq!(job.status, JobStatus::Failed);
    assert_eq!(error_of(&job), "timed out after 500 ms");
    let result = job.result.unwrap();
    assert_eq!(result.exit_code, None);
    assert!(result.duration_ms >= 500, "{result:?}");

    // The host learns of the cancel at its next heartbeat; the sleeper then
    // gives back the host's only slot at once, not at its deadline.
    let job = submit_wasi(&client, sleeper(&sleep, 600_000)).await;
    wait_status(&client, &job.id, JobStatus::Running).await;
    let out = net.cli(&["job", "cancel", &job.id]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    host_still_serves(&client, &echo).await;
    let job = client.get_job(&job.id).await.unwrap();
    assert_eq!(job.status, JobStatus::Cancelled, "{job:?}");
}

#[tokio::test]
async fn guests_asleep_or_busy_hold_only_their_own_slots() {
    // One busy guest per core keeps every worker of the host's runtime busy
    // unless guests yield to other work.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let sleepers = 4;
    let max_parallel = (sleepers + cores + 2).to_string();
    let net = Network::start("true", &["--max-parallel", &max_parallel]).await;
    let client = net.client();
    let (sleep, busy, echo) = (
        push(&client, "sleep").await,
        push(&client, "busy").await,
        push(&client, "echo").await,
    );
    let mut holding = Vec::new();
    for _ in 0..sleepers {
        holding.push(submit_wasi(&client, sleeper(&sleep, 600_000)).await);
    }
    for _ in 0..cores {
        let spec = json!({"artifact": busy,
            "limits": {"fuel": 1_000_000_000_000u64, "timeout_ms": 600_000}});
        holding.push(submit_wasi(&client, spec).await);
    }
    for job in &holding {
        wait_status(&client, &job.id, JobStatus::Running).await;
    }

    for _ in 0..5 {
        host_still_serves(&client, &echo).await;
        let job = run_job(&client, json!({"kind": "shell", "command": "true"})).await;
        assert_eq!(job.status, JobStatus::Succeeded, "{job:?}");
    }
    for job in &holding {
        let job = client.get_job(&job.id).await.unwrap();
        assert_eq!(
            job.status,
            JobStatus::Running,
            "still holding its slot: {job:?}"
        );
    }
    host_up(&client, &net.host_id).await;
}

#[tokio::test]
async fn sleepers_filling_every_slot_do_not_stop_the_host_claiming_once_they_time_out() {
    let net = Network::start("true", &["--max-parallel", "4"]).await;
    let client = net.client();
    let (sleep, echo) = (push(&client, "sleep").await, push(&client, "echo").await);
    let mut sleepers = Vec::new();
    for _ in 0..4 {
        sleepers.push(submit_wasi(&client, sleeper(&sleep, 1_000)).await);
    }
    // Queued behind the sleepers: it runs only in a slot one of them frees.
    host_still_serves(&client, &echo).await;
    for job in &sleepers {
        let job = wait_terminal(&client, &job.id).await;
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(error_of(&job), "timed out after 1000 ms");
    }
    host_still_serves(&client, &echo).await;
}

#[tokio::test]
async fn sigterm_with_guests_asleep_in_host_calls_exits_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let mut host = Host::start_logged(
        &coordinator.url,
        &tmp.path().join("host"),
        "true",
        &["--shutdown-grace-ms", "200"],
    );
    host_up(&client, &host.id().await).await;
    let sleep = push(&client, "sleep").await;
    let mut sleepers = Vec::new();
    for _ in 0..4 {
        sleepers.push(submit_wasi(&client, sleeper(&sleep, 600_000)).await);
    }
    for job in &sleepers {
        wait_status(&client, &job.id, JobStatus::Running).await;
    }

    let status = host.terminate();
    let stderr = host.stderr();
    assert!(
        status.success(),
        "the host exits 0 on SIGTERM: {status:?}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    for job in &sleepers {
        let job = client.get_job(&job.id).await.unwrap();
        assert_eq!(job.status, JobStatus::Queued, "handed back: {job:?}");
    }
}
