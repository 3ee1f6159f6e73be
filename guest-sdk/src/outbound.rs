//! `reactor.connect-tcp` from a guest: Twisted's `reactor.connectTCP`
//! ([`connect_tcp`], re-exported from [`crate::reactor`]). Each attempt
//! gets a token; the factory waits here, by token, for the outcome the host
//! reports through the `outbound-factory` export, and is forgotten after
//! `client_connection_failed` or `client_connection_lost`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

#[cfg(not(test))]
use crate::__bindings::twill::protocol::reactor as wit_reactor;
use crate::{Address, ClientFactory, Protocol, Reason};

thread_local! {
    /// The factories of attempts and connections not yet over, by token.
    static FACTORIES: RefCell<HashMap<u64, Rc<dyn ClientFactory>>> = RefCell::new(HashMap::new());
    static NEXT_TOKEN: Cell<u64> = const { Cell::new(1) };
}

/// Why [`connect_tcp`] could not even try: the plugin has no `connect`
/// grants, it is at its `max-outbound`, or the arguments are wrong. (A
/// refused or failed attempt is reported later, to the factory's
/// `client_connection_failed`.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectError(pub String);

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

/// An attempt [`connect_tcp`] started: Twisted's `IConnector`, reduced to
/// where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connector {
    /// The host asked for.
    pub host: String,
    /// The port asked for.
    pub port: u16,
    /// The attempt's token (distinct for every attempt of the instance).
    pub token: u64,
}

/// Open a TCP connection to `host`:`port` with `factory` as its client
/// factory: Twisted's `reactor.connectTCP(host, port, factory)`, with its
/// 30-second timeout.
///
/// Once connected, `factory.build_protocol` builds the protocol, which
/// lives on this instance (so it can hold the transport of the connection
/// that asked, and relay); otherwise `factory.client_connection_failed`
/// says why (a refusal by the plugin's `connect` grants names them). After
/// the protocol's `connection_lost`, `factory.client_connection_lost`.
pub fn connect_tcp(
    host: &str,
    port: u16,
    factory: impl ClientFactory,
) -> Result<Connector, ConnectError> {
    connect_tcp_timeout(host, port, Duration::from_secs(30), factory)
}

/// [`connect_tcp`] with a timeout of its own.
pub fn connect_tcp_timeout(
    host: &str,
    port: u16,
    timeout: Duration,
    factory: impl ClientFactory,
) -> Result<Connector, ConnectError> {
    let token = NEXT_TOKEN.with(|n| {
        let t = n.get();
        n.set(t + 1);
        t
    });
    FACTORIES.with(|f| f.borrow_mut().insert(token, Rc::new(factory)));
    match host_connect(host, port, timeout.as_secs_f64(), token) {
        Ok(()) => Ok(Connector {
            host: host.to_string(),
            port,
            token,
        }),
        Err(message) => {
            FACTORIES.with(|f| f.borrow_mut().remove(&token));
            Err(ConnectError(message))
        }
    }
}

/// The `reactor.connect-tcp` import (a fake host's under `cargo test`).
#[cfg(not(test))]
fn host_connect(host: &str, port: u16, timeout: f64, token: u64) -> Result<(), String> {
    wit_reactor::connect_tcp(host, port, timeout, token)
}

#[cfg(test)]
fn host_connect(host: &str, port: u16, timeout: f64, token: u64) -> Result<(), String> {
    tests::fake_connect(host, port, timeout, token)
}

fn factory(token: u64) -> Option<Rc<dyn ClientFactory>> {
    FACTORIES.with(|f| f.borrow().get(&token).cloned())
}

/// `outbound-factory.build-protocol`.
pub(crate) fn build_protocol(token: u64, addr: &Address) -> Option<Box<dyn Protocol>> {
    factory(token)?.build_protocol(addr)
}

/// `outbound-factory.client-connection-failed`.
pub(crate) fn failed(token: u64, reason: Reason) {
    let f = FACTORIES.with(|f| f.borrow_mut().remove(&token));
    if let Some(f) = f {
        f.client_connection_failed(reason);
    }
}

/// `outbound-factory.client-connection-lost`.
pub(crate) fn lost(token: u64, reason: Reason) {
    let f = FACTORIES.with(|f| f.borrow_mut().remove(&token));
    if let Some(f) = f {
        f.client_connection_lost(reason);
    }
}

