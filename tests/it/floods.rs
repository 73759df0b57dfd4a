//! Connection floods against a real coordinator: thousands of idle and
//! slowloris sockets neither starve `/health` and job submission nor stay
//! open past the timeouts, connections past the cap are refused at once, the
//! timeouts never cut a request in progress, and oversized heads answer 431
//! with the JSON envelope.

use crate::common;

use std::sync::Mutex;
use std::time::Duration;

use common::sockets::{Sockets, read_answer};
use common::{Coordinator, Network, TOKEN, eventually, metric, raise_open_files, wait_terminal};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use skyclaw_api::jobs::{JobSpec, JobStatus};
use skyclaw_api::{ErrorCode, ErrorEnvelope};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How promptly a node must answer while it is being flooded: a liveness
/// deadline, generous next to the milliseconds an answer takes.
const PROMPT: Duration = Duration::from_secs(5);
/// Sockets that connect and send nothing.
const SILENT: usize = 2000;
/// Sockets that send one request, read the answer and then idle.
const KEPT_ALIVE: usize = 1000;
/// Sockets that trickle a request head that never ends.
const SLOWLORIS: usize = 300;
/// Descriptors this test process needs besides the flood: its nodes' pipes,
/// clients, cargo's files.
const SPARE_FILES: u64 = 512;

/// Shortened timeouts, long enough that the flood is still open while the
/// test checks that the coordinator answers through it.
const FLOOD_FLAGS: &[&str] = &[
    "--header-read-timeout-ms",
    "8000",
    "--idle-timeout-ms",
    "8000",
];

async fn within<T>(what: &str, answer: impl Future<Output = T>) -> T {
    tokio::time::timeout(PROMPT, answer)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {PROMPT:?}"))
}

