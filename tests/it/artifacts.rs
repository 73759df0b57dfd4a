//! Content-addressed artifacts on real coordinators: pushing with the CLI and
//! reading back through HEAD and GET, uploads verified against their digest
//! and their size limit, credentials and the artifacts:push scope, and a
//! cluster where an upload to a follower is recorded by the leader and served
//! by every coordinator.

use crate::common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{Auth, Cluster, Coordinator, RawApi, TOKEN, eventually, skyclaw};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use skyclaw_api::apikeys::{CreateApiKey, Scope};
use skyclaw_api::artifacts::{ArtifactInfo, ArtifactKind, ArtifactList, Digest};
use skyclaw_api::{Client, Credentials};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A core wasm module's header followed by `len - 8` pseudo-random bytes:
/// more than one read or write chunk, so uploads and downloads stream.
fn wasm_module(len: usize) -> Vec<u8> {
    let mut bytes = b"\0asm\x01\0\0\0".to_vec();
    let mut state: u32 = 0x2545_f491;
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        bytes.push(state as u8);
    }
    bytes
}

fn digest_of(bytes: &[u8]) -> Digest {
    Digest::from_sha256(&Sha256::digest(bytes).into())
}

/// Runs the CLI against the coordinators at `urls` with `env` set.
fn cli(urls: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    skyclaw()
        .args(args)
        .env("SKYCLAW_COORDINATOR_URLS", urls)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run skyclaw")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Where a coordinator with data in `dir` keeps the blob of `digest`.
fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("artifacts").join("sha256").join(digest.hex())
}

/// Files under a coordinator's artifacts folder (blobs and partial uploads).
fn artifact_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.join("artifacts")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Artifact routes over raw HTTP to one coordinator.
struct Api(RawApi);

impl Api {
    fn new(base: &str) -> Api {
        Api(RawApi::new(base))
    }

    async fn put(&self, digest: &str, auth: Auth<'_>, body: &[u8]) -> (StatusCode, Value) {
        let path = format!("/v1/artifacts/{digest}");
        let resp = self.0.send("PUT", &path, auth, Some(body.to_vec())).await;
        (resp.status(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, digest: &Digest) -> (StatusCode, Vec<u8>) {
        let resp = self
            .0
            .send("GET", &format!("/v1/artifacts/{digest}"), Auth::Token, None)
            .await;
        (resp.status(), resp.bytes().await.unwrap().to_vec())
    }

    /// HEAD's status and content-length header.
    async fn head(&self, digest: &Digest) -> (StatusCode, Option<u64>) {
        let resp = self
            .0
            .send(
                "HEAD",
                &format!("/v1/artifacts/{digest}"),
                Auth::Token,
                None,
            )
            .await;
        let length = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()?.parse().ok());
        (resp.status(), length)
    }

    async fn list(&self) -> ArtifactList {
        let resp = self.0.send("GET", "/v1/artifacts", Auth::Token, None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.unwrap()
    }
}

/// Sends a `PUT` whose body is chunked (no content-length), so only counting
/// while streaming can find it too large. Returns the status line's code.
async fn put_chunked(base: &str, digest: &Digest, body: &[u8]) -> u16 {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /v1/artifacts/{digest} HTTP/1.1\r\nhost: {addr}\r\nx-skyclaw-token: {TOKEN}\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(512) {
        let framed = format!("{:x}\r\n", chunk.len());
        // The server may answer and close before reading everything.
        let _ = stream.write_all(framed.as_bytes()).await;
        let _ = stream.write_all(chunk).await;
        let _ = stream.write_all(b"\r\n").await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

#[tokio::test]
async fn a_pushed_file_reads_back_the_same_and_is_pushed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&tmp.path().join("coord"), &[]).await;
    let bytes = wasm_module(3 * 1024 * 1024 + 17);
    let digest = digest_of(&bytes);
    let file = tmp.path().join("module.wasm");
    std::fs::write(&file, &bytes).unwrap();
    let file = file.to_str().unwrap();
    let token = [("SKYCLAW_TOKEN", TOKEN)];

    let out = cli(&coordinator.url, &token, &["artifact", "push", file]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), digest.as_str());
    assert!(
        stderr(&out).contains(&format!("uploaded {} bytes", bytes.len())),
        "{}",
        stderr(&out)
    );

    let api = Api::new(&coordinator.url);
    assert_eq!(
        api.head(&digest).await,
        (StatusCode::OK, Some(bytes.len() as u64))
    );
    let resp = api
        .0
        .send("GET", &format!("/v1/artifacts/{digest}"), Auth::Token, None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/wasm");
    assert_eq!(
        resp.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    assert!(
        resp.bytes().await.unwrap() == bytes,
        "GET returns the bytes"
    );

    let client = coordinator.client();
    assert_eq!(
        client.head_artifact(&digest).await.unwrap(),
        Some(bytes.len() as u64)
    );
    // A HEAD answer has no body: its error code travels in a header.
    let stranger = skyclaw_api::Client::new(
        std::slice::from_ref(&coordinator.url),
        skyclaw_api::Credentials::Token("not-the-token".into()),
    )
    .unwrap();
    let refused = stranger.head_artifact(&digest).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(skyclaw_api::ErrorCode::Unauthorized),
        "{refused}"
    );
    let dest = tmp.path().join("downloaded");
    let (got, size) = client.download_artifact(&digest, &dest).await.unwrap();
    assert_eq!((got, size), (digest.clone(), bytes.len() as u64));
    assert!(std::fs::read(&dest).unwrap() == bytes);
    let blob = blob_path(&coordinator.dir, &digest);
    assert!(std::fs::read(&blob).unwrap() == bytes, "stored by digest");

    // The second push finds the artifact and uploads nothing: the stored
    // file is the same one (an upload would have put a new file in place).
    let inode = std::fs::metadata(&blob).unwrap().ino();
    let again = cli(&coordinator.url, &token, &["artifact", "push", file]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again).trim(), digest.as_str());
    assert!(
        stderr(&again).contains("already present"),
        "{}",
        stderr(&again)
    );
    assert_eq!(std::fs::metadata(&blob).unwrap().ino(), inode);

    let json = cli(
        &coordinator.url,
        &token,
        &["artifact", "push", file, "--json"],
    );
    let info: ArtifactInfo = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (&info.digest, info.size, info.kind),
        (&digest, bytes.len() as u64, ArtifactKind::WasmModule)
    );
    let ls = cli(&coordinator.url, &token, &["artifact", "ls"]);
    let table = stdout(&ls);
    assert!(
        table.starts_with("DIGEST") && table.contains(digest.as_str()),
        "{table}"
    );
    assert!(
        table.contains("wasm-module") && table.contains("3.0 MiB"),
        "{table}"
    );
    let ls = cli(&coordinator.url, &token, &["artifact", "ls", "--json"]);
    let list: ArtifactList = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(list.artifacts, [info]);
}

