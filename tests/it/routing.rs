//! The gateway as its users meet it: a real `skyclaw gateway` process routing
//! to endpoints on 127.0.0.1 (node processes, backends in the test, sockets
//! that never answer, services run by a real host) while endpoints die,
//! hang and answer 5xx, coordinators die and gateways are killed; retries
//! only where safe and within the budget; clients that fail over between
//! gateways; slowloris clients cut off.

use crate::common;

use std::time::Duration;

use common::gateway::{Backend, Gateway, HungEndpoint, Load, NodeBackend, QUICK_HEALTH, publish};
use common::services::{NODE_SERVER, node_service, push_file, push_files, wait_deploy};
use common::sockets::Sockets;
use common::*;
use reqwest::Method;
use skyclaw_api::apikeys::Scope;
use skyclaw_api::services::{DeployStatus, ServiceSpec};

/// Clients of the load the tests put on a gateway.
const LOAD_CLIENTS: usize = 8;
/// How long the endpoint takes to answer the request in progress while a
/// gateway stops: long enough for the test to see the gateway refuse new
/// connections before the answer comes.
const ANSWER_DURING_SHUTDOWN: Duration = Duration::from_secs(3);

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// `GET url`: its status and body.
async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    let answer = http.get(url).send().await.expect("the gateway answers");
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap())
}

/// `POST url` with an `Idempotency-Key` when given: its status and body.
async fn post(http: &reqwest::Client, url: &str, key: Option<&str>) -> (u16, String) {
    let mut request = http.post(url).body("payload");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let answer = request.send().await.expect("the gateway answers");
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_killed_under_load_costs_no_request_and_is_readmitted_once_it_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        backends.push(NodeBackend::start(name).await);
    }
    let urls: Vec<String> = backends.iter().map(|b| b.url.clone()).collect();
    let _host = publish(&client, tmp.path(), "web", &urls).await;
    // The gateway holds only a gateway-scoped key.
    let key = api_key(&client, &[Scope::Gateway]).await;
    let gateway = Gateway::start(&coordinator.url, Auth::Key(&key), QUICK_HEALTH).await;
    gateway.wait_up("web", 3).await;

    let load = Load::start(&format!("{}/s/web/", gateway.url), LOAD_CLIENTS);
    for name in ["a", "b", "c"] {
        load.wait_answers(name, 50).await;
    }
    backends[0].kill9();
    eventually("the killed endpoint to be ejected", || async {
        (gateway.counter("ejections", "web").await >= 1.0).then_some(())
    })
    .await;
    eventually("the killed endpoint to be out of use", || async {
        (gateway.endpoints("web", "up").await == 2).then_some(())
    })
    .await;
    load.wait_answers("b", 200).await;
    load.wait_answers("c", 200).await;

    backends[0].restart().await;
    gateway.wait_up("web", 3).await;
    load.wait_answers("a", 50).await;
    let report = load.stop().await;
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        report.failures.len(),
        report.ok + report.failures.len(),
        &report.failures[..report.failures.len().min(10)]
    );
}

#[tokio::test]
async fn a_post_is_retried_on_another_endpoint_only_with_an_idempotency_key() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let (backends, urls) = Backend::all_answering(&["a", "b", "c"], 503).await;
    let _host = publish(&client, tmp.path(), "web", &urls).await;
    let gateway = Gateway::start(&coordinator.url, Auth::Token, &[]).await;
    gateway.wait_up("web", 3).await;
    let (http, url) = (http(), format!("{}/s/web/orders", gateway.url));
    let posts = || -> Vec<_> {
        backends
            .iter()
            .flat_map(|b| b.hits())
            .filter(|h| h.method == Method::POST)
            .collect()
    };

    // Sent once and answered 503: without a key it may have taken effect,
    // so it is not sent again.
    let (status, _) = post(&http, &url, None).await;
    assert_eq!(status, 503);
    assert_eq!(posts().len(), 1, "{:?}", posts());
    assert_eq!(posts()[0].path, "/orders");

    // With a key it is sent to every endpoint in turn, each once.
    let (status, _) = post(&http, &url, Some("order-1")).await;
    assert_eq!(status, 503);
    let sent_to = |key: &str| -> Vec<usize> {
        backends
            .iter()
            .map(|b| {
                b.hits()
                    .iter()
                    .filter(|h| h.idempotency_key.as_deref() == Some(key))
                    .count()
            })
            .collect()
    };
    assert_eq!(sent_to("order-1"), [1, 1, 1]);
    assert_eq!(gateway.counter("retries", "web").await, 2.0);

    // Once one endpoint answers, a keyed POST ends there.
    backends[1].answer(200);
    let (status, body) = post(&http, &url, Some("order-2")).await;
    assert_eq!((status, body.as_str()), (200, "b"));
    let order_2 = sent_to("order-2");
    assert_eq!(order_2[1], 1, "{order_2:?}");
    assert!(order_2.iter().all(|&n| n <= 1), "{order_2:?}");
}

