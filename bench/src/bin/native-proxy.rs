//! The native reference proxy: a plain tokio TCP forwarder with no wasm.
//! Each accepted connection opens one to `--backend` and the two are joined
//! with `copy_bidirectional`. It is the upper bound Twill's relaying is
//! measured against (bench/proxy.py).
//!
//! Like native-echo, it announces its bound address on stderr
//! (`native proxy listening on 127.0.0.1:PORT`), so `--port 0` can be used.

use std::net::SocketAddr;

use clap::Parser;
use tokio::net::{TcpListener, TcpStream};

/// Forward every connection to one backend.
#[derive(Parser, Debug)]
struct Args {
    /// The port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 9201)]
    port: u16,
    /// The interface to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Where to forward to, HOST:PORT.
    #[arg(long)]
    backend: SocketAddr,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(SocketAddr::new(args.host, args.port)).await?;
        eprintln!("native proxy listening on {}", listener.local_addr()?);
        let backend = args.backend;
        loop {
            let (mut client, _) = listener.accept().await?;
            tokio::spawn(async move {
                if client.set_nodelay(true).is_err() {
                    return;
                }
                let Ok(mut server) = TcpStream::connect(backend).await else {
                    return;
                };
                if server.set_nodelay(true).is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    })
}