#[tokio::test]
async fn an_upload_that_does_not_match_its_digest_is_never_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(tmp.path(), &[]).await;
    let api = Api::new(&coordinator.url);
    let claimed = digest_of(b"what the caller meant to send");
    let sent = b"what actually arrived".to_vec();

    let (status, body) = api.put(claimed.as_str(), Auth::Token, &sent).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(claimed.as_str()) && message.contains(digest_of(&sent).as_str()),
        "{message}"
    );

    assert_eq!(api.get(&claimed).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api.head(&claimed).await.0, StatusCode::NOT_FOUND);
    let actual = digest_of(&sent);
    assert_eq!(api.get(&actual).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        coordinator.client().head_artifact(&claimed).await.unwrap(),
        None
    );
    assert!(api.list().await.artifacts.is_empty());
    assert!(
        artifact_files(&coordinator.dir).is_empty(),
        "{:?}",
        artifact_files(&coordinator.dir)
    );

    for bad in ["sha256:xyz", "md5:abc", &"ab".repeat(32)] {
        let (status, body) = api.put(bad, Auth::Token, b"x").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

#[tokio::test]
async fn uploads_over_the_size_limit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(tmp.path(), &["--max-artifact-bytes", "1024"]).await;
    let api = Api::new(&coordinator.url);
    let big = vec![7u8; 4096];
    let digest = digest_of(&big);

    let (status, body) = api.put(digest.as_str(), Auth::Token, &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert_eq!(put_chunked(&coordinator.url, &digest, &big).await, 413);
    assert_eq!(api.get(&digest).await.0, StatusCode::NOT_FOUND);
    assert!(artifact_files(&coordinator.dir).is_empty());

    let file = tmp.path().join("big.bin");
    std::fs::write(&file, &big).unwrap();
    let out = cli(
        &coordinator.url,
        &[("SKYCLAW_TOKEN", TOKEN)],
        &["artifact", "push", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("payload_too_large"),
        "{}",
        stderr(&out)
    );

    let fits = vec![7u8; 1024];
    let fits_digest = digest_of(&fits);
    let (status, body) = api.put(fits_digest.as_str(), Auth::Token, &fits).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, again) = api.put(fits_digest.as_str(), Auth::Token, &fits).await;
    assert_eq!(status, StatusCode::OK, "a re-upload is fine: {again}");
    assert_eq!(body, again);
}

#[tokio::test]
async fn artifact_routes_need_the_token_or_the_push_scope() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(tmp.path(), &[]).await;
    let api = Api::new(&coordinator.url);
    let client = coordinator.client();
    let key = |scope| CreateApiKey {
        name: "t".into(),
        scopes: vec![scope],
    };
    let jobs_only = client
        .create_api_key(&key(Scope::JobsSubmit))
        .await
        .unwrap();
    let pusher = client
        .create_api_key(&key(Scope::ArtifactsPush))
        .await
        .unwrap();
    let (jobs_only, pusher) = (jobs_only.secret.unwrap(), pusher.secret.unwrap());
    let bytes = b"pushed with a key".to_vec();
    let digest = digest_of(&bytes);
    let path = format!("/v1/artifacts/{digest}");
    let routes = [
        ("PUT", path.as_str(), Some(bytes.clone())),
        ("HEAD", path.as_str(), None),
        ("GET", path.as_str(), None),
        ("GET", "/v1/artifacts", None),
    ];
    for (method, path, body) in routes.clone() {
        let none = api.0.send(method, path, Auth::None, body.clone()).await;
        assert_eq!(none.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
        let wrong = api.0.send(method, path, Auth::Key(&jobs_only), body).await;
        assert_eq!(wrong.status(), StatusCode::FORBIDDEN, "{method} {path}");
    }
    let wanted = [
        StatusCode::CREATED,
        StatusCode::OK,
        StatusCode::OK,
        StatusCode::OK,
    ];
    for ((method, path, body), want) in routes.into_iter().zip(wanted) {
        let resp = api.0.send(method, path, Auth::Key(&pusher), body).await;
        assert_eq!(resp.status(), want, "{method} {path} with artifacts:push");
    }
    // Recording metadata without a blob is for coordinators only.
    let record = serde_json::json!({"digest": digest, "size": 1, "kind": "blob"});
    let resp = api
        .0
        .send(
            "POST",
            "/v1/artifacts",
            Auth::Key(&pusher),
            Some(record.to_string().into_bytes()),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let file = tmp.path().join("other.bin");
    std::fs::write(&file, b"pushed by the CLI with a key").unwrap();
    let out = cli(
        &coordinator.url,
        &[("SKYCLAW_API_KEY", &pusher)],
        &["artifact", "push", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(
        &coordinator.url,
        &[("SKYCLAW_API_KEY", &jobs_only)],
        &["artifact", "ls"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("artifacts:push"), "{}", stderr(&out));
}

#[tokio::test]
async fn an_upload_to_a_follower_is_recorded_and_served_by_every_coordinator() {
    let cluster = Cluster::start(3, 3, &[]).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower(leader);
    let other = (0..3).find(|&i| i != leader && i != follower).unwrap();
    let bytes = wasm_module(2 * 1024 * 1024 + 5);
    let digest = digest_of(&bytes);
    let file = cluster.tmp.path().join("module.wasm");
    std::fs::write(&file, &bytes).unwrap();

    let out = cli(
        &cluster.nodes[follower].url,
        &[("SKYCLAW_TOKEN", TOKEN)],
        &["artifact", "push", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), digest.as_str());
    let blob = |i: usize| blob_path(&cluster.nodes[i].dir, &digest);
    assert!(blob(follower).is_file(), "the follower stored the upload");
    assert!(!blob(leader).exists() && !blob(other).exists());
    let follower_api = Api::new(&cluster.nodes[follower].url);
    assert_eq!(
        follower_api.head(&digest).await.0,
        StatusCode::OK,
        "the follower knows its own upload as soon as it answered it"
    );

    let leader_api = Api::new(&cluster.nodes[leader].url);
    let listed = leader_api.list().await.artifacts;
    assert_eq!(
        listed.iter().map(|a| &a.digest).collect::<Vec<_>>(),
        [&digest],
        "the leader recorded it"
    );

    // Another coordinator knows the artifact and answers HEAD before it holds
    // the blob; a peer's copy that does not match is refused and not kept.
    let other_api = Api::new(&cluster.nodes[other].url);
    let head = eventually("the record to reach the other follower", || async {
        let head = other_api.head(&digest).await;
        (head.0 == StatusCode::OK).then_some(head)
    })
    .await;
    assert_eq!(head.1, Some(bytes.len() as u64));
    let mut corrupt = bytes.clone();
    corrupt[100] ^= 1;
    std::fs::write(blob(follower), &corrupt).unwrap();
    let (status, body) = other_api.get(&digest).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(!blob(other).exists(), "a corrupt copy is not kept");
    std::fs::write(blob(follower), &bytes).unwrap();

    for node in [other, leader] {
        let (status, got) = Api::new(&cluster.nodes[node].url).get(&digest).await;
        assert_eq!(status, StatusCode::OK, "node {}", node + 1);
        assert!(got == bytes, "node {} serves the same bytes", node + 1);
        assert!(blob(node).is_file(), "node {} keeps its copy", node + 1);
    }
    let client = Client::new(
        std::slice::from_ref(&cluster.nodes[other].url),
        Credentials::Token(TOKEN.into()),
    )
    .unwrap();
    let dest = cluster.tmp.path().join("downloaded");
    let (got, size) = client.download_artifact(&digest, &dest).await.unwrap();
    assert_eq!((got, size), (digest, bytes.len() as u64));
}
