//! Every dependency in Cargo.toml is used: named in the code (`crate_name::…`, `use crate_name`), or on the
//! short list below of dependencies that are there only to set a feature, each with its reason.

use std::path::Path;

/// Dependencies no code names: they switch a feature on in the dependency graph.
const FEATURE_ONLY: &[(&str, &str)] = &[
    ("getrandom_03", "candle's getrandom 0.3 needs its wasm_js backend on wasm32"),
    ("getrandom_04", "zip's (and tokenizers') getrandom 0.4 needs its wasm_js backend on wasm32"),
    ("gemm-common", "gemm's simd128 kernels are off on wasm32 unless this feature asks for them"),
];

/// `(name as written in Cargo.toml, section)` of every dependency, build-dependencies aside.
fn dependencies(manifest: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut found = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let in_deps = section.ends_with("dependencies]") && !section.contains("build-dependencies");
        if in_deps && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                found.push((name.trim().to_string(), section.clone()));
            }
        }
    }
    found
}

fn sources(dir: &Path, out: &mut String) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push_str(&std::fs::read_to_string(&path).unwrap());
            out.push('\n');
        }
    }
}

/// Whether the code names `krate` as a path root (`krate::`, `use krate`, `krate!`).
fn named(code: &str, krate: &str) -> bool {
    code.match_indices(krate).any(|(i, _)| {
        let before = code[..i].chars().last();
        let after = &code[i + krate.len()..];
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            && (after.starts_with("::") || after.starts_with(';') || after.starts_with(" as ") || after.starts_with('!'))
    })
}

#[test]
fn every_dependency_is_used() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let mut code = String::new();
    for dir in ["src", "tests", "benches", "examples"] {
        sources(&root.join(dir), &mut code);
    }
    let deps = dependencies(&manifest);
    assert!(deps.len() > 20, "Cargo.toml's dependencies were not found: {deps:?}");
    let unused: Vec<String> = deps
        .iter()
        .filter(|(name, _)| !FEATURE_ONLY.iter().any(|(f, _)| f == name))
        .filter(|(name, _)| !named(&code, &name.replace('-', "_")))
        .map(|(name, section)| format!("{name} (in {section})"))
        .collect();
    assert!(unused.is_empty(), "dependencies nothing uses (remove them, or list why in FEATURE_ONLY): {unused:?}");
    for (name, _) in FEATURE_ONLY {
        assert!(deps.iter().any(|(d, _)| d == name), "FEATURE_ONLY names {name}, which Cargo.toml no longer has");
    }
}

#[test]
fn an_unused_dependency_is_seen() {
    let manifest = "[dependencies]\nanyhow = \"1\"\nthiserror = \"2\"\n# note = 1\n[build-dependencies]\ncc = \"1\"\n";
    let deps: Vec<String> = dependencies(manifest).into_iter().map(|(n, _)| n).collect();
    assert_eq!(deps, ["anyhow", "thiserror"]);
    let code = "use anyhow::Result;\nfn f() -> my_thiserror::X { not_thiserror() }";
    assert!(named(code, "anyhow"));
    assert!(!named(code, "thiserror"));
}
