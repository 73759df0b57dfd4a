//! Fake gateways on real ports, for `skyclaw call`: each answers every
//! request with the status and body the test sets and records what it was
//! sent; `dead_url` is the address of a gateway that is down.

use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// One request a fake gateway received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    /// The path and query, as sent.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How a fake gateway answers, and what it received.
#[derive(Debug)]
pub struct GatewayState {
    pub status: StatusCode,
    pub body: String,
    pub received: Vec<Received>,
}

/// A fake gateway serving on 127.0.0.1 until the test ends.
pub struct FakeGateway {
    pub url: String,
    state: Arc<Mutex<GatewayState>>,
}

impl FakeGateway {
    /// Serves on a port of its own, answering `status` with `body`.
    pub async fn start(status: u16, body: &str) -> FakeGateway {
        let state = Arc::new(Mutex::new(GatewayState {
            status: StatusCode::from_u16(status).expect("a status code"),
            body: body.to_string(),
            received: Vec::new(),
        }));
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeGateway { url, state }
    }

    pub fn lock(&self) -> MutexGuard<'_, GatewayState> {
        self.state.lock().unwrap()
    }

    /// How many requests it received.
    pub fn count(&self) -> usize {
        self.lock().received.len()
    }
}

async fn answer(State(state): State<Arc<Mutex<GatewayState>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let mut state = state.lock().unwrap();
    state.received.push(Received {
        method: parts.method,
        target: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });
    (state.status, state.body.clone()).into_response()
}

/// The URL of a gateway that is down: a port just bound and released, so a
/// connection to it is refused.
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}
