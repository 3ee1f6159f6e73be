//! The contract in `wit/`: one package line, and every item documented.

mod support;

/// Every interface, world, resource, record, variant, function, field and
/// case in wit/ has a `///` doc comment right above it.
#[test]
fn every_wit_item_is_documented() {
    let dir = support::repo().join("wit");
    let mut packages = 0;
    let mut items = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "wit") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let t = line.trim();
            if t.starts_with("package ") {
                packages += 1;
                assert_eq!(t, "package twill:protocol@0.1.0;");
                continue;
            }
            let is_item = [
                "interface ",
                "world ",
                "resource ",
                "record ",
                "variant ",
                "enum ",
                "flags ",
            ]
            .iter()
            .any(|k| t.starts_with(k))
                || t.contains(": func(")
                || (t.ends_with(',') && !t.starts_with("//"));
            if !is_item {
                continue;
            }
            items += 1;
            let prev = lines[..i]
                .iter()
                .rev()
                .map(|l| l.trim())
                .find(|l| !l.is_empty())
                .unwrap_or("");
            assert!(
                prev.starts_with("///"),
                "{}:{}: `{t}` has no /// doc comment above it",
                path.display(),
                i + 1
            );
        }
    }
    assert_eq!(packages, 1, "exactly one package line across wit/");
    assert!(items > 25, "found {items} items");
}

/// The three SDK packages each carry a copy of wit/ (to be packaged on
/// their own); every copy is byte-identical to it.
#[test]
fn sdk_copies_of_the_contract_match_wit() {
    let repo = support::repo();
    let mut names: Vec<_> = std::fs::read_dir(repo.join("wit"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for copy in [
        "guest-sdk/wit",
        "guest-sdk/python/twill/wit",
        "guest-sdk/js/wit",
    ] {
        let mut theirs: Vec<_> = std::fs::read_dir(repo.join(copy))
            .unwrap_or_else(|e| panic!("{copy}: {e}; run scripts/sync-wit.sh"))
            .map(|e| e.unwrap().file_name())
            .collect();
        theirs.sort();
        assert_eq!(
            theirs, names,
            "{copy} lists other files than wit/; run scripts/sync-wit.sh"
        );
        for name in &names {
            let a = std::fs::read(repo.join("wit").join(name)).unwrap();
            let b = std::fs::read(repo.join(copy).join(name)).unwrap();
            assert!(
                a == b,
                "{copy}/{name:?} differs from wit/; run scripts/sync-wit.sh"
            );
        }
    }
}
