//! The house rules, checked by `cargo test` (in the manner of rust-analyzer's `tidy.rs`): every
//! Rust module starts with a `//!` doc; no source file is longer than [`MAX_LINES`] unless
//! [`LONG_FILES`] lists it with a reason; no test is `#[ignore]`d; library crates do not print;
//! and the workspace's crates depend on each other only downwards ([`LAYERS`]).
//!
//! Each rule is a function from file contents to a list of violations, so the tests below plant a
//! violation of each and see it reported; [`tidy_tree`] runs them all over the repository.

#![cfg(test)]

use std::path::{Path, PathBuf};

/// Longest source file, in lines.
const MAX_LINES: usize = 700;

/// Files allowed past [`MAX_LINES`], each with its reason.
const LONG_FILES: &[(&str, &str)] = &[(
    "crates/medsa-ref/tests/backward.rs",
    "one finite-difference test per backward op, all sharing the f64 forwards written at its top",
)];

/// The workspace's crates by layer, bottom first (ARCHITECTURE.md, "Layout": `core` at the
/// bottom, `cli` and `xtask` on top). A crate may depend (normally or for its tests) only on
/// crates of a lower layer; the exceptions are [`DEV_ONLY`].
const LAYERS: &[&[&str]] = &[
    &["medsa-core"],
    &["medsa-testkit"],
    &["medsa-io", "medsa-ref", "medsa-eval"],
    &["medsa-kernels", "medsa-model"],
    &["medsa-train"],
    &["medsa-cli", "medsa-benches", "xtask"],
];

/// `(crate, dependency)` pairs allowed only under `[dev-dependencies]`: the model's tests run on
/// the CPU reference, the model itself only knows the Backend trait.
const DEV_ONLY: &[(&str, &str)] = &[("medsa-model", "medsa-ref")];

/// Library crates: nothing below the CLI prints (ARCHITECTURE.md).
const QUIET_CRATES: &[&str] = &[
    "crates/medsa-core",
    "crates/medsa-testkit",
    "crates/medsa-io",
    "crates/medsa-ref",
    "crates/medsa-eval",
    "crates/medsa-model",
    "crates/medsa-train",
    "kernels",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Every file under `dir` whose name ends with `ext`, skipping build output and fetched files.
fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | ".cuda-wheels" | "weights" | "node_modules") {
                files(&p, ext, out);
            }
        } else if name.ends_with(ext) {
            out.push(p);
        }
    }
}

/// A module that does not start with a `//!` doc (inner attributes may not come first: the doc
/// is what a reader sees on opening the file).
fn missing_module_doc(path: &str, text: &str) -> Option<String> {
    let first = text.lines().find(|l| !l.trim().is_empty())?;
    (!first.starts_with("//!")).then(|| format!("{path}: no `//!` module doc at the top"))
}

/// A file past [`MAX_LINES`] that [`LONG_FILES`] does not list.
fn too_long(path: &str, text: &str, allowed: &[(&str, &str)]) -> Option<String> {
    let n = text.lines().count();
    (n > MAX_LINES && !allowed.iter().any(|(p, _)| *p == path)).then(|| {
        format!("{path}: {n} lines (> {MAX_LINES}); split it by job, or list it in LONG_FILES with a reason")
    })
}

/// `#[ignore]`d tests: a test that does not run reports nothing.
fn ignored_tests(path: &str, text: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            l.starts_with("#[ignore") || l.starts_with("#[cfg_attr(") && l.contains("ignore")
        })
        .map(|(i, _)| format!("{path}:{}: #[ignore]d test", i + 1))
        .collect()
}

/// `println!` / `eprintln!` / `print!` / `dbg!` outside comments in a library crate's code. Its
/// test module (a `mod` right after `#[cfg(test)]` and its attributes, at the end of the file) may
/// say why a test skipped; a `#[cfg(test)]` on a single item does not end the code.
fn prints(path: &str, text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let test_mod = (0..lines.len()).find(|&i| {
        lines[i].trim() == "#[cfg(test)]"
            && lines[i + 1..]
                .iter()
                .map(|l| l.trim())
                .find(|l| !l.starts_with("#["))
                .is_some_and(|l| l.starts_with("mod ") || l.starts_with("pub mod "))
    });
    lines[..test_mod.unwrap_or(lines.len())]
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            let code = l.split("//").next().unwrap_or("");
            ["println!(", "print!(", "dbg!("].iter().any(|m| code.contains(m))
        })
        .map(|(i, _)| format!("{path}:{}: a library crate prints", i + 1))
        .collect()
}

/// The `medsa-*` / `xtask` dependencies of one `Cargo.toml`: `(name, dev)`.
fn workspace_deps(manifest: &str) -> Vec<(String, bool)> {
    let mut section = String::new();
    let mut deps = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_string();
            continue;
        }
        let dev = match section.as_str() {
            "dependencies" | "build-dependencies" => false,
            "dev-dependencies" => true,
            _ => continue,
        };
        let name = line.split(['=', '.', ' ']).next().unwrap_or("");
        if name.starts_with("medsa-") || name == "xtask" {
            deps.push((name.to_string(), dev));
        }
    }
    deps
}

fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(v) = line.strip_prefix("name") {
                return Some(v.trim_start_matches([' ', '=']).trim_matches('"').to_string());
            }
        }
    }
    None
}

fn layer(name: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&name))
}

/// Dependencies that point sideways or up, or that should only be dev-dependencies.
fn layering(krate: &str, deps: &[(String, bool)]) -> Vec<String> {
    let Some(own) = layer(krate) else {
        return vec![format!("{krate}: not in LAYERS (add it at its layer)")];
    };
    let mut bad = Vec::new();
    for (dep, dev) in deps {
        match layer(dep) {
            None => bad.push(format!("{krate} -> {dep}: {dep} is not in LAYERS")),
            Some(l) if l >= own => {
                bad.push(format!("{krate} -> {dep}: points sideways or up (layer {own} -> {l})"))
            }
            Some(_) => {}
        }
        if !dev && DEV_ONLY.contains(&(krate, dep.as_str())) {
            bad.push(format!("{krate} -> {dep}: only its tests may use it ([dev-dependencies])"));
        }
    }
    bad
}

/// Every rule over the repository.
fn tidy_tree(root: &Path) -> Vec<String> {
    let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).to_string_lossy().replace('\\', "/");
    let mut bad = Vec::new();
    let mut rs = Vec::new();
    for dir in ["crates", "kernels", "benches", "xtask", "fuzz"] {
        files(&root.join(dir), ".rs", &mut rs);
    }
    for path in &rs {
        let name = rel(path);
        let Ok(text) = std::fs::read_to_string(path) else {
            bad.push(format!("{name}: unreadable"));
            continue;
        };
        bad.extend(missing_module_doc(&name, &text));
        bad.extend(too_long(&name, &text, LONG_FILES));
        bad.extend(ignored_tests(&name, &text));
        if QUIET_CRATES.iter().any(|c| name.starts_with(&format!("{c}/src/"))) {
            bad.extend(prints(&name, &text));
        }
    }
    for (listed, _) in LONG_FILES {
        match std::fs::read_to_string(root.join(listed)) {
            Ok(t) if t.lines().count() > MAX_LINES => {}
            _ => bad.push(format!("{listed}: listed in LONG_FILES but missing or short now; unlist it")),
        }
    }
    let mut manifests = Vec::new();
    for dir in ["crates", "kernels", "benches", "xtask"] {
        files(&root.join(dir), "Cargo.toml", &mut manifests);
    }
    for m in manifests {
        let Ok(text) = std::fs::read_to_string(&m) else { continue };
        let Some(name) = package_name(&text) else { continue };
        bad.extend(layering(&name, &workspace_deps(&text)));
    }
    bad
}

#[test]
fn the_tree_is_tidy() {
    let bad = tidy_tree(&root());
    assert!(bad.is_empty(), "{} tidy violation(s):\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn each_rule_reports_a_planted_violation() {
    assert!(missing_module_doc("a.rs", "#![allow(x)]\n//! late\n").is_some());
    assert!(missing_module_doc("a.rs", "\n//! Doc.\nuse x;\n").is_none());
    let long = "x\n".repeat(MAX_LINES + 1);
    assert!(too_long("a.rs", &long, &[]).is_some());
    assert!(too_long("a.rs", &long, &[("a.rs", "why")]).is_none());
    assert!(too_long("a.rs", &"x\n".repeat(MAX_LINES), &[]).is_none());
    assert_eq!(ignored_tests("a.rs", "#[test]\n    #[ignore = \"slow\"]\nfn t() {}\n").len(), 1);
    assert_eq!(prints("a.rs", "fn f() { println!(\"x\"); }\n// println!( in a comment\n").len(), 1);
    assert_eq!(
        prints("a.rs", "fn f() {}\n#[cfg(test)]\nmod t { fn s() { eprintln!(\"skipped\"); } }\n").len(),
        0
    );
    let item = "#[cfg(test)]\nfn h() {}\nfn f() { println!(\"x\"); }\n";
    assert_eq!(prints("a.rs", item).len(), 1, "a cfg(test) item does not end the code");
    let deps = workspace_deps(
        "[package]\nname = \"medsa-model\"\n[dependencies]\nmedsa-core.workspace = true\nmedsa-ref = { path = \"x\" }\n\
         [dev-dependencies]\nmedsa-testkit.workspace = true\n[lints]\nworkspace = true\n",
    );
    assert_eq!(
        deps,
        vec![("medsa-core".into(), false), ("medsa-ref".into(), false), ("medsa-testkit".into(), true)]
    );
    assert_eq!(layering("medsa-model", &deps).len(), 1, "medsa-ref as a normal dependency");
    assert_eq!(layering("medsa-core", &[("medsa-model".into(), false)]).len(), 1, "upwards");
    assert_eq!(layering("medsa-io", &[("medsa-ref".into(), true)]).len(), 1, "sideways");
    assert_eq!(layering("medsa-new", &[]).len(), 1, "unknown crate");
    assert_eq!(package_name("[package]\nname = \"medsa-io\"\n").as_deref(), Some("medsa-io"));
}