#[tokio::test]
async fn a_hung_endpoint_is_cut_off_by_the_timeout_and_a_slowloris_client_by_the_header_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let hung = HungEndpoint::start().await;
    let urls = [a.url.clone(), hung.url.clone(), b.url.clone()];
    let _host = publish(&client, tmp.path(), "web", &urls).await;
    // Probes far apart: what takes the hung endpoint out is the requests
    // timing out on it, not its probes.
    let gateway = Gateway::start(
        &coordinator.url,
        Auth::Token,
        &[
            "--response-timeout-ms",
            "300",
            "--probe-interval-ms",
            "600000",
            "--header-read-timeout-ms",
            "500",
        ],
    )
    .await;
    gateway.wait_up("web", 3).await;
    let (http, url) = (http(), format!("{}/s/web/", gateway.url));

    let mut answers = Vec::new();
    while gateway.counter("ejections", "web").await < 1.0 {
        assert!(
            answers.len() < 100,
            "the hung endpoint is still in use after {} requests",
            answers.len()
        );
        answers.push(get(&http, &url).await);
    }
    assert!(hung.accepted() >= 1, "no request reached the hung endpoint");
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    assert_eq!(gateway.endpoints("web", "ejected").await, 1);
    for _ in 0..10 {
        assert_eq!(get(&http, &url).await.0, 200);
    }

    // Slowloris: heads that never end, a byte every 100 ms, are closed at
    // the header deadline while other clients are served.
    let mut sockets = Sockets::default();
    sockets.slowloris(&gateway.url, 20, Duration::from_millis(100));
    eventually("the slowloris heads to be sent", || async {
        (sockets.ready() == 20).then_some(())
    })
    .await;
    for _ in 0..10 {
        assert_eq!(get(&http, &url).await.0, 200);
    }
    eventually(
        "the gateway to close every slowloris connection",
        || async { (sockets.closed() == 20).then_some(()) },
    )
    .await;
    let timeouts = gateway
        .metric("skyclaw_gateway_client_header_timeouts_total")
        .await
        .unwrap();
    assert!(timeouts >= 20.0, "{timeouts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_when_every_endpoint_answers_503() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let (backends, urls) = Backend::all_answering(&["a", "b", "c"], 503).await;
    let _host = publish(&client, tmp.path(), "web", &urls).await;
    let gateway = Gateway::start(&coordinator.url, Auth::Token, &["--max-retries", "2"]).await;
    gateway.wait_up("web", 3).await;

    const REQUESTS: usize = 400;
    let url = format!("{}/s/web/", gateway.url);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..LOAD_CLIENTS {
        let (http, url) = (http(), url.clone());
        clients.spawn(async move {
            for _ in 0..REQUESTS / LOAD_CLIENTS {
                assert_eq!(get(&http, &url).await.0, 503);
            }
        });
    }
    clients.join_all().await;

    let attempts: usize = backends.iter().map(|b| b.count(&Method::GET)).sum();
    // Without a budget each request would be tried 3 times. The budget
    // allows a share of the requests in its window plus a floor per second.
    let settings = skyclaw_gateway::RetrySettings::default();
    let window = skyclaw_gateway::RETRY_BUDGET_WINDOW_SECS as usize;
    let allowed = REQUESTS * settings.budget_percent as usize / 100
        + settings.min_retries_per_sec as usize * window;
    assert!(attempts > REQUESTS, "no retry at all: {attempts}");
    assert!(
        attempts <= REQUESTS + allowed,
        "{attempts} attempts for {REQUESTS} requests, more than the budget's {allowed} retries"
    );
    assert_eq!(
        gateway.counter("retries", "web").await as usize,
        attempts - REQUESTS
    );
    assert!(gateway.counter("retry_budget_refusals", "web").await > 0.0);
}

