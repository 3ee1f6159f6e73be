//! Criterion micro-benchmarks for the hot paths that do not touch a socket:
//! a fresh instance with its protocol built (what every accepted connection
//! pays), and one `data-received` round trip through the echo guest.
//!
//! `cargo bench -p twill-bench`

use criterion::{Criterion, criterion_group, criterion_main};
use twill::testing::TestComponent;

fn echo_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-echo/echo.wasm")
}

fn guest(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let echo = TestComponent::load(echo_path()).unwrap();

    c.bench_function("instantiate + build-protocol + make-connection", |b| {
        b.to_async(&rt).iter(|| async {
            let conn = echo.server_connection().await.unwrap().unwrap();
            criterion::black_box(conn);
        })
    });

    let mut conn = rt.block_on(echo.server_connection()).unwrap().unwrap();
    let msg = [b'x'; 64];
    c.bench_function("data-received 64 B + echo write", |b| {
        b.iter(|| {
            rt.block_on(conn.data_received(&msg)).unwrap();
            criterion::black_box(conn.value());
        })
    });
}

criterion_group!(benches, guest);
criterion_main!(benches);
