//! wasi:http services: a request read whole into a [`Request`], the
//! service's answer built as a [`Response`], the handler exported with
//! [`http_handler!`](crate::http_handler), and blocking outbound requests
//! ([`get`], [`fetch`]) over `wasi:http/outgoing-handler`.
//!
//! The host runs a fresh instance of the component for every request, with
//! that request's fuel, memory and time limits: nothing a handler keeps in
//! memory outlives its request. It sees no files, environment or arguments,
//! and its stdout and stderr go nowhere. Outbound requests reach only the
//! hosts its service lists in `allowed_outbound_hosts`; any other is refused
//! with [`FetchError::Denied`].
//!
//! Built on the `wasip2` bindings of the Bytecode Alliance; a handler that
//! needs more (streaming bodies, trailers) can use them directly through
//! [`wasip2`](crate::http::wasip2).

use std::fmt;

pub use wasip2;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest,
    OutgoingResponse, ResponseOutparam, Scheme,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// Largest body read into memory, of a request or of a fetched response: a
/// bigger one answers 413 (or fails the fetch) instead of making the
/// instance grow towards its memory limit.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Bytes asked of a body stream per read.
const READ_CHUNK: u64 = 64 * 1024;
/// Bytes one `blocking-write-and-flush` may take (a WASI bound).
const WRITE_CHUNK: usize = 4096;

/// A request as the handler gets it: everything read, the body whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query: `/hello`.
    pub path: String,
    /// What followed `?`, as sent (empty when there was none).
    pub query: String,
    /// Every header in the order received; names are lowercase.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (any case), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The value of query parameter `name`, percent-decoded (`+` is a
    /// space); `None` when absent or not UTF-8 once decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key)? == name).then(|| decode(value)).flatten()
        })
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.body)
    }
}

/// An answer, or a fetched response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// An answer with a status and a body, and no headers yet.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// 200 with a plain-text body.
    pub fn text(body: impl Into<String>) -> Response {
        Response::new(200, body.into()).with_header("content-type", "text/plain; charset=utf-8")
    }

    /// 200 with a JSON body; 500 when `value` cannot be serialised.
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(200, body).with_header("content-type", "application/json"),
            Err(e) => Response::text(format!("cannot serialise the answer: {e}")).with_status(500),
        }
    }

    /// An empty answer with `status`.
    pub fn status(status: u16) -> Response {
        Response::new(status, Vec::new())
    }

    /// The same answer with another status.
    pub fn with_status(mut self, status: u16) -> Response {
        self.status = status;
        self
    }

    /// The same answer with one more header.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Response {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// The first value of header `name` (any case), if it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as text, invalid UTF-8 replaced.
    pub fn text_lossy(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why an outbound request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The URL is not `http://` or `https://` with a host.
    InvalidUrl(String),
    /// The host refused to send it: its service does not allow that host.
    Denied,
    /// It was sent and failed (connection refused, timeout, …): the error
    /// wasi:http reported.
    Failed(String),
    /// The response body was larger than [`MAX_BODY_BYTES`].
    TooLarge,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::InvalidUrl(url) => write!(f, "invalid URL {url:?}"),
            FetchError::Denied => write!(
                f,
                "the request was denied (HttpRequestDenied): its host is not in the \
                 service's allowed_outbound_hosts"
            ),
            FetchError::Failed(error) => write!(f, "the request failed: {error}"),
            FetchError::TooLarge => write!(f, "the response body is over {MAX_BODY_BYTES} bytes"),
        }
    }
}

impl std::error::Error for FetchError {}

impl From<ErrorCode> for FetchError {
    fn from(code: ErrorCode) -> FetchError {
        match code {
            ErrorCode::HttpRequestDenied => FetchError::Denied,
            other => FetchError::Failed(format!("{other:?}")),
        }
    }
}

/// `GET url`, waiting for the whole response.
pub fn get(url: &str) -> Result<Response, FetchError> {
    fetch("GET", url, &[], &[])
}

