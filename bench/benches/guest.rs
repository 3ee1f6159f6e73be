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
    let echo = TestComponent::load(echo_path()).unwrap();

    c.bench_function("instantiate + build-protocol + make-connection", |b| {
        b.iter(|| {
            let conn = echo.server_connection().unwrap().unwrap();
            criterion::black_box(conn);
        })
    });

    let mut conn = echo.server_connection().unwrap().unwrap();
    let msg = [b'x'; 64];
    c.bench_function("data-received 64 B + echo write", |b| {
        b.iter(|| {
            conn.data_received(&msg).unwrap();
            criterion::black_box(conn.value());
        })
    });
}

criterion_group!(benches, guest);
criterion_main!(benches);
