//! What a guest author got wrong when a file does not load as a Twill
//! component, and the command that fixes it: one message per mistake
//! (a core module, a wasm32-wasip1 build, a WASI command or another world,
//! an import Twill does not provide, a missing factory export).

use wasmparser::{Parser, Payload};

/// How to build a Twill component in each SDK language.
pub const BUILD: &str = "build it as a component of world `twill:protocol/peer` (or `server`/`client`): Rust: `cargo build --release --target wasm32-wasip2` with the twill-guest crate; Python: `componentize-py -d WIT -w peer componentize app -o app.wasm`; JavaScript: `twill-componentize app.js -o app.wasm`; `twill new rust|python|js NAME` writes a project that does";

/// The message for a core wasm module: a wasm32-wasip1 build (it imports
/// `wasi_snapshot_preview1`) or another core module.
pub fn core_module(bytes: &[u8]) -> String {
    let mut wasip1 = false;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(Payload::ImportSection(imports)) = payload else {
            continue;
        };
        for group in imports.into_iter().flatten() {
            let module = match group {
                wasmparser::Imports::Single(_, import) => import.module,
                wasmparser::Imports::Compact1 { module, .. } => module,
                wasmparser::Imports::Compact2 { module, .. } => module,
            };
            wasip1 |= module == "wasi_snapshot_preview1" || module == "wasi_unstable";
        }
    }
    if wasip1 {
        "this was compiled for wasm32-wasip1 (it imports `wasi_snapshot_preview1`): a core module, and Twill loads WASI 0.2 components. Rust: `rustup target add wasm32-wasip2`, then `cargo build --release --target wasm32-wasip2`".to_string()
    } else {
        format!("this is a core wasm module, not a component: {BUILD}")
    }
}

/// The message for a component that does not export Twill's protocol
/// interface, given its export names.
pub fn wrong_world(exports: &[String]) -> Option<String> {
    let names = || {
        exports
            .iter()
            .map(|e| format!("`{e}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if exports.iter().any(|e| e.starts_with("wasi:cli/run")) {
        return Some(format!(
            "this is a WASI command (it exports {}: a program with a `main`), not a Twill protocol: {BUILD}",
            names()
        ));
    }
    if let Some(other) = exports
        .iter()
        .find(|e| e.starts_with("twill:protocol/") && !e.ends_with("@0.1.0"))
    {
        return Some(format!(
            "this was built against another version of Twill's contract (it exports `{other}`; this host implements twill:protocol@0.1.0): rebuild it with the SDK of this Twill, or run a Twill that implements that version"
        ));
    }
    if exports.iter().all(|e| !e.starts_with("twill:protocol/")) {
        let what = if exports.is_empty() {
            "it exports nothing".to_string()
        } else {
            format!("it exports {}", names())
        };
        return Some(format!(
            "this component was built for another world ({what}), not Twill's: {BUILD}"
        ));
    }
    None
}

/// The message for a component whose imports the host cannot satisfy,
/// from wasmtime's linker error.
pub fn unknown_import(error: &str) -> String {
    let name = error
        .split('`')
        .nth(1)
        .filter(|n| n.contains(':'))
        .unwrap_or("an interface");
    let hint = if name.starts_with("twill:protocol/") && !name.ends_with("@0.1.0") {
        "it was built against another version of Twill's contract (this host implements twill:protocol@0.1.0): rebuild it with this Twill's SDK".to_string()
    } else if name.starts_with("wasi:http/") {
        "Twill guests get no HTTP client: drop the use of fetch/HTTP (ComponentizeJS: build with `twill-componentize`, which leaves the http and fetch-event features out)".to_string()
    } else {
        "guests get twill:protocol@0.1.0 and WASI 0.2 (io, clocks, random, cli, and sockets only through `connect` grants): build against world `twill:protocol/peer` and drop the dependency that pulls it in".to_string()
    };
    format!("the component imports `{name}`, which Twill does not provide: {hint} ({error})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_modules_are_told_apart() {
        // (module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))))
        let wasip1 = b"\0asm\x01\0\0\0\x01\x05\x01\x60\x01\x7f\0\x02\x24\x01\x16wasi_snapshot_preview1\x09proc_exit\0\0";
        assert!(
            core_module(wasip1).contains("wasm32-wasip1"),
            "{}",
            core_module(wasip1)
        );
        let plain = b"\0asm\x01\0\0\0";
        assert!(core_module(plain).contains("core wasm module"));
    }

    #[test]
    fn worlds() {
        let cmd = wrong_world(&["wasi:cli/run@0.2.0".into()]).unwrap();
        assert!(cmd.contains("WASI command"), "{cmd}");
        assert!(wrong_world(&[]).unwrap().contains("exports nothing"));
        assert!(
            wrong_world(&["twill:protocol/protocol@0.2.0".into()])
                .unwrap()
                .contains("another version")
        );
        assert!(wrong_world(&["twill:protocol/protocol@0.1.0".into()]).is_none());
    }

    #[test]
    fn imports_are_named() {
        let m = unknown_import(
            "component imports instance `wasi:http/outgoing-handler@0.2.0`, but a matching implementation was not found in the linker",
        );
        assert!(
            m.starts_with("the component imports `wasi:http/outgoing-handler@0.2.0`"),
            "{m}"
        );
    }
}
