//! Services run by real hosts: native instances started from uploaded
//! bundles, probed, restarted when killed, rolled out with no failed request,
//! kept at the old version when the new one crashes, and placed elsewhere
//! when their host dies; their logs and the host's metrics.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::services::*;
use common::*;
use skyclaw_api::services::{DeployStatus, InstanceState, LogsQuery};

/// A host that runs `node` services, with a grace period short enough for tests.
fn service_host_args(ports: &str) -> Vec<String> {
    vec![
        "--service-ports".into(),
        ports.into(),
        "--shutdown-grace-ms".into(),
        "5000".into(),
    ]
}

/// A one-host network whose host runs `web` (one instance of
/// [`NODE_SERVER`]), deployed and healthy; the host's arguments.
async fn network_serving_web() -> (Network, Vec<String>) {
    let ports = service_ports();
    let args = service_host_args(&ports);
    let net = Network::start("node", &strs(&args)).await;
    let client = net.client();
    let bundle = push_files(&client, net.tmp.path(), &[("server.js", NODE_SERVER)]).await;
    client
        .put_service("web", &node_service(&bundle, &["server.js"], 1))
        .await
        .unwrap();
    wait_deploy(&client, "web", 1, DeployStatus::Done).await;
    (net, args)
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn native_instances_restart_roll_out_and_survive_a_crashing_version() {
    let ports = service_ports();
    let args = service_host_args(&ports);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let net = Network::start("node", &args).await;
    let client = net.client();
    let marker = format!("marker-{}", std::process::id());
    let bundle = push_files(&client, net.tmp.path(), &[("server.js", NODE_SERVER)]).await;

    let mut spec = node_service(&bundle, &["server.js", &marker], 2);
    spec.env.insert("VERSION".into(), "1".into());
    client.put_service("web", &spec).await.unwrap();
    let service = wait_deploy(&client, "web", 1, DeployStatus::Done).await;
    let endpoints = healthy_endpoints(&service, 1);
    assert_eq!(endpoints.len(), 2, "{service:#?}");
    for endpoint in &endpoints {
        assert_eq!(get_text(endpoint, "/").await.unwrap(), (200, "v1".into()));
    }

    // kill -9 one instance's process: it is restarted, counted, and serves.
    let pids = wait_processes(&marker, 2).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let restarted = eventually("the killed instance to serve again", || async {
        let service = client.get_service("web").await.ok()?;
        let healthy = healthy_endpoints(&service, 1);
        let restarts: u32 = service.instances.iter().map(|i| i.restarts).sum();
        (restarts == 1 && healthy.len() == 2).then_some(service)
    })
    .await;
    let again = restarted
        .instances
        .iter()
        .find(|i| i.restarts == 1)
        .unwrap();
    assert!(
        again
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("SIGKILL"),
        "{again:?}"
    );
    assert_eq!(
        get_text(again.endpoint.as_deref().unwrap(), "/")
            .await
            .unwrap()
            .1,
        "v1"
    );

    // Logs come from the host through the coordinator.
    let logs = client
        .service_logs("web", &LogsQuery::default())
        .await
        .unwrap();
    assert_eq!(logs.instances.len(), 2, "{logs:?}");
    for instance in &logs.instances {
        assert!(
            instance
                .lines
                .iter()
                .any(|l| l.text.starts_with("listening on 127.0.0.1:")),
            "{instance:?}"
        );
    }

    // v1 -> v2 while a client requests every listed endpoint: no request fails.
    let load = Load::start(&client).await;
    spec.env.insert("VERSION".into(), "2".into());
    client.put_service("web", &spec).await.unwrap();
    let service = wait_deploy(&client, "web", 2, DeployStatus::Done).await;
    eventually("the endpoint set to hold only v2", || async {
        let set = client.endpoints(None, Duration::ZERO).await.ok()?;
        let web = set.services.iter().find(|s| s.name == "web")?;
        (web.endpoints.len() == 2 && web.endpoints.iter().all(|e| e.version == 2)).then_some(())
    })
    .await;
    let (answers, failures) = load.finish().await;
    assert_eq!(failures, 0, "failed requests during the rollout");
    assert!(answers.len() > 20, "only {} requests made", answers.len());
    assert!(answers.iter().any(|a| a == "v1") && answers.iter().any(|a| a == "v2"));
    assert_eq!(answers.last().map(String::as_str), Some("v2"));
    for endpoint in healthy_endpoints(&service, 2) {
        assert_eq!(get_text(&endpoint, "/").await.unwrap().1, "v2");
    }

    // v3 crashes at start: its rollout fails with the crash output, and v2
    // keeps serving at full replicas.
    spec.args = vec!["crash.js".into(), marker.clone()];
    let crash = "console.error('boom: v3 cannot start'); process.exit(3);";
    spec.artifact = push_files(&client, net.tmp.path(), &[("crash.js", crash)])
        .await
        .parse()
        .unwrap();
    client.put_service("web", &spec).await.unwrap();
    let failed = wait_deploy(&client, "web", 3, DeployStatus::Failed).await;
    let reason = failed.deploy.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("exited with code 3") && reason.contains("boom: v3 cannot start"),
        "{reason}"
    );
    let settled = eventually("v3's instances to be gone", || async {
        let service = client.get_service("web").await.ok()?;
        service
            .instances
            .iter()
            .filter(|i| i.version == 3)
            .all(|i| i.state.is_terminal())
            .then_some(service)
    })
    .await;
    assert_eq!(healthy_endpoints(&settled, 2).len(), 2, "{settled:#?}");

    // The host's own listener: its health and its metrics.
    let hosts = client.list_hosts().await.unwrap();
    let url = hosts.hosts[0]
        .services
        .as_ref()
        .and_then(|s| s.control_url.clone())
        .expect("the host says where it listens");
    assert_eq!(get_text(&url, "/health").await.unwrap().0, 200);
    let healthy = metric(&url, "skyclaw_host_instances{state=\"healthy\"}").await;
    assert_eq!(healthy, Some(2.0));
    let restarts = metric(&url, "skyclaw_host_instance_restarts_total").await;
    assert!(restarts.unwrap_or(0.0) >= 1.0, "{restarts:?}");
}

