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
    // export the protocol, the batch and both factories at wit/'s version. The engine is
    // the host's (same settings as a plugin with the test memory limit), so a
    // large component comes from the compile cache instead of being compiled
    // again.
    let settings = twill::config::HostSettings {
        max_instances: Some(1),
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
    for name in ["protocol", "batch", "server-factory", "client-factory"] {
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

#[test]
fn a_batch_gives_each_connection_its_own_bytes_in_order_down_to_one_byte() {
    use twill::testing::TestComponent;
    // The test limits, as every echo test here: with them a large (Python,
    // JavaScript) echo comes from the compile cache.
    let echo =
        TestComponent::load_shared_with(support::echo_wasm(), support::test_limits()).unwrap();
    let mut conns: Vec<_> = (0..3)
        .map(|_| echo.server_connection().unwrap().unwrap())
        .collect();
    let payloads: Vec<Vec<u8>> = (0..3).map(|i| payload(700 + i * 31)).collect();
    // Every batch carries one chunk per connection, in a rotating order;
    // the chunk size runs from one byte up.
    let mut offsets = [0usize; 3];
    let mut round = 0;
    while offsets.iter().zip(&payloads).any(|(o, p)| o < &p.len()) {
        let size = 1 + round % 7;
        let [a, b, c] = &mut conns[..] else {
            unreachable!()
        };
        let mut batch: Vec<(&mut twill::testing::TestConnection, &[u8])> = Vec::new();
        for (i, conn) in [a, b, c].into_iter().enumerate() {
            let p = &payloads[i];
            let end = (offsets[i] + size).min(p.len());
            batch.push((conn, &p[offsets[i]..end]));
            offsets[i] = end;
        }
        batch.rotate_left(round % 3);
        echo.data_received_batch(&mut batch).unwrap();
        round += 1;
    }
    for (conn, p) in conns.iter_mut().zip(&payloads) {
        assert_eq!(&conn.value(), p);
    }
}

/// A shared test-kit instance with two connections in its room.
fn two_in_a_room() -> (
    twill::testing::TestComponent,
    twill::testing::TestConnection,
    twill::testing::TestConnection,
) {
    let kit = twill::testing::TestComponent::load_shared(support::testkit_wasm()).unwrap();
    let mut a = kit.server_connection().unwrap().unwrap();
    let mut b = kit.server_connection().unwrap().unwrap();
    a.data_received(b"join\n").unwrap();
    b.data_received(b"join\n").unwrap();
    (kit, a, b)
}

#[test]
fn a_connection_closed_earlier_in_a_batch_is_not_delivered_the_rest() {
    // A's read makes the guest lose every other connection in the room;
    // B's read, after it in the same call, would say something to the room
    // (A included, which is still open): nobody hears it.
    let (kit, mut a, mut b) = two_in_a_room();
    kit.data_received_batch(&mut [(&mut a, b"lose-room\n"), (&mut b, b"say late\n")])
        .unwrap();
    assert!(b.disconnecting());
    assert_eq!(a.value(), b"", "B's read was delivered after B was closed");
    // Nor in a later batch: the host skips a closing connection's read.
    kit.data_received_batch(&mut [(&mut b, b"say later\n"), (&mut a, b"echo a\n")])
        .unwrap();
    assert_eq!(a.value(), b"a\n");

    // The other order: B's read is delivered before A's closes it.
    let (kit, mut a, mut b) = two_in_a_room();
    kit.data_received_batch(&mut [(&mut b, b"say early\n"), (&mut a, b"lose-room\n")])
        .unwrap();
    assert_eq!(a.value(), b"early\n");
    assert_eq!(b.value(), b"early\n");
    assert!(b.disconnecting());
}

#[test]
fn a_component_built_before_batch_still_loads_and_gets_one_call_per_read() {
    use twill::testing::TestComponent;
    let old = support::repo().join("host/tests/configs/echo-without-batch.wasm");
    let echo = TestComponent::load_shared(&old).unwrap();
    let mut a = echo.server_connection().unwrap().unwrap();
    let mut b = echo.server_connection().unwrap().unwrap();
    echo.data_received_batch(&mut [(&mut a, b"one"), (&mut b, b"two")])
        .unwrap();
    assert_eq!(a.value(), b"one");
    assert_eq!(b.value(), b"two");
}