async fn counter(url: &str, series: &str) -> f64 {
    metric(url, series)
        .await
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_and_slow_sockets_neither_starves_requests_nor_outlives_the_timeouts() {
    let flood = SILENT + KEPT_ALIVE + SLOWLORIS;
    raise_open_files(flood as u64 + SPARE_FILES);
    let net = Network::start_with(FLOOD_FLAGS, "echo", &[]).await;
    let url = net.coordinator.url.clone();

    let mut sockets = Sockets::default();
    sockets.silent(&url, SILENT);
    sockets.kept_alive(&url, KEPT_ALIVE);
    sockets.slowloris(&url, SLOWLORIS, Duration::from_millis(200));
    eventually("every flood socket to be connected and set up", || async {
        (sockets.ready() == flood).then_some(())
    })
    .await;

    eventually(
        "the coordinator to serve every flood socket at once",
        || async {
            let open = metric(&url, "skyclaw_http_connections_open").await?;
            (open >= flood as f64).then_some(())
        },
    )
    .await;
    let health = within("/health", net.client().health()).await;
    assert_eq!(health.expect("health")["status"], "ok");
    let spec: JobSpec =
        serde_json::from_value(json!({"kind": "shell", "command": "echo", "args": ["through"]}))
            .unwrap();
    let job = within("a job submission", net.client().submit_job(&spec, None))
        .await
        .expect("submit");

    eventually("the server to close every flood socket", || async {
        (sockets.closed() == flood).then_some(())
    })
    .await;
    let header = counter(
        &url,
        "skyclaw_http_connections_timed_out_total{timeout=\"header\"}",
    )
    .await;
    assert!(
        header >= (SILENT + SLOWLORIS) as f64,
        "{header} header timeouts for {SILENT} silent and {SLOWLORIS} slowloris sockets"
    );
    let idle = counter(
        &url,
        "skyclaw_http_connections_timed_out_total{timeout=\"idle\"}",
    )
    .await;
    assert!(
        idle >= KEPT_ALIVE as f64,
        "{idle} idle timeouts for {KEPT_ALIVE} sockets"
    );
    let done = wait_terminal(&net.client(), &job.id).await;
    assert_eq!(done.status, JobStatus::Succeeded, "{done:?}");
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once_and_serving_resumes() {
    const CAP: usize = 64;
    const EXTRA: usize = 16;
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(
        tmp.path(),
        &[
            "--max-connections",
            &CAP.to_string(),
            // Held sockets must stay open for the whole test.
            "--header-read-timeout-ms",
            "600000",
        ],
    )
    .await;
    let url = coordinator.url.clone();

    let mut held = Sockets::default();
    held.silent(&url, CAP + EXTRA);
    // Other connections (the harness's start-up check) may hold slots too:
    // then more are refused, never fewer.
    within("the sockets past the cap to be closed", async {
        eventually("the sockets past the cap to be closed", || async {
            (held.closed() >= EXTRA).then_some(())
        })
        .await
    })
    .await;
    // A slot freed since by another connection is taken by one more held
    // socket, until a request finds none.
    let held = Mutex::new(held);
    eventually("a request past the cap to be refused", || async {
        let answer = within(
            "a request past the cap",
            reqwest::get(format!("{url}/health")),
        )
        .await;
        if answer.is_ok() {
            held.lock().unwrap().silent(&url, 1);
        }
        answer.is_err().then_some(())
    })
    .await;

    drop(held);
    let health = eventually("/health once the held sockets are gone", || async {
        let answer = reqwest::get(format!("{url}/health")).await.ok()?;
        answer.status().is_success().then_some(())
    });
    health.await;
    let refused = counter(&url, "skyclaw_http_connections_refused_total").await;
    assert!(
        refused >= (EXTRA + 1) as f64,
        "{refused} connections refused"
    );
}

#[tokio::test]
async fn a_low_open_file_limit_lowers_the_cap_so_accepts_never_run_out_of_descriptors() {
    // Under this limit the cap is lowered from its default to half the limit
    // (what is left after the reserve for the node's own files is less).
    const OPEN_FILES: u64 = 400;
    const CAP: usize = OPEN_FILES as usize / 2;
    const SOCKETS: usize = OPEN_FILES as usize;
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start_limited(
        tmp.path(),
        &["--header-read-timeout-ms", "600000"],
        Some(OPEN_FILES),
    )
    .await;
    let url = coordinator.url.clone();

    // More sockets than the coordinator has descriptors: without the lowered
    // cap its accepts would fail with EMFILE and leave them all hanging.
    let mut held = Sockets::default();
    held.silent(&url, SOCKETS);
    within("the sockets past the lowered cap to be closed", async {
        eventually("the sockets past the lowered cap to be closed", || async {
            (held.closed() >= SOCKETS - CAP).then_some(())
        })
        .await
    })
    .await;
    drop(held);
    eventually("/health once the held sockets are gone", || async {
        let answer = reqwest::get(format!("{url}/health")).await.ok()?;
        answer.status().is_success().then_some(())
    })
    .await;
}

#[tokio::test]
async fn timeouts_never_cut_a_long_poll_or_a_slow_upload() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(
        tmp.path(),
        &[
            "--header-read-timeout-ms",
            "500",
            "--idle-timeout-ms",
            "500",
        ],
    )
    .await;
    let client = coordinator.client();

    // No host runs it, so the job stays queued and the wait runs its course,
    // well past both timeouts.
    let spec: JobSpec =
        serde_json::from_value(json!({"kind": "shell", "command": "echo"})).unwrap();
    let job = client.submit_job(&spec, None).await.expect("submit");
    let waited = client
        .wait_job_once(&job.id, Duration::from_secs(2))
        .await
        .expect("a long-poll longer than the timeouts is answered");
    assert_eq!(waited.status, JobStatus::Queued);

    // An upload whose body arrives in pieces, the whole taking longer than
    // both timeouts: the pauses pace a slow client, they synchronise nothing.
    let blob: Vec<u8> = (0..4096u32).map(|i| i as u8).collect();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    let mut stream = TcpStream::connect(coordinator.url.trim_start_matches("http://"))
        .await
        .expect("connect");
    let head = format!(
        "PUT /v1/artifacts/{digest} HTTP/1.1\r\nhost: x\r\nx-skyclaw-token: {TOKEN}\r\n\
         content-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
        blob.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send head");
    for piece in blob.chunks(1024) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        stream
            .write_all(piece)
            .await
            .expect("send a piece of the body");
    }
    let (status, body) = read_answer(&mut stream)
        .await
        .expect("an answer to the upload");
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn an_oversized_request_head_answers_431_with_the_json_envelope() {
    let tmp = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(tmp.path(), &[]).await;
    let health = format!("{}/health", coordinator.url);
    let http = reqwest::Client::new();

    let fits = "a".repeat(skyclaw_api::serve::MAX_HEAD_BYTES / 2);
    let answer = http
        .get(&health)
        .header("x-big", fits)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    let too_big = "a".repeat(skyclaw_api::serve::MAX_HEAD_BYTES + 1);
    let answer = http
        .get(&health)
        .header("x-big", too_big)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 431);
    let envelope: ErrorEnvelope = answer.json().await.expect("the json error envelope");
    assert_eq!(envelope.error.code, ErrorCode::HeadersTooLarge);
    assert!(envelope.error.message.contains("bytes"), "{envelope:?}");
}
