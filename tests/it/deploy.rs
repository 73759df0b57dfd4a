//! `skyclaw deploy` and `skyclaw services`, the real binary against a real
//! coordinator, with hosts played by the test (`FakeServiceHost`): bundles
//! uploaded once, no-op deploys, rollouts that fail with the crash's output
//! and exit 1, `--json` and `--no-wait`, credentials and scopes, and the
//! service commands; `services logs` against the kit's fake coordinator,
//! which serves the logs route.

use crate::common;

use std::path::Path;
use std::process::Command;

use common::*;
use skyclaw_api::apikeys::Scope;
use skyclaw_api::services::{DeployStatus, Service, ServiceList};

/// A native service of two replicas running `node server.js`.
const MANIFEST: &str = r#"
[service]
name = "api"
kind = "native"
command = "node"
args = ["server.js"]
replicas = 2

[bundle]
exclude = ["notes/**"]
"#;

/// The CLI against `coordinator`, with the token unless the test removes it.
fn deploy(coordinator: &Coordinator, dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = coordinator.cli_command(&["deploy"]);
    cmd.arg(dir).args(extra);
    cmd
}

async fn artifact_count(coordinator: &Coordinator) -> usize {
    coordinator
        .client()
        .list_artifacts()
        .await
        .unwrap()
        .artifacts
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_native_dir_is_uploaded_once_and_deployed_until_healthy() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let _host = FakeServiceHost::start(&client, "h1", |_| Serve::Healthy).await;
    let files = [
        ("server.js", "console.log('hi')\n"),
        ("notes/todo.txt", "left out\n"),
    ];
    let dir = service_dir(tmp.path(), "api", MANIFEST, &files);

    let (code, stdout, stderr) = outcome(&run_cli(deploy(&coordinator, &dir, &[])).await);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("uploaded the bundle"), "{stderr}");
    assert!(stderr.contains("created api: version 1"), "{stderr}");
    // Without a terminal, progress is one plain line per change.
    assert!(
        stderr.contains("2/2 instances of version 1 healthy"),
        "{stderr}"
    );
    assert!(stderr.contains("(version 1) on host h1:"), "{stderr}");
    assert_eq!(stdout, "api version 1 is live: 2/2 instances healthy\n");
    let service = client.get_service("api").await.unwrap();
    assert_eq!(service.deploy.status, DeployStatus::Done);
    let artifacts = client.list_artifacts().await.unwrap().artifacts;
    assert_eq!(artifacts.len(), 1);
    assert_eq!(artifacts[0].digest, service.current.spec.artifact);
    assert_eq!(artifacts[0].kind.as_str(), "bundle");

    // The same files make the same bundle: nothing is uploaded or deployed,
    // and a file the manifest excludes changes nothing either.
    std::fs::write(dir.join("notes/todo.txt"), "changed\n").unwrap();
    let (code, stdout, stderr) = outcome(&run_cli(deploy(&coordinator, &dir, &[])).await);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("already on the cluster"), "{stderr}");
    assert!(stderr.contains("not uploaded"), "{stderr}");
    assert!(stderr.contains("api is unchanged"), "{stderr}");
    assert!(!stderr.contains("uploaded the"), "{stderr}");
    assert_eq!(artifact_count(&coordinator).await, 1);
    assert_eq!(client.get_service("api").await.unwrap().current.version, 1);

    // A changed file is a new bundle and a new version, which each live
    // gateway is said to route to.
    let beat = skyclaw_api::gateways::GatewayHeartbeat {
        id: "gw-1".into(),
        public_url: "https://gw.example/".into(),
    };
    client.gateway_heartbeat(&beat).await.unwrap();
    service_dir(tmp.path(), "api", MANIFEST, &[("server.js", "v2\n")]);
    let (code, stdout, stderr) = outcome(&run_cli(deploy(&coordinator, &dir, &[])).await);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("uploaded the bundle"), "{stderr}");
    assert_eq!(
        stdout,
        "api version 2 is live: 2/2 instances healthy\n  https://gw.example/s/api/\n"
    );
    assert_eq!(artifact_count(&coordinator).await, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_the_host_fails_exits_1_with_the_crash_and_json_is_the_service() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    // Version 2 runs crash.js, which "exits" at once with its error.
    let _host = FakeServiceHost::start(&client, "h1", |a| {
        if a.spec.args.iter().any(|arg| arg == "crash.js") {
            Serve::Crash("exited with status 1:\nError: boom at crash.js:1".into())
        } else {
            Serve::Healthy
        }
    })
    .await;
    let dir = service_dir(tmp.path(), "api", MANIFEST, &[("server.js", "ok\n")]);
    let first = run_cli(deploy(&coordinator, &dir, &["--json"])).await;
    let (code, stdout, stderr) = outcome(&first);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    // Only JSON on stdout: the service as the API reports it.
    let service: Service = serde_json::from_str(&stdout).expect("stdout is a Service");
    assert_eq!(service.deploy.status, DeployStatus::Done);
    assert_eq!(service.current.version, 1);

    let crashing = MANIFEST.replace("server.js", "crash.js");
    service_dir(tmp.path(), "api", &crashing, &[("crash.js", "throw 1\n")]);
    let failed = run_cli(deploy(&coordinator, &dir, &["--json"])).await;
    let (code, stdout, stderr) = outcome(&failed);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the rollout of api version 2 failed; version 1 keeps serving"),
        "{stderr}"
    );
    assert!(stderr.contains("Error: boom at crash.js:1"), "{stderr}");
    // The progress line: "…on host h1: failed: …" when the first look
    // already saw the crash, "…: pending -> failed: …" when it saw it start.
    assert!(stderr.contains(" failed: exited with status 1"), "{stderr}");
    let service: Service = serde_json::from_str(&stdout).expect("stdout is a Service");
    assert_eq!(service.deploy.status, DeployStatus::Failed);
    assert_eq!(service.target_version(), Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_wait_returns_at_once_and_a_build_runs_first() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    // No host: a deploy that waited would wait for the rollout's deadline.
    let manifest = format!(
        "{MANIFEST}\n[build]\ncommand = \"mkdir -p dist && echo built > dist/out.txt && echo \
         build-says-hi\"\n"
    );
    let dir = service_dir(tmp.path(), "api", &manifest, &[("server.js", "ok\n")]);
    let out = run_cli(deploy(&coordinator, &dir, &["--no-wait", "--json"])).await;
    let (code, stdout, stderr) = outcome(&out);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    // The build's stdout goes to stderr: stdout holds only the service.
    assert!(stderr.contains("build-says-hi"), "{stderr}");
    let service: Service = serde_json::from_str(&stdout).expect("stdout is a Service");
    assert_eq!(service.deploy.status, DeployStatus::Rolling);
    assert_eq!(
        std::fs::read_to_string(dir.join("dist/out.txt")).unwrap(),
        "built\n"
    );
    // The same again is a no-op that says the version is still rolling out.
    let again = run_cli(deploy(&coordinator, &dir, &["--no-wait"])).await;
    let (code, _, stderr) = outcome(&again);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("already on the cluster"), "{stderr}");
    assert!(stderr.contains("still rolling out"), "{stderr}");

    // A failing build deploys nothing and exits 1 naming its command.
    let broken = format!("{MANIFEST}\n[build]\ncommand = \"echo compiling; exit 3\"\n");
    let dir = service_dir(tmp.path(), "broken", &broken, &[("server.js", "ok\n")]);
    let (code, stdout, stderr) = outcome(&run_cli(deploy(&coordinator, &dir, &[])).await);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the build command `echo compiling; exit 3` failed"),
        "{stderr}"
    );
    assert!(stderr.contains("compiling"), "{stderr}");
    assert_eq!(
        artifact_count(&coordinator).await,
        1,
        "only the first bundle"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_and_scopes_decide_who_deploys() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let _host = FakeServiceHost::start(&client, "h1", |_| Serve::Healthy).await;
    let dir = service_dir(tmp.path(), "api", MANIFEST, &[("server.js", "ok\n")]);

    let mut wrong = deploy(&coordinator, &dir, &[]);
    wrong.env("SKYCLAW_TOKEN", "not-the-token");
    let (code, _, stderr) = outcome(&run_cli(wrong).await);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("HTTP 401"), "{stderr}");

    let reader = api_key(&client, &[Scope::ServicesRead]).await;
    let mut read_only = deploy(&coordinator, &dir, &[]);
    read_only
        .env_remove("SKYCLAW_TOKEN")
        .env("SKYCLAW_API_KEY", &reader);
    let (code, _, stderr) = outcome(&run_cli(read_only).await);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("forbidden"), "{stderr}");
    assert!(stderr.contains("lacks services:deploy"), "{stderr}");
    assert_eq!(artifact_count(&coordinator).await, 0, "nothing uploaded");

    // CI's way: the key in the environment, no token anywhere.
    let ci = api_key(&client, &[Scope::ServicesDeploy, Scope::ArtifactsPush]).await;
    let mut from_ci = deploy(&coordinator, &dir, &[]);
    from_ci
        .env_remove("SKYCLAW_TOKEN")
        .env("SKYCLAW_API_KEY", &ci);
    let (code, stdout, stderr) = outcome(&run_cli(from_ci).await);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("api version 1 is live"), "{stdout}");

    // Coordinators that do not answer are a connection error, said as one.
    let mut nowhere = deploy(&coordinator, &dir, &[]);
    nowhere.env("SKYCLAW_COORDINATOR_URLS", "http://127.0.0.1:1");
    let (code, _, stderr) = outcome(&run_cli(nowhere).await);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot reach the coordinators at http://127.0.0.1:1"),
        "{stderr}"
    );

    // A manifest error is found before any coordinator is asked.
    let bad = service_dir(
        tmp.path(),
        "bad",
        "[service]\nname = \"bad\"\nkind = \"native\"\ncommand = \"node\"\nreplicaz = 2\n",
        &[],
    );
    let mut cmd = deploy(&coordinator, &bad, &[]);
    cmd.env("SKYCLAW_COORDINATOR_URLS", "http://127.0.0.1:1");
    let (code, _, stderr) = outcome(&run_cli(cmd).await);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("skyclaw.toml:5: unknown key `replicaz`"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wasi_http_service_ships_its_component() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let _host = FakeServiceHost::start(&client, "h1", |_| Serve::Healthy).await;
    let manifest = "[service]\nname = \"hello\"\nkind = \"wasi-http\"\nwasm = \"app.wasm\"\n";
    let dir = service_dir(tmp.path(), "hello", manifest, &[]);
    // A component's header is all the coordinator looks at.
    std::fs::write(dir.join("app.wasm"), b"\0asm\x0d\x00\x01\x00").unwrap();
    let (code, stdout, stderr) = outcome(&run_cli(deploy(&coordinator, &dir, &[])).await);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("uploaded the component"), "{stderr}");
    assert_eq!(stdout, "hello version 1 is live: 1/1 instances healthy\n");

    std::fs::remove_file(dir.join("app.wasm")).unwrap();
    let (code, _, stderr) = outcome(&run_cli(deploy(&coordinator, &dir, &[])).await);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("app.wasm: no such file"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn services_are_listed_shown_scaled_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let _host = FakeServiceHost::start(&client, "h1", |_| Serve::Healthy).await;
    let dir = service_dir(tmp.path(), "api", MANIFEST, &[("server.js", "ok\n")]);
    let (code, _, stderr) = outcome(&run_cli(deploy(&coordinator, &dir, &[])).await);
    assert_eq!(code, Some(0), "{stderr}");
    let cli = |args: &[&str]| run_cli(coordinator.cli_command(args));

    let (code, stdout, stderr) = outcome(&cli(&["services", "ls"]).await);
    assert_eq!(code, Some(0), "{stderr}");
    let mut lines = stdout.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("NAME"), "{stdout}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..5], ["api", "native", "1", "done", "2/2"], "{stdout}");

    let (_, stdout, _) = outcome(&cli(&["services", "ls", "--json"]).await);
    let list: ServiceList = serde_json::from_str(&stdout).expect("a ServiceList");
    assert_eq!(list.services[0].name, "api");

    let (code, stdout, stderr) = outcome(&cli(&["services", "get", "api"]).await);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("runs      node server.js"), "{stdout}");
    assert_eq!(stdout.matches(" healthy ").count(), 2, "{stdout}");
    let (_, stdout, _) = outcome(&cli(&["services", "get", "api", "--json"]).await);
    let service: Service = serde_json::from_str(&stdout).expect("a Service");
    assert_eq!(service.instances.len(), 2);

    let (code, stdout, stderr) = outcome(&cli(&["services", "scale", "api", "3"]).await);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "scaled api to 3 replicas (version 1)\n");
    eventually("a third healthy instance", || async {
        let service = client.get_service("api").await.ok()?;
        let healthy = service
            .instances
            .iter()
            .filter(|i| i.state == skyclaw_api::services::InstanceState::Healthy)
            .count();
        (healthy == 3).then_some(())
    })
    .await;
    let (code, _, stderr) = outcome(&cli(&["services", "scale", "api", "65"]).await);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("between 0 and 64"), "{stderr}");

    // The coordinators' logs route, with hosts that serve no logs: each
    // instance says why, and the command still succeeds.
    let (code, stdout, stderr) = outcome(&cli(&["services", "logs", "api"]).await);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr
            .matches("no logs: host h1 did not say where it serves logs")
            .count(),
        3,
        "{stderr}"
    );

    let (code, stdout, stderr) = outcome(&cli(&["services", "rm", "api"]).await);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "removed api: its instances stop\n");
    let gone = client.get_service("api").await.unwrap_err();
    assert_eq!(gone.code(), Some(skyclaw_api::ErrorCode::NotFound));
    let (code, _, stderr) = outcome(&cli(&["services", "get", "api"]).await);
    assert_eq!(code, Some(2), "{stderr}");
}

