//! The service protocol of a coordinator, through its HTTP API with hosts
//! played by the test: deploys placed by the leader, assignments long-polled
//! by hosts, reports that make instances routable, the endpoint set and its
//! index, ownership by API keys, waiting reasons, and instances placed again
//! when their host goes down.

use crate::common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use skyclaw_api::services::{
    DeployOutcome, InstanceReport, InstanceReports, InstanceState, ServiceCaps, ServiceSpec,
};

/// Hosts go down one second after their last beat, so replacing a lost
/// instance takes about that long.
const SHORT_TTL: [&str; 2] = ["--host-ttl-ms", "1000"];
const HEARTBEAT: Duration = Duration::from_millis(200);

/// A registered host that runs services with `node`, kept live by the test.
async fn service_host(client: &skyclaw_api::Client, id: &str) -> tokio::task::JoinHandle<()> {
    let mut registration = fake_host(id, &["shell"]);
    registration.allowed_commands = vec!["node".into()];
    registration.services = Some(ServiceCaps {
        max_instances: 4,
        control_url: None,
    });
    keep_live(client, &registration, HEARTBEAT).await
}

/// Uploads a (tiny, empty) tar archive and returns its digest.
async fn push_bundle(client: &skyclaw_api::Client, dir: &std::path::Path) -> String {
    let mut tar = vec![0u8; 1024];
    tar[..4].copy_from_slice(b"app/");
    tar[257..262].copy_from_slice(b"ustar");
    let path = dir.join("bundle.tar");
    std::fs::write(&path, tar).unwrap();
    let (info, _) = client.put_artifact(&path).await.unwrap();
    info.digest.to_string()
}

fn native(digest: &str, args: &[&str], replicas: u32) -> String {
    json!({
        "kind": "native", "artifact": digest, "command": "node", "args": args,
        "replicas": replicas
    })
    .to_string()
}

