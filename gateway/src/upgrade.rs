//! Protocol upgrades (WebSocket): the request goes to one endpoint with its
//! `Connection: upgrade` and `Upgrade` headers; once the endpoint answers
//! 101, the two connections are spliced and bytes flow both ways until
//! either side closes. An upgrade is retried only when it could not connect.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use skyclaw_api::ErrorCode;
use tokio::time::Instant;

use crate::forward;
use crate::proxy::{Gateway, GatewayBody, error, full};
use crate::routes::Service;

/// Whether a request asks to switch protocols (HTTP/1.1 only; HTTP/2's
/// extended CONNECT is not offered).
pub fn is_upgrade<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

pub async fn forward(
    gateway: &Gateway,
    service: &Service,
    mut request: Request<Incoming>,
    uri: Uri,
    client: &forward::Client,
) -> Response<GatewayBody> {
    let client_side = hyper::upgrade::on(&mut request);
    let (mut parts, _body) = request.into_parts();
    let Some(protocol) = parts.headers.get(header::UPGRADE).cloned() else {
        return error(ErrorCode::BadRequest, "an upgrade names no protocol");
    };
    let request_id = forward::prepare_request(&mut parts.headers, client, parts.uri.authority());
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(header::UPGRADE, protocol);
    let mut tried = Vec::new();
    while let Some(index) = service.pick(&tried) {
        tried.push(index);
        let upstream = &service.endpoints[index];
        let mut upstream_request = Request::new(full(bytes::Bytes::new()));
        *upstream_request.method_mut() = parts.method.clone();
        *upstream_request.uri_mut() = uri.clone();
        *upstream_request.version_mut() = Version::HTTP_11;
        *upstream_request.headers_mut() = parts.headers.clone();
        upstream_request
            .headers_mut()
            .insert(header::HOST, upstream.host.clone());
        let head_by = Instant::now() + gateway.timeouts.response_header;
        let sent = tokio::time::timeout_at(
            head_by,
            gateway.pool.upgrade(&upstream.authority, upstream_request),
        )
        .await;
        let mut response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(e)) if e.is_connect() && tried.len() <= gateway.max_retries() => continue,
            Ok(Err(e)) => {
                return error(
                    ErrorCode::BadGateway,
                    format!("the endpoint failed the upgrade: {e}"),
                );
            }
            Err(_) => {
                return error(
                    ErrorCode::Timeout,
                    "the endpoint did not answer the upgrade in time",
                );
            }
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return gateway.respond(
                response,
                request_id,
                Instant::now() + gateway.timeouts.total,
            );
        }
        let upstream_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(upstream)) = tokio::join!(client_side, upstream_side) else {
                tracing::debug!("an upgrade was abandoned before both sides switched");
                return;
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(error = %e, "an upgraded connection ended with an error");
            }
        });
        let (mut head, _) = response.into_parts();
        let protocol = head.headers.get(header::UPGRADE).cloned();
        forward::prepare_response(&mut head.headers, request_id);
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = protocol {
            head.headers.insert(header::UPGRADE, protocol);
        }
        return Response::from_parts(head, full(bytes::Bytes::new()));
    }
    error(
        ErrorCode::Unavailable,
        format!(
            "service {:?} has no endpoint the gateway can use now",
            service.name
        ),
    )
}
