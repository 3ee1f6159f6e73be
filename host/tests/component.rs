//! The bundled echo component driven through the in-memory test transport:
//! no sockets, every chunking.

mod support;

use twill::runtime::bindings::Reason;

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn echo_is_byte_exact_for_every_chunking() {
    let echo = support::load_echo();
    let data = payload(97);
    // Every chunk size from one byte at a time to the whole payload at once.
    for chunk in 1..=data.len() {
        let mut conn = echo
            .server_connection()
            .unwrap()
            .expect("factory builds Echo");
        let mut got = Vec::new();
        for piece in data.chunks(chunk) {
            conn.data_received(piece).unwrap();
            // Echo answers each chunk with exactly that chunk.
            let v = conn.value();
            assert_eq!(v, piece, "chunk size {chunk}");
            got.extend_from_slice(&v);
        }
        assert_eq!(got, data, "chunk size {chunk}");
        assert!(!conn.disconnecting());
        conn.connection_lost(Reason::Done).unwrap();
    }
    // Irregular chunkings too: every split of a 12-byte payload into pieces.
    let small = payload(12);
    for mask in 0u32..(1 << 11) {
        let mut conn = echo.server_connection().unwrap().unwrap();
        let mut start = 0;
        let mut got = Vec::new();
        for i in 1..=small.len() {
            if i == small.len() || mask & (1 << (i - 1)) != 0 {
                conn.data_received(&small[start..i]).unwrap();
                got.extend(conn.value());
                start = i;
            }
        }
        assert_eq!(got, small, "split mask {mask:#b}");
    }
    assert_eq!(echo.output(), "", "the server protocol prints nothing");
}

#[test]
fn echo_handles_empty_and_large_chunks() {
    let echo = support::load_echo();
    let mut conn = echo.server_connection().unwrap().unwrap();
    conn.data_received(b"").unwrap();
    assert_eq!(conn.value(), b"");
    let big = payload(1 << 20);
    conn.data_received(&big).unwrap();
    assert_eq!(conn.value(), big);
}

/// One long-lived connection carries 32 MiB, in 64 KiB chunks, through a
/// single instance: twice the Rust echo's whole memory limit, so the guest
/// must give back what each callback allocates. (scripts/test-polyglot.sh
/// runs the Python and JS echo components with a larger limit: the Python
/// one keeps every buffer it writes, a componentize-py 0.25 leak, and the JS
/// one frees received buffers only when SpiderMonkey's GC first runs, after
/// about 40 MiB. See bench/results/polyglot.md.)
#[test]
fn echo_streams_32_mib_through_one_instance() {
    let echo = support::load_echo();
    let mut conn = echo.server_connection().unwrap().unwrap();
    let chunk = payload(64 << 10);
    for i in 0..512 {
        conn.data_received(&chunk)
            .unwrap_or_else(|e| panic!("chunk {i} ({} KiB in): {e}", i * 64));
        assert!(conn.value() == chunk, "chunk {i} echoed");
    }
    conn.connection_lost(Reason::Done).unwrap();
}

#[test]
fn echo_client_says_hello_prints_the_echo_and_loses_the_connection() {
    let echo = support::load_echo();
    let mut conn = echo
        .client_connection()
        .unwrap()
        .expect("client factory builds EchoClient");
    // connectionMade: the seed's client writes "hello world".
    assert_eq!(conn.value(), b"hello world");
    assert!(!conn.disconnecting());
    // The echo may arrive in pieces; the seed's client prints the first
    // piece and hangs up.
    conn.data_received(b"hello world").unwrap();
    assert!(
        conn.disconnecting(),
        "EchoClient calls lose-connection after the first data"
    );
    assert_eq!(conn.value(), b"", "it writes nothing more");
    conn.connection_lost(Reason::Done).unwrap();
    assert_eq!(
        echo.output(),
        "Server said: hello world\nConnection lost\nConnection lost - goodbye\n"
    );
}

