//! What a request keeps and loses on its way through a real `skyclaw
//! gateway`: forwarding headers are the gateway's own (a client's are never
//! trusted), hop-by-hop headers stop at it, request ids pass or are made,
//! bodies stream both ways, a body past the limit answers 413, connections
//! to endpoints are kept alive and reused, protocol upgrades are spliced,
//! and HTTP/2 is offered over TLS by ALPN.

use crate::common;

use std::net::SocketAddr;

use common::gateway::{Backend, ClosingEndpoint, DOWNLOAD_PART, Gateway, Publisher, publish};
use common::*;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gateway routing service `web` to one endpoint, and what keeps that
/// endpoint published.
struct Route {
    gateway: Gateway,
    _publisher: Publisher,
    _coordinator: Coordinator,
}

impl Route {
    async fn to(dir: &std::path::Path, endpoint: &str, gateway_flags: &[&str]) -> Route {
        let coordinator = Coordinator::start(&dir.join("coord"), &[]).await;
        let client = coordinator.client();
        let publisher = publish(&client, dir, "web", &[endpoint.to_string()]).await;
        let gateway = Gateway::start(&coordinator.url, Auth::Token, gateway_flags).await;
        gateway.wait_up("web", 1).await;
        Route {
            gateway,
            _publisher: publisher,
            _coordinator: coordinator,
        }
    }
}

/// One backend published as service `web`, and a gateway routing to it.
struct Web {
    backend: Backend,
    route: Route,
}

impl Web {
    async fn start(dir: &std::path::Path, gateway_flags: &[&str]) -> Web {
        let backend = Backend::start("web").await;
        let route = Route::to(dir, &backend.url, gateway_flags).await;
        Web { backend, route }
    }

    /// The gateway's `IP:PORT`.
    fn gateway_addr(&self) -> SocketAddr {
        let authority = self.route.gateway.url.split("://").nth(1).expect("a URL");
        authority.parse().expect("the gateway listens on IP:PORT")
    }

    fn url(&self, path: &str) -> String {
        format!("{}/s/web{path}", self.route.gateway.url)
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Writes `request` as it is on a new connection to `addr` and reads the
/// answer until the gateway closes: its head, and what follows it.
async fn raw_exchange(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, socket.read_to_end(&mut answer))
        .await
        .expect("the gateway answers and closes")
        .unwrap();
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an answer head");
    let head = String::from_utf8(answer[..end].to_vec()).unwrap();
    (head, answer[end + 4..].to_vec())
}

/// A header's value in an answer head, by name in any case.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The headers the backend saw, from its `/echo` answer.
fn seen(echo: &[u8]) -> serde_json::Value {
    let echo: serde_json::Value = serde_json::from_slice(echo).expect("an echo answer");
    echo["headers"].clone()
}

#[tokio::test]
async fn forwarding_headers_are_the_gateways_own_hop_by_hop_ones_stop_and_request_ids_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let web = Web::start(tmp.path(), &[]).await;
    let addr = web.gateway_addr();
    let backend = web.backend.url.trim_start_matches("http://").to_string();

    // Every forwarding header the client sends is a claim about itself;
    // the gateway replaces them with what it saw.
    let request = format!(
        "GET /s/web/echo HTTP/1.1\r\nHost: {addr}\r\nConnection: close, x-private\r\n\
         X-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\n\
         X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: evil.example\r\nForwarded: for=203.0.113.9\r\n\
         X-Request-Id: order-42\r\n\r\n"
    );
    let (head, body) = raw_exchange(addr, &request).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let headers = seen(&body);
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], addr.to_string());
    assert_eq!(
        headers["forwarded"],
        format!("for=127.0.0.1;proto=http;host=\"{addr}\"")
    );
    assert_eq!(headers["host"], backend, "the endpoint is asked as itself");
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "connection",
    ] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} was forwarded: {headers}"
        );
    }
    assert_eq!(headers["x-request-id"], "order-42");
    assert_eq!(header(&head, "x-request-id"), Some("order-42"));

    // Without one, the gateway makes an id and gives it to both sides.
    let request = format!("GET /s/web/echo HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (head, body) = raw_exchange(addr, &request).await;
    let id = header(&head, "x-request-id").expect("a request id");
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(seen(&body)["x-request-id"], id);
}

#[tokio::test]
async fn bodies_stream_both_ways_and_one_declared_past_the_limit_answers_413() {
    let tmp = tempfile::tempdir().unwrap();
    let limit = 4 * DOWNLOAD_PART;
    let limit_flag = limit.to_string();
    let web = Web::start(tmp.path(), &["--max-body-bytes", &limit_flag]).await;
    let http = http();

    // The endpoint has the first part of an upload before the client sends
    // the rest: the gateway streams what it cannot keep for a retry.
    let (mut upload, body) = http_body_util::channel::Channel::<bytes::Bytes>::new(1);
    let sent = tokio::spawn(
        http.post(web.url("/upload"))
            .body(reqwest::Body::wrap(body))
            .send(),
    );
    let (first, second) = (vec![1u8; DOWNLOAD_PART], vec![2u8; DOWNLOAD_PART]);
    upload.send_data(first.clone().into()).await.unwrap();
    web.backend.wait_uploaded(first.len() as u64).await;
    upload.send_data(second.clone().into()).await.unwrap();
    drop(upload);
    let answer = sent.await.unwrap().expect("the upload is answered");
    assert_eq!(answer.status(), 200);
    let whole = [first, second].concat();
    let expected = format!(
        "{} {}",
        whole.len(),
        hex::encode(sha2::Sha256::digest(&whole))
    );
    assert_eq!(answer.text().await.unwrap(), expected);

    // The client has the first part of a download before the endpoint
    // sends the rest.
    let mut answer = http.get(web.url("/download")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let mut got = Vec::new();
    while got.len() < DOWNLOAD_PART {
        let chunk = tokio::time::timeout(DEADLINE, answer.chunk())
            .await
            .expect("the first part arrives while the endpoint holds the rest")
            .unwrap()
            .expect("more of the download");
        got.extend_from_slice(&chunk);
    }
    web.backend.release_download();
    while let Some(chunk) = answer.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got.len(), 2 * DOWNLOAD_PART);
    assert!(got[..DOWNLOAD_PART].iter().all(|&b| b == b'a'));
    assert!(got[DOWNLOAD_PART..].iter().all(|&b| b == b'b'));

    // A body declared larger than the limit is refused before any of it
    // is read, with the JSON envelope.
    let request = format!(
        "POST /s/web/upload HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        web.gateway_addr(),
        limit + 1
    );
    let (head, body) = raw_exchange(web.gateway_addr(), &request).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "payload_too_large", "{error}");
}

