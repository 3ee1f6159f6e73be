//! `twill new LANG NAME`: writes a ready guest project (a line protocol on
//! the SDK's `LineReceiver`, its build file, a test on the language's test
//! harness, a plugins.toml that serves it, and a README with the commands
//! to build, test and run it).
//!
//! The templates (`host/templates/{rust,python,js}`, and the protocols and
//! their tests from the gallery: `guests/upper`, `guests/python-upper`,
//! `guests/js-upper`) are compiled into the binary, so this works offline. Projects depend on the SDKs by version;
//! until those are published, a project made from a Twill checkout (found
//! next to the binary's sources, or given with `--sdk-path`) also points
//! at the checkout's SDKs, and its README says how to drop that.

use std::fmt;
use std::path::{Path, PathBuf};

/// A guest language `twill new` has a template for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// Rust, with the `twill-guest` crate, built for `wasm32-wasip2`.
    Rust,
    /// Python, with the `twill-guest` package, built by componentize-py.
    Python,
    /// JavaScript, with the `twill-guest` npm package, built by
    /// ComponentizeJS.
    Js,
}

/// Where the generated project gets the SDK from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sdk {
    /// The published packages, by version.
    Published,
    /// By version, overridden to the SDKs of this Twill checkout.
    Checkout(PathBuf),
}

/// Why a project could not be written. Nothing was written.
#[derive(Debug)]
pub enum NewError {
    /// The name cannot be a package and plugin name.
    BadName(String),
    /// The directory exists and is not empty.
    NotEmpty(PathBuf),
    /// `--sdk-path` is not a Twill checkout.
    NotACheckout(PathBuf),
    /// Writing failed.
    Io(PathBuf, std::io::Error),
}

impl fmt::Display for NewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NewError::BadName(name) => write!(
                f,
                "`{name}` is not a usable project name\n  hint: use lower-case letters, digits, `-` and `_`, starting with a letter (it names the package, the plugin and the component)"
            ),
            NewError::NotEmpty(dir) => write!(
                f,
                "{} already exists and is not empty\n  hint: pick another NAME, or `--dir` for another directory",
                dir.display()
            ),
            NewError::NotACheckout(dir) => write!(
                f,
                "{} is not a Twill checkout (no guest-sdk/Cargo.toml in it)\n  hint: --sdk-path takes the repository's top directory",
                dir.display()
            ),
            NewError::Io(path, e) => write!(f, "{}: {e}", path.display()),
        }
    }
}

impl std::error::Error for NewError {}

/// One template file: its path in the project, and its text.
type File = (&'static str, &'static str);

const RUST: &[File] = &[
    ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../../guests/upper/src/lib.rs")),
    (
        "tests/protocol.rs",
        include_str!("../templates/rust/tests/protocol.rs"),
    ),
    (
        "plugins.toml",
        include_str!("../templates/rust/plugins.toml"),
    ),
    ("README.md", include_str!("../templates/rust/README.md")),
    (".gitignore", include_str!("../templates/rust/gitignore")),
];

const PYTHON: &[File] = &[
    ("app.py", include_str!("../../guests/python-upper/app.py")),
    (
        "tests/test_app.py",
        include_str!("../../guests/python-upper/tests/test_app.py"),
    ),
    (
        "requirements.txt",
        include_str!("../templates/python/requirements.txt"),
    ),
    (
        "plugins.toml",
        include_str!("../templates/python/plugins.toml"),
    ),
    ("README.md", include_str!("../templates/python/README.md")),
    (".gitignore", include_str!("../templates/python/gitignore")),
];

const JS: &[File] = &[
    ("app.js", include_str!("../../guests/js-upper/app.js")),
    (
        "test/app.test.js",
        include_str!("../../guests/js-upper/test/app.test.js"),
    ),
    ("package.json", include_str!("../templates/js/package.json")),
    ("plugins.toml", include_str!("../templates/js/plugins.toml")),
    ("README.md", include_str!("../templates/js/README.md")),
    (".gitignore", include_str!("../templates/js/gitignore")),
    // A `file:` SDK is installed as a copy with its dependencies
    // (ComponentizeJS), as the published package would be.
    (".npmrc", include_str!("../templates/js/npmrc")),
];

/// The SDK version the templates name: the WIT package's, which the three
/// SDKs' versions follow.
pub const SDK_VERSION: &str = "0.1.0";

/// The Twill checkout this binary was built from, if it is still there.
pub fn this_checkout() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    root.join("guest-sdk/Cargo.toml")
        .is_file()
        .then(|| root.to_path_buf())
}

/// Whether `name` can name a package in all three languages and a plugin:
/// a plugin name ([`crate::config::is_plugin_name`]) in lower case, as
/// crates.io and npm require.
pub fn valid_name(name: &str) -> bool {
    crate::config::is_plugin_name(name) && !name.chars().any(|c| c.is_ascii_uppercase())
}

