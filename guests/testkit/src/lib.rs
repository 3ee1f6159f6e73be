//! # guest-testkit: a component that misbehaves on command
//!
//! The host's tests drive it to prove that each fault stays contained. Its
//! server protocol reads newline-terminated commands (so any chunking of the
//! input gives the same result) and answers each:
//!
//! | command | what the guest does |
//! |---|---|
//! | `echo TEXT` | writes `TEXT\n` |
//! | `addr` | writes `peer=IP:PORT host=IP:PORT\n` from `get-peer` / `get-host` |
//! | `big N` | writes N bytes (byte i is `i % 251`) in 64 KiB writes, then `lose-connection` |
//! | `seq N K` | writes K chunks of N bytes with one `write-sequence` |
//! | `lose` | `lose-connection` |
//! | `abort` | writes `x`, then `abort-connection` |
//! | `after-lose` | `lose-connection`, then calls every transport method again |
//! | `panic` | panics (a trap) |
//! | `loop` | loops forever (the CPU limit must stop it) |
//! | `alloc` | allocates without bound (the memory limit must stop it) |
//! | `flood` | writes without bound in one callback (the output limit must stop it) |
//! | `produce N` | registers as a producer and writes N bytes per resume |
//! | `env` / `file` / `net` / `clock` / `stdin` | tries the capability and writes `denied` or `allowed: ...` |
//! | `print TEXT` | prints TEXT to stdout |
//! | `sleep` | sleeps 50 ms (the host must trap it: callbacks may not block) |
//! | `join` | adds this connection to the instance's room (shared instances) |
//! | `say TEXT` | writes `TEXT\n` to every connection in the room |
//! | `lose-room` | `lose-connection` on every other connection in the room |
//! | `keep` | keeps a clone of this transport forever, even after the connection ends |
//! | `say-kept TEXT` | writes `TEXT\n` to every kept transport |
//! | `served` | writes `served=N live=L room=M\n`: protocols this instance has built, how many are not yet dropped, connections in its room |
//! | `leak N` | creates N WASI output streams and never drops them (host-side resources), then writes `leaked N\n` |
//! | `amplify N K` | one `write-sequence` of K entries that all point at one N-byte buffer (a raw call, as a hostile guest would make), then writes `amplified\n` |
//! | `later MS TEXT` | `call_later(MS)` that writes `TEXT\n` (kept as the connection's pending call) |
//! | `later-print MS TEXT` | `call_later(MS)` that prints `TEXT` to stdout |
//! | `cancel` / `reset MS` / `delay MS` | `cancel` / `reset` / `delay` the pending call; writes `ok` or the `AlreadyDone` error |
//! | `active` | writes `active=true` or `active=false` for the pending call |
//! | `seconds` | writes the reactor's time, `seconds=S` |
//! | `every MS [later]` / `stop` | a `LoopingCall` writing `tick N\n` every MS ms (first at once, or after one interval with `later`) / stops it |
//! | `timeout MS` / `touch` | a `Timeout` that loses the connection after MS ms of no `touch` / resets it |
//! | `timers N` | schedules N calls an hour away (past `max-timers`, the host traps), then writes `scheduled N\n` |
//! | `spin` | a call that reschedules itself with no delay forever, counting in `spins` |
//! | `connect HOST PORT` | `connect_tcp`; writes `connected`, `failed: REASON` or `connect-error: MSG`; what the outbound connection reads is written back here as `from-out: TEXT` lines |
//! | `splice-self` | `splice` to itself; tells the room the result (`splice-self: ...`) |
//! | `splice-out` | splices this connection to its outbound one, tries a second splice both ways and a write, and tells the room each result (`splice: ok`, `again: ...`, `reverse: ...`) |
//! | `spins` | writes `spins=N` |
//! | `panic-later MS` | a call that panics when it fires |
//! | `factory` | writes `started=N stopped=M ticks=T`: the factory hooks this instance heard, and the ticks of the `LoopingCall` its `start-factory` started (every second, first at once) |
//!
//! Its factory refuses (returns none for) every peer whose address is
//! `127.0.0.66`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use twill_guest::reactor::{DelayedCall, LoopingCall, Timeout, call_later, connect_tcp, seconds};
use twill_guest::{Address, ClientFactory, Protocol, Reason, ServerFactory, Transport, export};

