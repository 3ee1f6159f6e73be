//! systemd socket activation: the listening sockets a service manager
//! passed (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, as systemd and
//! `systemd-socket-activate` set them), taken once at start and handed to
//! the `[[listen]]` entries they match, so Twill binds nothing itself for
//! those.
//!
//! An inherited socket matches an entry by name first (its
//! `FileDescriptorName=`, in `LISTEN_FDNAMES`, equal to the entry's
//! plugin), then by port (the socket's bound port equal to the entry's
//! `port`): systemd chose the address, so the entry's `interface` is not
//! compared. Each socket serves one entry. Sockets no entry claims are
//! closed with a warning once the listeners are up.

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

use crate::config::ListenConfig;

/// One inherited listening socket.
struct Inherited {
    /// Its `LISTEN_FDNAMES` entry, if the manager named it.
    name: Option<String>,
    addr: SocketAddr,
    socket: TcpListener,
}

/// The sockets inherited and not yet claimed.
static INHERITED: Mutex<Vec<Inherited>> = Mutex::new(Vec::new());

/// What [`take_from_env`] found, to log once logging is up.
#[derive(Debug, Default)]
pub struct Found {
    /// The sockets taken: (name, address).
    pub sockets: Vec<(Option<String>, SocketAddr)>,
    /// Passed descriptors that were not TCP listening sockets, and why.
    pub rejected: Vec<String>,
}

/// Takes the sockets a service manager passed, if `LISTEN_FDS` is set for
/// this process, and removes the variables so that nothing this process
/// starts inherits them. Call it first thing in `main`, before any thread
/// starts (it changes the environment).
pub fn take_from_env() -> Found {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    if std::env::var_os("LISTEN_FDNAMES").is_some() {
        // SAFETY: called at the start of main, before any other thread
        // exists (see the doc comment), so nothing reads the environment
        // concurrently.
        unsafe { std::env::remove_var("LISTEN_FDNAMES") };
    }
    let mut fds = listenfd::ListenFd::from_env();
    let mut found = Found::default();
    let mut taken = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..fds.len() {
        let name = names.get(i).filter(|n| !n.is_empty()).cloned();
        match fds.take_tcp_listener(i) {
            Ok(Some(socket)) => match socket.local_addr() {
                Ok(addr) => {
                    found.sockets.push((name.clone(), addr));
                    taken.push(Inherited { name, addr, socket });
                }
                Err(e) => found.rejected.push(format!("fd {}: {e}", 3 + i)),
            },
            Ok(None) => {}
            Err(e) => found.rejected.push(e.to_string()),
        }
    }
    found
}

/// The inherited socket for `cfg`, if one matches (by name, then by port);
/// it is removed from the pool.
fn claim(cfg: &ListenConfig) -> Option<TcpListener> {
    let mut taken = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    let at = taken
        .iter()
        .position(|s| s.name.as_deref() == Some(cfg.plugin.as_str()))
        .or_else(|| {
            taken
                .iter()
                .position(|s| cfg.port != 0 && s.addr.port() == cfg.port)
        })?;
    Some(taken.remove(at).socket)
}

/// The inherited socket for `cfg`, if one matches, ready to accept on.
pub fn listener_for(cfg: &ListenConfig) -> Option<std::io::Result<tokio::net::TcpListener>> {
    let socket = claim(cfg)?;
    let listener = socket
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(socket));
    if let Ok(l) = &listener {
        tracing::info!(
            plugin = %cfg.plugin,
            addr = ?l.local_addr().ok(),
            "serving a socket passed by the service manager (socket activation); bound nothing"
        );
    }
    Some(listener)
}

/// Closes the inherited sockets no entry claimed, returning their
/// addresses (and names) for a warning.
pub fn close_unclaimed() -> Vec<(Option<String>, SocketAddr)> {
    let mut taken = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    taken.drain(..).map(|s| (s.name, s.addr)).collect()
}
