//! WASI p2 for guests that are called synchronously on the reactor's
//! threads: the deny-by-default linking, and the few functions that would
//! otherwise block the reactor.
//!
//! Guests are called with sync calls (see [`super`]), so WASI is linked with
//! wasmtime-wasi's synchronous bindings. Those implement every *blocking*
//! WASI function (`blocking-write-and-flush`, `blocking-read`, `poll`,
//! `pollable.block`, dropping a stream, creating a UDP socket) by
//! `block_on`-ing the current tokio runtime, which panics on a reactor
//! thread. This module shadows exactly those interfaces with versions that
//! poll the operation once: whatever is ready now completes (a guest's
//! stdout and stderr always are, stdin is always at its end), and anything
//! that would have to wait traps with [`WOULD_BLOCK`]. A Twill callback must
//! return promptly, as a Twisted callback must not block the reactor.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::p2::bindings::sockets::network;
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::bindings::sync::sockets::udp_create_socket;
use wasmtime_wasi::p2::{SocketError, SocketResult, StreamError, StreamResult, UdpSocket};
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;
use wasmtime_wasi_io::bindings::wasi::io::streams as async_streams;
use wasmtime_wasi_io::poll::DynPollable;
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream};

/// The trap message for a WASI call that would have had to wait.
pub const WOULD_BLOCK: &str = "a guest callback must not block the reactor: this WASI call would wait (twill guests get no timers, sockets or files; answer through the transport and return)";

/// Links WASI p2 (sync bindings) with the blocking functions replaced.
pub fn add_to_linker<T: WasiView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    streams::add_to_linker::<T, NonBlockingIo>(linker, |t| NonBlocking(t.ctx().table))?;
    poll::add_to_linker::<T, NonBlockingIo>(linker, |t| NonBlocking(t.ctx().table))?;
    udp_create_socket::add_to_linker::<T, DenyUdp>(linker, |t| NoUdp(t.ctx().table))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Runs `fut` to completion if it is ready now; traps if it would wait.
fn now_or_trap<F: Future>(fut: F) -> wasmtime::Result<F::Output> {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Ok(v),
        Poll::Pending => Err(wasmtime::format_err!("{WOULD_BLOCK}")),
    }
}

/// [`now_or_trap`] for a stream operation: a would-block becomes a trap
/// (`StreamError::Trap`), anything else is the operation's own result.
fn stream_now<R, F: Future<Output = StreamResult<R>>>(fut: F) -> StreamResult<R> {
    now_or_trap(fut).map_err(StreamError::Trap)?
}

/// The resource table, seen as non-blocking `wasi:io`.
pub struct NonBlocking<'a>(&'a mut ResourceTable);

struct NonBlockingIo;

impl HasData for NonBlockingIo {
    type Data<'a> = NonBlocking<'a>;
}

impl streams::Host for NonBlocking<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, err)
    }
}

impl streams::HostOutputStream for NonBlocking<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        now_or_trap(async_streams::HostOutputStream::drop(self.0, stream))?
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        async_streams::HostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        async_streams::HostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        stream_now(async_streams::HostOutputStream::blocking_write_and_flush(
            self.0, stream, bytes,
        ))
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        stream_now(
            async_streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostOutputStream::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        async_streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        async_streams::HostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        stream_now(async_streams::HostOutputStream::blocking_flush(
            self.0, stream,
        ))
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        async_streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        stream_now(async_streams::HostOutputStream::blocking_splice(
            self.0, dst, src, len,
        ))
    }
}

impl streams::HostInputStream for NonBlocking<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        now_or_trap(async_streams::HostInputStream::drop(self.0, stream))?
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        async_streams::HostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        stream_now(async_streams::HostInputStream::blocking_read(
            self.0, stream, len,
        ))
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        async_streams::HostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        stream_now(async_streams::HostInputStream::blocking_skip(
            self.0, stream, len,
        ))
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        async_streams::HostInputStream::subscribe(self.0, stream)
    }
}

impl poll::Host for NonBlocking<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        now_or_trap(async_poll::Host::poll(self.0, pollables))?
    }
}

impl poll::HostPollable for NonBlocking<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        now_or_trap(async_poll::HostPollable::ready(self.0, pollable))?
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        now_or_trap(async_poll::HostPollable::block(self.0, pollable))?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

/// `wasi:sockets/udp-create-socket`: twill never grants UDP, so creating a
/// socket is always `access-denied` (the sync binding would `block_on`).
struct DenyUdp;

/// The resource table, seen as `wasi:sockets` without UDP.
pub struct NoUdp<'a>(&'a mut ResourceTable);

impl HasData for DenyUdp {
    type Data<'a> = NoUdp<'a>;
}

impl network::Host for NoUdp<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<network::ErrorCode> {
        error.downcast()
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<network::ErrorCode>> {
        let err = self.0.get(&err)?;
        Ok(err
            .downcast_ref::<std::io::Error>()
            .map(network::ErrorCode::from))
    }
}

impl network::HostNetwork for NoUdp<'_> {
    fn drop(&mut self, this: Resource<network::Network>) -> wasmtime::Result<()> {
        self.0.delete(this)?;
        Ok(())
    }
}

impl udp_create_socket::Host for NoUdp<'_> {
    fn create_udp_socket(
        &mut self,
        _family: udp_create_socket::IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        Err(SocketError::from(network::ErrorCode::AccessDenied))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_futures_complete_and_pending_ones_trap() {
        assert_eq!(now_or_trap(async { 7 }).unwrap(), 7);
        let e = now_or_trap(std::future::pending::<()>()).unwrap_err();
        assert!(e.to_string().contains("must not block"), "{e}");
    }
}