thread_local! {
    /// Protocols this instance has built (one per connection it served).
    static SERVED: Cell<u64> = const { Cell::new(0) };
    /// Protocols built and not yet dropped by the host.
    static LIVE: Cell<u64> = const { Cell::new(0) };
    /// The room: every joined connection's id and transport. On a shared
    /// instance it spans connections, as Twisted's chat `factory.clients`.
    static ROOM: RefCell<Vec<(u64, Transport)>> = const { RefCell::new(Vec::new()) };
    /// Transports kept forever, even after their connections end.
    static KEPT: RefCell<Vec<Transport>> = const { RefCell::new(Vec::new()) };
    /// `spin` calls that ran.
    static SPINS: Cell<u64> = const { Cell::new(0) };
    /// Factory hooks heard: (start-factory, stop-factory).
    static HOOKS: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
    /// The factory's own loop, started by `start-factory`, and its ticks.
    static FACTORY_LOOP: RefCell<Option<LoopingCall>> = const { RefCell::new(None) };
    static FACTORY_TICKS: Cell<u64> = const { Cell::new(0) };
}

/// A call that reschedules itself with no delay, forever.
fn spin() {
    SPINS.with(|s| s.set(s.get() + 1));
    call_later(Duration::ZERO, spin);
}

fn ms(s: &str) -> Duration {
    Duration::from_millis(s.trim().parse().unwrap_or(0))
}

/// Builds [`Kit`], refusing peers from 127.0.0.66.
#[derive(Default)]
pub struct KitFactory;

impl ServerFactory for KitFactory {
    fn start_factory(&self) {
        HOOKS.with(|h| h.set((h.get().0 + 1, h.get().1)));
        let l = LoopingCall::new(|| FACTORY_TICKS.with(|t| t.set(t.get() + 1)));
        l.start(Duration::from_secs(1), true);
        FACTORY_LOOP.with(|f| *f.borrow_mut() = Some(l));
    }

    fn stop_factory(&self) {
        HOOKS.with(|h| h.set((h.get().0, h.get().1 + 1)));
        if let Some(l) = FACTORY_LOOP.with(|f| f.borrow_mut().take()) {
            l.stop();
        }
        println!("testkit: stop-factory");
    }

    fn build_protocol(&self, addr: &Address) -> Option<Box<dyn Protocol>> {
        if addr.host == "127.0.0.66" {
            return None;
        }
        let id = SERVED.with(|s| {
            s.set(s.get() + 1);
            s.get()
        });
        LIVE.with(|l| l.set(l.get() + 1));
        Some(Box::new(Kit {
            id,
            line: Vec::new(),
            produce: Cell::new(0),
            pending: None,
            looping: None,
            timeout: None,
            out: Rc::default(),
        }))
    }
}

/// Tells every connection in the room `line`.
fn tell_room(line: &str) {
    ROOM.with(|r| {
        for (_, t) in r.borrow().iter() {
            t.write(format!("{line}\n").as_bytes());
        }
    });
}

/// The factory of a `connect` command's connection.
struct Out {
    home: Transport,
    slot: Rc<RefCell<Option<Transport>>>,
}

impl ClientFactory for Out {
    fn build_protocol(&self, _addr: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Out {
            home: self.home.clone(),
            slot: self.slot.clone(),
        }))
    }

    fn client_connection_failed(&self, reason: Reason) {
        self.home.write(format!("failed: {reason}\n").as_bytes());
    }
}

impl Protocol for Out {
    fn connection_made(&mut self, transport: &Transport) {
        *self.slot.borrow_mut() = Some(transport.clone());
        self.home.write(b"connected\n");
    }

