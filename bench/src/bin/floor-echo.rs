//! The floor: the least a host can do and still run Twill's contract. It
//! serves the bundled echo component with one guest call per read and
//! nothing else. Twill's host adds limits, backpressure, faults, shutdown
//! and shared-instance bookkeeping on top; this binary has none of them.
//!
//! Each thread runs a current-thread tokio runtime with its own listening
//! socket (`SO_REUSEPORT`) and one instance of the component serving all of
//! its connections: no locks, no cross-thread traffic, no epoch deadline,
//! no store limits. Per read it calls `data-received`; the guest's
//! `transport.write` appends to one buffer, which is then written to the
//! socket. So its CPU per round trip minus the native server's is what the
//! engine's call path costs by itself, with the most favorable threading.
//!
//! Not a server for use: a measuring instrument for `BENCHMARKS.md`.
//!
//! `floor-echo ADDR THREADS COMPONENT`

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use anyhow::{Context as _, anyhow};
use tokio::io::AsyncWriteExt as _;
use wasmtime::component::{Component, Linker, Resource, ResourceAny, ResourceTable};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    world: "server",
    path: "../wit",
    with: {
        "twill:protocol/transport.transport": Conn,
        "twill:protocol/reactor.delayed-call": Timer,
    },
});

use self::twill::protocol::{reactor, transport, types};

/// The host side of a delayed call. Unused: the echo schedules none, and
/// the floor keeps no time.
pub struct Timer;

/// The host side of a guest's transport handle. Unused: every write of a
/// callback is for the connection whose callback runs.
pub struct Conn;

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    out: Vec<u8>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for State {}

/// The floor keeps no time: the echo it serves never asks.
impl reactor::Host for State {
    fn seconds(&mut self) -> f64 {
        0.0
    }
    fn call_later(&mut self, _: f64, _: u64) -> Resource<Timer> {
        unreachable!("the floor's echo schedules no calls")
    }
    fn connect_tcp(&mut self, _: String, _: u16, _: f64, _: u64) -> Result<(), String> {
        Err("the floor opens no connections".into())
    }
}

impl reactor::HostDelayedCall for State {
    fn get_time(&mut self, _: Resource<Timer>) -> f64 {
        0.0
    }
    fn cancel(&mut self, _: Resource<Timer>) -> bool {
        false
    }
    fn reset(&mut self, _: Resource<Timer>, _: f64) -> bool {
        false
    }
    fn delay(&mut self, _: Resource<Timer>, _: f64) -> bool {
        false
    }
    fn active(&mut self, _: Resource<Timer>) -> bool {
        false
    }
    fn drop(&mut self, _: Resource<Timer>) -> wasmtime::Result<()> {
        Ok(())
    }
}
impl transport::Host for State {}
impl transport::HostTransport for State {
    fn write(&mut self, _: Resource<Conn>, data: Vec<u8>) {
        self.out.extend_from_slice(&data);
    }
    fn write_sequence(&mut self, _: Resource<Conn>, data: Vec<Vec<u8>>) {
        data.iter().for_each(|d| self.out.extend_from_slice(d));
    }
    fn lose_connection(&mut self, _: Resource<Conn>) {}
    fn abort_connection(&mut self, _: Resource<Conn>) {}
    fn get_peer(&mut self, _: Resource<Conn>) -> types::Address {
        no_address()
    }
    fn get_host(&mut self, _: Resource<Conn>) -> types::Address {
        no_address()
    }
    fn register_producer(&mut self, _: Resource<Conn>) {}
    fn unregister_producer(&mut self, _: Resource<Conn>) {}
    fn register_producer_transport(&mut self, _: Resource<Conn>, _: Resource<Conn>) {}
    fn pause_producing(&mut self, _: Resource<Conn>) {}
    fn resume_producing(&mut self, _: Resource<Conn>) {}
    fn lose_write_connection(&mut self, _: Resource<Conn>) {}
    fn set_half_closeable(&mut self, _: Resource<Conn>, _: bool) {}
    fn splice(&mut self, _: Resource<Conn>, _: Resource<Conn>) -> Result<(), String> {
        Err("the floor does not splice".into())
    }
    fn tls_info(&mut self, _: Resource<Conn>) -> Option<types::TlsInfo> {
        None
    }
    fn start_tls(&mut self, _: Resource<Conn>) -> Result<(), String> {
        Err("the floor has no TLS".into())
    }
    fn drop(&mut self, r: Resource<Conn>) -> wasmtime::Result<()> {
        self.table.delete(r)?;
        Ok(())
    }
}

