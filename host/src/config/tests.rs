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

/// A regular file to name as a component (its contents are not read here).
fn component_file() -> String {
    let path = std::env::temp_dir().join(format!("twill-config-test-{}.wasm", std::process::id()));
    std::fs::write(&path, b"\0asm").unwrap();
    path.display().to_string()
}

/// `[plugins.echo]` naming a real file, with `extra` lines, then `rest`.
fn with_echo(extra: &str, rest: &str) -> String {
    format!(
        "[plugins.echo]\ncomponent = {:?}\n{extra}\n{rest}",
        component_file()
    )
}

const LISTEN: &str = "[[listen]]\nport = 9000\nplugin = \"echo\"\n";

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(Path::new("/etc/twill/p.toml"), text)
}

fn errors(text: &str) -> ConfigErrors {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn every_error_is_reported_at_once_in_file_order() {
    let text = with_echo(
        "memory = true\nlimits = 3\n",
        "[host]\nthreds = 2\n\
         [[listen]]\nport = 9000\nplugin = \"echo\"\n\
         [[listen]]\nport = \"abc\"\nplugin = \"echo\"\n\
         [listeners]\nx = 1\n",
    );
    let errs = errors(&text);
    let lines: Vec<usize> = errs.0.iter().map(|e| e.line.unwrap()).collect();
    assert_eq!(lines, [3, 4, 7, 12, 14], "{errs}");
    let memory = find(&errs, "plugins.echo.memory");
    assert_eq!(memory.column, Some(10));
    assert_eq!(
        memory.message,
        "expected a size (such as \"16MiB\" or 65536), found the boolean true"
    );
    let limits = find(&errs, "plugins.echo.limits");
    assert!(
        limits
            .message
            .starts_with("unknown key `limits`: valid keys here: component, memory,"),
        "{limits}"
    );
    let threds = find(&errs, "host.threds");
    assert_eq!(
        threds.message,
        "unknown key `threds`: did you mean `threads`?"
    );
    let port = find(&errs, "listen[1].port");
    assert_eq!(
        port.message,
        "expected a port number (such as 9000, without quotes), found the string \"abc\""
    );
    let table = find(&errs, "listeners");
    assert_eq!(
        table.message,
        "unknown table `listeners`: did you mean `listen`?"
    );
    assert_eq!(
        table.to_string(),
        "/etc/twill/p.toml:14:2: listeners: unknown table `listeners`: did you mean `listen`?"
    );
}

#[test]
fn a_syntax_error_is_one_error() {
    let errs = errors("[[listen]\nport = 9000\n");
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!(errs.0[0].line, Some(1));
}

#[test]
fn missing_keys_name_the_table() {
    let errs = errors(&with_echo("", "[[connect]]\nport = 80\n"));
    let host = find(&errs, "connect[0].host");
    assert_eq!(host.line, Some(4));
    assert_eq!(
        host.message,
        "missing key `host`: add e.g. host = \"localhost\""
    );
    assert_eq!(find(&errs, "connect[0].plugin").line, Some(4));
}

#[test]
fn plugin_names_are_identifiers() {
    for good in ["echo", "a", "Chat-2_b", &"x".repeat(64)] {
        let text = format!(
            "[plugins.{good}]\ncomponent = {:?}\n[[listen]]\nport = 0\nplugin = \"{good}\"\n",
            component_file()
        );
        parse(&text).unwrap();
    }
    for (bad, key) in [
        ("\"a\\nb\"", "plugins.\"a\\nb\""),
        ("\"has space\"", "plugins.\"has space\""),
        ("\"\\u001b[31mred\"", "plugins.\"\\u{1b}[31mred\""),
        ("1abc", "plugins.1abc"),
        ("_x", "plugins._x"),
        (
            &"x".repeat(65),
            &format!("plugins.\"{}…\" (65 bytes)", "x".repeat(60)),
        ),
    ] {
        let text = format!("[plugins.{bad}]\ncomponent = {:?}\n", component_file());
        let errs = errors(&text);
        let e = find(&errs, key);
        assert_eq!((e.line, e.column), (Some(1), Some(10)), "{e}");
        assert!(
            e.message.contains("is not an identifier: use a letter, then letters, digits, `_` or `-`, at most 64 characters"),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

#[test]
fn huge_values_are_cut_short_in_messages() {
    // 1 MB in most places (a debug build parses it slowly), 10 MB once.
    let huge = "a".repeat(1_000_000);
    for text in [
        with_echo(&format!("memory = \"{huge}\"\n"), LISTEN),
        with_echo(&format!("cpu = \"1{huge}\"\n"), LISTEN),
        with_echo(&format!("memory = [\"{huge}\"]\n"), LISTEN),
        with_echo(&format!("{huge} = 1\n"), LISTEN),
        with_echo(
            "",
            &format!("[[listen]]\nport = 9000\nplugin = \"{huge}\"\n"),
        ),
        with_echo(
            "",
            &format!("[[listen]]\nport = 9000\nplugin = \"echo\"\ninterface = \"{huge}\"\n"),
        ),
        format!("[plugins.{huge}]\ncomponent = \"{huge}\"\n{LISTEN}"),
    ] {
        let errs = errors(&text);
        for e in &errs.0 {
            let shown = e.to_string();
            // The valid-keys hint of an unknown key is the longest part.
            assert!(
                shown.len() < 400,
                "{} chars: {}",
                shown.len(),
                shown.chars().take(400).collect::<String>()
            );
        }
    }
    let huge = "a".repeat(10_000_000);
    let errs = errors(&with_echo(&format!("memory = \"{huge}\"\n"), LISTEN));
    assert_eq!(
        find(&errs, "plugins.echo.memory").message,
        format!(
            "size \"{}…\" (10000000 bytes) does not start with a whole number",
            "a".repeat(60)
        )
    );
}

#[test]
fn a_component_that_is_not_a_regular_file_is_named_for_what_it_is() {
    let dir = std::env::temp_dir().join(format!("twill-config-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.wasm");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (path, kind) in [
        ("/dev/zero".to_string(), "a character device"),
        (dir.display().to_string(), "a directory"),
        (fifo.display().to_string(), "a FIFO"),
    ] {
        let text = format!("[plugins.echo]\ncomponent = {path:?}\n{LISTEN}");
        let errs = errors(&text);
        let e = find(&errs, "plugins.echo.component");
        assert_eq!((e.line, e.column), (Some(2), Some(13)));
        assert_eq!(
            e.message,
            format!(
                "component file {path} is not a regular file (it is {kind}): give the path of a .wasm component"
            )
        );
    }
    let big = dir.join("big.wasm");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(MAX_COMPONENT_SIZE + 1)
        .unwrap();
    let errs = errors(&format!("[plugins.echo]\ncomponent = {big:?}\n{LISTEN}"));
    assert_eq!(
        find(&errs, "plugins.echo.component").message,
        format!(
            "component file {} is 268435457 bytes, more than the 256MiB a component may be",
            big.display()
        )
    );
    let missing = errors(&format!(
        "[plugins.echo]\ncomponent = \"no/such.wasm\"\n{LISTEN}"
    ));
    assert_eq!(
        find(&missing, "plugins.echo.component").message,
        "component file /etc/twill/no/such.wasm does not exist (paths are relative to the config file)"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn interfaces_must_be_unicast_and_are_stored_canonically() {
    for (ip, kind) in [
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("::ffff:239.1.2.3", "a multicast address"),
        ("255.255.255.255", "the broadcast address"),
    ] {
        let errs = errors(&with_echo("", &format!("{LISTEN}interface = \"{ip}\"\n")));
        let e = find(&errs, "listen[0].interface");
        assert_eq!((e.line, e.column), (Some(7), Some(13)), "{e}");
        assert!(e.message.contains(&format!(" is {kind}; a listener binds a unicast address: use \"127.0.0.1\", \"::1\", \"0.0.0.0\" or \"::\"")), "{e}");
    }
    let config = parse(&with_echo(
        "",
        &format!("{LISTEN}interface = \"::ffff:127.0.0.1\"\n"),
    ))
    .unwrap();
    assert_eq!(config.listen[0].interface, IpAddr::from([127, 0, 0, 1]));
    let errs = errors(&with_echo(
        "",
        &format!(
            "{LISTEN}[[listen]]\nport = 9000\nplugin = \"echo\"\ninterface = \"::ffff:127.0.0.1\"\n"
        ),
    ));
    let e = find(&errs, "listen[1].port");
    assert_eq!(e.line, Some(8));
    assert_eq!(
        e.message,
        "port 9000 is already used by the listener on line 4"
    );
}

#[test]
fn memory_is_at_least_one_page() {
    let errs = errors(&with_echo("memory = \"1B\"\n", LISTEN));
    let e = find(&errs, "plugins.echo.memory");
    assert_eq!(e.line, Some(3));
    assert_eq!(
        e.message,
        "must be between 64KiB and 4GiB, got 1 byte (one wasm page is 64KiB; most guests need 1MiB or more)"
    );
    let errs = errors(&with_echo("memory = \"5GiB\"\n", LISTEN));
    assert!(
        find(&errs, "plugins.echo.memory")
            .message
            .starts_with("must be between 64KiB and 4GiB, got 5GiB")
    );
    let config = parse(&with_echo("memory = 65536\n", LISTEN)).unwrap();
    assert_eq!(config.plugins["echo"].limits.memory, 64 << 10);
}

#[test]
fn host_max_instances_is_optional_and_bounded() {
    let config = parse(&with_echo("", LISTEN)).unwrap();
    assert_eq!(config.host.max_instances, None);
    let config = parse(&format!(
        "[host]\nmax-instances = 100\n{}",
        with_echo("", LISTEN)
    ))
    .unwrap();
    assert_eq!(config.host.max_instances, Some(100));
    for bad in ["0", "4294967295", "-1", "\"10\""] {
        let errs = errors(&format!(
            "[host]\nmax-instances = {bad}\n{}",
            with_echo("", LISTEN)
        ));
        let e = find(&errs, "host.max-instances");
        assert_eq!((e.line, e.column), (Some(2), Some(17)));
        if bad.starts_with('"') {
            assert!(e.message.starts_with("expected an integer"), "{e}");
        } else {
            assert_eq!(
                e.message,
                format!("must be between 1 and 1000000, got {bad}")
            );
        }
    }
}

#[test]
fn host_max_queued_output() {
    let config = parse(&with_echo("", LISTEN)).unwrap();
    assert_eq!(config.host.max_queued_output, 256 << 20);
    let config = parse(&format!(
        "[host]\nmax-queued-output = \"1MiB\"\n{}",
        with_echo("", LISTEN)
    ))
    .unwrap();
    assert_eq!(config.host.max_queued_output, 1 << 20);
    let errs = errors(&format!(
        "[host]\nmax-queued-output = \"512KiB\"\n{}",
        with_echo("", LISTEN)
    ));
    let e = find(&errs, "host.max-queued-output");
    assert_eq!(e.line, Some(2));
    assert_eq!(e.message, "must be at least 1MiB, got 512KiB");
}

#[test]
fn plugin_max_instances() {
    let config = parse(&with_echo("max-instances = 50\n", LISTEN)).unwrap();
    assert_eq!(config.plugins["echo"].max_instances, Some(50));
    let config = parse(&with_echo("", LISTEN)).unwrap();
    assert_eq!(config.plugins["echo"].max_instances, None);
    let errs = errors(&with_echo("max-instances = 0\n", LISTEN));
    assert_eq!(
        find(&errs, "plugins.echo.max-instances").message,
        "must be between 1 and 1000000, got 0"
    );
    let errs = errors(&with_echo(
        "instance = \"shared\"\nmax-instances = 5\n",
        LISTEN,
    ));
    let e = find(&errs, "plugins.echo.max-instances");
    assert_eq!(e.line, Some(4));
    assert_eq!(
        e.message,
        "does not apply with instance = \"shared\": set shared-instances instead"
    );
}

#[test]
fn plugin_instances_must_fit_in_host_max_instances() {
    let file = component_file();
    let text = |limit: u32| {
        format!(
            "[host]\nmax-instances = {limit}\n\
             [plugins.b]\ncomponent = {file:?}\nmax-instances = 6\n\
             [plugins.a]\ncomponent = {file:?}\ninstance = \"shared\"\nshared-instances = 3\n\
             [plugins.c]\ncomponent = {file:?}\ninstance = \"shared\"\n\
             [plugins.d]\ncomponent = {file:?}\n\
             {LISTEN}plugin = \"a\"\n"
        )
        .replace("plugin = \"echo\"\nplugin = \"a\"", "plugin = \"a\"")
    };
    parse(&text(10)).unwrap();
    let errs = errors(&text(9));
    assert_eq!(errs.0.len(), 1, "{errs}");
    let e = find(&errs, "plugins.c.shared-instances");
    assert_eq!(
        e.line,
        Some(10),
        "the table, as shared-instances is not written"
    );
    assert_eq!(
        e.message,
        "the plugins' max-instances and shared-instances add up to 10 (b 6 + a 3 + c 1), more than [host] max-instances = 9: raise that or lower these"
    );
    let errs = errors(&text(8));
    let e = find(&errs, "plugins.a.shared-instances");
    assert_eq!((e.line, e.column), (Some(9), Some(20)));
    assert!(e.message.contains("add up to 9 (b 6 + a 3)"), "{e}");
}

#[test]
fn max_resources() {
    let config = parse(&with_echo("", LISTEN)).unwrap();
    assert_eq!(config.plugins["echo"].limits.max_resources, 1000);
    let config = parse(&with_echo("max-resources = 16\n", LISTEN)).unwrap();
    assert_eq!(config.plugins["echo"].limits.max_resources, 16);
    let errs = errors(&with_echo("max-resources = 15\n", LISTEN));
    let e = find(&errs, "plugins.echo.max-resources");
    assert_eq!(e.line, Some(3));
    assert_eq!(e.message, "must be between 16 and 1000000, got 15");
}

#[test]
fn shared_instances_default_to_one() {
    let config = parse(&format!(
        "[host]\nthreads = 4\n{}",
        with_echo("instance = \"shared\"\n", LISTEN)
    ))
    .unwrap();
    assert_eq!(config.plugins["echo"].sharing, Sharing::Shared(1));
    let config = parse(&with_echo(
        "instance = \"shared\"\nshared-instances = 3\n",
        LISTEN,
    ))
    .unwrap();
    assert_eq!(config.plugins["echo"].sharing, Sharing::Shared(3));
}

#[test]
fn defaults_are_the_named_constants() {
    let config = parse(&with_echo(
        "",
        &format!("{LISTEN}[[connect]]\nhost = \"h\"\nport = 1\nplugin = \"echo\"\n"),
    ))
    .unwrap();
    assert_eq!(config.host, HostSettings::default());
    assert_eq!(config.plugins["echo"].limits, Limits::default());
    assert_eq!(config.plugins["echo"].sharing, Sharing::PerConnection);
    let l = &config.listen[0];
    assert_eq!(
        (l.interface, l.max_connections, l.backlog, l.line),
        (
            DEFAULT_INTERFACE,
            DEFAULT_MAX_CONNECTIONS,
            DEFAULT_BACKLOG,
            4
        )
    );
    assert_eq!(config.connect[0].timeout, DEFAULT_CONNECT_TIMEOUT);
}

#[test]
fn did_you_mean_only_for_close_spellings() {
    let errs = errors(&format!(
        "port = 9000\n{}",
        with_echo("colck = true\n", LISTEN)
    ));
    assert_eq!(
        find(&errs, "port").message,
        "unknown table `port`: valid tables here: host, plugins, listen, connect"
    );
    assert_eq!(
        find(&errs, "plugins.echo.colck").message,
        "unknown key `colck`: did you mean `clock`?"
    );
    let errs = errors(&with_echo(
        "",
        &format!("{LISTEN}backlg = 5\nmax-connection = 5\n"),
    ));
    assert_eq!(
        find(&errs, "listen[0].backlg").message,
        "unknown key `backlg`: did you mean `backlog`?"
    );
    assert_eq!(
        find(&errs, "listen[0].max-connection").message,
        "unknown key `max-connection`: did you mean `max-connections`?"
    );
}

#[test]
fn proxy_protocol_needs_trusted_sources_and_names_bad_ones() {
    let ok = parse(&with_echo(
        "",
        &format!(
            "{LISTEN}reuse-port = true\nproxy-protocol = \"any\"\nproxy-from = [\"127.0.0.1\", \"10.1.2.3/8\", \"::1\"]\n"
        ),
    ))
    .unwrap();
    let l = &ok.listen[0];
    assert!(l.reuse_port);
    let p = l.proxy.as_ref().unwrap();
    assert_eq!(p.versions, ProxyVersions::Any);
    // Networks are stored truncated, addresses as one-host networks.
    let from: Vec<String> = p.from.iter().map(ToString::to_string).collect();
    assert_eq!(from, ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]);
    assert!(
        parse(&with_echo("", LISTEN)).unwrap().listen[0]
            .proxy
            .is_none()
    );

    let errs = errors(&with_echo(
        "",
        &format!(
            "{LISTEN}proxy-protocol = \"v3\"\nproxy-from = [\"10.0.0.0/33\", 7]\n\
             [[listen]]\nport = 9001\nplugin = \"echo\"\nproxy-protocol = \"v1\"\n\
             [[listen]]\nport = 9002\nplugin = \"echo\"\nproxy-from = [\"10.0.0.0/8\"]\n\
             [[listen]]\nport = 9003\nplugin = \"echo\"\nproxy-protocol = \"v2\"\nproxy-from = []\nreuse-port = \"yes\"\n"
        ),
    ));
    let says = |key: &str, what: &str| {
        let e = find(&errs, key);
        assert!(e.message.contains(what), "{key}: {}", e.message);
    };
    says(
        "listen[0].proxy-protocol",
        "\"v3\" is not a PROXY protocol version: use \"v1\", \"v2\" or \"any\"",
    );
    says(
        "listen[0].proxy-from[0]",
        "\"10.0.0.0/33\" is not an address or network",
    );
    says(
        "listen[0].proxy-from[1]",
        "expected an address or network string",
    );
    says(
        "listen[1].proxy-protocol",
        "must say whom it trusts to send them: add proxy-from = [",
    );
    says(
        "listen[2].proxy-from",
        "only means something with proxy-protocol",
    );
    says(
        "listen[3].proxy-from",
        "an empty proxy-from would refuse every connection",
    );
    says("listen[3].reuse-port", "expected true or false");
}

#[test]
fn drain_timeout_must_leave_time_to_close() {
    let ok = parse(&with_echo(
        "",
        &format!("[host]\ndrain-timeout = \"20s\"\nshutdown-timeout = \"30s\"\n{LISTEN}"),
    ))
    .unwrap();
    assert_eq!(ok.host.drain_timeout, Duration::from_secs(20));
    let errs = errors(&with_echo(
        "",
        &format!("[host]\ndrain-timeout = \"10s\"\n{LISTEN}"),
    ));
    let e = find(&errs, "host.drain-timeout");
    assert!(
        e.message
            .starts_with("drain-timeout (10s) must be shorter than shutdown-timeout (5s)"),
        "{e}"
    );
}
