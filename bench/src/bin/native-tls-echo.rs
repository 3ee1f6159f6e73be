//! The native TLS baseline: native-echo's tokio read/write loop behind a
//! tokio-rustls acceptor, with no wasm. It is the upper bound Twill's TLS
//! listeners are measured against (bench/tls.py), with either rustls crypto
//! provider (`--provider aws-lc-rs|ring`), so the two can be compared.
//!
//! Each connection: accept, full TLS handshake (rustls's defaults: TLS 1.2
//! and 1.3, no client auth, one certificate), then echo every read back and
//! flush; on EOF, send close_notify (`shutdown`). It announces its bound
//! address on stderr (`native tls echo listening on 127.0.0.1:PORT`), so
//! port 0 can be used.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The rustls crypto provider.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Provider {
    AwsLcRs,
    Ring,
}

impl Provider {
    fn get(self) -> CryptoProvider {
        match self {
            Provider::AwsLcRs => rustls::crypto::aws_lc_rs::default_provider(),
            Provider::Ring => rustls::crypto::ring::default_provider(),
        }
    }
}

/// Echo every connection back over TLS.
#[derive(Parser, Debug)]
struct Args {
    /// The address to listen on (port 0 picks a free one).
    #[arg(default_value = "127.0.0.1:9011")]
    addr: SocketAddr,
    /// Runtime worker threads.
    #[arg(default_value_t = 2)]
    threads: usize,
    /// The server's certificate chain, PEM (leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// The certificate's private key, PEM (PKCS#8, SEC1 or PKCS#1).
    #[arg(long)]
    key: PathBuf,
    /// The rustls crypto provider.
    #[arg(long, value_enum, default_value_t = Provider::AwsLcRs)]
    provider: Provider,
}

fn server_config(args: &Args) -> anyhow::Result<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(&args.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", args.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .with_context(|| format!("reading the private key from {}", args.key.display()))?;
    Ok(
        ServerConfig::builder_with_provider(Arc::new(args.provider.get()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?,
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&args)?));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(args.addr).await?;
        eprintln!("native tls echo listening on {}", listener.local_addr()?);
        loop {
            let (s, _) = listener.accept().await?;
            s.set_nodelay(true)?;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => {
                            let _ = s.shutdown().await;
                            return;
                        }
                        Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() || s.flush().await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    })
}
