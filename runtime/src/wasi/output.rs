//! A guest's stdout or stderr: kept in memory up to a limit, the rest counted
//! and dropped. Writes past the limit still succeed, so a chatty guest keeps
//! running instead of failing on a closed stream.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::captured::Captured;

/// Bytes a guest may hand over in one write. The guest chooses how much to
/// write up to this, and the host copies that much at once, so it bounds a
/// host allocation a guest can force.
const WRITE_BUDGET: usize = 64 * 1024;

/// One output stream of one job; clones share what was captured.
#[derive(Clone)]
pub(super) struct OutputCapture {
    limit: usize,
    captured: Arc<Mutex<Captured>>,
}

impl OutputCapture {
    /// A stream that keeps at most `limit` bytes.
    pub(super) fn new(limit: usize) -> OutputCapture {
        OutputCapture {
            limit,
            captured: Arc::default(),
        }
    }

    /// What was written so far.
    pub(super) fn take(&self) -> Captured {
        std::mem::take(&mut *self.lock())
    }

    fn push(&self, bytes: &[u8]) {
        self.lock().push(bytes, self.limit);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.captured.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl IsTerminal for OutputCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputCapture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputCapture {
    /// Always ready: writes never wait.
    async fn ready(&mut self) {}
}

impl OutputStream for OutputCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl AsyncWrite for OutputCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
