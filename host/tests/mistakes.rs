//! What a guest author meets when the component is not what Twill loads:
//! `twill check` names the mistake and its fix (the build command) in one
//! message per plugin, and exits 2. Fixtures: `tests/fixtures/mistakes/`.

mod support;

use std::path::Path;

/// Runs `twill check` on a config serving `wasm`, returning its exit code
/// and stderr.
fn check(wasm: &Path) -> (i32, String) {
    let text = format!(
        "[plugins.p]\ncomponent = \"{}\"\n\n[[listen]]\nport = 0\ninterface = \"127.0.0.1\"\nplugin = \"p\"\n",
        wasm.display()
    );
    let config = support::write_config(&text);
    let out = support::twill()
        .args(["-q", "check"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = support::strip_ansi(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stderr)
}

fn fixture(name: &str) -> std::path::PathBuf {
    support::repo()
        .join("host/tests/fixtures/mistakes")
        .join(name)
}

/// Each mistake: the fixture, and what the one message must say.
#[test]
fn each_mistake_is_named_with_its_fix() {
    let cases: &[(&str, &[&str])] = &[
        (
            "wasip1.wasm",
            &[
                "compiled for wasm32-wasip1",
                "cargo build --release --target wasm32-wasip2",
            ],
        ),
        (
            "core-module.wasm",
            &[
                "core wasm module, not a component",
                "--target wasm32-wasip2",
                "componentize-py",
                "twill-componentize",
            ],
        ),
        (
            "command.wasm",
            &["WASI command", "`wasi:cli/run@0.2.0`", "twill new"],
        ),
        (
            "other-world.wasm",
            &[
                "built for another world",
                "`example:app/handler@1.0.0`",
                "twill:protocol/peer",
            ],
        ),
        (
            "unknown-import.wasm",
            &[
                "imports `wasi:http/outgoing-handler@0.2.0`, which Twill does not provide",
                "twill-componentize",
            ],
        ),
        (
            "newer-contract.wasm",
            &[
                "another version of Twill's contract",
                "twill:protocol/protocol@0.2.0",
                "rebuild",
            ],
        ),
    ];
    for (file, needles) in cases {
        let (code, stderr) = check(&fixture(file));
        assert_eq!(code, 2, "{file}: {stderr}");
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("plugins.p.component"))
            .collect();
        assert_eq!(lines.len(), 1, "{file}: one message: {stderr}");
        assert!(
            lines[0].contains(&format!(
                "plugins.toml:1: plugins.p.component: {}",
                fixture(file).display()
            )),
            "{file}: {}",
            lines[0]
        );
        for needle in *needles {
            assert!(
                lines[0].contains(needle),
                "{file}: missing {needle:?} in {}",
                lines[0]
            );
        }
    }
}
