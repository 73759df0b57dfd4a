//! Authentication, scopes and input validation, through raw HTTP as any client
//! would send it, and through the CLI as CI would use a key.

use crate::common;

use common::{Auth, Coordinator, RawApi, TOKEN, coordinator_routes};
use reqwest::StatusCode;
use serde_json::{Value, json};
use skyclaw_api::apikeys::Scope;
use skyclaw_coordinator::Access;

/// Raw JSON requests to one coordinator, with any credentials.
struct Api(RawApi);

impl Api {
    async fn send(
        &self,
        method: &str,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let auth = auth.map_or(Auth::None, |(name, value)| Auth::Header(name, value));
        self.0.json(method, path, auth, body).await
    }

    async fn token(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, Value) {
        self.send(method, path, Some(("x-skyclaw-token", TOKEN)), body)
            .await
    }

    async fn key(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let bearer = format!("Bearer {key}");
        self.send(method, path, Some(("authorization", &bearer)), body)
            .await
    }

    async fn create_key(&self, scopes: &[&str]) -> (String, String) {
        let body = json!({"name": "t", "scopes": scopes}).to_string();
        let (status, created) = self.token("POST", "/v1/apikeys", Some(&body)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        (
            created["key"]["id"].as_str().unwrap().to_string(),
            created["secret"].as_str().unwrap().to_string(),
        )
    }
}

async fn api() -> (tempfile::TempDir, Coordinator, Api) {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(tmp.path(), &["--max-body-bytes", "65536"]).await;
    let api = Api(RawApi::new(&coordinator.url));
    (tmp, coordinator, api)
}

const ECHO: &str = r#"{"kind":"shell","command":"echo","args":["hi"]}"#;

#[tokio::test]
async fn every_route_admits_whom_the_router_says() {
    let (_tmp, _c, api) = api().await;
    let every_scope: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
    let (_, secret) = api.create_key(&every_scope).await;
    let routes = coordinator_routes();
    assert!(routes.len() > 20, "{} routes", routes.len());
    for (method, path, access) in routes {
        let route = format!("{method} {path} ({access:?})");
        let (status, body) = api.send(&method, &path, None, Some("{}")).await;
        if access == Access::Open {
            assert_eq!(status, StatusCode::OK, "{route}: {body}");
            continue;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{route}: {body}");
        if method != "HEAD" {
            assert_eq!(body["error"]["code"], "unauthorized", "{route}");
        }
        let wrong = api
            .send(
                &method,
                &path,
                Some(("x-skyclaw-token", "nope")),
                Some("{}"),
            )
            .await;
        assert_eq!(
            wrong.0,
            StatusCode::UNAUTHORIZED,
            "{route} with a wrong token"
        );
        let (status, body) = api.key(&secret, &method, &path, Some("{}")).await;
        match access {
            Access::Token => assert_eq!(status, StatusCode::FORBIDDEN, "a key on {route}: {body}"),
            _ => assert!(
                status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                "a key with every scope on {route}: {status} {body}"
            ),
        }
    }
}

#[tokio::test]
async fn keys_are_scoped_revocable_and_see_only_their_jobs() {
    let (_tmp, _c, api) = api().await;
    let (_, read_only) = api.create_key(&["jobs:read"]).await;
    let (status, body) = api.key(&read_only, "POST", "/v1/jobs", Some(ECHO)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    let (a_id, a) = api.create_key(&["jobs:submit", "jobs:read"]).await;
    let (_, b) = api.create_key(&["jobs:submit", "jobs:read"]).await;
    let (status, job) = api.key(&a, "POST", "/v1/jobs", Some(ECHO)).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let path = format!("/v1/jobs/{}", job["id"].as_str().unwrap());
    assert_eq!(api.key(&a, "GET", &path, None).await.0, StatusCode::OK);
    assert_eq!(
        api.key(&b, "GET", &path, None).await.0,
        StatusCode::NOT_FOUND
    );
    let cancel = format!("{path}/cancel");
    assert_eq!(
        api.key(&b, "POST", &cancel, Some("{}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(api.token("GET", &path, None).await.0, StatusCode::OK);

    let (status, _) = api
        .token("DELETE", &format!("/v1/apikeys/{a_id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        api.key(&a, "GET", &path, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, keys) = api.token("GET", "/v1/apikeys", None).await;
    let listed = keys["keys"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .all(|k| k.get("secret").is_none() && k.get("key_hash").is_none())
    );
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let (_tmp, _c, api) = api().await;
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "invalid request body",
        ),
        (
            r#"{"kind":"shell","command":"echo","bogus":1}"#.into(),
            StatusCode::BAD_REQUEST,
            "bogus",
        ),
        (
            r#"{"kind":"teleport"}"#.into(),
            StatusCode::BAD_REQUEST,
            "teleport",
        ),
        (
            r#"{"kind":"shell","command":""}"#.into(),
            StatusCode::BAD_REQUEST,
            "command must not be empty",
        ),
        (
            r#"{"kind":"shell","command":"echo","timeout_ms":999999999999}"#.into(),
            StatusCode::BAD_REQUEST,
            "timeout_ms",
        ),
        (
            json!({"kind":"shell","command":"echo","args": vec!["a"; 2000]}).to_string(),
            StatusCode::BAD_REQUEST,
            "too many args",
        ),
        (
            json!({"kind":"shell","command":"echo","stdin": "x".repeat(100_000)}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too large",
        ),
        (
            r#"{"kind":"shell","command":"echo","env":{"LD_PRELOAD":"/tmp/evil.so"}}"#.into(),
            StatusCode::BAD_REQUEST,
            "loader variables (LD_*, DYLD_*): LD_PRELOAD",
        ),
        (
            r#"{"kind":"openclaw-run","message":"hi","agent":"-x"}"#.into(),
            StatusCode::BAD_REQUEST,
            "agent is a name and may not begin with '-'",
        ),
        (
            r#"{"kind":"openclaw-run","message":"hi","model":"--help"}"#.into(),
            StatusCode::BAD_REQUEST,
            "model is a name and may not begin with '-'",
        ),
        (
            r#"{"kind":"openclaw-run","message":"hi","thinking":"-x"}"#.into(),
            StatusCode::BAD_REQUEST,
            "thinking must be one of",
        ),
        (
            r#"{"kind":"shell","command":"echo","queue_timeout_ms":0}"#.into(),
            StatusCode::BAD_REQUEST,
            "queue_timeout_ms must be between 1 and",
        ),
    ];
    for (body, want, needle) in cases {
        let (status, answer) = api.token("POST", "/v1/jobs", Some(&body)).await;
        assert_eq!(status, want, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
    let (status, body) = api.token("GET", "/v1/jobs?status=sleeping", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = api.token("GET", "/v1/nothing", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body) = api.token("DELETE", "/v1/jobs", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")),
        "{body}"
    );
}

/// A key lists the jobs it submitted, and only those; the token lists all.
/// `whoami` tells a caller which credentials it presented and their scopes.
#[tokio::test]
async fn keys_list_their_own_jobs_and_know_their_scopes() {
    let (_tmp, _c, api) = api().await;
    let (a_id, a) = api.create_key(&["jobs:submit", "jobs:read"]).await;
    let (_, b) = api.create_key(&["jobs:submit", "jobs:read"]).await;
    let (_, submit_only) = api.create_key(&["jobs:submit"]).await;
    let mut mine = Vec::new();
    for _ in 0..2 {
        let (status, job) = api.key(&a, "POST", "/v1/jobs", Some(ECHO)).await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        mine.push(job["id"].as_str().unwrap().to_string());
    }
    api.key(&b, "POST", "/v1/jobs", Some(ECHO)).await;
    api.token("POST", "/v1/jobs", Some(ECHO)).await;

    let ids = |list: &Value| -> Vec<String> {
        list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, list) = api.key(&a, "GET", "/v1/jobs", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(ids(&list), mine, "a key sees only its own jobs");
    let (_, page) = api.key(&a, "GET", "/v1/jobs?limit=1", None).await;
    assert_eq!(ids(&page), mine[..1], "{page}");
    assert_eq!(page["next_after"], mine[0].as_str(), "paged among its own");
    let (_, list) = api.token("GET", "/v1/jobs", None).await;
    assert_eq!(ids(&list).len(), 4, "the token sees every job");
    let (status, body) = api.key(&submit_only, "GET", "/v1/jobs", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("jobs:read"),
        "{body}"
    );

    let (status, me) = api.key(&a, "GET", "/v1/whoami", None).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["kind"], "api_key");
    assert_eq!(me["key"]["id"], a_id.as_str());
    assert_eq!(me["key"]["scopes"], json!(["jobs:submit", "jobs:read"]));
    let (_, me) = api.token("GET", "/v1/whoami", None).await;
    assert_eq!(me, json!({"kind": "token"}));
    api.token("DELETE", &format!("/v1/apikeys/{a_id}"), None)
        .await;
    let (status, _) = api.key(&a, "GET", "/v1/whoami", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a revoked key is no one");
}

/// CI with a key: `job ls` lists the key's jobs; `--wait` with a key that
/// could not read the job back is refused before anything is submitted,
/// naming the missing scope; revoking twice says so.
#[tokio::test]
async fn the_cli_with_a_key_does_what_the_key_allows_and_says_what_it_lacks() {
    let (_tmp, coordinator, api) = api().await;
    let (_, reader) = api.create_key(&["jobs:submit", "jobs:read"]).await;
    let (submit_id, submit_only) = api.create_key(&["jobs:submit"]).await;
    let with_key = |key: &str, args: &[&str]| {
        coordinator
            .cli_command(args)
            .env_remove("SKYCLAW_TOKEN")
            .env("SKYCLAW_API_KEY", key)
            .output()
            .unwrap()
    };
    let out = with_key(&reader, &["job", "shell", "--", "echo", "mine"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    api.token("POST", "/v1/jobs", Some(ECHO)).await;
    let out = with_key(&reader, &["job", "ls", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [id.as_str()]);
    let out = with_key(&reader, &["job", "ls"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id));

    let out = with_key(
        &submit_only,
        &["job", "shell", "--wait", "--", "echo", "hi"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&submit_id), "{stderr}");
    assert!(
        stderr.contains("lacks jobs:read (for --wait to read the job back)"),
        "{stderr}"
    );
    assert!(stderr.contains("Nothing was submitted"), "{stderr}");
    let (_, all) = api.token("GET", "/v1/jobs", None).await;
    assert_eq!(
        all["jobs"].as_array().unwrap().len(),
        2,
        "nothing was submitted"
    );
    let out = with_key(&submit_only, &["job", "shell", "--", "echo", "hi"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "without --wait it may submit: {out:?}"
    );

    let revoke = || {
        coordinator
            .cli_command(&["apikey", "revoke", &submit_id])
            .output()
            .unwrap()
    };
    let first = revoke();
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert!(String::from_utf8_lossy(&first.stdout).starts_with("revoked API key"));
    let again = revoke();
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(said.contains("was already revoked"), "{said}");
}