#[test]
fn the_help_explains_the_manifest_and_the_exit_codes() {
    let out = skyclaw().args(["deploy", "--help"]).output().unwrap();
    let (code, help, _) = outcome(&out);
    assert_eq!(code, Some(0));
    for needle in [
        "skyclaw.toml",
        "[service.health]",
        "[bundle]",
        "--no-wait",
        "Exit status: 0 the new version is healthy",
        "1 the build\nfailed or the rollout failed",
        "services:deploy and artifacts:push",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let out = skyclaw().args(["services", "--help"]).output().unwrap();
    let (_, help, _) = outcome(&out);
    for command in ["ls", "get", "logs", "scale", "rm"] {
        assert!(help.contains(&format!("  {command} ")), "{command}: {help}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_show_each_instance_and_follow_prints_only_new_lines() {
    use common::fake_coordinator::{self, FakeCoordinator};
    use skyclaw_api::services::{InstanceLogs, LogLine, LogStream, LogsQuery, ServiceLogs};
    let line = |stream, at, text: &str| LogLine {
        stream,
        at,
        text: text.into(),
    };
    let fake = std::sync::Arc::new(FakeCoordinator::default());
    let url = fake_coordinator::start(fake.clone()).await;
    fake.lock().service_logs.insert(
        "api".into(),
        ServiceLogs {
            instances: vec![
                InstanceLogs {
                    instance_id: "i-1".into(),
                    host_id: "h1".into(),
                    lines: vec![
                        line(LogStream::Stdout, 10, "listening"),
                        line(LogStream::Stderr, 20, "warn: slow"),
                    ],
                    error: None,
                },
                InstanceLogs {
                    instance_id: "i-2".into(),
                    host_id: "h2".into(),
                    lines: vec![],
                    error: Some("host h2 did not answer".into()),
                },
            ],
        },
    );
    let cli = |args: &[&str]| {
        let mut cmd = skyclaw();
        cmd.args(args)
            .env("SKYCLAW_COORDINATOR_URLS", &url)
            .env("SKYCLAW_TOKEN", TOKEN)
            .stdin(std::process::Stdio::null());
        cmd
    };

    let (code, stdout, stderr) = outcome(&run_cli(cli(&["services", "logs", "api"])).await);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "i-1  listening\n");
    assert!(stderr.contains("i-1  warn: slow"), "{stderr}");
    assert!(
        stderr.contains("instance i-2 on host h2: no logs: host h2 did not answer"),
        "{stderr}"
    );

    let one = cli(&[
        "services",
        "logs",
        "api",
        "--instance",
        "i-1",
        "--tail",
        "1",
    ]);
    let (code, stdout, stderr) = outcome(&run_cli(one).await);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!((stdout.as_str(), stderr.as_str()), ("", "warn: slow\n"));
    let asked = fake.lock().logs_queries.last().cloned().unwrap();
    let query = LogsQuery {
        instance: Some("i-1".into()),
        tail: Some(1),
    };
    assert_eq!(asked, ("api".to_string(), query));

    let (_, stdout, _) = outcome(&run_cli(cli(&["services", "logs", "api", "--json"])).await);
    let logs: ServiceLogs = serde_json::from_str(&stdout).expect("ServiceLogs");
    assert_eq!(logs.instances.len(), 2);

    let (code, _, stderr) = outcome(&run_cli(cli(&["services", "logs", "web"])).await);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not_found"), "{stderr}");

    // --follow: the lines there, then only those added, each once.
    let tmp = tempfile::tempdir().unwrap();
    let printed = tmp.path().join("stdout");
    let mut follow = cli(&["services", "logs", "api", "--follow"]);
    follow
        .stdout(std::fs::File::create(&printed).unwrap())
        .stderr(std::process::Stdio::null());
    let mut child = follow.spawn().unwrap();
    let read = || std::fs::read_to_string(&printed).unwrap();
    eventually("the first lines", || async {
        read().contains("i-1  listening").then_some(())
    })
    .await;
    {
        let mut state = fake.lock();
        let lines = &mut state.service_logs.get_mut("api").unwrap().instances[0].lines;
        // One in the same millisecond as the last line printed, one later.
        lines.push(line(LogStream::Stdout, 20, "same millisecond"));
        lines.push(line(LogStream::Stdout, 30, "later"));
    }
    eventually("the new lines", || async {
        read().contains("i-1  later").then_some(())
    })
    .await;
    // Another round of polls prints nothing again.
    let polls = fake.lock().logs_queries.len();
    eventually("two more polls", || async {
        (fake.lock().logs_queries.len() >= polls + 2).then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        read(),
        "i-1  listening\ni-1  same millisecond\ni-1  later\n"
    );
}
