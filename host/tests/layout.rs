//! The host's modules depend on each other in one direction: no cycle
//! between the crate's top-level modules (`config`, `runtime`,
//! `connection`, ...), nor between any two files, read from every
//! `crate::` and `super::` path in `host/src` (comments excluded). A new
//! dependency that closes a cycle fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level module a file under `host/src` belongs to.
fn module_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every top-level module each module's code names with `crate::`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in all {
        let from = module_of(f.strip_prefix(&src).unwrap());
        if from == "lib" || from == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let deps = g.entry(from.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap();
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != from {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

#[test]
fn the_top_level_modules_have_no_dependency_cycle() {
    let g = graph();
    assert!(g.contains_key("runtime") && g.contains_key("connection"));
    assert_acyclic(&g, "dependency cycle");
    eprintln!("{g:#?}");
}

/// A file's module path under `host/src`: `runtime/session.rs` is
/// `["runtime", "session"]`, `runtime/mod.rs` is `["runtime"]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| {
            c.as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The identifiers a path names after `text` (which follows a `::`): one,
/// or each item's first one in a `{...}` group.
fn next_segments(text: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(group) = text.strip_prefix('{') else {
        return vec![ident(text)];
    };
    let (mut depth, mut item, mut out) = (0, String::new(), Vec::new());
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => out.push(ident(&std::mem::take(&mut item))),
            _ => {}
        }
        if c != ',' || depth > 0 {
            item.push(c);
        }
    }
    out.push(ident(&item));
    out.retain(|s| !s.is_empty() && s != "self");
    out
}

#[test]
fn no_two_files_depend_on_each_other() {
    // Every file's module, and the modules each names with `crate::` or
    // `super::` (to the deepest module the path reaches). A directory's
    // `mod.rs` declaring and re-exporting its children is structure, not a
    // dependency, so edges from a module into its own descendants are left
    // out; every other edge counts.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mods: BTreeMap<Vec<String>, String> = all
        .iter()
        .map(|f| {
            let m = module_path(f.strip_prefix(&src).unwrap());
            (m, std::fs::read_to_string(f).unwrap())
        })
        .filter(|(m, _)| !m.is_empty() && m[0] != "lib" && m[0] != "main")
        .collect();
    let resolve = |base: Vec<String>, rest: &str| -> Vec<Vec<String>> {
        next_segments(rest)
            .into_iter()
            .map(|seg| {
                let mut p = base.clone();
                p.push(seg);
                // The deepest module the path names, one level at a time.
                while !p.is_empty() && !mods.contains_key(&p) {
                    p.pop();
                }
                p
            })
            .filter(|p| !p.is_empty())
            .collect()
    };
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in &mods {
        let code: String = text
            .lines()
            .map(|l| l.split("//").next().unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        // `super` of `a/b.rs` and of `a/b/mod.rs` alike is `a`.
        let parent: Vec<String> = m[..m.len() - 1].to_vec();
        let mut deps = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let first: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let after = &rest[first.len()..];
            let deeper = after.strip_prefix("::");
            let base = vec![first.clone()];
            match deeper {
                Some(d) => deps.extend(resolve(base, d)),
                None => deps.extend(resolve(Vec::new(), &first)),
            }
        }
        for (i, _) in code.match_indices("super::") {
            if i >= 2 && &code[i - 2..i] == "::" {
                continue;
            }
            let rest = &code[i + "super::".len()..];
            if parent.is_empty() {
                continue;
            }
            let found = resolve(parent.clone(), rest);
            if found.is_empty() {
                deps.insert(parent.clone());
            }
            deps.extend(found);
        }
        let name = m.join("::");
        let entry = g.entry(name.clone()).or_default();
        for d in deps {
            let own_descendant = d.len() > m.len() && d[..m.len()] == m[..];
            if d != *m && !own_descendant {
                entry.insert(d.join("::"));
            }
        }
    }
    assert!(g.contains_key("runtime::session") && g.contains_key("shared::batch"));
    assert_acyclic(&g, "dependency cycle between files");
    eprintln!("{g:#?}");
}

/// Panics with `what` and the path if `g` has a cycle (a depth-first
/// search for a back edge).
fn assert_acyclic(g: &BTreeMap<String, BTreeSet<String>>, what: &str) {
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        what: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(n) {
            return;
        }
        if let Some(i) = path.iter().position(|p| p == n) {
            panic!("{what}: {} -> {n}", path[i..].join(" -> "));
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            visit(d, g, what, path, done);
        }
        path.pop();
        done.insert(n.to_string());
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        visit(n, g, what, &mut Vec::new(), &mut done);
    }
}