/// A client requesting every endpoint of `web` the endpoint set lists, again
/// and again, counting failures and keeping the answers in order.
struct Load {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<String>>>,
    failures: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    /// Starts the load and returns once it has had answers.
    async fn start(client: &skyclaw_api::Client) -> Load {
        let (stop, answers, failures) = (Arc::default(), Arc::default(), Arc::default());
        let task = tokio::spawn(request_endpoints(
            client.clone(),
            Arc::clone(&stop),
            Arc::clone(&answers),
            Arc::clone(&failures),
        ));
        let load = Load {
            stop,
            answers,
            failures,
            task,
        };
        eventually("the load to get answers", || async {
            (load.answers.lock().unwrap().len() >= 5).then_some(())
        })
        .await;
        load
    }

    /// Stops the load: the answers it had, and how many requests failed.
    async fn finish(self) -> (Vec<String>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let answers = std::mem::take(&mut *self.answers.lock().unwrap());
        (answers, self.failures.load(Ordering::Relaxed))
    }
}

async fn request_endpoints(
    client: skyclaw_api::Client,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<String>>>,
    failures: Arc<AtomicU64>,
) {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    while !stop.load(Ordering::Relaxed) {
        let Ok(set) = client.endpoints(None, Duration::ZERO).await else {
            continue;
        };
        let urls: Vec<String> = set
            .services
            .iter()
            .filter(|s| s.name == "web")
            .flat_map(|s| s.endpoints.iter().map(|e| e.url.clone()))
            .collect();
        for url in urls {
            match http.get(&url).timeout(Duration::from_secs(5)).send().await {
                Ok(answer) if answer.status().is_success() => {
                    let text = answer.text().await.unwrap_or_default();
                    answers.lock().unwrap().push(text);
                }
                Ok(answer) => {
                    eprintln!("{url} answered {}", answer.status());
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    eprintln!("{url}: {e}");
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[tokio::test]
async fn hostile_bundles_are_refused_naming_the_entry_and_write_nothing_outside() {
    let ports = service_ports();
    let args = service_host_args(&ports);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let net = Network::start("node", &args).await;
    let client = net.client();
    let pid = std::process::id();
    let absolute = format!("/tmp/skyclaw-absolute-{pid}");
    let file = |name| RawEntry {
        name,
        kind: b'0',
        link: "",
        data: b"x",
    };
    let link = |name, kind, link| RawEntry {
        name,
        kind,
        link,
        data: b"",
    };
    let many: Vec<String> = (0..=skyclaw_runtime::bundle::MAX_BUNDLE_ENTRIES)
        .map(|i| format!("f{i}"))
        .collect();
    let cases: Vec<(&str, Vec<RawEntry<'_>>, &str)> = vec![
        ("dotdot", vec![file("../../escaped")], "../../escaped"),
        ("absolute", vec![file(&absolute)], &absolute),
        (
            "symlink",
            vec![link("out", b'2', "../../.."), file("out/escaped")],
            "out",
        ),
        (
            "hardlink",
            vec![link("passwd", b'1', "/etc/passwd")],
            "passwd",
        ),
        ("device", vec![link("tty", b'3', "")], "tty"),
        ("fifo", vec![link("pipe", b'6', "")], "pipe"),
        (
            "many",
            many.iter().map(|name| file(name)).collect(),
            "entries",
        ),
    ];
    for (name, entries, named) in cases {
        let path = net.tmp.path().join(format!("{name}.tar"));
        std::fs::write(&path, raw_tar(&entries)).unwrap();
        let digest = push_file(&client, &path).await;
        client
            .put_service(name, &node_service(&digest, &["server.js"], 1))
            .await
            .unwrap();
        let failed = wait_deploy(&client, name, 1, DeployStatus::Failed).await;
        let reason = failed.deploy.reason.unwrap_or_default();
        assert!(
            reason.contains("refused") && reason.contains(named),
            "{name}: {reason}"
        );
    }
    let host_dir = &net.host.dir;
    for dir in [
        host_dir.join("services"),
        host_dir.clone(),
        net.tmp.path().to_path_buf(),
    ] {
        assert!(
            !dir.join("escaped").exists(),
            "{} holds an escaped file",
            dir.display()
        );
    }
    assert!(!std::path::Path::new(&absolute).exists());
    let left: Vec<_> = std::fs::read_dir(host_dir.join("services"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "instance directories left: {left:?}");
}

#[tokio::test]
async fn instances_of_a_lost_host_are_placed_on_another_and_sandboxed_hosts_run_no_native_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator =
        Coordinator::start(&tmp.path().join("coord"), &["--host-ttl-ms", "1000"]).await;
    let client = coordinator.client();
    let sandboxed_ports = service_ports();
    let sandboxed = Host::start_sandboxed(
        &coordinator.url,
        &tmp.path().join("sandboxed"),
        &["--service-ports", &sandboxed_ports],
    );
    host_up(&client, &sandboxed.id().await).await;
    let bundle = push_files(&client, tmp.path(), &[("server.js", NODE_SERVER)]).await;
    client
        .put_service("web", &node_service(&bundle, &["server.js"], 1))
        .await
        .unwrap();
    let waiting = eventually("the service to say why it waits", || async {
        let service = client.get_service("web").await.ok()?;
        service.waiting_reason
    })
    .await;
    assert!(waiting.contains("node"), "{waiting}");

    let args = |ports: &str| service_host_args(ports);
    let (ports_a, ports_b) = (service_ports(), service_ports());
    let (args_a, args_b) = (args(&ports_a), args(&ports_b));
    let mut a = Host::start(
        &coordinator.url,
        &tmp.path().join("a"),
        "node",
        &strs(&args_a),
    );
    let a_id = a.id().await;
    host_up(&client, &a_id).await;
    let first = wait_deploy(&client, "web", 1, DeployStatus::Done).await;
    assert_eq!(first.instances[0].host_id, a_id);

    let b = Host::start(
        &coordinator.url,
        &tmp.path().join("b"),
        "node",
        &strs(&args_b),
    );
    let b_id = b.id().await;
    host_up(&client, &b_id).await;
    a.kill9();
    let moved = eventually("the instance to serve from host b", || async {
        let service = client.get_service("web").await.ok()?;
        service
            .instances
            .iter()
            .find(|i| i.host_id == b_id && i.state == InstanceState::Healthy)
            .and_then(|i| i.endpoint.clone())
    })
    .await;
    assert_eq!(get_text(&moved, "/").await.unwrap(), (200, "v1".into()));
    let service = client.get_service("web").await.unwrap();
    let sandboxed_id = sandboxed.id().await;
    assert!(
        service.instances.iter().all(|i| i.host_id != sandboxed_id),
        "{service:#?}"
    );
    drop(b);
}

#[tokio::test]
async fn a_host_shutting_down_unpublishes_its_instances_takes_no_new_ones_and_they_move() {
    let (mut net, _) = network_serving_web().await;
    let client = net.client();
    let first_host = net.host_id.clone();
    // A second host, where the instance goes when the first drains.
    let other_ports = service_ports();
    let other_args = service_host_args(&other_ports);
    let other = Host::start(
        &net.coordinator.url,
        &net.tmp.path().join("other"),
        "node",
        &strs(&other_args),
    );
    let other_id = other.id().await;
    host_up(&client, &other_id).await;
    let load = Load::start(&client).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = net.host.terminate();
        (net, status)
    });
    let stopped = eventually("the instance to be reported stopped", || async {
        let service = client.get_service("web").await.ok()?;
        let instance = service.instances.iter().find(|i| i.host_id == first_host)?;
        (instance.state == InstanceState::Stopped).then_some(())
    });
    stopped.await;
    let (_net, status) = status.await.unwrap();
    assert!(status.success(), "host exited with {status}");
    let moved = eventually("the instance to serve from the other host", || async {
        let service = client.get_service("web").await.ok()?;
        let healthy = service
            .instances
            .iter()
            .any(|i| i.host_id == other_id && i.state == InstanceState::Healthy);
        healthy.then_some(service)
    })
    .await;
    let on_first = moved
        .instances
        .iter()
        .filter(|i| i.host_id == first_host)
        .count();
    assert_eq!(
        on_first, 1,
        "nothing was placed on the draining host: {moved:#?}"
    );
    let (answers, failures) = load.finish().await;
    assert!(!answers.is_empty());
    assert_eq!(failures, 0, "requests failed during the drain");
}

/// Copies `examples/NAME` into `dir`, leaving out what a build made there.
fn copy_example(name: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let to = dir.join(name);
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(&from)
        .arg(&to)
        .status()
        .unwrap();
    assert!(status.success());
    for built in ["node_modules", "dist", "target"] {
        let _ = std::fs::remove_dir_all(to.join(built));
    }
    to
}

#[tokio::test]
async fn the_ts_api_example_deploys_answers_and_redeploys_as_a_no_op() {
    let ports = service_ports();
    let args = service_host_args(&ports);
    let net = Network::start("node", &strs(&args)).await;
    let dir = copy_example("ts-api", net.tmp.path());
    let dir_arg = dir.to_str().unwrap();

    let (code, stdout, stderr) = outcome(&net.cli(&["deploy", dir_arg]));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("uploaded"), "{stderr}");
    let service = net.client().get_service("ts-api").await.unwrap();
    let endpoints = healthy_endpoints(&service, 1);
    assert_eq!(endpoints.len(), 2, "{service:#?}");
    for endpoint in &endpoints {
        let (status, body) = get_text(endpoint, "/hello?name=skyclaw").await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("hello, skyclaw"), "{body}");
    }

    let (code, stdout, stderr) = outcome(&net.cli(&["deploy", dir_arg]));
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("not uploaded"), "{stderr}");
    assert!(stderr.contains("is unchanged"), "{stderr}");
    let again = net.client().get_service("ts-api").await.unwrap();
    assert_eq!(again.current.version, 1);
}

