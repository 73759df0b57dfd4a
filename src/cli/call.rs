//! `skyclaw call`: one HTTP request to a service through the network's
//! gateways, its answer's body streamed to stdout as it is.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use skyclaw_api::retry;
use skyclaw_api::service_client::{
    DEFAULT_REQUEST_TIMEOUT, GatewayFailure, ServiceCallError, ServiceClient, ServiceResponse,
};
use tokio::io::AsyncReadExt;

use super::output::{self, Layout, escape};
use super::positive_u64;

/// Exit code when the service answered with a status other than 2xx.
const EXIT_NOT_SUCCESS: u8 = 1;

/// The environment variable of `--gateway`, named in the message without one.
const GATEWAYS_ENV: &str = "SKYCLAW_GATEWAYS";

/// The longer help of `skyclaw call`: the failover and retry rule.
pub const HELP: &str = "\
Gateways: the request goes to the gateway that answered last, then to the
others in turn, each at most once. A request that never reached a gateway
(connection refused, DNS or TLS failure) always moves on. One that reached it
and was answered 502, 503 or 504, or whose connection broke, moves on only if
sending it twice is harmless: GET, HEAD, OPTIONS, PUT and DELETE, or any
request with an Idempotency-Key (or X-Idempotency-Key) header. Otherwise the
answer is returned, or the call fails saying the request may have been
processed.

Exit codes: 0 for a 2xx answer, 1 for any other answer, 2 for usage errors,
when every gateway failed, and when a request that may not be resent was
sent and its answer lost.

Examples:
  skyclaw call web /health --gateway https://gw1.example,https://gw2.example
  skyclaw call api /items -X POST -H 'Content-Type: application/json' -d @item.json \\
      -H 'Idempotency-Key: item-42'";

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// The service to call, by its name.
    service: String,
    /// The path and query to request from the service, such as
    /// `/items?page=2` (a missing leading `/` is added); it is sent to a
    /// gateway as /s/SERVICE/PATH.
    path: String,
    /// The request method, taken in upper case [default: POST with --data,
    /// else GET].
    #[arg(short = 'X', long = "request", env = "SKYCLAW_CALL_METHOD", value_name = "METHOD", value_parser = parse_method)]
    method: Option<Method>,
    /// The request body: the text itself, `@FILE` for a file's bytes, or `-`
    /// for stdin's.
    #[arg(
        short = 'd',
        long = "data",
        env = "SKYCLAW_CALL_DATA",
        value_name = "BODY"
    )]
    data: Option<String>,
    /// A request header as `NAME: VALUE`; repeat for more.
    #[arg(short = 'H', long = "header", env = "SKYCLAW_CALL_HEADER", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Gateway base URLs, repeated or comma-separated, tried as described below.
    #[arg(long = "gateway", env = GATEWAYS_ENV, value_name = "URL[,URL...]", value_delimiter = ',')]
    gateways: Vec<String>,
    /// Seconds one attempt on one gateway may take, from connecting to the
    /// body's last byte.
    #[arg(long, env = "SKYCLAW_CALL_TIMEOUT", value_name = "SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT.as_secs(), value_parser = positive_u64())]
    timeout: u64,
    /// Show on stderr the gateways that failed, the one that answered, the
    /// status line and the response headers.
    #[arg(short, long, env = "SKYCLAW_CALL_VERBOSE")]
    verbose: bool,
}

/// The gateways to try: those given, else the live ones the coordinators
/// list (`GET /v1/gateways`, readable with any valid credential).
async fn gateway_urls(args: &CallArgs, target: &super::Target) -> Result<Vec<String>> {
    let given: Vec<String> = args
        .gateways
        .iter()
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect();
    if !given.is_empty() {
        return Ok(given);
    }
    let listed = async {
        let client = target.client().await?;
        client
            .list_gateways()
            .await
            .map_err(|e| target.explain(e.into()))
    }
    .await
    .context("no --gateway given, and the coordinators' gateway list could not be read")?;
    let urls: Vec<String> = listed.gateways.into_iter().map(|g| g.public_url).collect();
    if urls.is_empty() {
        bail!(
            "no gateway is registered with the coordinators: pass --gateway URL or set {GATEWAYS_ENV}"
        );
    }
    Ok(urls)
}

