//! Guest stdout and stderr: each line a guest prints appears on the host's
//! own stdout or stderr, prefixed with the plugin's name, or is captured in
//! memory by the test transport.
//!
//! Output is line-buffered per stream, and a line is cut at
//! [`MAX_LINE`] bytes so a guest cannot grow host memory by never printing
//! a newline. Control characters are escaped (a guest cannot forge or hide
//! host log lines) and lines are handed to [`crate::sink`], which never
//! blocks the reactor.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;

pub use crate::sink::Stream;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The longest line kept before it is emitted anyway.
pub const MAX_LINE: usize = 16 << 10;

/// Where a plugin's output goes.
#[derive(Debug, Clone)]
pub enum Sink {
    /// To the host's own stream, as `[plugin] line`.
    Host {
        /// The plugin name used as the prefix.
        plugin: Arc<str>,
        /// Which host stream.
        stream: Stream,
    },
    /// Appended, unprefixed, to a shared buffer.
    Capture(Arc<Mutex<Vec<u8>>>),
}

impl Sink {
    fn emit(&self, line: &[u8]) {
        match self {
            Sink::Host { plugin, stream } => {
                let line = line.strip_suffix(b"\n").unwrap_or(line);
                if crate::sink::guest_output_as_logs() {
                    // `--log-format json`: one log record, attributed.
                    let mut text = Vec::with_capacity(line.len());
                    crate::sink::escape_into(&mut text, line);
                    let text = String::from_utf8_lossy(&text);
                    let stream = match stream {
                        Stream::Stdout => "stdout",
                        Stream::Stderr => "stderr",
                    };
                    tracing::info!(target: "twill::guest", plugin = %plugin, stream, "{text}");
                    return;
                }
                let mut msg = Vec::with_capacity(plugin.len() + line.len() + 4);
                msg.push(b'[');
                msg.extend_from_slice(plugin.as_bytes());
                msg.extend_from_slice(b"] ");
                crate::sink::escape_into(&mut msg, line);
                msg.push(b'\n');
                // Never blocks: a record the host stream cannot take now is
                // dropped and counted (see `crate::sink`).
                crate::sink::pipe(*stream).push(msg);
            }
            Sink::Capture(buf) => buf.lock().unwrap().extend_from_slice(line),
        }
    }
}

/// A guest's stdout or stderr, as handed to `WasiCtxBuilder`.
#[derive(Debug, Clone)]
pub struct GuestOutput(pub Sink);

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineStream {
            sink: self.0.clone(),
            partial: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineStream {
            sink: self.0.clone(),
            partial: Vec::new(),
        })
    }
}

/// One open guest stream: buffers a partial line.
struct LineStream {
    sink: Sink,
    partial: Vec<u8>,
}

impl LineStream {
    fn push(&mut self, mut bytes: &[u8]) {
        if let Sink::Capture(_) = self.sink {
            self.sink.emit(bytes);
            return;
        }
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&bytes[..=nl]);
            self.sink.emit(&self.partial);
            self.partial.clear();
            bytes = &bytes[nl + 1..];
        }
        self.partial.extend_from_slice(bytes);
        if self.partial.len() >= MAX_LINE {
            self.sink.emit(&self.partial);
            self.partial.clear();
        }
    }
}

impl Drop for LineStream {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            self.sink.emit(&self.partial);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LineStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for LineStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