/// Waits until `host` is assigned an instance that is not to stop, and
/// returns its id.
async fn assigned(api: &RawApi, host: &str) -> String {
    eventually(&format!("{host} to be assigned an instance"), || async {
        let path = format!("/v1/hosts/{host}/assignments");
        let (status, body) = api.json("GET", &path, Auth::Token, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["instances"]
            .as_array()?
            .iter()
            .find(|i| i["stop"] == false)
            .map(|i| i["instance_id"].as_str().unwrap().to_string())
    })
    .await
}

async fn report(api: &RawApi, host: &str, instance: &str, state: &str, port: u16) -> StatusCode {
    let body = json!({"reports": [{
        "instance_id": instance, "state": state,
        "endpoint": format!("http://127.0.0.1:{port}"), "restarts": 0
    }]})
    .to_string();
    let path = format!("/v1/hosts/{host}/instances");
    api.json("POST", &path, Auth::Token, Some(&body)).await.0
}

async fn service(api: &RawApi, name: &str) -> Value {
    let (status, body) = api
        .json("GET", &format!("/v1/services/{name}"), Auth::Token, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn a_deploy_is_placed_reported_healthy_and_published_to_watchers() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let api = RawApi::new(&coordinator.url);
    let _host = service_host(&client, "h1").await;
    let digest = push_bundle(&client, tmp.path()).await;

    let spec = native(&digest, &["server.js"], 1);
    let (status, deployed) = api
        .json("PUT", "/v1/services/api", Auth::Token, Some(&spec))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{deployed}");
    assert_eq!(deployed["outcome"], "created");
    assert_eq!(deployed["service"]["deploy"]["status"], "rolling");

    let instance = assigned(&api, "h1").await;
    let (_, before) = api.json("GET", "/v1/endpoints", Auth::Token, None).await;
    let index = before["index"].as_u64().unwrap();
    assert_eq!(before["services"][0]["endpoints"], json!([]));
    // A gateway watching the endpoints hears of the instance once it is healthy.
    let watcher = {
        let client = client.clone();
        tokio::spawn(async move { client.endpoints(Some(index), DEADLINE).await })
    };
    let starting = report(&api, "h1", &instance, "starting", 4001).await;
    assert_eq!(starting, StatusCode::NO_CONTENT);
    let healthy = InstanceReports {
        reports: vec![InstanceReport {
            instance_id: instance.clone(),
            state: InstanceState::Healthy,
            endpoint: Some("http://127.0.0.1:4001".into()),
            restarts: 0,
            last_error: None,
        }],
    };
    client.report_instances("h1", &healthy).await.unwrap();
    let watched = watcher.await.unwrap().unwrap();
    assert!(watched.index > index, "{watched:?}");
    assert_eq!(
        watched.services[0].endpoints[0].url,
        "http://127.0.0.1:4001"
    );
    let assigned = client.assignments("h1", None, DEADLINE).await.unwrap();
    assert_eq!(assigned.instances[0].instance_id, instance);

    eventually("the rollout to be done", || async {
        (service(&api, "api").await["deploy"]["status"] == "done").then_some(())
    })
    .await;
    let spec: ServiceSpec = serde_json::from_str(&spec).unwrap();
    let again = client.put_service("api", &spec).await.unwrap();
    assert_eq!(again.outcome, DeployOutcome::Unchanged);
    assert_eq!(again.service.current.version, 1);

    // A report from a host that does not hold the instance changes nothing.
    let _other = service_host(&client, "h2").await;
    report(&api, "h2", &instance, "stopped", 4001).await;
    let instances = service(&api, "api").await["instances"].clone();
    assert_eq!(instances[0]["state"], "healthy", "{instances}");
}

#[tokio::test]
async fn keys_deploy_only_with_their_scope_and_manage_only_their_services() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let api = RawApi::new(&coordinator.url);
    let digest = push_bundle(&client, tmp.path()).await;
    let key = |scopes: &[&str]| {
        let api = RawApi::new(&coordinator.url);
        let body = json!({"name": "ci", "scopes": scopes}).to_string();
        async move {
            let (status, created) = api
                .json("POST", "/v1/apikeys", Auth::Token, Some(&body))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{created}");
            created["secret"].as_str().unwrap().to_string()
        }
    };
    let reader = key(&["services:read"]).await;
    let ci = key(&["services:deploy"]).await;
    let other = key(&["services:deploy"]).await;
    let spec = native(&digest, &[], 1);

    let (status, refused) = api
        .json("PUT", "/v1/services/web", Auth::Key(&reader), Some(&spec))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("services:deploy")
    );
    let (status, _) = api
        .json("PUT", "/v1/services/web", Auth::Key(&ci), Some(&spec))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, taken) = api
        .json("PUT", "/v1/services/web", Auth::Key(&other), Some(&spec))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{taken}");
    let (status, _) = api
        .json("GET", "/v1/services/web", Auth::Key(&other), None)
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another key's service is not there"
    );
    let (_, listed) = api
        .json("GET", "/v1/services", Auth::Key(&other), None)
        .await;
    assert_eq!(listed["services"], json!([]));
    let (_, listed) = api.json("GET", "/v1/services", Auth::Token, None).await;
    assert_eq!(listed["services"][0]["name"], "web");

    let (status, bad) = api
        .json("PUT", "/v1/services/Web_1", Auth::Token, Some(&spec))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    let unknown = json!({"kind": "native", "artifact": digest, "command": "node", "replica": 2});
    let (status, bad) = api
        .json(
            "PUT",
            "/v1/services/x",
            Auth::Token,
            Some(&unknown.to_string()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("replica"),
        "{bad}"
    );
    let wasm = json!({"kind": "wasi-http", "artifact": digest}).to_string();
    let (status, bad) = api
        .json("PUT", "/v1/services/x", Auth::Token, Some(&wasm))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("bundle"),
        "{bad}"
    );

    let (status, _) = api
        .json("DELETE", "/v1/services/web", Auth::Key(&other), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let ci_client = skyclaw_api::Client::new(
        std::slice::from_ref(&coordinator.url),
        skyclaw_api::Credentials::ApiKey(ci.clone()),
    )
    .unwrap();
    assert_eq!(ci_client.list_services().await.unwrap().services.len(), 1);
    let scaled = ci_client.scale_service("web", 3).await.unwrap();
    assert_eq!(scaled.replicas, 3);
    ci_client.delete_service("web").await.unwrap();
    let gone = ci_client.get_service("web").await.unwrap_err();
    assert_eq!(
        gone.code(),
        Some(skyclaw_api::ErrorCode::NotFound),
        "{gone}"
    );
}

#[tokio::test]
async fn a_service_says_why_it_waits_and_moves_off_a_host_that_goes_down() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &SHORT_TTL).await;
    let client = coordinator.client();
    let api = RawApi::new(&coordinator.url);
    let digest = push_bundle(&client, tmp.path()).await;
    let spec = native(&digest, &[], 1);
    api.json("PUT", "/v1/services/api", Auth::Token, Some(&spec))
        .await;
    eventually("the service to say why it waits", || async {
        let reason = service(&api, "api").await["waiting_reason"].clone();
        (reason == "no live host runs services").then_some(())
    })
    .await;

    let first = service_host(&client, "h1").await;
    let instance = assigned(&api, "h1").await;
    report(&api, "h1", &instance, "healthy", 4001).await;
    assert_eq!(service(&api, "api").await["waiting_reason"], Value::Null);
    let _second = service_host(&client, "h2").await;

    first.abort();
    let moved = assigned(&api, "h2").await;
    assert_ne!(moved, instance);
    let lost = service(&api, "api").await["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == instance.as_str())
        .cloned()
        .unwrap();
    assert_eq!(lost["state"], "stopped", "{lost}");
    assert!(
        lost["last_error"].as_str().unwrap().contains("h1"),
        "{lost}"
    );
}