pub async fn run(args: CallArgs, target: &super::Target) -> Result<ExitCode> {
    let client = ServiceClient::new(gateway_urls(&args, target).await?)?
        .with_timeout(Duration::from_secs(args.timeout));
    let body = match &args.data {
        Some(data) => read_body(data).await?,
        None => Bytes::new(),
    };
    let method = args.method.clone().unwrap_or(if args.data.is_some() {
        Method::POST
    } else {
        Method::GET
    });
    let mut headers = HeaderMap::new();
    for (name, value) in &args.headers {
        headers.append(name.clone(), value.clone());
    }
    let replayable = retry::replayable(&method, &headers);
    let answer = client
        .send(&args.service, method.clone(), &args.path, headers, body)
        .await;
    let ServiceResponse {
        gateway,
        failed,
        mut response,
    } = match answer {
        Ok(answer) => answer,
        Err(e) => {
            if args.verbose {
                let failed = match &e {
                    ServiceCallError::Unknown { failed, .. } => failed.as_slice(),
                    _ => &[],
                };
                show_failures(failed);
            }
            return Err(e.into());
        }
    };
    let status = response.status();
    if args.verbose {
        show_failures(&failed);
        let mut lines = format!("* answered by {}\n", escape(&gateway, Layout::Line));
        if retry::retryable_status(status) && !replayable {
            lines.push_str(&format!(
                "* not resent to another gateway: {method} without an idempotency key\n"
            ));
        }
        lines.push_str(&format!("< {:?} {status}\n", response.version()));
        for (name, value) in response.headers() {
            lines.push_str(&format!(
                "< {name}: {}\n",
                escape(value.as_bytes(), Layout::Line)
            ));
        }
        output::err_bytes(lines.as_bytes())?;
    }
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("the answer's body from {gateway} broke off"))?
    {
        stdout
            .write_all(&chunk)
            .and_then(|()| stdout.flush())
            .context("cannot write to stdout")?;
    }
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_SUCCESS)
    })
}

/// One `* GATEWAY failed: WHY` line per gateway passed over.
fn show_failures(failed: &[GatewayFailure]) {
    for failure in failed {
        eprintln!(
            "* {} failed: {}",
            escape(&failure.gateway, Layout::Line),
            escape(&failure.detail, Layout::Line)
        );
    }
}

/// `--data`: `@FILE`, `-` for stdin, or the text itself.
async fn read_body(data: &str) -> Result<Bytes> {
    if data == "-" {
        let mut body = Vec::new();
        tokio::io::stdin()
            .read_to_end(&mut body)
            .await
            .context("cannot read the body from stdin")?;
        return Ok(body.into());
    }
    match data.strip_prefix('@') {
        Some(path) => tokio::fs::read(path)
            .await
            .map(Bytes::from)
            .with_context(|| format!("cannot read the body from {path}")),
        None => Ok(Bytes::copy_from_slice(data.as_bytes())),
    }
}

fn parse_method(value: &str) -> Result<Method, String> {
    Method::from_bytes(value.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{value:?} is not an HTTP method"))
}

/// `NAME: VALUE`, the spaces around the value dropped.
fn parse_header(value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let bad = |why: &str| format!("{value:?} is not a header ({why}); expected 'NAME: VALUE'");
    let (name, header_value) = value.split_once(':').ok_or_else(|| bad("no ':'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad("bad name"))?;
    let header_value = HeaderValue::from_str(header_value.trim()).map_err(|_| bad("bad value"))?;
    Ok((name, header_value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_as_name_colon_value() {
        let (name, value) = parse_header("Idempotency-Key:  k1 ").unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("idempotency-key", "k1")
        );
        let (name, value) = parse_header("X-Empty:").unwrap();
        assert_eq!((name.as_str(), value.to_str().unwrap()), ("x-empty", ""));
        for bad in ["no colon", ": v", "bad name: v", "x: a\nb"] {
            let err = parse_header(bad).unwrap_err();
            assert!(err.contains("expected 'NAME: VALUE'"), "{err}");
        }
    }

    #[test]
    fn methods_are_taken_in_upper_case() {
        assert_eq!(parse_method("post").unwrap(), Method::POST);
        assert_eq!(parse_method("PURGE").unwrap().as_str(), "PURGE");
        assert!(parse_method("GE T").is_err());
    }
}
