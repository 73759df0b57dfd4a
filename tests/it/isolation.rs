//! The trust boundary between a job and its host, attacked as a stranger
//! would: with nothing but an API key scoped `jobs:submit` + `jobs:read`,
//! through the CLI, against real hosts. A job must not read the daemon's
//! secrets or data, nor another job's, must not outlive its job or the
//! daemon, and must not take the host down with it.

use crate::common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Output, Stdio};

use common::{
    Coordinator, Host, Network, TOKEN, eventually, host_up, processes_with, skyclaw,
    wait_no_processes, wait_processes,
};

/// The uid the tests' same-user host runs as: `nobody`, which owns nothing
/// and has no supplementary groups.
const NOBODY: u32 = 65534;

/// A key as a submitter holds it: it can submit jobs and read its own.
async fn submitter_key(net: &Network) -> String {
    let out = net.cli(&[
        "apikey",
        "create",
        "--name",
        "stranger",
        "--scope",
        "jobs:submit",
        "--scope",
        "jobs:read",
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    created["secret"].as_str().expect("the secret").to_string()
}

/// Runs the CLI as the holder of `key`, without the cluster token.
fn cli_as(net: &Network, key: &str, args: &[&str]) -> Output {
    skyclaw()
        .args(args)
        .env("SKYCLAW_COORDINATOR_URLS", &net.coordinator.url)
        .env("SKYCLAW_API_KEY", key)
        .current_dir(net.tmp.path())
        .stdin(Stdio::null())
        .output()
        .expect("run skyclaw")
}

/// A shell job, waited for: `sh -c SCRIPT`.
fn sh(net: &Network, key: &str, script: &str) -> Output {
    cli_as(
        net,
        key,
        &["job", "shell", "--wait", "--", "sh", "-c", script],
    )
}

/// stdout and stderr together, for "never printed" checks.
fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A field of a `/proc/PID/status` text, trimmed.
fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map_or("", str::trim)
}

#[tokio::test]
async fn a_job_cannot_reach_the_daemon_or_its_data() {
    let net = Network::start("cat,sh,ls", &[]).await;
    let key = submitter_key(&net).await;
    let host_pid = net.host.pid();
    let coord_db = net.coordinator.dir.join("coordinator.db");
    let attacks = [
        format!("cat /proc/{host_pid}/environ"),
        format!("cat /proc/{host_pid}/mem"),
        format!("cat /proc/{host_pid}/cmdline"),
        "cat /proc/*/environ".to_string(),
        format!("ls {}", net.host.dir.display()),
        format!("cat {}", net.host.dir.join("host-id").display()),
        format!("ls {}", net.host.dir.join("work").display()),
        format!("cat {}", coord_db.display()),
        format!("ls {}", net.coordinator.dir.display()),
    ];
    for attack in &attacks {
        let out = sh(&net, &key, attack);
        let seen = printed(&out);
        assert!(!seen.contains(TOKEN), "{attack:?} printed the token");
        if attack != "cat /proc/*/environ" {
            assert_eq!(out.status.code(), Some(1), "{attack:?} must fail: {seen}");
        }
    }

    // The job's own view: the only processes are its own, it is not root,
    // it has no capabilities, no groups, and cannot gain privileges.
    let out = sh(&net, &key, "id -u; id -G; ls /proc | grep -c '^[0-9]'");
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    let uid: u32 = lines[0].parse().unwrap();
    assert_ne!(uid, 0, "a job never runs as root");
    assert_eq!(lines[1], lines[0], "the job's only group is its own");
    assert!(
        lines[2].parse::<u32>().unwrap() <= 4,
        "only the job's processes: {lines:?}"
    );
    let out = cli_as(
        &net,
        &key,
        &["job", "shell", "--wait", "--", "cat", "/proc/self/status"],
    );
    let status = stdout(&out);
    for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(
            status_field(&status, caps),
            "0000000000000000",
            "{caps} {status}"
        );
    }
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1");
    assert_eq!(status_field(&status, "Groups:"), "");
}