    fn data_received(&mut self, _transport: &Transport, data: &[u8]) {
        let text = String::from_utf8_lossy(data);
        self.home
            .write(format!("from-out: {}\n", text.trim_end()).as_bytes());
    }
}

/// The command interpreter.
pub struct Kit {
    id: u64,
    line: Vec<u8>,
    produce: Cell<usize>,
    pending: Option<DelayedCall>,
    looping: Option<LoopingCall>,
    timeout: Option<Timeout>,
    /// The transport of the connection `connect` opened.
    out: Rc<RefCell<Option<Transport>>>,
}

/// `ok`, or the `AlreadyDone` error.
fn done(t: &Transport, r: Result<(), twill_guest::reactor::AlreadyDone>) {
    match r {
        Ok(()) => t.write(b"ok\n"),
        Err(e) => t.write(format!("{e:?}\n").as_bytes()),
    }
}

/// One cycle of the test pattern: byte i of a stream is `i % 251`.
const CYCLE: [u8; 251] = {
    let mut c = [0u8; 251];
    let mut i = 0;
    while i < 251 {
        c[i] = i as u8;
        i += 1;
    }
    c
};

/// `n` bytes of the pattern, starting at stream offset `offset`.
fn pattern(n: usize, offset: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    let mut i = offset % 251;
    while v.len() < n {
        let take = (251 - i).min(n - v.len());
        v.extend_from_slice(&CYCLE[i..i + take]);
        i = 0;
    }
    v
}