/// A plain HTTP server on 127.0.0.1 answering every request with `body`; its
/// base URL. Serves until the test process ends.
async fn local_server(body: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(move || async move { body });
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_sandboxed_host_serves_wasi_http_with_per_request_limits_and_outbound_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let ports = service_ports();
    let host = Host::start_sandboxed(
        &coordinator.url,
        &tmp.path().join("host"),
        &["--service-ports", &ports],
    );
    host_up(&client, &host.id().await).await;
    let allowed = local_server("from the allowed server").await;
    let other = local_server("from another server").await;

    // hello-http, deployed as a user would: its own manifest, its component
    // built by the kit (the manifest's [build] is the same cargo build).
    let dir = copy_example("hello-http", tmp.path());
    let manifest = std::fs::read_to_string(dir.join("skyclaw.toml")).unwrap();
    let (service_part, _build) = manifest.split_once("[build]").expect("a [build] section");
    std::fs::write(dir.join("skyclaw.toml"), service_part).unwrap();
    let wasm_line = service_part
        .lines()
        .find(|l| l.trim_start().starts_with("wasm"))
        .unwrap();
    let wasm_path = wasm_line.split('"').nth(1).unwrap();
    std::fs::create_dir_all(dir.join(wasm_path).parent().unwrap()).unwrap();
    std::fs::copy(example("hello-http"), dir.join(wasm_path)).unwrap();
    let mut deploy = coordinator.cli_command(&["deploy", dir.to_str().unwrap()]);
    let (code, stdout, stderr) = outcome(&deploy.output().unwrap());
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let hello = client.get_service("hello-http").await.unwrap();
    let endpoint = healthy_endpoints(&hello, 1)
        .pop()
        .expect("a healthy instance");
    let (status, body) = get_text(&endpoint, "/").await.unwrap();
    assert_eq!(status, 200, "{body}");

    // The test guest, with small limits and one allowed outbound host.
    let guest = push_file(&client, &guest("service")).await;
    let spec: skyclaw_api::services::ServiceSpec = serde_json::from_value(serde_json::json!({
        "kind": "wasi-http", "artifact": guest,
        "limits": {"timeout_ms": 1000, "memory_mb": 32},
        "allowed_outbound_hosts": [allowed.clone()],
    }))
    .unwrap();
    client.put_service("guest", &spec).await.unwrap();
    let service = wait_deploy(&client, "guest", 1, DeployStatus::Done).await;
    let endpoint = healthy_endpoints(&service, 1).pop().unwrap();

    let looping = tokio::spawn({
        let endpoint = endpoint.clone();
        async move { get_text(&endpoint, "/loop").await }
    });
    let mut healthy = Vec::new();
    for _ in 0..10 {
        healthy.push(get_text(&endpoint, "/health").await.unwrap());
    }
    assert!(
        healthy.iter().all(|(status, _)| *status == 200),
        "{healthy:?}"
    );
    let (status, body) = looping.await.unwrap().unwrap();
    assert!(status == 504 || status == 500, "{status} {body}");

    let (status, body) = get_text(&endpoint, "/alloc?mb=64").await.unwrap();
    assert_eq!(status, 500, "{body}");
    assert_eq!(get_text(&endpoint, "/alloc?mb=4").await.unwrap().0, 200);

    let fetched = get_text(&endpoint, &format!("/fetch?url={allowed}/"))
        .await
        .unwrap();
    assert_eq!(fetched, (200, "from the allowed server".into()));
    let (status, body) = get_text(&endpoint, &format!("/fetch?url={other}/"))
        .await
        .unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("denied") || body.contains("Denied"), "{body}");

    // A native service finds no host here: the sandboxed host runs none.
    let bundle = push_files(&client, tmp.path(), &[("server.js", NODE_SERVER)]).await;
    client
        .put_service("native", &node_service(&bundle, &["server.js"], 1))
        .await
        .unwrap();
    let waiting = eventually("the native service to say why it waits", || async {
        client.get_service("native").await.ok()?.waiting_reason
    })
    .await;
    assert!(waiting.contains("node"), "{waiting}");

    // The host counts what its wasi-http instances answered.
    let hosts = client.list_hosts().await.unwrap();
    let url = hosts.hosts[0]
        .services
        .as_ref()
        .unwrap()
        .control_url
        .clone()
        .unwrap();
    let ok = metric(
        &url,
        "skyclaw_host_wasi_http_requests_total{status=\"200\"}",
    )
    .await;
    assert!(ok.unwrap_or(0.0) >= 10.0, "{ok:?}");
    drop(host);
}

#[tokio::test]
async fn a_restarted_host_runs_its_services_again() {
    let (mut net, args) = network_serving_web().await;
    let client = net.client();
    let first = client.get_service("web").await.unwrap();
    let before = first.instances[0].id.clone();

    // The only host dies and comes back (a new incarnation of the same host):
    // its old instance ended with it, and a new one is placed on it.
    net.host.kill9();
    let dir = net.host.dir.clone();
    net.host = Host::start(&net.coordinator.url, &dir, "node", &strs(&args));
    let endpoint = eventually("a new instance to serve on the restarted host", || async {
        let service = client.get_service("web").await.ok()?;
        service
            .instances
            .iter()
            .find(|i| i.id != before && i.state == InstanceState::Healthy)
            .and_then(|i| i.endpoint.clone())
    })
    .await;
    assert_eq!(get_text(&endpoint, "/").await.unwrap(), (200, "v1".into()));
    let service = client.get_service("web").await.unwrap();
    let old = service.instances.iter().find(|i| i.id == before).unwrap();
    assert_eq!(old.state, InstanceState::Stopped, "{old:?}");
}
