//! Idempotency keys: the same key and body return the original response, even
//! after a crash and restart; the same key with another body is refused.

use crate::common;

use common::{Auth, Coordinator, RawApi};
use reqwest::StatusCode;
use serde_json::Value;

async fn submit(url: &str, key: &str, header: &str, body: &str) -> (StatusCode, Value) {
    let resp = RawApi::new(url)
        .request("POST", "/v1/jobs", Auth::Token)
        .header(header, key)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status(), resp.json().await.unwrap())
}

#[tokio::test]
async fn same_key_same_job_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut coordinator = Coordinator::start(tmp.path(), &[]).await;
    let a = r#"{"kind":"shell","command":"echo","args":["a"]}"#;
    let b = r#"{"kind":"shell","command":"echo","args":["b"]}"#;

    let (status, first) = submit(&coordinator.url, "key-1", "x-idempotency-key", a).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, again) = submit(&coordinator.url, "key-1", "idempotency-key", a).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first, again, "the original response is returned");

    let (status, other) = submit(&coordinator.url, "key-1", "x-idempotency-key", b).await;
    assert_eq!(status, StatusCode::CONFLICT, "{other}");
    assert_eq!(other["error"]["code"], "idempotency_conflict");

    coordinator.kill9();
    coordinator.restart().await;
    let (status, after) = submit(&coordinator.url, "key-1", "x-idempotency-key", a).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first, after, "still the same job after a crash");
    let (status, _) = submit(&coordinator.url, "key-1", "x-idempotency-key", b).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let list = coordinator
        .client()
        .list_jobs(&Default::default())
        .await
        .unwrap();
    assert_eq!(list.jobs.len(), 1, "one key, one job");
}