/// The echo never asks for addresses; the floor does not track them.
fn no_address() -> types::Address {
    types::Address {
        host: String::new(),
        port: 0,
    }
}

/// One thread's instance, and its read buffer (callbacks on a thread run
/// one at a time, so one buffer serves all its connections).
struct Guest {
    store: Store<State>,
    api: Server,
    buf: Vec<u8>,
}

fn wasm<T>(r: wasmtime::Result<T>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow!("{e:?}"))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: floor-echo ADDR THREADS COMPONENT";
    let addr: SocketAddr = args.next().context(usage)?.parse()?;
    let threads: usize = args.next().context(usage)?.parse()?;
    let path = args.next().context(usage)?;

    let mut cfg = Config::new();
    cfg.wasm_component_model(true);
    let engine = wasm(Engine::new(&cfg))?;
    let component = wasm(Component::from_file(&engine, &path))?;
    let mut linker: Linker<State> = Linker::new(&engine);
    wasm(wasmtime_wasi::p2::add_to_linker_sync(&mut linker))?;
    wasm(Server::add_to_linker::<
        _,
        wasmtime::component::HasSelf<State>,
    >(&mut linker, |s| s))?;
    let pre = wasm(linker.instantiate_pre(&component))?;
    let pre = wasm(ServerPre::new(pre))?;

    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (engine, pre) = (engine.clone(), pre.clone());
            std::thread::spawn(move || serve(addr, &engine, &pre))
        })
        .collect();
    eprintln!("floor echo listening on {addr} ({threads} threads)");
    for w in workers {
        w.join().map_err(|_| anyhow!("worker panicked"))??;
    }
    Ok(())
}

fn serve(addr: SocketAddr, engine: &Engine, pre: &ServerPre<State>) -> anyhow::Result<()> {
    let state = State {
        wasi: WasiCtxBuilder::new().build(),
        table: ResourceTable::new(),
        out: Vec::new(),
    };
    let mut store = Store::new(engine, state);
    let api = wasm(pre.instantiate(&mut store))?;
    let guest = Rc::new(RefCell::new(Guest {
        store,
        api,
        buf: vec![0; 64 << 10],
    }));

    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::from_std(socket.into())?;
        loop {
            let (s, peer) = listener.accept().await?;
            s.set_nodelay(true)?;
            let guest = guest.clone();
            tokio::task::spawn_local(async move {
                let _ = connection(s, peer, &guest).await;
            });
        }
    })
}

async fn connection(
    mut s: tokio::net::TcpStream,
    peer: SocketAddr,
    guest: &RefCell<Guest>,
) -> anyhow::Result<()> {
    let protocol: ResourceAny = {
        let g = &mut *guest.borrow_mut();
        let addr = types::Address {
            host: peer.ip().to_string(),
            port: peer.port(),
        };
        let p = wasm(
            g.api
                .twill_protocol_server_factory()
                .call_build_protocol(&mut g.store, &addr),
        )?
        .context("refused")?;
        let t = g.store.data_mut().table.push(Conn)?;
        wasm(
            g.api
                .twill_protocol_protocol()
                .protocol()
                .call_make_connection(&mut g.store, p, t),
        )?;
        p
    };
    let result = async {
        loop {
            s.readable().await?;
            let out = {
                let g = &mut *guest.borrow_mut();
                let n = match s.try_read(&mut g.buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(anyhow::Error::from(e)),
                };
                wasm(
                    g.api
                        .twill_protocol_protocol()
                        .protocol()
                        .call_data_received(&mut g.store, protocol, &g.buf[..n]),
                )?;
                std::mem::take(&mut g.store.data_mut().out)
            };
            s.write_all(&out).await?;
        }
    }
    .await;
    let g = &mut *guest.borrow_mut();
    let _ = protocol.resource_drop(&mut g.store);
    result
}