/// The shared test vectors (`test-vectors/connect.json`), which the Python
/// and JavaScript SDKs' tests run too, against a fake host.
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    thread_local! {
        /// What the fake host saw, and the error it is to return next.
        static SEEN: RefCell<Vec<(String, u16, f64, u64)>> = const { RefCell::new(Vec::new()) };
        static HOST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
        static REFUSE: Cell<bool> = const { Cell::new(false) };
    }

    pub(super) fn fake_connect(
        host: &str,
        port: u16,
        timeout: f64,
        token: u64,
    ) -> Result<(), String> {
        SEEN.with(|s| {
            s.borrow_mut()
                .push((host.to_string(), port, timeout, token))
        });
        match HOST_ERROR.with(|e| e.borrow_mut().take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    struct Nothing;
    impl Protocol for Nothing {}

    /// A factory that records its callbacks.
    struct Recorder(Rc<RefCell<Vec<String>>>);

    fn show(r: &Reason) -> String {
        match r {
            Reason::Done => "done".into(),
            Reason::Lost(m) => format!("lost:{m}"),
            Reason::Failed(m) => format!("failed:{m}"),
        }
    }

    impl ClientFactory for Recorder {
        fn build_protocol(&self, _addr: &Address) -> Option<Box<dyn Protocol>> {
            self.0.borrow_mut().push("build_protocol".into());
            (!REFUSE.with(Cell::get)).then(|| Box::new(Nothing) as Box<dyn Protocol>)
        }
        fn client_connection_failed(&self, reason: Reason) {
            self.0
                .borrow_mut()
                .push(format!("client_connection_failed:{}", show(&reason)));
        }
        fn client_connection_lost(&self, reason: Reason) {
            self.0
                .borrow_mut()
                .push(format!("client_connection_lost:{}", show(&reason)));
        }
    }

    fn reason(v: &Value) -> Reason {
        let s = v.as_str().unwrap();
        if s == "done" {
            Reason::Done
        } else if let Some(m) = s.strip_prefix("lost:") {
            Reason::Lost(m.into())
        } else {
            panic!("reason {s}")
        }
    }

    #[test]
    fn the_shared_connect_vectors() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/test-vectors/connect.json");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = doc["cases"].as_array().unwrap();
        assert!(cases.len() >= 5, "{} cases", cases.len());
        for case in cases {
            let name = case["name"].as_str().unwrap();
            // A fresh SDK state.
            NEXT_TOKEN.with(|n| n.set(1));
            FACTORIES.with(|f| f.borrow_mut().clear());
            SEEN.with(|s| s.borrow_mut().clear());
            let mut calls: Vec<Rc<RefCell<Vec<String>>>> = Vec::new();
            for step in case["steps"].as_array().unwrap() {
                if let Some(c) = step.get("connect") {
                    let host = c["host"].as_str().unwrap();
                    let port = c["port"].as_u64().unwrap() as u16;
                    let timeout = c.get("timeout").and_then(Value::as_f64);
                    let rec = Rc::new(RefCell::new(Vec::new()));
                    calls.push(rec.clone());
                    let host_error = step.get("host_error").and_then(Value::as_str);
                    HOST_ERROR.with(|e| *e.borrow_mut() = host_error.map(String::from));
                    let r = match timeout {
                        Some(t) => connect_tcp_timeout(
                            host,
                            port,
                            Duration::from_secs_f64(t),
                            Recorder(rec),
                        ),
                        None => connect_tcp(host, port, Recorder(rec)),
                    };
                    let token = step["expect_token"].as_u64().unwrap();
                    let seen = SEEN.with(|s| s.borrow().last().cloned()).unwrap();
                    assert_eq!(
                        seen,
                        (host.to_string(), port, timeout.unwrap_or(30.0), token),
                        "{name}"
                    );
                    match step.get("expect_error").and_then(Value::as_str) {
                        Some(msg) => assert_eq!(r, Err(ConnectError(msg.into())), "{name}"),
                        None => {
                            let c = r.unwrap();
                            assert_eq!(
                                (c.host.as_str(), c.port, c.token),
                                (host, port, token),
                                "{name}"
                            );
                        }
                    }
                } else if let Some(t) = step.get("build") {
                    let addr = step.get("addr").map_or(
                        Address {
                            host: "127.0.0.1".into(),
                            port: 9,
                        },
                        |a| Address {
                            host: a["host"].as_str().unwrap().into(),
                            port: a["port"].as_u64().unwrap() as u16,
                        },
                    );
                    REFUSE.with(|r| {
                        r.set(step.get("refuse").and_then(Value::as_bool).unwrap_or(false))
                    });
                    let built = build_protocol(t.as_u64().unwrap(), &addr).is_some();
                    let want = step["expect"].as_str().unwrap() == "protocol";
                    assert_eq!(built, want, "{name}");
                } else if let Some(t) = step.get("failed") {
                    let msg = step["reason"].as_str().unwrap();
                    failed(t.as_u64().unwrap(), Reason::Failed(msg.into()));
                } else if let Some(t) = step.get("lost") {
                    lost(t.as_u64().unwrap(), reason(&step["reason"]));
                } else {
                    panic!("{name}: unknown step {step}");
                }
            }
            let want: Vec<Vec<String>> = case["expect_calls"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| {
                    l.as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c.as_str().unwrap().to_string())
                        .collect()
                })
                .collect();
            let got: Vec<Vec<String>> = calls.iter().map(|c| c.borrow().clone()).collect();
            assert_eq!(got, want, "{name}");
        }
    }
}
