//! The bundled examples that keep time: the chat drops a silent user
//! (the SDK's `Timeout`), and minikv, a Redis subset, expires keys with
//! `call_later`; on the deterministic clock, and minikv over real sockets
//! in RESP, as redis-cli speaks it.

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twill::testing::{TestComponent, TestConnection};

use support::{repo, server_config, start};

fn chat_wasm() -> std::path::PathBuf {
    repo().join("guests/chat/chat.wasm")
}

fn minikv_wasm() -> std::path::PathBuf {
    repo().join("guests/minikv/minikv.wasm")
}

fn said(c: &mut TestConnection) -> String {
    String::from_utf8(c.value()).unwrap()
}

#[test]
fn the_chat_drops_a_user_silent_for_ten_minutes() {
    let kit = TestComponent::load_shared(chat_wasm()).unwrap();
    let mut alice = kit.server_connection().unwrap().unwrap();
    let mut bob = kit.server_connection().unwrap().unwrap();
    alice.data_received(b"alice\r\n").unwrap();
    bob.data_received(b"bob\r\n").unwrap();
    said(&mut alice);
    said(&mut bob);
    // Bob talks every five minutes; Alice says nothing.
    for _ in 0..2 {
        kit.advance(Duration::from_secs(300)).unwrap();
        bob.data_received(b"anyone?\r\n").unwrap();
    }
    assert!(alice.disconnecting(), "silent for ten minutes: dropped");
    assert!(said(&mut alice).contains("Idle for too long, goodbye."));
    assert!(!bob.disconnecting(), "kept by talking");
    kit.advance(Duration::from_secs(599)).unwrap();
    assert!(!bob.disconnecting());
    kit.advance(Duration::from_secs(1)).unwrap();
    assert!(bob.disconnecting());
}

/// RESP: an array of bulk strings.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    v
}

fn kv(c: &mut TestConnection, args: &[&str]) -> String {
    c.data_received(&resp(args)).unwrap();
    said(c)
}

#[test]
fn minikv_expires_keys_on_the_reactor_clock() {
    let kit = TestComponent::load_shared(minikv_wasm()).unwrap();
    let mut c = kit.server_connection().unwrap().unwrap();
    assert_eq!(kv(&mut c, &["PING"]), "+PONG\r\n");
    assert_eq!(kv(&mut c, &["SET", "k", "v", "EX", "10"]), "+OK\r\n");
    assert_eq!(kv(&mut c, &["TTL", "k"]), ":10\r\n");
    kit.advance(Duration::from_secs(4)).unwrap();
    assert_eq!(kv(&mut c, &["TTL", "k"]), ":6\r\n");
    assert_eq!(kv(&mut c, &["EXPIRE", "k", "100"]), ":1\r\n");
    kit.advance(Duration::from_secs(50)).unwrap();
    assert_eq!(kv(&mut c, &["GET", "k"]), "$1\r\nv\r\n", "moved later");
    kit.advance(Duration::from_secs(50)).unwrap();
    assert_eq!(kv(&mut c, &["GET", "k"]), "$-1\r\n", "expired");
    assert_eq!(kv(&mut c, &["TTL", "k"]), ":-2\r\n");
    // SET without EX cancels an expiry; DEL too.
    kv(&mut c, &["SET", "a", "1", "PX", "500"]);
    kv(&mut c, &["SET", "a", "2"]);
    assert_eq!(kv(&mut c, &["TTL", "a"]), ":-1\r\n");
    kit.advance(Duration::from_secs(1)).unwrap();
    assert_eq!(kv(&mut c, &["GET", "a"]), "$1\r\n2\r\n");
    assert_eq!(kv(&mut c, &["DEL", "a", "nope"]), ":1\r\n");
    assert_eq!(kv(&mut c, &["EXISTS", "a"]), ":0\r\n");
    // Keys are the instance's: another connection sees them.
    kv(&mut c, &["SET", "shared", "yes"]);
    let mut d = kit.server_connection().unwrap().unwrap();
    assert_eq!(kv(&mut d, &["GET", "shared"]), "$3\r\nyes\r\n");
    // Inline commands, as typed into nc, and errors.
    d.data_received(b"PING\r\n").unwrap();
    assert_eq!(said(&mut d), "+PONG\r\n");
    assert!(kv(&mut d, &["NOPE"]).starts_with("-ERR unknown command"));
    assert!(kv(&mut d, &["GET"]).starts_with("-ERR wrong number of arguments"));
}

async fn ask(s: &mut TcpStream, args: &[&str]) -> String {
    s.write_all(&resp(args)).await.unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minikv_over_real_sockets_expires_a_key_on_time() {
    let server = start(&server_config(
        &minikv_wasm(),
        "instance = \"shared\"\nshared-instances = 1",
    ))
    .await;
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(
        ask(&mut s, &["SET", "k", "v", "PX", "200"]).await,
        "+OK\r\n"
    );
    assert_eq!(ask(&mut s, &["GET", "k"]).await, "$1\r\nv\r\n");
    // From another connection, after the expiry.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut t = TcpStream::connect(server.addr()).await.unwrap();
    assert_eq!(ask(&mut t, &["GET", "k"]).await, "$-1\r\n");
    server.shutdown().await;
}