#[tokio::test]
async fn connections_to_an_endpoint_are_kept_alive_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    // One worker: the runtime is then a single thread (as the benchmark
    // runs it), which must serve, probe and discover all the same.
    let web = Web::start(tmp.path(), &["--workers", "1"]).await;
    let http = http();
    let opened = || async {
        web.route
            .gateway
            .metric("skyclaw_gateway_upstream_connections_opened_total")
            .await
            .expect("the pool's counter")
    };
    let before = opened().await;
    // Answers with a body and answers without one (HEAD) both leave their
    // connection ready for the next request.
    for round in 0..100 {
        let get = http.get(web.url("/")).send().await.unwrap();
        assert_eq!(get.status(), 200, "round {round}");
        assert_eq!(get.text().await.unwrap(), "web");
        let head = http.head(web.url("/")).send().await.unwrap();
        assert_eq!(head.status(), 200, "round {round}");
    }
    let during = opened().await - before;
    // One connection carries the requests; a probe in flight at the same
    // moment may have needed another.
    assert!(
        during <= 2.0,
        "{during} connections opened for 200 requests one at a time"
    );
}

#[tokio::test]
async fn a_kept_connection_the_endpoint_closed_is_never_used_for_a_request() {
    let tmp = tempfile::tempdir().unwrap();
    let endpoint = ClosingEndpoint::start().await;
    let route = Route::to(tmp.path(), &endpoint.url, &[]).await;
    let gateway = &route.gateway;
    let http = http();
    // Each answer's connection is closed by the endpoint while the gateway
    // holds it idle. A request put on such a connection fails, and is
    // retried on the next endpoint or answered 502 or 503: every request
    // answered at once with no retry shows that none was.
    for round in 0..20 {
        let answer = http
            .get(format!("{}/s/web/orders", gateway.url))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "round {round}");
        assert_eq!(answer.text().await.unwrap(), "ok");
        // The endpoint has closed the connection before the next request.
        eventually(
            "the endpoint to close the connections it answered on",
            || async { (endpoint.closed() >= endpoint.answered()).then_some(()) },
        )
        .await;
    }
    assert_eq!(gateway.counter("retries", "web").await, 0.0);
    assert!(endpoint.answered() >= 20);
}

#[tokio::test]
async fn an_upgrade_is_spliced_both_ways_until_the_client_closes() {
    let tmp = tempfile::tempdir().unwrap();
    let web = Web::start(tmp.path(), &[]).await;
    let mut socket = tokio::net::TcpStream::connect(web.gateway_addr())
        .await
        .unwrap();
    let request = format!(
        "GET /s/web/upgrade HTTP/1.1\r\nHost: {}\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        web.gateway_addr()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(DEADLINE, socket.read(&mut byte))
            .await
            .expect("the gateway answers the upgrade")
            .unwrap();
        assert_eq!(n, 1, "the gateway closed during the head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(header(&head, "upgrade"), Some("echo"));
    for message in ["ping", "a second message, longer than the first"] {
        socket.write_all(message.as_bytes()).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(DEADLINE, socket.read_exact(&mut back))
            .await
            .expect("the endpoint's echo comes back")
            .unwrap();
        assert_eq!(back, message.as_bytes());
    }
}

#[tokio::test]
async fn http2_is_offered_over_tls_by_alpn_beside_http1() {
    let tmp = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let flags = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let web = Web::start(tmp.path(), &flags).await;
    assert!(
        web.route.gateway.url.starts_with("https://"),
        "{}",
        web.route.gateway.url
    );
    let addr = web.gateway_addr();
    let url = format!("https://localhost:{}/s/web/echo", addr.port());
    let client = |http1_only: bool| {
        let root = reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap();
        let builder = reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(root)
            .resolve("localhost", addr);
        let builder = if http1_only {
            builder.http1_only()
        } else {
            builder
        };
        builder.build().unwrap()
    };
    for (http1_only, version) in [
        (false, reqwest::Version::HTTP_2),
        (true, reqwest::Version::HTTP_11),
    ] {
        let answer = client(http1_only).get(&url).send().await.unwrap();
        assert_eq!(answer.version(), version);
        assert_eq!(answer.status(), 200);
        let headers = seen(&answer.bytes().await.unwrap());
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(
            headers["forwarded"],
            format!(
                "for=127.0.0.1;proto=https;host=\"localhost:{}\"",
                addr.port()
            )
        );
    }
}
