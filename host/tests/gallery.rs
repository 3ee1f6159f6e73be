//! The framing examples in the gallery: guests/upper (a line protocol on
//! the SDK's `LineReceiver`, the protocol `twill new` starts from) and
//! guests/rpc (request/response on `Int32StringReceiver`), through every
//! chunking on the StringTransport harness, and over real sockets from
//! their own plugins.toml entries.

mod support;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twill::testing::TestComponent;

use support::{repo, server_config, start};

fn upper_wasm() -> std::path::PathBuf {
    repo().join("guests/upper/upper.wasm")
}

fn rpc_wasm() -> std::path::PathBuf {
    repo().join("guests/rpc/rpc.wasm")
}

/// An Int32-prefixed string.
fn int32(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

#[test]
fn upper_answers_each_line_in_every_chunking() {
    let guest = TestComponent::load(upper_wasm()).unwrap();
    let input = b"hello\r\nPING\r\nmixed Case 1\r\nQUIT\r\nnever\r\n";
    for size in 1..=input.len() {
        let mut conn = guest.server_connection().unwrap().unwrap();
        for chunk in input.chunks(size) {
            conn.data_received(chunk).unwrap();
        }
        assert_eq!(
            conn.value(),
            b"HELLO\r\nPONG\r\nMIXED CASE 1\r\nBYE\r\n",
            "chunks of {size}"
        );
        assert!(conn.disconnecting());
    }
}

#[test]
fn rpc_answers_each_request_in_every_chunking() {
    let guest = TestComponent::load(rpc_wasm()).unwrap();
    let mut input = Vec::new();
    for r in [
        &b"add 1 2 39"[..],
        b"upper a\r\nb",
        b"nope",
        b"add x",
        b"bye",
        b"add 1",
    ] {
        input.extend(int32(r));
    }
    let mut want = Vec::new();
    for r in [
        &b"ok 42"[..],
        b"ok A\r\nB",
        b"error unknown method: nope",
        b"error not a number: x",
        b"ok bye",
    ] {
        want.extend(int32(r));
    }
    for size in 1..=input.len() {
        let mut conn = guest.server_connection().unwrap().unwrap();
        for chunk in input.chunks(size) {
            conn.data_received(chunk).unwrap();
        }
        assert_eq!(conn.value(), want, "chunks of {size}");
        assert!(
            conn.disconnecting(),
            "bye closes, and nothing after it is answered"
        );
    }
}

#[test]
fn rpc_refuses_a_request_over_its_limit_before_reading_it() {
    let guest = TestComponent::load(rpc_wasm()).unwrap();
    let mut conn = guest.server_connection().unwrap().unwrap();
    conn.data_received(&int32(b"add 1")).unwrap();
    conn.data_received(&(65537u32).to_be_bytes()).unwrap();
    let mut want = int32(b"ok 1");
    want.extend(int32(b"error request too long"));
    assert_eq!(conn.value(), want);
    assert!(conn.disconnecting());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upper_and_rpc_over_real_sockets() {
    let upper = start(&server_config(&upper_wasm(), "")).await;
    let mut s = TcpStream::connect(upper.addr()).await.unwrap();
    s.write_all(b"over tcp\r\nQUIT\r\n").await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"OVER TCP\r\nBYE\r\n");
    upper.shutdown().await;

    let rpc = start(&server_config(&rpc_wasm(), "")).await;
    let mut s = TcpStream::connect(rpc.addr()).await.unwrap();
    let mut req = int32(b"add 40 2");
    req.extend(int32(b"bye"));
    s.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    let mut want = int32(b"ok 42");
    want.extend(int32(b"ok bye"));
    assert_eq!(got, want);
    rpc.shutdown().await;
}

/// Every gallery config passes `twill check` as shipped (components from
/// the committed `.wasm`; starttls with certificates from
/// scripts/make-test-cert.sh, as its header says).
#[test]
fn the_gallery_configs_check() {
    let certs = support::test_certs();
    let configs = [
        "guests/upper/upper.toml",
        "guests/rpc/rpc.toml",
        "guests/chat/chat.toml",
        "guests/minikv/minikv.toml",
        "guests/portforward/portforward.toml",
        "guests/router/router.toml",
        "guests/tagecho/tagecho.toml",
        "guests/starttls/starttls.toml",
    ];
    for config in configs {
        let path = repo().join(config);
        let dir = path.parent().unwrap();
        // Checked from a scratch copy: the certificates live elsewhere.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(
                "component = \"",
                &format!("component = \"{}/", dir.display()),
            )
            .replace("../../examples/tls/certs", &certs.display().to_string());
        let copy = support::write_config(&text);
        let out = support::twill()
            .args(["-q", "check"])
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{config}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
