//! The layer rule of `ARCHITECTURE.md`, checked on the source: every `crate::` path in a
//! module points to a module of a lower layer, and no two sibling files of one module use
//! each other in a cycle.
//!
//! The check reads the layer table from `ARCHITECTURE.md` itself, so that the documented rule
//! and the enforced one cannot drift apart. It also runs on planted sources, to show that an
//! upward import and a sibling cycle are caught.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `module -> layer`, from the table's rows `| n | name | `a`, `b` | ... |`.
fn layers(architecture: &str) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for line in architecture.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 {
            continue;
        }
        let Ok(layer) = cells[1].parse::<u32>() else {
            continue;
        };
        for m in cells[3].split(',') {
            let m = m.trim().trim_matches('`');
            if !m.is_empty() {
                out.insert(m.to_string(), layer);
            }
        }
    }
    out
}

/// Source text without comments and string literals, where paths in prose would otherwise
/// count as imports.
fn code_only(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

/// Top-level modules a file's code refers to through `crate::`, including grouped imports
/// (`use crate::{a::X, b}`).
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Sibling files a file refers to through `super::name` (a file `a/b.rs` has siblings
/// `a/*.rs`) or `crate::<top>::name`.
fn sibling_refs(code: &str, top: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let prefix = format!("crate::{top}::");
    for p in ["super::".to_string(), prefix] {
        let mut rest = code;
        while let Some(at) = rest.find(p.as_str()) {
            rest = &rest[at + p.len()..];
            let names: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect()
            } else {
                vec![rest.to_string()]
            };
            for n in names {
                let name: String = n
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if siblings.contains(&name) {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// Every violation in `files` (`path relative to src/ -> source`) under `layers`.
fn violations(files: &BTreeMap<String, String>, layers: &BTreeMap<String, u32>) -> Vec<String> {
    let mut out = Vec::new();
    // Direct children of each module directory, for the sibling check.
    let mut dirs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (path, src) in files {
        let top = path.split('/').next().unwrap_or("").trim_end_matches(".rs");
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(&mine) = layers.get(top) else {
            out.push(format!(
                "{path}: module `{top}` is in no layer of ARCHITECTURE.md"
            ));
            continue;
        };
        let code = code_only(src);
        for r in crate_refs(&code) {
            if r == top {
                continue;
            }
            match layers.get(&r) {
                Some(&theirs) if theirs < mine => {}
                Some(&theirs) => out.push(format!(
                    "{path}: `{top}` (layer {mine}) uses `{r}` (layer {theirs}): imports must point down"
                )),
                None => out.push(format!("{path}: uses `{r}`, which is in no layer")),
            }
        }
        if let Some((dir, file)) = path.rsplit_once('/') {
            dirs.entry(dir.to_string())
                .or_default()
                .insert(file.trim_end_matches(".rs").to_string(), BTreeSet::new());
        }
    }
    for (dir, children) in dirs.iter_mut() {
        let names: BTreeSet<String> = children.keys().cloned().collect();
        let top = dir.split('/').next().unwrap_or("").to_string();
        for (name, refs) in children.iter_mut() {
            let src = &files[&format!("{dir}/{name}.rs")];
            *refs = sibling_refs(&code_only(src), &top, &names);
            refs.remove(name);
        }
        for a in children.keys() {
            for b in &children[a] {
                if a < b && children.get(b).is_some_and(|r| r.contains(a)) {
                    out.push(format!("{dir}: `{a}` and `{b}` use each other"));
                }
            }
        }
    }
    out
}

fn sources(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn imports_point_down_the_layers_of_architecture_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = layers(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    assert!(table.len() >= 20, "layer table not found: {table:?}");
    let files = sources(&root.join("src"));
    let v = violations(&files, &table);
    assert!(v.is_empty(), "layer rule broken:\n{}", v.join("\n"));
}

#[test]
fn planted_upward_imports_and_cycles_are_caught() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let table = layers(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    let mut files = sources(&root.join("src"));
    // The detectors reaching up into the pipeline, as `SKETCH_DIM` once made them.
    files
        .get_mut("detect/coverage.rs")
        .unwrap()
        .push_str("\nfn planted() -> usize { crate::pipeline::SWEEP_EVERY as usize }\n");
    // A grouped import from the vocabulary up into the alert sinks.
    files
        .get_mut("vocab.rs")
        .unwrap()
        .push_str("\nuse crate::{alert::Dispatcher};\n");
    // Two sibling decoders importing each other for a constant.
    files
        .get_mut("exchange/route.rs")
        .unwrap()
        .push_str("\nuse super::decode::DecodeError;\n");
    files
        .get_mut("exchange/decode.rs")
        .unwrap()
        .push_str("\nuse super::route::MODEL_INFER_PATH;\n");
    // Mentions in comments and strings are not imports.
    files
        .get_mut("hash.rs")
        .unwrap()
        .push_str("\n// crate::cli::main\nconst S: &str = \"crate::sidecar\";\n");
    let v = violations(&files, &table);
    assert!(
        v.iter()
            .any(|m| m.contains("`detect` (layer 4) uses `pipeline` (layer 5)")),
        "{v:?}"
    );
    assert!(
        v.iter()
            .any(|m| m.contains("`vocab` (layer 0) uses `alert`")),
        "{v:?}"
    );
    assert!(
        v.iter()
            .any(|m| m.contains("exchange: `decode` and `route` use each other")),
        "{v:?}"
    );
    assert_eq!(v.len(), 3, "{v:?}");
}