#[test]
fn echo_client_factory_reports_a_failed_connection() {
    let echo = support::load_echo();
    echo.client_connection_failed("connection refused").unwrap();
    assert_eq!(echo.output(), "Connection failed - goodbye\n");
}

#[test]
fn committed_component_exports_what_wit_declares() {
    // Parse wit/ with wasmtime's own bindgen expectations: the component must
    // export the protocol and both factories at version 0.1.0. The engine is
    // the host's (same settings as a plugin with the test memory limit), so a
    // large component comes from the compile cache instead of being compiled
    // again.
    let settings = twill::config::HostSettings {
        max_instances: 1,
        ..twill::config::HostSettings::default()
    };
    let runtime = twill::Runtime::new(&settings, support::test_limits().memory).unwrap();
    let engine = runtime.engine().clone();
    let bytes = std::fs::read(support::echo_wasm()).unwrap();
    let component = wasmtime::component::Component::new(&engine, &bytes).unwrap();
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(&engine).map(|(n, _)| n.to_string()).collect();
    let imports: Vec<String> = ty.imports(&engine).map(|(n, _)| n.to_string()).collect();
    let wit = std::fs::read_to_string(support::repo().join("wit/world.wit")).unwrap();
    let version = wit
        .lines()
        .find_map(|l| l.strip_prefix("package twill:protocol@"))
        .map(|v| v.trim_end_matches(';').to_string())
        .expect("world.wit declares the package");
    for name in ["protocol", "server-factory", "client-factory"] {
        let want = format!("twill:protocol/{name}@{version}");
        assert!(
            exports.contains(&want),
            "missing export {want}; exports: {exports:?}"
        );
    }
    let transport = format!("twill:protocol/transport@{version}");
    assert!(imports.contains(&transport), "imports: {imports:?}");
    // Deny by default: nothing beyond the transport and WASI's cli/io/clocks/
    // random/filesystem plumbing that std pulls in.
    //
    // componentize-py's libc links wasi:sockets whether or not the Python
    // code uses it, so its components import the socket interfaces. When
    // TWILL_ECHO_IMPORTS_SOCKETS is set (scripts/test-polyglot.sh sets it for
    // the Python echo only) those imports are allowed, and said so: the host
    // links them but grants no network to any plugin (`deny_by_default` in
    // faults.rs checks that a guest's socket calls are refused).
    let sockets_allowed = std::env::var_os("TWILL_ECHO_IMPORTS_SOCKETS").is_some();
    for i in &imports {
        assert!(
            i.starts_with("twill:protocol/") || i.starts_with("wasi:"),
            "unexpected import {i}"
        );
        if sockets_allowed && i.starts_with("wasi:sockets") {
            println!(
                "TWILL_ECHO_IMPORTS_SOCKETS is set: allowing import {i} (the host grants no network)"
            );
            continue;
        }
        assert!(
            !i.starts_with("wasi:sockets"),
            "echo must not import sockets: {i}"
        );
    }
}

#[test]
fn the_test_transport_serves_several_connections_from_one_shared_instance() {
    use twill::testing::TestComponent;
    let kit = TestComponent::load_shared(support::testkit_wasm()).unwrap();
    let mut a = kit.server_connection().unwrap().unwrap();
    let mut b = kit.server_connection().unwrap().unwrap();
    a.data_received(b"join\n").unwrap();
    b.data_received(b"join\nserved\n").unwrap();
    assert_eq!(b.value(), b"served=2 live=2 room=2\n");
    // A's callback writes to B's transport.
    a.data_received(b"say hi\n").unwrap();
    assert_eq!(a.value(), b"hi\n");
    assert_eq!(b.value(), b"hi\n");
    b.connection_lost(twill::runtime::bindings::Reason::Done)
        .unwrap();
    a.data_received(b"served\n").unwrap();
    assert_eq!(a.value(), b"served=2 live=1 room=1\n");
}