/// Writes the project for `lang` named `name` into `dir` (which must not
/// exist or be empty) and returns the files written, relative to `dir`.
pub fn generate(
    lang: Lang,
    name: &str,
    dir: &Path,
    sdk: &Sdk,
) -> Result<Vec<&'static str>, NewError> {
    if !valid_name(name) {
        return Err(NewError::BadName(name.to_string()));
    }
    if let Sdk::Checkout(root) = sdk
        && !root.join("guest-sdk/Cargo.toml").is_file()
    {
        return Err(NewError::NotACheckout(root.clone()));
    }
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(NewError::NotEmpty(dir.to_path_buf()));
    }
    let files = match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Js => JS,
    };
    let vars = variables(lang, name, sdk);
    for (path, text) in files {
        let target = dir.join(path);
        let parent = target.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(|e| NewError::Io(parent.to_path_buf(), e))?;
        std::fs::write(&target, render(text, &vars))
            .map_err(|e| NewError::Io(target.clone(), e))?;
    }
    Ok(files.iter().map(|(p, _)| *p).collect())
}

/// Replaces each `{{key}}` in `text`.
fn render(text: &str, vars: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (key, value) in vars {
        out = out.replace(&format!("{{{{{key}}}}}"), value);
    }
    out
}

/// The template variables for one project.
fn variables(lang: Lang, name: &str, sdk: &Sdk) -> Vec<(&'static str, String)> {
    let v = SDK_VERSION;
    let mut vars = vec![
        ("name", name.to_string()),
        ("crate_name", name.replace('-', "_")),
    ];
    let checkout = match sdk {
        Sdk::Checkout(root) => Some(root.display().to_string()),
        Sdk::Published => None,
    };
    let root = checkout
        .clone()
        .unwrap_or_else(|| "/path/to/twill".to_string());
    let rust_patch = format!(
        "[patch.crates-io]\ntwill-guest = {{ path = \"{root}/guest-sdk\" }}\ntwill = {{ path = \"{root}/host\" }}\n"
    );
    match lang {
        Lang::Rust => {
            let (patch, note) = match &checkout {
                Some(_) => (
                    format!(
                        "\n# Until twill-guest and twill are published on crates.io, both come from\n# the Twill checkout `twill new` ran from. Delete this table to use crates.io.\n{rust_patch}"
                    ),
                    format!(
                        "Until they are published on crates.io, the `[patch.crates-io]` table at\nthe end of `Cargo.toml` points both at the Twill checkout at `{root}`.\nDelete it to build from crates.io."
                    ),
                ),
                None => (
                    String::new(),
                    format!(
                        "Until they are published on crates.io, point them at a Twill checkout\nby adding this to `Cargo.toml`:\n\n```toml\n{rust_patch}```"
                    ),
                ),
            };
            vars.push(("patch", patch));
            vars.push(("patch_note", note));
        }
        Lang::Python => {
            let local = format!("twill-guest @ file://{root}/guest-sdk/python");
            let (dep, note) = match &checkout {
                Some(_) => (
                    local,
                    format!(
                        "Until it is published on PyPI, it comes from the Twill checkout at\n`{root}`. Replace that line with `twill-guest=={v}` to use PyPI."
                    ),
                ),
                None => (
                    format!("twill-guest=={v}"),
                    format!(
                        "Until it is published on PyPI, install it from a Twill checkout: replace\nthat line with `{local}`."
                    ),
                ),
            };
            vars.push(("python_sdk", dep));
            vars.push(("patch_note", note));
        }
        Lang::Js => {
            let local = format!("file:{root}/guest-sdk/js");
            let (dep, note) = match &checkout {
                Some(_) => (
                    local,
                    format!(
                        "Until it is published on npm, it comes from the Twill checkout at\n`{root}`. Set its version to `\"{v}\"` to use the registry."
                    ),
                ),
                None => (
                    v.to_string(),
                    format!(
                        "Until it is published on npm, install it from a Twill checkout: set\nits version to `\"{local}\"`."
                    ),
                ),
            };
            vars.push(("js_sdk", dep));
            vars.push(("patch_note", note));
        }
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["hello", "my-proto", "a1_b"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Hello", "1abc", "-x", "a b", "a/b", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        let dir = std::env::temp_dir().join(format!("twill-new-unit-{}", std::process::id()));
        for lang in [Lang::Rust, Lang::Python, Lang::Js] {
            for sdk in [Sdk::Published, Sdk::Checkout(this_checkout().unwrap())] {
                let _ = std::fs::remove_dir_all(&dir);
                let files = generate(lang, "my-proto", &dir, &sdk).unwrap();
                for f in files {
                    let text = std::fs::read_to_string(dir.join(f)).unwrap();
                    assert!(!text.contains("{{"), "{lang:?} {f}: {text}");
                }
                assert!(matches!(
                    generate(lang, "my-proto", &dir, &sdk),
                    Err(NewError::NotEmpty(_))
                ));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
