//! HTTP programs: a component checked to be a wasi:http proxy, compiled (or
//! taken from the code cache) and pre-instantiated against WASI 0.2 and
//! wasi:http, so that each request only instantiates it and calls its
//! handler.

use std::path::Path;

use skyclaw_api::artifacts::Digest;
use wasmtime::component::{Component, Linker, Resource};
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};

use super::HttpGuest;
use crate::wasi::engine::Inner;
use crate::wasi::program::{Code, LoadError, WasmKind};

/// The host's imports for HTTP programs: all of WASI 0.2 (a Rust component
/// imports the whole `wasi:cli` world even when it never uses it; the store
/// grants none of it: no files, sockets, env or args) and wasi:http.
pub(super) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HttpGuest>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// A compiled, pre-instantiated wasi:http proxy component, ready to serve
/// any number of requests on any number of listeners.
pub struct HttpProgram {
    digest: Digest,
    pre: ProxyPre<HttpGuest>,
}

impl std::fmt::Debug for HttpProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProgram")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl HttpProgram {
    /// The artifact this program was made of.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Instantiates the component in `store` and hands it one request.
    /// Dropping the future unwinds the guest wherever it is.
    pub(super) async fn handle(
        &self,
        store: &mut Store<HttpGuest>,
        request: Resource<HostIncomingRequest>,
        response: Resource<HostResponseOutparam>,
    ) -> wasmtime::Result<()> {
        let proxy = self.pre.instantiate_async(&mut *store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut *store, request, response)
            .await
    }
}

impl Inner {
    /// Compiled code from disk if it is there and sound, else compiled now
    /// (and written to disk); pre-instantiated as a proxy. Blocking.
    pub(in crate::wasi) fn prepare_http(
        &self,
        digest: &Digest,
        blob: &Path,
    ) -> Result<HttpProgram, LoadError> {
        if WasmKind::sniff(blob)? != WasmKind::Component {
            return Err(LoadError::NotProxy(
                "the artifact is a preview 1 module; wasi:http services are components \
                 (build for wasm32-wasip2)"
                    .to_string(),
            ));
        }
        let cached = self
            .cached_code(digest, WasmKind::Component)
            .and_then(Code::into_component);
        let component = match cached {
            Some(component) => component,
            None => {
                let wasm = std::fs::read(blob).map_err(|source| LoadError::Read {
                    path: blob.to_path_buf(),
                    source,
                })?;
                let component = Component::new(&self.engine, &wasm)
                    .map_err(|e| LoadError::NotProxy(format!("invalid WebAssembly: {e:#}")))?;
                let code = Code::Component(component);
                self.keep_code(digest, &code);
                code.into_component().expect("compiled as a component")
            }
        };
        let not_proxy = |e: wasmtime::Error| LoadError::NotProxy(format!("{e:#}"));
        let pre = self
            .http
            .linker
            .instantiate_pre(&component)
            .map_err(not_proxy)?;
        let pre = ProxyPre::new(pre).map_err(not_proxy)?;
        Ok(HttpProgram {
            digest: digest.clone(),
            pre,
        })
    }
}
