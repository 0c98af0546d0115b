//! The layer rule of ARCHITECTURE.md, checked on the sources: a module imports only modules of lower layers
//! (within a module anything goes), and the two apps do not import each other.

use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and its layer, lowest first.
const LAYERS: &[(&str, u32)] = &[
    ("config", 0),
    ("util", 0),
    ("tokenize", 1),
    ("preprocess", 1),
    ("bundle", 1),
    ("weights", 2),
    ("search", 2),
    ("model", 3),
    ("embed", 4),
    ("index", 5),
    ("db", 5),
    ("gallery", 6),
    ("quantize", 6),
    ("fetch", 6),
    ("serve", 6),
    ("apps", 7),
    ("web", 8),
    ("bin", 8),
];

fn layer(module: &str) -> u32 {
    LAYERS.iter().find(|(m, _)| *m == module).unwrap_or_else(|| panic!("src/{module}: no layer in LAYERS (add it)")).1
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a source file belongs to (`model` for src/model/q8/mod.rs, `apps::site` for src/apps/site.rs).
fn owner(src: &Path, file: &Path) -> (String, Option<String>) {
    let parts: Vec<String> =
        file.strip_prefix(src).unwrap().with_extension("").iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let sub = (parts[0] == "apps" && parts.len() > 1 && parts[1] != "mod").then(|| parts[1].clone());
    (parts[0].clone(), sub)
}

/// Every `crate::a::b` (or `tuwen::a::b` in the CLI) path outside comments: `(a, b)`.
fn imports(code: &str, root: &str) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap();
        let mut rest = line;
        while let Some(i) = rest.find(&format!("{root}::")) {
            let before = rest[..i].chars().last();
            rest = &rest[i + root.len() + 2..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let mut names = rest.split("::").map(|s| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>());
            let first = names.next().unwrap_or_default();
            if !first.is_empty() {
                found.push((first, names.next().filter(|s| !s.is_empty())));
            }
        }
    }
    found
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // lib.rs re-exports: `crate::Encoder` is embed's, `crate::Towers` config's.
    let reexported = |name: &str| match name {
        "Encoder" | "ModelInfo" => Some("embed"),
        "Towers" => Some("config"),
        _ => None,
    };
    let mut wrong = Vec::new();
    for file in &files {
        let (module, sub) = owner(&src, file);
        if module == "lib" {
            continue;
        }
        let code = std::fs::read_to_string(file).unwrap();
        let root = if module == "bin" { "tuwen" } else { "crate" };
        for (target, target_sub) in imports(&code, root) {
            if target == module {
                if module == "apps" && sub.is_some() && target_sub.is_some() && sub != target_sub {
                    wrong.push(format!("{}: apps::{} imports apps::{}", file.display(), sub.as_ref().unwrap(), target_sub.unwrap()));
                }
                continue;
            }
            let target_layer = layer(reexported(&target).unwrap_or(&target));
            if target_layer >= layer(&module) {
                wrong.push(format!("{}: {module} (layer {}) imports {target} (layer {target_layer})", file.display(), layer(&module)));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that do not look down:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_an_upward_import() {
    let code = "use crate::apps::teddy::write_results; // crate::bin in a comment\nlet x = crate::gallery::files::read_pairs;";
    let found = imports(code, "crate");
    assert_eq!(found, vec![("apps".into(), Some("teddy".into())), ("gallery".into(), Some("files".into()))]);
    assert!(layer("apps") > layer("gallery") && layer("gallery") > layer("embed") && layer("embed") > layer("model"));
}
