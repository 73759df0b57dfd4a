//! `skyclaw dev`: an embedded network whose generated token the other
//! subcommands pick up by themselves, stopped cleanly by Ctrl-C, data kept.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};

use common::{eventually, skyclaw};

fn start_dev(dir: &std::path::Path) -> Child {
    skyclaw()
        .args(["dev", "--data-dir", ".skyclaw", "--port", "0"])
        .args(["--job-uids", &common::job_uids()])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn skyclaw dev")
}

fn interrupt(child: &mut Child) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    child.wait().unwrap()
}

async fn dev_url(dir: &std::path::Path) -> String {
    let url_file = dir.join(".skyclaw/url");
    eventually("skyclaw dev to write its url", || async {
        std::fs::read_to_string(&url_file)
            .ok()
            .filter(|u| u.starts_with("http://"))
    })
    .await
}

fn cli(dir: &std::path::Path, url: &str, args: &[&str]) -> std::process::Output {
    skyclaw()
        .args(args)
        .env("SKYCLAW_COORDINATOR_URLS", url)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[tokio::test]
async fn dev_runs_a_local_network_with_an_automatic_token() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dev = start_dev(tmp.path());
    let url = dev_url(tmp.path()).await;
    let token = tmp.path().join(".skyclaw/token");
    let mode = std::fs::metadata(&token).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");

    let out = eventually("the dev host to run a job", || async {
        let out = cli(
            tmp.path(),
            &url,
            &["job", "shell", "--wait", "--", "echo", "hello"],
        );
        out.status.success().then_some(out)
    })
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    let out = cli(tmp.path(), &url, &["hosts", "ls"]);
    assert!(out.status.success(), "{out:?}");

    assert!(interrupt(&mut dev).success(), "Ctrl-C stops dev cleanly");
    std::fs::remove_file(tmp.path().join(".skyclaw/url")).unwrap();

    let mut dev = start_dev(tmp.path());
    let url = dev_url(tmp.path()).await;
    let out = cli(tmp.path(), &url, &["job", "ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        1,
        "data kept across restarts"
    );
    assert!(interrupt(&mut dev).success());
}

#[tokio::test]
async fn a_dev_job_cannot_read_the_token_or_the_database() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dev = start_dev(tmp.path());
    let url = dev_url(tmp.path()).await;
    let dev_dir = tmp.path().join(".skyclaw");
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
            let out = cli(
                tmp.path(),
                &url,
                &["job", "shell", "--wait", "--", "cat", target],
            );
            (out.status.code() != Some(2)).then_some(out)
        })
        .await;
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
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
    let out = cli(
        tmp.path(),
        &url,
        &["job", "shell", "--wait", "--", "ls", "-a", "/tmp"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), ".\n..\n", "{out:?}");
    assert!(interrupt(&mut dev).success());
}