impl Kit {
    fn command(&mut self, t: &Transport, cmd: &str) {
        let (word, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
        match word {
            "echo" => t.write(format!("{rest}\n").as_bytes()),
            "print" => println!("{rest}"),
            "join" => ROOM.with(|r| r.borrow_mut().push((self.id, t.clone()))),
            "say" => ROOM.with(|r| {
                for (_, peer) in r.borrow().iter() {
                    peer.write(format!("{rest}\n").as_bytes());
                }
            }),
            "lose-room" => ROOM.with(|r| {
                for (id, peer) in r.borrow().iter() {
                    if *id != self.id {
                        peer.lose_connection();
                    }
                }
            }),
            "keep" => KEPT.with(|k| k.borrow_mut().push(t.clone())),
            "say-kept" => KEPT.with(|k| {
                for peer in k.borrow().iter() {
                    peer.write(format!("{rest}\n").as_bytes());
                }
            }),
            "served" => {
                let served = SERVED.with(Cell::get);
                let live = LIVE.with(Cell::get);
                let room = ROOM.with(|r| r.borrow().len());
                t.write(format!("served={served} live={live} room={room}\n").as_bytes());
            }
            "addr" => t.write(format!("peer={} host={}\n", t.peer(), t.host()).as_bytes()),
            "big" => {
                let n: usize = rest.trim().parse().unwrap_or(0);
                let mut sent = 0;
                while sent < n {
                    let k = (n - sent).min(64 << 10);
                    t.write(&pattern(k, sent));
                    sent += k;
                }
                t.lose_connection();
            }
            "seq" => {
                let mut it = rest
                    .split_whitespace()
                    .map(|x| x.parse::<usize>().unwrap_or(0));
                let (n, k) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                let chunks: Vec<Vec<u8>> = (0..k).map(|j| pattern(n, j * n)).collect();
                t.write_sequence(&chunks);
            }
            "lose" => t.lose_connection(),
            "abort" => {
                t.write(b"x");
                t.abort_connection();
            }
            "after-lose" => {
                t.write(b"before\n");
                t.lose_connection();
                t.write(b"after\n");
                t.write_sequence([b"after".as_slice(), b"-seq\n".as_slice()]);
                t.lose_connection();
                let _ = (t.peer(), t.host());
                t.register_producer();
                t.unregister_producer();
            }
            "panic" => panic!("testkit was told to panic"),
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut block = vec![0u8; 1 << 20];
                    block[0] = 1;
                    hoard.push(std::hint::black_box(block));
                }
            }
            "flood" => {
                let block = vec![b'f'; 1 << 20];
                loop {
                    t.write(&block);
                }
            }
            "produce" => {
                let n: usize = rest.trim().parse().unwrap_or(0);
                self.produce.set(n);
                t.register_producer();
                t.write(&pattern(n, 0));
            }
            "env" => {
                let vars: Vec<(String, String)> = std::env::vars().collect();
                let args: Vec<String> = std::env::args().collect();
                if vars.is_empty() && args.is_empty() {
                    t.write(b"denied\n");
                } else {
                    t.write(
                        format!("allowed: {} vars, {} args\n", vars.len(), args.len()).as_bytes(),
                    );
                }
            }
            "file" => match std::fs::read("/etc/passwd").or_else(|_| std::fs::read("passwd")) {
                Ok(b) => t.write(format!("allowed: read {} bytes\n", b.len()).as_bytes()),
                Err(_) => t.write(b"denied\n"),
            },
            "net" => match std::net::TcpStream::connect(("127.0.0.1", 9)) {
                Ok(_) => t.write(b"allowed: connected\n"),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    t.write(b"allowed: refused by peer\n")
                }
                Err(_) => t.write(b"denied\n"),
            },
            "clock" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                if now == 0 {
                    t.write(b"denied\n");
                } else {
                    t.write(format!("allowed: {now}\n").as_bytes());
                }
            }
            "stdin" => {
                let mut s = String::new();
                match std::io::stdin().read_line(&mut s) {
                    Ok(0) | Err(_) => t.write(b"denied\n"),
                    Ok(n) => t.write(format!("allowed: {n} bytes\n").as_bytes()),
                }
            }
            "leak" => {
                let n: usize = rest.trim().parse().unwrap_or(0);
                for _ in 0..n {
                    std::mem::forget(wasi::cli::stdout::get_stdout());
                }
                t.write(format!("leaked {n}\n").as_bytes());
            }
            "amplify" => {
                let mut it = rest
                    .split_whitespace()
                    .map(|x| x.parse::<usize>().unwrap_or(0));
                let (n, k) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
                let buf = vec![b'a'; n];
                raw::write_sequence_of_one_buffer(t.raw_handle(), &buf, k);
                t.write(b"amplified\n");
            }
            "later" => {
                let (delay, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let (me, text) = (t.clone(), format!("{text}\n"));
                self.pending = Some(call_later(ms(delay), move || me.write(text.as_bytes())));
            }
            "later-print" => {
                let (delay, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let text = text.to_string();
                call_later(ms(delay), move || println!("{text}"));
            }
            "cancel" => done(t, self.pending.as_ref().map_or(Ok(()), DelayedCall::cancel)),
            "reset" => done(
                t,
                self.pending.as_ref().map_or(Ok(()), |c| c.reset(ms(rest))),
            ),
            "delay" => done(
                t,
                self.pending.as_ref().map_or(Ok(()), |c| c.delay(ms(rest))),
            ),
            "active" => {
                let a = self.pending.as_ref().is_some_and(DelayedCall::active);
                t.write(format!("active={a}\n").as_bytes());
            }
            "seconds" => t.write(format!("seconds={}\n", seconds()).as_bytes()),
            "every" => {
                let (me, n) = (t.clone(), Cell::new(0u64));
                let l = LoopingCall::new(move || {
                    n.set(n.get() + 1);
                    me.write(format!("tick {}\n", n.get()).as_bytes());
                });
                let (interval, later) = rest.split_once(' ').unwrap_or((rest, ""));
                l.start(ms(interval), later != "later");
                self.looping = Some(l);
            }
            "stop" => {
                if let Some(l) = self.looping.take() {
                    l.stop();
                }
                t.write(b"stopped\n");
            }
            "timeout" => {
                let timeout = Timeout::new(t);
                timeout.set_timeout(Some(ms(rest)));
                self.timeout = Some(timeout);
            }
            "touch" => {
                if let Some(timeout) = &self.timeout {
                    timeout.reset_timeout();
                }
                t.write(b"touched\n");
            }
            "timers" => {
                let n: usize = rest.trim().parse().unwrap_or(0);
                for _ in 0..n {
                    call_later(Duration::from_secs(3600), || {});
                }
                t.write(format!("scheduled {n}\n").as_bytes());
            }
            "spin" => {
                call_later(Duration::ZERO, spin);
                t.write(b"spinning\n");
            }
            "spins" => t.write(format!("spins={}\n", SPINS.with(Cell::get)).as_bytes()),
            "panic-later" => {
                call_later(ms(rest), || panic!("testkit: a delayed call panicked"));
            }
            "factory" => {
                let (s, p) = HOOKS.with(Cell::get);
                let ticks = FACTORY_TICKS.with(Cell::get);
                t.write(format!("started={s} stopped={p} ticks={ticks}\n").as_bytes());
            }
            "sleep" => {
                // Blocking the reactor: the host must trap this, not wait.
                std::thread::sleep(std::time::Duration::from_millis(50));
                t.write(b"slept\n");
            }
            "connect" => {
                let (host, port) = rest.split_once(' ').unwrap_or((rest, "0"));
                let factory = Out {
                    home: t.clone(),
                    slot: self.out.clone(),
                };
                if let Err(e) = connect_tcp(host, port.parse().unwrap_or(0), factory) {
                    t.write(format!("connect-error: {e}\n").as_bytes());
                }
            }
            "splice-self" => {
                let r = t.splice(t);
                tell_room(&format!("splice-self: {r:?}"));
            }
            "splice-out" => {
                let Some(out) = self.out.borrow().clone() else {
                    return t.write(b"no outbound connection\n");
                };
                tell_room(&format!("splice: {:?}", t.splice(&out)));
                tell_room(&format!("again: {:?}", t.splice(&out)));
                tell_room(&format!("reverse: {:?}", out.splice(t)));
                t.write(b"written after the splice\n");
            }
            other => t.write(format!("unknown command {other:?}\n").as_bytes()),
        }
    }
}