#[tokio::test]
async fn the_gateway_outlives_its_coordinators_and_learns_new_services_from_the_others() {
    let mut cluster = Cluster::start(3, 3, &[]).await;
    let client = cluster.client();
    let a = Backend::start("a").await;
    let publisher = publish(
        &client,
        cluster.tmp.path(),
        "web",
        std::slice::from_ref(&a.url),
    )
    .await;
    // Told of one coordinator only: it learns the others from it.
    let first = cluster.nodes[0].url.clone();
    let gateway = Gateway::start(&first, Auth::Token, &[]).await;
    gateway.wait_up("web", 1).await;
    let http = http();
    assert_eq!(
        get(&http, &format!("{}/s/web/", gateway.url)).await,
        (200, "a".into())
    );

    cluster.nodes[0].kill9();
    assert_eq!(get(&http, &format!("{}/s/web/", gateway.url)).await.0, 200);
    // The new service goes in once the other two have a leader again.
    cluster.leader().await;
    let b = Backend::start("b").await;
    publisher
        .publish(
            &client,
            cluster.tmp.path(),
            "api",
            std::slice::from_ref(&b.url),
        )
        .await;
    eventually("the gateway to route to the new service", || async {
        let answer = get(&http, &format!("{}/s/api/", gateway.url)).await;
        (answer == (200, "b".to_string())).then_some(())
    })
    .await;

    // No coordinator left: it routes on what it knew, and says so.
    cluster.nodes[1].kill9();
    cluster.nodes[2].kill9();
    eventually("the gateway to report its endpoints stale", || async {
        let health = gateway.health().await?;
        (health["status"] == "stale").then_some(())
    })
    .await;
    assert_eq!(
        gateway
            .metric("skyclaw_gateway_endpoints_stale")
            .await
            .unwrap(),
        1.0
    );
    for service in ["web", "api"] {
        let url = format!("{}/s/{service}/", gateway.url);
        assert_eq!(get(&http, &url).await.0, 200, "{service}");
    }
}

#[tokio::test]
async fn skyclaw_call_fails_over_between_gateways_and_never_resends_a_sent_post() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let a = Backend::start("a").await;
    let _host = publish(&client, tmp.path(), "web", std::slice::from_ref(&a.url)).await;
    let mut first = Gateway::start(&coordinator.url, Auth::Token, &[]).await;
    let second = Gateway::start(&coordinator.url, Auth::Token, &[]).await;
    let third = Gateway::start(&coordinator.url, Auth::Token, &[]).await;
    for gateway in [&first, &second, &third] {
        gateway.wait_up("web", 1).await;
    }
    let call = |args: &[&str], gateways: &[&Gateway]| {
        let mut cmd = coordinator.cli_command(&["call", "web"]);
        cmd.args(args);
        for gateway in gateways {
            cmd.args(["--gateway", &gateway.url]);
        }
        run_cli(cmd)
    };

    let (code, stdout, stderr) = outcome(&call(&["/"], &[&first, &second]).await);
    assert_eq!((code, stdout.as_str()), (Some(0), "a"), "{stderr}");
    first.kill9();
    let (code, stdout, stderr) = outcome(&call(&["/"], &[&first, &second]).await);
    assert_eq!((code, stdout.as_str()), (Some(0), "a"), "{stderr}");
    // A POST the dead gateway never got goes to the next one.
    let (code, _, stderr) = outcome(&call(&["/orders", "-X", "POST"], &[&first, &second]).await);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(a.count(&Method::POST), 1);

    // A POST the second gateway sent and got 503 for is not sent again
    // through the third.
    a.answer(503);
    let (code, _, stderr) = outcome(&call(&["/orders", "-X", "POST"], &[&second, &third]).await);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(a.count(&Method::POST), 2, "{:?}", a.hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_and_wasi_http_services_answer_by_host_and_path_and_a_rollout_loses_no_request() {
    let ports = services::service_ports();
    let net = Network::start(
        "node",
        &["--service-ports", &ports, "--shutdown-grace-ms", "5000"],
    )
    .await;
    let client = net.client();
    let bundle = push_files(&client, net.tmp.path(), &[("server.js", NODE_SERVER)]).await;
    let mut web = node_service(&bundle, &["server.js"], 2);
    web.env.insert("VERSION".into(), "1".into());
    client.put_service("web", &web).await.unwrap();
    let wasm = push_file(&client, &guests::guest("service")).await;
    let hello: ServiceSpec =
        serde_json::from_value(serde_json::json!({"kind": "wasi-http", "artifact": wasm})).unwrap();
    client.put_service("hello", &hello).await.unwrap();
    wait_deploy(&client, "web", 1, DeployStatus::Done).await;
    wait_deploy(&client, "hello", 1, DeployStatus::Done).await;
    let gateway = Gateway::start(
        &net.coordinator.url,
        Auth::Token,
        &["--domain", "skyclaw.test"],
    )
    .await;
    gateway.wait_up("web", 2).await;
    gateway.wait_up("hello", 1).await;

    let http = http();
    let by_host = |service: &str, path: &str| {
        http.get(format!("{}{path}", gateway.url))
            .header("host", format!("{service}.skyclaw.test"))
            .send()
    };
    assert_eq!(
        get(&http, &format!("{}/s/web/", gateway.url)).await,
        (200, "v1".into())
    );
    let answer = by_host("web", "/").await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "v1");
    assert_eq!(
        get(&http, &format!("{}/s/hello/hello", gateway.url)).await,
        (200, "hello from a wasi:http guest".into())
    );
    let answer = by_host("hello", "/hello").await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "hello from a wasi:http guest");
    let (status, body) = get(&http, &format!("{}/s/nothing/", gateway.url)).await;
    assert_eq!(status, 404);
    assert!(body.contains("nothing"), "{body}");

    // v1 -> v2 under load through the gateway.
    let load = Load::start(&format!("{}/s/web/", gateway.url), LOAD_CLIENTS);
    load.wait_answers("v1", 50).await;
    web.env.insert("VERSION".into(), "2".into());
    client.put_service("web", &web).await.unwrap();
    wait_deploy(&client, "web", 2, DeployStatus::Done).await;
    load.wait_answers("v2", 100).await;
    let report = load.stop().await;
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        report.failures.len(),
        report.ok + report.failures.len(),
        &report.failures[..report.failures.len().min(10)]
    );
    assert_eq!(report.bodies.len(), 2, "{:?}", report.bodies);
}

