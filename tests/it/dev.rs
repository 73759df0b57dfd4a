//! `skyclaw dev`: an embedded network whose URL and generated token the other
//! subcommands pick up by themselves, on any port; stopped cleanly by Ctrl-C,
//! data kept; quiet, uncoloured logs; nothing created when its port is taken.

use crate::common;

use std::os::unix::fs::PermissionsExt;

use common::{Dev, eventually, skyclaw};

/// What a client command printed, both streams, for messages.
fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn dev_runs_a_local_network_that_clients_find_by_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dev = Dev::start(tmp.path()).await;
    assert_ne!(dev.url, "http://127.0.0.1:8787", "a port of its own");
    let token = dev.dir().join("token");
    let mode = std::fs::metadata(&token).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");

    // No URL, no token: both come from .skyclaw, here and below it.
    let nested = tmp.path().join("src/deep");
    std::fs::create_dir_all(&nested).unwrap();
    for cwd in [tmp.path(), nested.as_path()] {
        let out = eventually("the dev host to run a job", || async {
            let out = Dev::cli_in(cwd, &["job", "shell", "--wait", "--", "echo", "hello"]);
            out.status.success().then_some(out)
        })
        .await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    }
    let out = dev.cli(&["hosts", "ls"]);
    assert!(out.status.success(), "{out:?}");
    let jobs = |dev: &Dev| {
        let out = dev.cli(&["job", "ls", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list["jobs"].as_array().unwrap().len()
    };
    let before = jobs(&dev);
    assert!(before >= 2, "{before}");

    assert!(dev.interrupt().success(), "Ctrl-C stops dev cleanly");
    assert!(
        !dev.dir().join("url").exists(),
        "a stopped dev leaves no URL for clients to try"
    );

    let dev = Dev::start(tmp.path()).await;
    assert_eq!(jobs(&dev), before, "data kept across restarts");
}

/// Without credentials, a client first finds out whether anything answers:
/// a dead URL is reported as such, with where the URL came from, and only a
/// coordinator that answers gets "no credentials". A dev killed outright
/// leaves a URL that clients recognise as stale.
#[tokio::test]
async fn clients_say_what_they_tried_and_why_it_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dev = Dev::start(tmp.path()).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);

    let out = Dev::cli_in(
        elsewhere.path(),
        &["job", "ls", "--coordinator", dead_url.as_str()],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = printed(&out);
    assert!(
        said.contains(&format!("cannot reach the coordinators at {dead_url}")),
        "{said}"
    );
    assert!(said.contains("connection refused"), "{said}");
    assert!(!said.contains("no credentials"), "{said}");

    let out = Dev::cli_in(
        elsewhere.path(),
        &["--coordinator", dev.url.as_str(), "job", "ls"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = printed(&out);
    assert!(
        said.contains(&format!("no credentials for {}", dev.url)),
        "{said}"
    );

    dev.kill9();
    assert!(
        dev.dir().join("url").exists(),
        "kill -9 leaves the URL file"
    );
    let out = dev.cli(&["job", "ls"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = printed(&out);
    assert!(
        said.contains(&format!("cannot reach the `skyclaw dev` at {}", dev.url)),
        "{said}"
    );
    assert!(said.contains("is it still running?"), "{said}");
    assert!(said.contains(".skyclaw/url"), "{said}");
}

/// Dev's terminal shows skyclaw's progress, not openraft's INFO state dumps,
/// and no colour codes when it is not a terminal; RUST_LOG still rules.
#[tokio::test]
async fn dev_logs_are_plain_and_quiet_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let mut quiet = Dev::command(tmp.path());
    quiet.env_remove("SKYCLAW_LOG");
    let mut dev = Dev::spawn(quiet, tmp.path()).await;
    eventually("the dev host to run a job", || async {
        dev.cli(&["job", "shell", "--wait", "--", "true"])
            .status
            .success()
            .then_some(())
    })
    .await;
    assert!(dev.interrupt().success());
    let logs = dev.stderr();
    assert!(
        logs.contains("skyclaw_runtime::host: host registered"),
        "skyclaw's own: {logs}"
    );
    assert!(!logs.contains("openraft"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "no colour codes in a file: {logs:?}"
    );

    let mut chatty = Dev::command(tmp.path());
    chatty
        .env_remove("SKYCLAW_LOG")
        .env("RUST_LOG", "openraft=info");
    let mut dev = Dev::spawn(chatty, tmp.path()).await;
    assert!(dev.interrupt().success());
    let logs = dev.stderr();
    assert!(
        logs.contains(" INFO openraft"),
        "RUST_LOG overrides: {logs}"
    );
    assert!(!logs.contains('\u{1b}'), "{logs:?}");
}

/// Dev binds its port before it creates anything: a taken port fails it
/// with a message that says what to do, and leaves no directory behind.
#[tokio::test]
async fn dev_on_a_taken_port_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = skyclaw()
        .args(["dev", "--data-dir", "fresh", "--port", &port])
        .args(["--job-uids", &common::job_uids()])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = printed(&out);
    assert!(
        said.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{said}"
    );
    assert!(said.contains("--port 0"), "{said}");
    assert!(!tmp.path().join("fresh").exists(), "nothing was created");
}

#[tokio::test]
async fn a_dev_job_cannot_read_the_token_or_the_database() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dev = Dev::start(tmp.path()).await;
    let dev_dir = dev.dir();
    let token = std::fs::read_to_string(dev_dir.join("token")).unwrap();
    let targets = [
        "../../../token".to_string(),
        dev_dir.join("token").display().to_string(),
        dev_dir
            .join("coordinator/coordinator.db")
            .display()
            .to_string(),
    ];
    for target in &targets {
        let out = eventually("the dev host to take the job", || async {
            let out = dev.cli(&["job", "shell", "--wait", "--", "cat", target]);
            (out.status.code() != Some(2)).then_some(out)
        })
        .await;
        let printed = printed(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "cat {target} must fail: {printed}"
        );
        assert!(
            !printed.contains(token.trim()),
            "cat {target} printed the token"
        );
    }
    let out = dev.cli(&["job", "shell", "--wait", "--", "ls", "-a", "/tmp"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), ".\n..\n", "{out:?}");
    assert!(dev.interrupt().success());
}
