//! Gateways as the coordinators see them: a `gateway`-scoped key reads the
//! endpoints and registers its gateway with heartbeats that expire, anyone
//! with a valid key lists the live ones, and that key can do nothing else,
//! neither through the HTTP API nor through the CLI a hostile operator
//! would point at it.

use crate::common;

use common::services::{node_service, push_files};
use common::*;
use reqwest::StatusCode;
use serde_json::json;
use skyclaw_api::apikeys::Scope;
use skyclaw_api::gateways::GATEWAY_TTL_MS;

#[tokio::test]
async fn a_gateway_key_reads_endpoints_and_registers_but_may_do_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let api = RawApi::new(&coordinator.url);
    let bundle = push_files(&client, tmp.path(), &[("server.js", "")]).await;
    let mut spec = node_service(&bundle, &["server.js"], 1);
    spec.health.path = "/ready".into();
    client.put_service("web", &spec).await.unwrap();
    let _host = FakeServiceHost::start(&client, "h1", |_| Serve::Healthy).await;
    let gateway = api_key(&client, &[Scope::Gateway]).await;
    let other_gateway = api_key(&client, &[Scope::Gateway]).await;
    let reader = api_key(&client, &[Scope::JobsRead]).await;

    let endpoints = eventually("web's endpoint to be listed", || async {
        let (status, body) = api
            .json("GET", "/v1/endpoints", Auth::Key(&gateway), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (body["services"][0]["endpoints"].as_array()?.len() == 1).then_some(body)
    })
    .await;
    assert_eq!(endpoints["services"][0]["name"], "web");
    assert_eq!(endpoints["services"][0]["health_path"], "/ready");

    // Registration, renewed by heartbeats; the first one is remembered.
    let beat = json!({"id": "gw-1", "public_url": "https://gw1.example"}).to_string();
    let heartbeat = |key: &str| {
        let (api, beat, key) = (&api, beat.clone(), key.to_string());
        async move {
            api.json(
                "POST",
                "/v1/gateways/heartbeat",
                Auth::Key(&key),
                Some(&beat),
            )
            .await
        }
    };
    let (status, first) = heartbeat(&gateway).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["id"], "gw-1");
    assert_eq!(first["public_url"], "https://gw1.example");
    let last_seen = first["last_seen"].as_u64().unwrap();
    assert_eq!(
        first["expires_at"].as_u64().unwrap(),
        last_seen + GATEWAY_TTL_MS
    );
    let (_, second) = heartbeat(&gateway).await;
    assert_eq!(second["registered_at"], first["registered_at"]);
    assert!(second["last_seen"].as_u64().unwrap() >= last_seen);

    // Any valid key lists the live gateways; no credentials, no list.
    for key in [&gateway, &reader] {
        let (status, list) = api.json("GET", "/v1/gateways", Auth::Key(key), None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(list["gateways"][0]["public_url"], "https://gw1.example");
        assert_eq!(list["gateways"].as_array().unwrap().len(), 1);
    }
    let (status, _) = api.json("GET", "/v1/gateways", Auth::None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = heartbeat(&reader).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Another operator's gateway key cannot take over the id.
    let (status, body) = heartbeat(&other_gateway).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("someone else"),
        "{body}"
    );
    for (bad, field) in [
        (
            json!({"id": "no spaces", "public_url": "https://gw.example"}),
            "id",
        ),
        (
            json!({"id": "gw-2", "public_url": "ftp://gw.example"}),
            "public_url",
        ),
    ] {
        let (status, body) = api
            .json(
                "POST",
                "/v1/gateways/heartbeat",
                Auth::Key(&gateway),
                Some(&bad.to_string()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{message}");
    }

    // The peers, so a gateway can fail over between coordinators.
    let (status, peers) = api
        .json("GET", "/v1/network/peers", Auth::Key(&gateway), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{peers}");
    assert_eq!(peers["peers"][0]["url"], coordinator.url.as_str());

    // Nothing else.
    let job = r#"{"kind": "shell", "command": ["true"]}"#;
    for (method, path, body) in [
        ("POST", "/v1/jobs", Some(job)),
        ("GET", "/v1/jobs", None),
        ("PUT", "/v1/services/web", Some("{}")),
        ("DELETE", "/v1/services/web", None),
        ("GET", "/v1/services", None),
        (
            "POST",
            "/v1/apikeys",
            Some(r#"{"name": "x", "scopes": ["admin"]}"#),
        ),
        ("GET", "/v1/hosts", None),
        ("GET", "/v1/artifacts", None),
    ] {
        let (status, answer) = api.json(method, path, Auth::Key(&gateway), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
    }
}

#[tokio::test]
async fn endpoints_are_shown_to_gateways_and_owners_only() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let api = RawApi::new(&coordinator.url);
    let owner = api_key(&client, &[Scope::ServicesDeploy, Scope::ServicesRead]).await;
    let other_reader = api_key(&client, &[Scope::ServicesRead]).await;
    let gateway = api_key(&client, &[Scope::Gateway]).await;
    let jobs_reader = api_key(&client, &[Scope::JobsRead]).await;
    let owned = skyclaw_api::Client::new(
        std::slice::from_ref(&coordinator.url),
        skyclaw_api::Credentials::ApiKey(owner.clone()),
    )
    .unwrap();
    let bundle = push_files(&client, tmp.path(), &[("server.js", "")]).await;
    owned
        .put_service("mine", &node_service(&bundle, &["server.js"], 1))
        .await
        .unwrap();
    client
        .put_service("theirs", &node_service(&bundle, &["server.js"], 1))
        .await
        .unwrap();
    let _host = FakeServiceHost::start(&client, "h1", |_| Serve::Healthy).await;
    let names = |body: &serde_json::Value| -> Vec<String> {
        let mut names: Vec<String> = body["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| !s["endpoints"].as_array().unwrap().is_empty())
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    eventually("both services to be routable", || async {
        let (_, body) = api.json("GET", "/v1/endpoints", Auth::Token, None).await;
        (names(&body).len() == 2).then_some(())
    })
    .await;
    for (key, expected) in [
        (&gateway, vec!["mine", "theirs"]),
        (&owner, vec!["mine"]),
        (&other_reader, vec![]),
    ] {
        let (status, body) = api.json("GET", "/v1/endpoints", Auth::Key(key), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(names(&body), expected, "{body}");
    }
    let (status, _) = api
        .json("GET", "/v1/endpoints", Auth::Key(&jobs_reader), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_cli_with_a_gateway_key_cannot_submit_jobs_or_deploy() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let client = coordinator.client();
    let gateway = api_key(&client, &[Scope::Gateway]).await;
    let with_key = |args: &[&str]| {
        let mut cmd = coordinator.cli_command(args);
        cmd.env_remove("SKYCLAW_TOKEN")
            .env("SKYCLAW_API_KEY", &gateway);
        cmd.output().unwrap()
    };
    let out = with_key(&["job", "shell", "--", "echo", "hi"]);
    let (code, _, stderr) = outcome(&out);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("403") || stderr.contains("lacks"),
        "{stderr}"
    );
    let dir = service_dir(
        tmp.path(),
        "web",
        "[service]\nname = \"web\"\nkind = \"native\"\ncommand = \"node\"\nargs = [\"server.js\"]\n",
        &[("server.js", "")],
    );
    let out = with_key(&["deploy", dir.to_str().unwrap()]);
    let (code, _, stderr) = outcome(&out);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("lacks"), "{stderr}");
    let (status, list) = RawApi::new(&coordinator.url)
        .json("GET", "/v1/jobs", Auth::Token, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["jobs"], json!([]), "nothing was submitted");
    assert!(client.list_services().await.unwrap().services.is_empty());
}
