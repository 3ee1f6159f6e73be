//! Drives the built component through the host's StringTransport harness
//! (`twill::testing`): no sockets, every chunking of the input.
//!
//! Build the component first: `cargo build --release --target wasm32-wasip2`.

use std::path::PathBuf;

use twill::testing::TestComponent;

/// The component `cargo build --release --target wasm32-wasip2` wrote.
fn component() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target dir>/tmp, wherever the target dir is.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("..");
    let name = env!("CARGO_PKG_NAME").replace('-', "_");
    let wasm = target.join(format!("wasm32-wasip2/release/{name}.wasm"));
    assert!(
        wasm.exists(),
        "{} is missing: run `cargo build --release --target wasm32-wasip2` first",
        wasm.display()
    );
    wasm
}

#[test]
fn answers_each_line_however_it_is_chunked() {
    let guest = TestComponent::load(component()).unwrap();
    let input = b"hello\r\nPING\r\nQUIT\r\nnever\r\n";
    for size in 1..=input.len() {
        let mut conn = guest.server_connection().unwrap().expect("factory accepted");
        for chunk in input.chunks(size) {
            conn.data_received(chunk).unwrap();
        }
        assert_eq!(conn.value(), b"HELLO\r\nPONG\r\nBYE\r\n", "chunks of {size}");
        assert!(conn.disconnecting(), "QUIT closes the connection");
    }
}

#[test]
fn a_line_over_16384_bytes_closes_the_connection() {
    let guest = TestComponent::load(component()).unwrap();
    let mut conn = guest.server_connection().unwrap().unwrap();
    conn.data_received(&[b'a'; 16385]).unwrap();
    conn.data_received(b"\r\n").unwrap();
    assert_eq!(conn.value(), b"");
    assert!(conn.disconnecting());
}
