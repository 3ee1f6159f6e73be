//! A connection's socket, plaintext or with TLS on it: the one type the
//! data path reads from and writes to ([`crate::connection`], batched
//! delivery, the splice pump), without blocking.
//!
//! Plaintext goes straight to the socket. With TLS, a rustls connection
//! sits between: a read takes TLS records off the socket and returns the
//! plaintext they carried; a write encrypts into records and sends as many
//! as the socket takes, keeping the rest (up to
//! [`crate::tls::side::SEND_BUFFER`]) for when it is writable again, which
//! [`Wire::wants_write`] tells the driver. TLS is put on once, either
//! right after accept or connect, or later by the guest's `start-tls`
//! ([`Wire::handshake`]); it never comes off.
//!
//! Closing: [`Wire::finish_write`] sends TLS's `close_notify` before the
//! FIN. A peer that closes TCP without `close_notify` makes the read fail
//! (`UnexpectedEof`), so a truncated TLS stream is never mistaken for a
//! clean close.

use std::io::{self, IoSlice, Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::io::{Interest, Ready};
use tokio::net::TcpStream;

use crate::stats::Traffic;
use crate::tls::{HandshakeError, Side, TlsInfo, TlsStats};

/// A connection's socket.
#[derive(Debug)]
pub struct Wire {
    tcp: TcpStream,
    tls: OnceLock<Mutex<Tls>>,
    /// Where the bytes it carries are counted (a listener's or connector's
    /// [`Traffic`]), if anywhere.
    traffic: Option<Arc<Traffic>>,
    /// The peer and local addresses a PROXY protocol header named, which
    /// stand for the socket's own.
    proxied: Option<(SocketAddr, SocketAddr)>,
}

#[derive(Debug)]
struct Tls {
    conn: rustls::Connection,
    info: TlsInfo,
    close_sent: bool,
    /// Ciphertext read from the socket that rustls has not taken yet
    /// (empty, and unallocated, but for a read that filled its buffer).
    pending: Vec<u8>,
}

/// The largest socket read of ciphertext.
const MAX_READ: usize = 64 << 10;
/// The smallest (a read for a nearly full buffer still takes a record).
const MIN_READ: usize = 17 << 10;

thread_local! {
    /// Where ciphertext is read before rustls takes it.
    static CIPHERTEXT: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; MAX_READ]);
}

/// The socket as `std::io` sees it, for rustls: non-blocking, and clearing
/// tokio's cached readiness on `WouldBlock`.
struct Sock<'a>(&'a TcpStream);