impl Drop for Kit {
    fn drop(&mut self) {
        LIVE.with(|l| l.set(l.get() - 1));
    }
}

impl Protocol for Kit {
    fn data_received(&mut self, transport: &Transport, data: &[u8]) {
        for &b in data {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                let cmd = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                self.command(transport, &cmd);
            } else {
                self.line.push(b);
            }
        }
    }

    fn connection_lost(&mut self, reason: Reason) {
        if let Some(l) = self.looping.take() {
            l.stop();
        }
        self.timeout = None;
        ROOM.with(|r| r.borrow_mut().retain(|(id, _)| *id != self.id));
        if let Reason::Lost(m) = &reason {
            eprintln!("testkit: connection lost uncleanly: {m}");
        }
    }

    fn resume_producing(&mut self, transport: &Transport) {
        transport.write(&pattern(self.produce.get(), 0));
    }
}

export!(server: KitFactory);

/// Calls the transport import directly, with arguments the SDK would never
/// build.
#[allow(unsafe_code)]
mod raw {
    /// One `list<u8>` in the canonical ABI.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Entry {
        ptr: *const u8,
        len: usize,
    }

    #[link(wasm_import_module = "twill:protocol/transport@0.1.0")]
    unsafe extern "C" {
        #[link_name = "[method]transport.write-sequence"]
        fn write_sequence(handle: i32, list: *const Entry, len: usize);
    }

    /// `write-sequence` with `k` entries, every one of them `buf`.
    pub fn write_sequence_of_one_buffer(handle: u32, buf: &[u8], k: usize) {
        let entries = vec![
            Entry {
                ptr: buf.as_ptr(),
                len: buf.len()
            };
            k
        ];
        // SAFETY: the canonical ABI of `write-sequence(borrow<transport>,
        // list<list<u8>>)` on wasm32: the handle, then the list as a pointer
        // to (pointer, length) pairs and its length. Every pointer is valid
        // for the call's duration.
        unsafe { write_sequence(handle as i32, entries.as_ptr(), entries.len()) }
    }
}
