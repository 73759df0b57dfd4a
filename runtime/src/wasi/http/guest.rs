//! What one request's store holds: a WASI context that grants nothing (no
//! files, sockets, env, args or stdin; output goes nowhere), the wasi:http
//! context with the service's outbound rules as its `send_request` hook,
//! and the request's memory cap.

use std::sync::Arc;

use http_body_util::BodyExt;
use skyclaw_api::services::OutboundRule;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use crate::wasi::sandbox::{Capped, MemoryCap};

/// Store data of one request.
pub(in crate::wasi) struct HttpGuest {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: Outbound,
    memory: MemoryCap,
}

impl HttpGuest {
    pub(super) fn new(outbound: Outbound, memory_mb: u32) -> HttpGuest {
        // The builder's defaults are the sandbox: stdin closed, stdout and
        // stderr discarded, no env, args or preopens; sockets and name
        // lookups are refused outright on top of that.
        let wasi = WasiCtxBuilder::new()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HttpGuest {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            outbound,
            memory: MemoryCap::new(memory_mb),
        }
    }

    /// True once the guest asked for more memory than its cap.
    pub(super) fn memory_denied(&self) -> bool {
        self.memory.denied()
    }
}

impl WasiView for HttpGuest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpGuest {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl Capped for HttpGuest {
    fn memory(&mut self) -> &mut MemoryCap {
        &mut self.memory
    }
}

/// Where a service's guests may send HTTP requests: only to hosts its
/// `allowed_outbound_hosts` names, nowhere when it names none.
#[derive(Clone)]
pub(super) struct Outbound {
    rules: Arc<[OutboundRule]>,
}

impl Outbound {
    pub(super) fn new(rules: Vec<OutboundRule>) -> Outbound {
        Outbound {
            rules: rules.into(),
        }
    }

    /// True when some rule allows the scheme, host and port of `uri` (the
    /// scheme's own port when it names none).
    fn allows(&self, uri: &http::Uri) -> bool {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return false,
        };
        let Some(host) = uri.host() else {
            return false;
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        self.rules.iter().any(|rule| rule.allows(https, host, port))
    }
}

/// What `send_request` gives back.
type Sent = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for Outbound {
    /// Sends a request the rules allow, as wasmtime would; refuses any other
    /// with `HttpRequestDenied`, which the guest sees as its request's error.
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Sent {
        if !self.allows(request.uri()) {
            tracing::debug!(uri = %request.uri(), "outbound request denied");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            let io: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> = Box::new(io);
            Ok((response.map(BodyExt::boxed_unsync), io))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbound(rules: &[&str]) -> Outbound {
        Outbound::new(
            rules
                .iter()
                .map(|r| OutboundRule::parse(r).expect("a valid rule"))
                .collect(),
        )
    }

    fn allows(outbound: &Outbound, uri: &str) -> bool {
        outbound.allows(&uri.parse().expect("a valid uri"))
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        let none = outbound(&[]);
        assert!(!allows(&none, "http://127.0.0.1:8080/"));
        assert!(!allows(&none, "https://example.com/"));
    }

    #[test]
    fn rules_match_scheme_host_and_port() {
        let rules = outbound(&["http://127.0.0.1:*", "https://api.example.com"]);
        assert!(allows(&rules, "http://127.0.0.1:8080/x"));
        assert!(allows(&rules, "http://127.0.0.1/x"));
        assert!(
            !allows(&rules, "https://127.0.0.1:8080/x"),
            "scheme differs"
        );
        assert!(allows(&rules, "https://API.example.com/v1"));
        assert!(allows(&rules, "https://api.example.com:443/v1"));
        assert!(
            !allows(&rules, "https://api.example.com:8443/v1"),
            "port differs"
        );
        assert!(
            !allows(&rules, "http://api.example.com/v1"),
            "scheme differs"
        );
        assert!(!allows(&rules, "https://example.com/"), "host differs");
        assert!(!allows(&rules, "/relative"), "no scheme or host");
    }

    #[test]
    fn exact_ports_are_exact() {
        let rules = outbound(&["http://127.0.0.1:4000"]);
        assert!(allows(&rules, "http://127.0.0.1:4000/"));
        assert!(!allows(&rules, "http://127.0.0.1:4001/"));
        assert!(!allows(&rules, "http://127.0.0.1/"));
    }
}