#[tokio::test]
async fn jobs_cannot_see_each_other() {
    let net = Network::start("sh,cat", &["--max-parallel", "2"]).await;
    let key = submitter_key(&net).await;
    let first = cli_as(
        &net,
        &key,
        &[
            "job",
            "shell",
            "--",
            "sh",
            "-c",
            "echo first-secret > $HOME/f; exec sleep 300.31",
        ],
    );
    assert!(first.status.success(), "{first:?}");
    let pid = wait_processes("sleep 300.31", 1).await[0];
    let first_uid = std::fs::metadata(format!("/proc/{pid}")).unwrap().uid();
    // Where the first job's directory lies on the host, as the host sees it.
    let work = net.host.dir.join("work");
    let secret = eventually("the first job's file", || async {
        std::fs::read_dir(&work)
            .ok()?
            .flatten()
            .map(|d| d.path().join("f"))
            .find(|f| f.exists())
    })
    .await;

    let out = cli_as(
        &net,
        &key,
        &[
            "job",
            "shell",
            "--wait",
            "--",
            "cat",
            secret.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(!printed(&out).contains("first-secret"));
    let out = sh(&net, &key, "id -u; ls -A /tmp; cat /tmp/f");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let second_uid: u32 = stdout(&out)
        .trim()
        .parse()
        .expect("only the uid is printed");
    assert_ne!(second_uid, first_uid, "two running jobs never share a uid");
    assert!(!printed(&out).contains("first-secret"));

    let id = String::from_utf8_lossy(&first.stdout).trim().to_string();
    assert!(cli_as(&net, &key, &["job", "cancel", &id]).status.success());
    wait_no_processes("sleep 300.31").await;
}

#[tokio::test]
async fn no_process_outlives_its_job() {
    let net = Network::start("sh", &[]).await;
    let key = submitter_key(&net).await;
    // Each way out of a process group there is: a new session, a double
    // fork, nohup, and all three together.
    let script = "setsid sleep 300.41 & (sleep 300.41 &) ; nohup sleep 300.41 >/dev/null 2>&1 & \
                  (setsid nohup sh -c 'sleep 300.41' >/dev/null 2>&1 &) ; \
                  while [ $(pgrep -c -f '^sleep 300.41') -lt 4 ]; do sleep 0.01; done; echo escaped";
    let out = sh(&net, &key, script);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "escaped\n");
    wait_no_processes("sleep 300.41").await;
}

#[tokio::test]
async fn a_host_killed_with_sigkill_takes_its_jobs_with_it() {
    let mut net = Network::start("sh", &[]).await;
    let key = submitter_key(&net).await;
    let out = cli_as(
        &net,
        &key,
        &[
            "job",
            "shell",
            "--",
            "sh",
            "-c",
            "setsid sleep 300.51 & (sleep 300.51 &); sleep 300.51",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    wait_processes("sleep 300.51", 3).await;
    net.host.kill9();
    wait_no_processes("sleep 300.51").await;
}

#[tokio::test]
async fn a_starting_host_kills_what_an_earlier_run_left() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let uids = common::job_uids();
    let first: u32 = uids.split('-').next().unwrap().parse().unwrap();
    // A process under one of the host's job uids, as a job of a run that
    // died without taking it along would be.
    let mut leftover = std::process::Command::new("sleep");
    leftover.arg("300.61").uid(first + 7).gid(first + 7);
    let mut leftover = leftover.spawn().unwrap();
    wait_processes("sleep 300.61", 1).await;
    let host = Host::start(
        &coordinator.url,
        &tmp.path().join("host"),
        "sh",
        &["--job-uids", &uids],
    );
    host_up(&coordinator.client(), &host.id().await).await;
    let status = leftover.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed by the starting host"
    );
}

#[tokio::test]
async fn fork_bombs_and_memory_hogs_fail_their_own_job_only() {
    let net = Network::start(
        "sh,awk,echo",
        &[
            "--max-parallel",
            "2",
            "--job-max-procs",
            "32",
            "--job-memory-mb",
            "64",
        ],
    )
    .await;
    let key = submitter_key(&net).await;

    // Forks until it may not, then holds what it has for a while: the host
    // meanwhile runs another job, and the bomb's processes stay capped.
    let bomb = cli_as(
        &net,
        &key,
        &[
            "job",
            "shell",
            "--timeout-ms",
            "60000",
            "--",
            "sh",
            "-c",
            "while :; do sleep 300.71 & done",
        ],
    );
    assert!(bomb.status.success(), "{bomb:?}");
    let bomb_id = String::from_utf8_lossy(&bomb.stdout).trim().to_string();
    let out = cli_as(&net, &key, &["job", "wait", &bomb_id]);
    assert_eq!(out.status.code(), Some(1), "the bomb fails: {out:?}");
    let error = printed(&out);
    assert!(error.contains("fork"), "{error}");
    wait_no_processes("sleep 300.71").await;
    let out = cli_as(
        &net,
        &key,
        &["job", "shell", "--wait", "--", "echo", "still here"],
    );
    assert_eq!(stdout(&out), "still here\n", "{out:?}");

    // Doubles a string until allocation fails under the 64 MiB cap.
    let out = cli_as(
        &net,
        &key,
        &[
            "job",
            "shell",
            "--wait",
            "--",
            "awk",
            "BEGIN { s = \"x\"; while (1) s = s s }",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "the hog fails: {out:?}");
    let out = cli_as(
        &net,
        &key,
        &["job", "shell", "--wait", "--", "echo", "still here"],
    );
    assert_eq!(stdout(&out), "still here\n", "{out:?}");
}

#[tokio::test]
async fn path_and_home_cannot_change_what_runs() {
    let net = Network::start("cat,sh", &[]).await;
    let key = submitter_key(&net).await;
    let evil = common::shared_dir();
    let fake_cat = evil.path().join("cat");
    std::fs::write(&fake_cat, "#!/bin/sh\necho evil\n").unwrap();
    std::fs::set_permissions(&fake_cat, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("PATH={}", evil.path().display());
    let out = cli_as(
        &net,
        &key,
        &[
            "job", "shell", "--wait", "--env", &path, "--stdin", "real\n", "--", "cat",
        ],
    );
    assert_eq!(stdout(&out), "real\n", "the host's cat ran: {out:?}");

    let out = sh(&net, &key, "cd \"$HOME\" && pwd && echo $TMPDIR");
    assert_eq!(stdout(&out), "/tmp\n/tmp\n", "{out:?}");
}

#[tokio::test]
async fn data_directories_and_their_files_are_private() {
    let net = Network::start("sh", &[]).await;
    let key = submitter_key(&net).await;
    let out = sh(&net, &key, "echo output to keep; echo > $HOME/left-behind");
    assert!(out.status.success(), "{out:?}");
    // An artifact on the coordinator, its copy and compiled code on the host.
    let module = common::guest("p1hello");
    let out = net.cli(&[
        "job",
        "wasi",
        "--wait",
        module.to_str().unwrap(),
        "--",
        "0",
        "x",
    ]);
    assert!(out.status.success(), "{out:?}");
    for root in [&net.coordinator.dir, &net.host.dir] {
        assert_private(root);
    }
}

/// Every directory under `root` (itself included) is 0700 and every file
/// 0600 or narrower: nobody but the node's user may read any of it.
fn assert_private(root: &Path) {
    let meta = std::fs::symlink_metadata(root).unwrap();
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", root.display());
    if meta.is_dir() {
        for entry in std::fs::read_dir(root).unwrap().flatten() {
            assert_private(&entry.path());
        }
    }
}

/// A host process running as `nobody`, which must be given a data directory
/// it owns inside a directory it can enter.
fn start_as_nobody(coordinator: &str, base: &Path, extra: &[&str]) -> std::process::Child {
    std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = base.join("nobody-host");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    skyclaw()
        .args([
            "host",
            "--coordinator",
            coordinator,
            "--allow-commands",
            "sh,cat,ls",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .args(extra)
        .env("SKYCLAW_TOKEN", TOKEN)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a host as nobody")
}

#[tokio::test]
async fn a_host_that_is_not_root_runs_native_jobs_only_when_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let refused = start_as_nobody(&coordinator.url, tmp.path(), &[])
        .wait_with_output()
        .unwrap();
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(error.contains("--allow-same-user-jobs"), "{error}");
}

#[tokio::test]
async fn same_user_jobs_still_cannot_reach_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let mut host = start_as_nobody(&coordinator.url, tmp.path(), &["--allow-same-user-jobs"]);
    let data = tmp.path().join("nobody-host");
    let client = coordinator.client();
    let host_id = eventually("the host id", || async {
        std::fs::read_to_string(data.join("host-id"))
            .ok()
            .map(|s| s.trim().to_string())
    })
    .await;
    host_up(&client, &host_id).await;

    // Another process of the daemon's own user cannot read its environment:
    // the daemon is non-dumpable.
    let peek = std::process::Command::new("cat")
        .arg(format!("/proc/{}/environ", host.id()))
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(!peek.status.success(), "{peek:?}");
    assert!(!String::from_utf8_lossy(&peek.stdout).contains(TOKEN));

    // Its jobs run as that user, yet see neither the daemon nor its data.
    let run = |script: &str| {
        skyclaw()
            .args(["job", "shell", "--wait", "--", "sh", "-c", script])
            .env("SKYCLAW_COORDINATOR_URLS", &coordinator.url)
            .env("SKYCLAW_TOKEN", TOKEN)
            .output()
            .unwrap()
    };
    let out = run("id -u");
    assert_eq!(stdout(&out).trim(), NOBODY.to_string(), "{out:?}");
    for attack in [
        format!("cat /proc/{}/environ", host.id()),
        format!("cat {}", data.join("host-id").display()),
        format!("ls {}", data.display()),
    ] {
        let out = run(&attack);
        assert_eq!(out.status.code(), Some(1), "{attack:?} must fail: {out:?}");
        assert!(
            !printed(&out).contains(&host_id),
            "{attack:?} read the data directory"
        );
    }
    let out = run("setsid sleep 300.81 & (sleep 300.81 &); echo ok");
    assert!(out.status.success(), "{out:?}");
    wait_no_processes("sleep 300.81").await;
    assert!(processes_with("sleep 300.81").is_empty());
    let _ = host.kill();
    let _ = host.wait();
}