/// Sends a request and waits for the whole response (any status: a 404 is
/// a response, not an error).
pub fn fetch(
    method: &str,
    url: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Result<Response, FetchError> {
    let (scheme, authority, path) = split_url(url)?;
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(name, value)
            .map_err(|e| FetchError::Failed(format!("header {name:?}: {e:?}")))?;
    }
    let request = OutgoingRequest::new(fields);
    let invalid = |_| FetchError::InvalidUrl(url.to_string());
    request.set_method(&method_of(method)).map_err(invalid)?;
    request.set_scheme(Some(&scheme)).map_err(invalid)?;
    request.set_authority(Some(authority)).map_err(invalid)?;
    request.set_path_with_query(Some(path)).map_err(invalid)?;
    let outgoing = request.body().expect("a new request's body is there");
    let pending = outgoing_handler::handle(request, None)?;
    if !body.is_empty() {
        let stream = outgoing.write().expect("a new body's stream is there");
        write_all(&stream, body).map_err(FetchError::Failed)?;
    }
    OutgoingBody::finish(outgoing, None)?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(code.into()),
        Some(Err(())) | None => {
            return Err(FetchError::Failed("no response came".to_string()));
        }
    };
    let status = response.status();
    let headers = response.headers().entries();
    let incoming = response
        .consume()
        .map_err(|()| FetchError::Failed("the response body was taken".to_string()))?;
    let body = read_body(&incoming).map_err(|e| match e {
        BodyError::TooLarge => FetchError::TooLarge,
        BodyError::Stream(e) => FetchError::Failed(e),
    })?;
    drop(IncomingBody::finish(incoming));
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Exports a function `fn(Request) -> Response` as the component's
/// `wasi:http/incoming-handler`. Use it once per component:
///
/// ```no_run
/// use skyclaw_guest::http::{Request, Response};
///
/// fn handle(request: Request) -> Response {
///     match request.path.as_str() {
///         "/health" => Response::text("ok"),
///         _ => Response::status(404),
///     }
/// }
///
/// skyclaw_guest::http_handler!(handle);
/// ```
///
/// A binary crate also needs a `fn main() {}`, which the host never calls.
#[macro_export]
macro_rules! http_handler {
    ($handler:path) => {
        #[doc(hidden)]
        struct __SkyclawHttpHandler;

        impl $crate::http::__export::Guest for __SkyclawHttpHandler {
            fn handle(
                request: $crate::http::__export::IncomingRequest,
                out: $crate::http::__export::ResponseOutparam,
            ) {
                $crate::http::__export::serve(request, out, $handler);
            }
        }

        $crate::http::__export::export!(
            __SkyclawHttpHandler with_types_in $crate::http::__export::wasip2
        );
    };
}

/// What [`http_handler!`](crate::http_handler) expands to; not an API.
#[doc(hidden)]
pub mod __export {
    pub use wasip2;
    pub use wasip2::exports::wasi::http::incoming_handler::Guest;
    pub use wasip2::http::proxy::export;
    pub use wasip2::http::types::{IncomingRequest, ResponseOutparam};

    use super::{Request, Response};

    /// Reads the request, runs the handler, sends its answer.
    pub fn serve(
        request: IncomingRequest,
        out: ResponseOutparam,
        handler: impl FnOnce(Request) -> Response,
    ) {
        let response = match super::read_request(request) {
            Ok(request) => handler(request),
            Err(refusal) => refusal,
        };
        super::send(out, response);
    }
}

/// The request, read whole; or the answer to give when it cannot be.
fn read_request(request: IncomingRequest) -> Result<Request, Response> {
    let method = method_name(&request.method());
    let target = request.path_with_query().unwrap_or_else(|| "/".to_string());
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path.to_string(), query.to_string()),
        None => (target, String::new()),
    };
    let headers = request.headers().entries();
    let incoming = request
        .consume()
        .map_err(|()| Response::text("the request body was taken").with_status(500))?;
    let body = read_body(&incoming).map_err(|e| match e {
        BodyError::TooLarge => {
            Response::text(format!("the request body is over {MAX_BODY_BYTES} bytes"))
                .with_status(413)
        }
        BodyError::Stream(e) => {
            Response::text(format!("cannot read the request: {e}")).with_status(400)
        }
    })?;
    drop(IncomingBody::finish(incoming));
    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

