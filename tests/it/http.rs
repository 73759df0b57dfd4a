//! wasi:http serving in process: the `service` guest served by the runtime's
//! WASI engine on 127.0.0.1, hit by a real HTTP client. A request that loops
//! or runs past its memory fails alone while others are answered; outbound
//! requests reach allowed hosts only; shutdown lets a request in flight
//! finish within its grace and drops it after; requests are counted by
//! status.

use crate::common;

use std::time::Duration;

use common::serving::{client, engine, get, load, serve, upstream};
use common::{DEADLINE, eventually};
use skyclaw_api::jobs::WasiLimits;

/// Time limit of most requests here: long enough for any real route, short
/// enough that a loop's 504 comes quickly.
const TIMEOUT_MS: u64 = 1_500;

fn limits(timeout_ms: u64) -> WasiLimits {
    WasiLimits {
        timeout_ms: Some(timeout_ms),
        ..WasiLimits::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_answer_and_stats_count_them_by_status() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), 4);
    let program = load(&engine, "service").await;
    let server = serve(&engine, program, limits(TIMEOUT_MS), &[]).await;
    let (addr, client) = (server.local_addr(), client());
    assert_eq!(get(&client, addr, "/health").await, (200, "ok".to_string()));
    assert_eq!(
        get(&client, addr, "/hello").await,
        (200, "hello from a wasi:http guest".to_string())
    );
    assert_eq!(
        get(&client, addr, "/version").await,
        (200, "service 1".to_string())
    );
    assert_eq!(get(&client, addr, "/nowhere").await.0, 404);
    // A body goes in and comes back whole, over the same keep-alive pool.
    let body = "x".repeat(100_000);
    let echoed = client
        .post(format!("http://{addr}/echo"))
        .body(body.clone())
        .send()
        .await
        .expect("POST /echo");
    assert_eq!(echoed.status().as_u16(), 200);
    assert_eq!(echoed.headers()["x-method"], "POST");
    assert_eq!(echoed.text().await.expect("a body"), body);
    let stats = engine.http_stats();
    assert_eq!(stats.statuses, vec![(200, 4), (404, 1)]);
    assert_eq!(stats.by_class, [0, 4, 0, 1, 0]);
    assert_eq!(stats.requests, 5);
    assert_eq!(stats.latency_buckets.last(), Some(&5));
    assert_eq!(stats.slots, 4);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_loops_times_out_alone() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), 4);
    let program = load(&engine, "service").await;
    // All the fuel a host grants, so that the time limit ends the loop.
    let limits = WasiLimits {
        fuel: Some(skyclaw_runtime::DEFAULT_WASI_MAX_FUEL),
        ..limits(TIMEOUT_MS)
    };
    let server = serve(&engine, program, limits, &[]).await;
    let (addr, client) = (server.local_addr(), client());
    let looping = tokio::spawn({
        let client = client.clone();
        async move { get(&client, addr, "/loop").await }
    });
    // Served while the loop spins on a guest thread.
    eventually("the loop to hold a slot", || async {
        (engine.http_stats().slots_in_use >= 1).then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get(&client, addr, "/health").await, (200, "ok".to_string()));
    }
    assert!(
        !looping.is_finished(),
        "the loop ended before its time limit"
    );
    let (status, body) = looping.await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("time limit of 1500 ms"), "{body}");
    assert_eq!(get(&client, addr, "/health").await.0, 200);
    let stats = engine.http_stats();
    assert_eq!(stats.statuses, vec![(200, 21), (504, 1)]);
    assert_eq!(stats.timed_out, 1);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_out_of_fuel_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), 4);
    let program = load(&engine, "service").await;
    let limits = WasiLimits {
        fuel: Some(50_000_000),
        ..limits(30_000)
    };
    let server = serve(&engine, program, limits, &[]).await;
    let (addr, client) = (server.local_addr(), client());
    let (status, body) = get(&client, addr, "/loop").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("out of fuel"), "{body}");
    assert_eq!(get(&client, addr, "/health").await, (200, "ok".to_string()));
    assert_eq!(engine.http_stats().failed, 1);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_past_its_memory_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), 4);
    let program = load(&engine, "service").await;
    let limits = WasiLimits {
        memory_mb: Some(32),
        ..limits(10_000)
    };
    let server = serve(&engine, program, limits, &[]).await;
    let (addr, client) = (server.local_addr(), client());
    let (status, body) = get(&client, addr, "/alloc?mb=64").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("memory limit of 32 MiB"), "{body}");
    // A fresh instance: the next request has all its memory again.
    assert_eq!(
        get(&client, addr, "/alloc?mb=8").await,
        (200, "allocated 8".to_string())
    );
    assert_eq!(get(&client, addr, "/health").await.0, 200);
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn outbound_requests_reach_allowed_hosts_only() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), 4);
    let program = load(&engine, "service").await;
    let (allowed, _allowed_server) = upstream("from the allowed upstream").await;
    let (other, _other_server) = upstream("from another upstream").await;
    let rules = [format!("http://127.0.0.1:{}", allowed.port())];
    let server = serve(&engine, program, limits(10_000), &rules).await;
    let (addr, client) = (server.local_addr(), client());
    let fetch = |to: std::net::SocketAddr| format!("/fetch?url=http%3A%2F%2F{to}%2Fanything");
    assert_eq!(
        get(&client, addr, &fetch(allowed)).await,
        (200, "from the allowed upstream".to_string())
    );
    let (status, body) = get(&client, addr, &fetch(other)).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    // Nothing is allowed by default.
    let program = load(&engine, "service").await;
    let closed = serve(&engine, program, limits(10_000), &[]).await;
    let (status, body) = get(&client, closed.local_addr(), &fetch(allowed)).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    closed.shutdown(Duration::from_secs(1)).await;
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_a_request_in_flight_finish_within_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), 4);
    let program = load(&engine, "service").await;
    let server = serve(&engine, program, limits(10_000), &[]).await;
    let (addr, client) = (server.local_addr(), client());
    let sleeping = tokio::spawn({
        let client = client.clone();
        async move { get(&client, addr, "/sleep?ms=300").await }
    });
    eventually("the sleeper to hold a slot", || async {
        (engine.http_stats().slots_in_use >= 1).then_some(())
    })
    .await;
    server.shutdown(DEADLINE).await;
    // The server returns once its last connection closed, so the answer
    // was written (and counted) by then.
    assert_eq!(engine.http_stats().statuses, vec![(200, 1)]);
    assert_eq!(sleeping.await.unwrap(), (200, "slept 300".to_string()));
    let refused = client.get(format!("http://{addr}/health")).send().await;
    assert!(refused.is_err(), "a stopped server answered: {refused:?}");
    assert_eq!(engine.http_stats().slots_in_use, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_drops_what_outlives_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), 4);
    let program = load(&engine, "service").await;
    let server = serve(&engine, program, limits(60_000), &[]).await;
    let (addr, client) = (server.local_addr(), client());
    let sleeping = tokio::spawn({
        let client = client.clone();
        async move {
            let response = client
                .get(format!("http://{addr}/sleep?ms=60000"))
                .send()
                .await;
            response.map(|r| r.status().as_u16())
        }
    });
    eventually("the sleeper to hold a slot", || async {
        (engine.http_stats().slots_in_use >= 1).then_some(())
    })
    .await;
    let stopping = tokio::time::Instant::now();
    server.shutdown(Duration::from_millis(200)).await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    // Answered 503 by the host, or cut off: either way, not left waiting.
    let answer = tokio::time::timeout(DEADLINE, sleeping)
        .await
        .expect("an end")
        .unwrap();
    assert!(matches!(answer, Ok(503) | Err(_)), "{answer:?}");
    eventually("the dropped request's slot to come back", || async {
        (engine.http_stats().slots_in_use == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_past_the_slots_wait_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), 1);
    let program = load(&engine, "service").await;
    let server = serve(&engine, program, limits(10_000), &[]).await;
    let (addr, client) = (server.local_addr(), client());
    let sleeping = tokio::spawn({
        let client = client.clone();
        async move { get(&client, addr, "/sleep?ms=300").await }
    });
    eventually("the sleeper to hold the only slot", || async {
        (engine.http_stats().slots_in_use == 1).then_some(())
    })
    .await;
    // Waits for the sleeper's slot instead of failing.
    assert_eq!(get(&client, addr, "/health").await, (200, "ok".to_string()));
    assert_eq!(sleeping.await.unwrap().0, 200);
    let stats = engine.http_stats();
    assert_eq!((stats.unavailable, stats.statuses), (0, vec![(200, 2)]));
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_program_per_digest_serves_a_hundred_services() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path(), 4);
    let first = load(&engine, "service").await;
    let second = load(&engine, "service").await;
    assert!(std::sync::Arc::ptr_eq(&first, &second));
    // As many idle services as a host should hold cheaply: each is a
    // listener and a parked task on the guest runtime, sharing one program.
    let mut servers = Vec::new();
    for _ in 0..100 {
        servers.push(serve(&engine, first.clone(), limits(TIMEOUT_MS), &[]).await);
    }
    let client = client();
    for server in &servers {
        assert_eq!(get(&client, server.local_addr(), "/health").await.0, 200);
    }
    for server in servers {
        server.shutdown(Duration::from_secs(1)).await;
    }
    // A job program is refused as a service.
    let path = common::guest("noop");
    let (digest, _) = skyclaw_api::artifacts::digest_file(&path).await.unwrap();
    let refused = engine.load_http(&digest, &path).await.unwrap_err();
    assert!(
        refused.contains("not a wasi:http proxy component"),
        "{refused}"
    );
}
