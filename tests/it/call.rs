//! `skyclaw call` against fake gateways: failover past dead gateways and
//! 502-504 answers, the retry rule for requests that may not be sent twice,
//! exit codes, and what reaches the gateway.

use crate::common;

use common::fake_gateway::{FakeGateway, dead_url};
use common::{outcome, run_cli, skyclaw};

/// Runs `skyclaw call` with `args` and `gateways` (comma-separated) and
/// returns its exit code, stdout and stderr.
async fn call(gateways: &[&str], args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = skyclaw();
    cmd.arg("call")
        .args(args)
        .args(["--gateway", &gateways.join(",")]);
    outcome(&run_cli(cmd).await)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_gateway_is_passed_over() {
    let dead = dead_url();
    let live = FakeGateway::start(200, "hello from b").await;
    let (code, stdout, stderr) = call(&[&dead, &live.url], &["web", "/hi"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "hello from b");
    assert_eq!(live.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_get_answered_503_moves_to_the_next_gateway() {
    let first = FakeGateway::start(503, "no instance").await;
    let second = FakeGateway::start(200, "ok").await;
    let (code, stdout, stderr) = call(&[&first.url, &second.url], &["web", "/", "-v"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "ok");
    assert_eq!((first.count(), second.count()), (1, 1));
    assert!(
        stderr.contains(&format!("* {} failed: HTTP 503", first.url)),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("* answered by {}", second.url)),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_answered_503_is_resent_only_with_an_idempotency_key() {
    let first = FakeGateway::start(503, "no instance").await;
    let second = FakeGateway::start(201, "created").await;
    let gateways = [first.url.as_str(), second.url.as_str()];
    let (code, stdout, stderr) = call(&gateways, &["web", "/items", "-X", "POST", "-d", "x"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stdout, "no instance");
    assert_eq!((first.count(), second.count()), (1, 0));

    let (code, stdout, stderr) = call(
        &gateways,
        &[
            "web",
            "/items",
            "-X",
            "POST",
            "-d",
            "x",
            "-H",
            "Idempotency-Key: k1",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "created");
    assert_eq!((first.count(), second.count()), (2, 1));
    assert_eq!(second.lock().received[0].headers["idempotency-key"], "k1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_that_never_reached_a_gateway_goes_to_the_next() {
    let dead = dead_url();
    let live = FakeGateway::start(200, "done").await;
    let (code, stdout, stderr) = call(&[&dead, &live.url], &["web", "/", "-d", "x"]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout, "done");
    assert_eq!(live.lock().received[0].method, "POST");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_gateway_dead_exits_2_naming_them() {
    let (a, b) = (dead_url(), dead_url());
    let (code, stdout, stderr) = call(&[&a, &b], &["web", "/"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("no gateway answered"), "{stderr}");
    assert!(stderr.contains(&a) && stderr.contains(&b), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_404_is_the_answer_not_retried() {
    let first = FakeGateway::start(404, "no such page").await;
    let second = FakeGateway::start(200, "ok").await;
    let (code, stdout, stderr) = call(&[&first.url, &second.url], &["web", "/nope", "-v"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stdout, "no such page");
    assert!(stderr.contains("< HTTP/1.1 404 Not Found"), "{stderr}");
    assert!(stderr.contains("< content-length: 12"), "{stderr}");
    assert_eq!(second.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_body_and_path_reach_the_gateway() {
    let gateway = FakeGateway::start(200, "").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.bin");
    std::fs::write(&file, b"\x00binary\xffbody").unwrap();
    let data = format!("@{}", file.display());
    let (code, _, stderr) = call(
        &[&gateway.url],
        &[
            "api",
            "items/7?page=2&q=a%20b",
            "-X",
            "put",
            "-H",
            "X-One: 1",
            "-H",
            "Content-Type: application/octet-stream",
            "-d",
            &data,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let state = gateway.lock();
    let got = &state.received[0];
    assert_eq!(got.method, "PUT");
    assert_eq!(got.target, "/s/api/items/7?page=2&q=a%20b");
    assert_eq!(got.headers["x-one"], "1");
    assert_eq!(got.headers["content-type"], "application/octet-stream");
    assert_eq!(&got.body[..], b"\x00binary\xffbody");
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_2() {
    let (code, _, stderr) = outcome(
        &run_cli({
            let mut cmd = skyclaw();
            cmd.args(["call", "web", "/"]);
            cmd
        })
        .await,
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("no --gateway given, and the coordinators' gateway list could not be read"),
        "{stderr}"
    );
    let (code, _, stderr) = call(&["http://127.0.0.1:1"], &["web", "/", "-H", "nocolon"]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("expected 'NAME: VALUE'"), "{stderr}");
    let (code, _, stderr) = call(&["http://127.0.0.1:1"], &["Bad_Name", "/"]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("must be a DNS label"), "{stderr}");
}
