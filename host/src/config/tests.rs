//! Unit tests for `plugins.toml` parsing: each rule, asserting the line, key
//! and message of the error it gives.

use super::*;

#[test]
fn durations() {
    assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
    assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
    assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("5").unwrap_err().contains("no unit"));
    assert!(
        parse_duration("5 parsecs")
            .unwrap_err()
            .contains("unknown unit")
    );
    assert!(parse_duration("s").is_err());
}

#[test]
fn sizes() {
    assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
    assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
    assert!(parse_size("lots").is_err());
    assert!(
        parse_size("3 furlongs")
            .unwrap_err()
            .contains("unknown unit")
    );
    assert!(parse_size("99999999999999999999GiB").is_err());
}

#[test]
fn error_lines_point_at_the_key() {
    let text =
        "[plugins.echo]\ncomponent = \"x.wasm\"\n\n[[listen]]\nport = 9000\nplugin = \"ech0\"\n";
    let errs = Config::parse(Path::new("/nonexistent/plugins.toml"), text).unwrap_err();
    let plugin_err = errs
        .0
        .iter()
        .find(|e| e.key.as_deref() == Some("listen[0].plugin"))
        .unwrap();
    assert_eq!(plugin_err.line, Some(6));
    assert!(
        plugin_err
            .message
            .contains("\"ech0\" is not defined (defined: echo)"),
        "{plugin_err}"
    );
    let missing = errs
        .0
        .iter()
        .find(|e| e.key.as_deref() == Some("plugins.echo.component"))
        .unwrap();
    assert_eq!(missing.line, Some(2));
}

#[test]
fn unknown_keys_are_rejected_with_a_line() {
    let text = "[[listen]]\nport = 9000\nplugin = \"echo\"\nprot = 1\n";
    let errs = Config::parse(Path::new("p.toml"), text).unwrap_err();
    let e = find(&errs, "listen[0].prot");
    assert_eq!((e.line, e.column), (Some(4), Some(1)));
    assert_eq!(e.message, "unknown key `prot`: did you mean `port`?");
}

/// The one error on `key`.
fn find<'e>(errs: &'e ConfigErrors, key: &str) -> &'e ConfigError {
    let mut on_key = errs.0.iter().filter(|e| e.key.as_deref() == Some(key));
    let e = on_key
        .next()
        .unwrap_or_else(|| panic!("no error on {key} in:\n{errs}"));
    assert!(on_key.next().is_none(), "two errors on {key}:\n{errs}");
    e
}