impl io::Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl io::Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn lock(m: &Mutex<Tls>) -> MutexGuard<'_, Tls> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Wire {
    /// A plaintext connection on `tcp`.
    pub fn new(tcp: TcpStream) -> Wire {
        Wire {
            tcp,
            tls: OnceLock::new(),
            traffic: None,
            proxied: None,
        }
    }

    /// A plaintext connection on `tcp` whose bytes are counted in
    /// `traffic` (the protocol's bytes: after TLS decryption, before
    /// encryption).
    pub fn counted(tcp: TcpStream, traffic: Arc<Traffic>) -> Wire {
        Wire {
            traffic: Some(traffic),
            ..Wire::new(tcp)
        }
    }

    /// This connection as the PROXY protocol header that opened it
    /// described it: `peer` is the original client, `local` the address
    /// it connected to. [`Wire::peer_addr`] and [`Wire::local_addr`]
    /// answer these from now on.
    pub fn behind_proxy(mut self, peer: SocketAddr, local: SocketAddr) -> Wire {
        self.proxied = Some((peer, local));
        self
    }

    /// The TCP socket, to read what comes before the protocol's bytes
    /// (a PROXY protocol header).
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// The TCP socket (for a handshake, which runs on it directly).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Runs a TLS handshake on the socket as `side` says (under its
    /// deadline), counts the outcome in `stats`, and puts TLS on: from now
    /// on reads and writes go through rustls. A failed handshake changes
    /// nothing here; the connection is the caller's to end.
    pub async fn handshake(
        &self,
        side: Side<'_>,
        stats: Option<&TlsStats>,
    ) -> Result<(), HandshakeError> {
        let result = crate::tls::handshake::run(&self.tcp, side).await;
        if let Some(stats) = stats {
            stats.count(&result);
        }
        let (conn, server_name) = result?;
        let info = TlsInfo::of(&conn, server_name);
        let tls = Mutex::new(Tls {
            conn,
            info,
            close_sent: false,
            pending: Vec::new(),
        });
        // Put on once: `start-tls` is refused on an encrypted connection.
        let _ = self.tls.set(tls);
        Ok(())
    }

    /// Whether TLS is on.
    pub fn is_tls(&self) -> bool {
        self.tls.get().is_some()
    }

    /// What the handshake negotiated, with TLS on.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        self.tls.get().map(|t| lock(t).info.clone())
    }

    /// The peer's address (the original client's, behind a PROXY
    /// protocol balancer).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self.proxied {
            Some((peer, _)) => Ok(peer),
            None => self.tcp.peer_addr(),
        }
    }

    /// The local address (the one the client connected to, behind a
    /// PROXY protocol balancer).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.proxied {
            Some((_, local)) => Ok(local),
            None => self.tcp.local_addr(),
        }
    }

    /// Waits until the socket is ready for `interest`. With TLS: at once
    /// if plaintext (or the peer's `close_notify`) is already decrypted and
    /// waiting, and also for writability while records wait to be sent.
    pub async fn ready(&self, interest: Interest) -> io::Result<Ready> {
        let Some(tls) = self.tls.get() else {
            return self.tcp.ready(interest).await;
        };
        let (readable, wants_write) = {
            let mut t = lock(tls);
            let readable = !t.pending.is_empty()
                || t.conn.process_new_packets().map_or(true, |s| {
                    s.plaintext_bytes_to_read() > 0 || s.peer_has_closed()
                });
            (readable, t.conn.wants_write())
        };
        if interest.is_readable() && readable {
            return Ok(Ready::READABLE);
        }
        let interest = if wants_write {
            interest | Interest::WRITABLE
        } else {
            interest
        };
        self.tcp.ready(interest).await
    }

    /// Reads what is there into `buf` without blocking: `Ok(0)` is the
    /// peer's clean close (FIN; with TLS, `close_notify`).
    ///
    /// Plaintext: a read that does not fill the buffer proves the socket
    /// drained (epoll is edge-triggered), so it also clears the reactor's
    /// cached read readiness, as tokio's own `poll_read` does; otherwise
    /// the next pass would spend a `recv` syscall just to hear `EAGAIN`.
    /// The read runs inside `try_io`, so readiness is cleared only if no
    /// new readiness event arrived since the read began.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let r = self.read_uncounted(buf);
        if let (Ok(n), Some(t)) = (&r, &self.traffic) {
            t.received.add(*n as u64);
        }
        r
    }

    fn read_uncounted(&self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(tls) = self.tls.get() {
            return self.read_tls(&mut lock(tls), buf);
        }
        let cap = buf.len();
        let mut got = None;
        let r = self.tcp.try_io(Interest::READABLE, || {
            let sock = socket2::SockRef::from(&self.tcp);
            let n = (&*sock).read(buf)?;
            got = Some(n);
            if n > 0 && n < cap {
                // Drained: report WouldBlock so that try_io clears readiness.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(n)
            }
        });
        match (r, got) {
            (Ok(n), _) => Ok(n),
            (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            (Err(e), _) => Err(e),
        }
    }

    /// Decrypts into `buf` until it is full or the socket has no more.
    ///
    /// The socket is read in large reads (up to the room left in `buf`,
    /// through a per-thread buffer) and the ciphertext handed to rustls from
    /// memory: rustls itself reads 4 KiB at a time, which would cost four
    /// `recv` calls per 16 KiB record. Ciphertext left over when `buf` is
    /// full waits in `pending` for the next read.
    fn read_tls(&self, t: &mut Tls, buf: &mut [u8]) -> io::Result<usize> {
        CIPHERTEXT.with(|c| self.read_tls_via(t, buf, &mut c.borrow_mut()))
    }

    fn read_tls_via(&self, t: &mut Tls, buf: &mut [u8], scratch: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        // Ciphertext read into `scratch` and not yet given to rustls.
        let (mut start, mut end) = (0, 0);
        let result = loop {
            match t.conn.reader().read(&mut buf[got..]) {
                Ok(0) => break Ok(got),
                Ok(n) => {
                    got += n;
                    if got == buf.len() {
                        break Ok(got);
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The data first; the error (a close without
                // close_notify) on the next read.
                Err(_) if got > 0 => break Ok(got),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    break Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection without TLS close_notify: the stream may be truncated",
                    ));
                }
                Err(e) => break Err(e),
            }
            // More ciphertext for rustls: what an earlier read left, what
            // this one read, or a new read from the socket.
            let fed = if !t.pending.is_empty() {
                let mut rest = &t.pending[..];
                let r = t.conn.read_tls(&mut rest);
                let used = t.pending.len() - rest.len();
                t.pending.drain(..used);
                r
            } else if start < end {
                let mut rest = &scratch[start..end];
                let r = t.conn.read_tls(&mut rest);
                start = end - rest.len();
                r
            } else {
                let room = (buf.len() - got).clamp(MIN_READ, scratch.len());
                match self.tcp.try_read(&mut scratch[..room]) {
                    // TCP's EOF, told to rustls: the reader says next
                    // whether close_notify came first.
                    Ok(0) => t.conn.read_tls(&mut io::empty()),
                    Ok(n) => {
                        (start, end) = (0, n);
                        continue;
                    }
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = fed {
                break if got > 0 { Ok(got) } else { Err(e) };
            }
            if let Err(e) = t.conn.process_new_packets() {
                // Tell the peer (the alert), best effort.
                let _ = t.conn.write_tls(&mut Sock(&self.tcp));
                break Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("TLS error: {e}"),
                ));
            }
            // Post-handshake messages (tickets, key updates) to answer.
            if t.conn.wants_write()
                && let Err(e) = self.flush_tls(t)
            {
                break Err(e);
            }
        };
        // Ciphertext already taken off the socket waits for the next read.
        t.pending.extend_from_slice(&scratch[start..end]);
        result
    }

    /// Writes as much of `iov` as the socket (with TLS: rustls's send
    /// buffer) takes without blocking; `WouldBlock` if nothing. With TLS,
    /// [`Wire::flush`] first makes room.
    pub fn write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let r = self.write_uncounted(iov);
        if let (Ok(n), Some(t)) = (&r, &self.traffic) {
            t.sent.add(*n as u64);
        }
        r
    }

    fn write_uncounted(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        let Some(tls) = self.tls.get() else {
            // One `send` for one slice: a shorter kernel path than `writev`.
            return if iov.len() == 1 {
                self.tcp.try_write(&iov[0])
            } else {
                self.tcp.try_write_vectored(iov)
            };
        };
        // Records already waiting keep their place: rustls queues these
        // after them (callers flush first, to make room).
        let mut t = lock(tls);
        let n = t.conn.writer().write_vectored(iov)?;
        self.flush_tls(&mut t)?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Sends the TLS records waiting to go out, as far as the socket takes
    /// them; nothing without TLS.
    pub fn flush(&self) -> io::Result<()> {
        match self.tls.get() {
            Some(tls) => self.flush_tls(&mut lock(tls)),
            None => Ok(()),
        }
    }

    fn flush_tls(&self, t: &mut Tls) -> io::Result<()> {
        while t.conn.wants_write() {
            match t.conn.write_tls(&mut Sock(&self.tcp)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether TLS records wait to be sent (the socket was full).
    pub fn wants_write(&self) -> bool {
        self.tls.get().is_some_and(|t| lock(t).conn.wants_write())
    }

    /// Closes the write side: with TLS, `close_notify` first. Returns
    /// false while records still wait for the socket (call again once it
    /// is writable); true once the FIN is sent.
    pub fn finish_write(&self) -> io::Result<bool> {
        if let Some(tls) = self.tls.get() {
            let mut t = lock(tls);
            if !t.close_sent {
                t.close_sent = true;
                t.conn.send_close_notify();
            }
            self.flush_tls(&mut t)?;
            if t.conn.wants_write() {
                return Ok(false);
            }
        }
        let _ = socket2::SockRef::from(&self.tcp).shutdown(std::net::Shutdown::Write);
        Ok(true)
    }

    /// [`Wire::finish_write`], waiting up to `limit` for a full socket.
    pub async fn finish_write_within(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                match self.finish_write() {
                    Ok(true) | Err(_) => break,
                    Ok(false) => {
                        if self.tcp.writable().await.is_err() {
                            break;
                        }
                    }
                }
            }
        })
        .await;
    }

    /// Arranges a reset when the socket closes (no FIN, and with TLS no
    /// `close_notify`), so the peer sees the truncation.
    pub fn abort(&self) {
        let _ = socket2::SockRef::from(&self.tcp).set_linger(Some(Duration::ZERO));
    }
}