/// Sends `response` through `out`, the body after the head.
fn send(out: ResponseOutparam, response: Response) {
    let fields = Fields::new();
    let mut valid = true;
    for (name, value) in &response.headers {
        valid &= fields.append(name, value).is_ok();
    }
    valid &= fields
        .set(
            "content-length",
            &[response.body.len().to_string().into_bytes()],
        )
        .is_ok();
    let outgoing = OutgoingResponse::new(fields);
    valid &= outgoing.set_status_code(response.status).is_ok();
    if !valid {
        // The handler's own answer cannot be sent as it is: say why instead.
        let message = "the handler's answer has an invalid status or header".to_string();
        return send(out, Response::text(message).with_status(500));
    }
    let body = outgoing.body().expect("a new response's body is there");
    ResponseOutparam::set(out, Ok(outgoing));
    let stream = body.write().expect("a new body's stream is there");
    // A client gone away is no error of the handler's.
    let _ = write_all(&stream, &response.body);
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

fn write_all(stream: &OutputStream, mut bytes: &[u8]) -> Result<(), String> {
    while !bytes.is_empty() {
        let n = bytes.len().min(WRITE_CHUNK);
        stream
            .blocking_write_and_flush(&bytes[..n])
            .map_err(|e| stream_error(&e))?;
        bytes = &bytes[n..];
    }
    Ok(())
}

enum BodyError {
    TooLarge,
    Stream(String),
}

fn read_body(body: &IncomingBody) -> Result<Vec<u8>, BodyError> {
    let stream: InputStream = body
        .stream()
        .map_err(|()| BodyError::Stream("the body stream was taken".to_string()))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => {
                if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(BodyError::TooLarge);
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => return Ok(bytes),
            Err(e) => return Err(BodyError::Stream(stream_error(&e))),
        }
    }
}

fn stream_error(error: &StreamError) -> String {
    match error {
        StreamError::Closed => "the stream is closed".to_string(),
        StreamError::LastOperationFailed(e) => e.to_debug_string(),
    }
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
    .to_string()
}

fn method_of(name: &str) -> Method {
    match name.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        _ => Method::Other(name.to_string()),
    }
}

/// `http://host:port/path?query` as scheme, authority and path with query.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), FetchError> {
    let invalid = || FetchError::InvalidUrl(url.to_string());
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(invalid());
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) if rest.as_bytes()[at] == b'/' => rest.split_at(at),
        Some(_) => return Err(invalid()),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(invalid());
    }
    Ok((scheme, authority, path))
}

/// Percent-decodes `text` (`+` is a space); `None` when not UTF-8 after.
/// A `%` not followed by two hex digits stands for itself.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], escaped) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (byte, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str) -> Request {
        Request {
            method: "GET".to_string(),
            path: "/".to_string(),
            query: query.to_string(),
            headers: vec![("content-type".to_string(), b"text/plain".to_vec())],
            body: Vec::new(),
        }
    }

    #[test]
    fn query_params_are_decoded() {
        let request = request("ms=20&url=http%3A%2F%2F127.0.0.1%3A80%2Fx&q=a+b&flag");
        assert_eq!(request.query_param("ms").as_deref(), Some("20"));
        assert_eq!(
            request.query_param("url").as_deref(),
            Some("http://127.0.0.1:80/x")
        );
        assert_eq!(request.query_param("q").as_deref(), Some("a b"));
        assert_eq!(request.query_param("flag").as_deref(), Some(""));
        assert_eq!(request.query_param("missing"), None);
        assert_eq!(request.header("Content-Type"), Some("text/plain"));
    }

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let (scheme, authority, path) = split_url("http://127.0.0.1:8080/a?b=c").unwrap();
        assert!(matches!(scheme, Scheme::Http));
        assert_eq!((authority, path), ("127.0.0.1:8080", "/a?b=c"));
        let (scheme, authority, path) = split_url("https://example.com").unwrap();
        assert!(matches!(scheme, Scheme::Https));
        assert_eq!((authority, path), ("example.com", "/"));
        for bad in [
            "ftp://x/",
            "http://",
            "http://u@h/",
            "http://h?x",
            "127.0.0.1",
        ] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn responses_carry_status_headers_and_body() {
        let response = Response::text("hi")
            .with_status(201)
            .with_header("X-A", "b");
        assert_eq!(response.status, 201);
        assert_eq!(response.header("x-a"), Some("b"));
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(response.body, b"hi");
        assert_eq!(Response::json(&[1, 2]).body, b"[1,2]");
        assert_eq!(Response::status(404).body, b"");
    }
}