#[tokio::test]
async fn a_stopped_gateway_stops_accepting_finishes_requests_within_its_grace_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let backend = Backend::start("a").await;
    backend.delay(ANSWER_DURING_SHUTDOWN);
    let _host = publish(
        &client,
        tmp.path(),
        "web",
        std::slice::from_ref(&backend.url),
    )
    .await;

    // A grace longer than the answer takes: the answer is passed on.
    let stopped = stop_during_a_request(&coordinator, &backend, ANSWER_DURING_SHUTDOWN * 4).await;
    assert!(
        stopped.status.success(),
        "the gateway exits 0 once drained: {:?}",
        stopped.status
    );
    assert!(
        stopped.refused_while_draining,
        "new connections are refused while it drains"
    );
    let answer = stopped.answer.expect("the request in progress is answered");
    assert_eq!(answer, (200, "a".to_string()));

    // A grace shorter than that: the gateway stops waiting, still exits 0,
    // and the client sees its answer cut off rather than a made-up one.
    let stopped = stop_during_a_request(&coordinator, &backend, ANSWER_DURING_SHUTDOWN / 10).await;
    assert!(
        stopped.status.success(),
        "the gateway exits 0 after its grace: {:?}",
        stopped.status
    );
    assert!(stopped.answer.is_err(), "{:?}", stopped.answer);
}

/// How a gateway stopped during a request went.
struct Stopped {
    status: std::process::ExitStatus,
    /// It refused a new connection while the request was still in progress.
    refused_while_draining: bool,
    /// What the client of that request got.
    answer: Result<(u16, String), reqwest::Error>,
}

/// Starts a gateway with `grace`, sends it one request for `backend`, and
/// stops the gateway with SIGTERM while the backend holds that request.
async fn stop_during_a_request(
    coordinator: &Coordinator,
    backend: &Backend,
    grace: Duration,
) -> Stopped {
    let grace_ms = grace.as_millis().to_string();
    let gateway = Gateway::start(
        &coordinator.url,
        Auth::Token,
        &["--shutdown-grace-ms", &grace_ms],
    )
    .await;
    gateway.wait_up("web", 1).await;
    let address = gateway.url.trim_start_matches("http://").to_string();
    let url = format!("{}/s/web/slow", gateway.url);
    let seen = backend.hits().len();
    let request = tokio::spawn(async move {
        let answer = http().get(url).send().await?;
        let status = answer.status().as_u16();
        Ok((status, answer.text().await?))
    });
    eventually("the request to reach the endpoint", || async {
        (backend.hits().len() > seen).then_some(())
    })
    .await;
    let stopping = tokio::task::spawn_blocking(move || gateway.terminate());
    eventually("the stopping gateway to refuse connections", || async {
        tokio::net::TcpStream::connect(&address)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let refused_while_draining = !request.is_finished();
    Stopped {
        status: stopping.await.unwrap(),
        refused_while_draining,
        answer: request.await.unwrap(),
    }
}
