//! The import graph of a crate's modules, read from its source: which
//! module uses which (`crate::…`, `super::…`, `self::…` paths), so a test can
//! check that dependencies run one way.
//!
//! A module is a file: `src/a.rs` and `src/a/mod.rs` are `a`, `src/a/b.rs`
//! is `a::b`. A path is resolved to the longest module it names. Comments
//! and `#[cfg(test)]` code (from the attribute to the end of the file) are
//! left out; `mod x;` declarations are ownership, not use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → the modules it uses.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Reads the modules under `src` (a crate's `src/` folder; `lib.rs` and
/// `main.rs` are the root, `""`).
pub fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    collect(src, src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut graph = Graph::new();
    for (module, text) in &files {
        let uses = graph.entry(module.clone()).or_default();
        for path in paths(text) {
            let Some(absolute) = absolute(module, &path) else { continue };
            // The longest prefix of the path that is a module.
            let mut segments: Vec<&str> = absolute.split("::").filter(|s| !s.is_empty()).collect();
            let target = loop {
                let candidate = segments.join("::");
                if modules.contains(&candidate) || segments.is_empty() {
                    break candidate;
                }
                segments.pop();
            };
            if &target != module {
                uses.insert(target);
            }
        }
    }
    graph
}

/// A cycle in `graph`, if there is one, as the modules along it.
pub fn cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &Graph, done: &mut BTreeSet<String>, stack: &mut Vec<String>) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut found = stack[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, done, stack) {
                return Some(found);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

/// The uses that go against `layers` (lowest first; each a list of
/// top-level modules): a module may use modules of its own layer or lower
/// ones, never higher. Top-level modules not in any layer are not checked.
pub fn upward_uses(graph: &Graph, layers: &[&[&str]]) -> Vec<String> {
    let rank = |module: &str| {
        let top = module.split("::").next().unwrap_or_default();
        layers.iter().position(|layer| layer.contains(&top))
    };
    let mut wrong = Vec::new();
    for (from, uses) in graph {
        for to in uses {
            if let (Some(a), Some(b)) = (rank(from), rank(to))
                && b > a
            {
                wrong.push(format!("{from} uses {to}"));
            }
        }
    }
    wrong
}

/// Checks a crate's `src` against `layers` (lowest first): every module is
/// in a layer, no module uses a higher layer, and no modules use each other
/// in a cycle. Returns the graph, for further checks.
pub fn check(src: &Path, layers: &[&[&str]]) -> Graph {
    let graph = graph(src);
    for module in graph.keys().filter(|m| !m.is_empty()) {
        let top = module.split("::").next().unwrap_or_default();
        assert!(layers.iter().any(|l| l.contains(&top)), "module {module} is in no layer: add it to the layers");
    }
    assert_eq!(upward_uses(&graph, layers), Vec::<String>::new(), "uses against the layers");
    assert_eq!(cycle(&graph), None, "a cycle among the modules");
    graph
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("a source folder").flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(root, &path, files);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(root).expect("under the root").with_extension("");
        let mut segments: Vec<String> = relative.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        if matches!(segments.last().map(String::as_str), Some("mod" | "lib" | "main")) {
            segments.pop();
        }
        if segments.first().is_some_and(|s| s == "bin") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("a source file");
        files.push((segments.join("::"), text));
    }
}

/// The `crate::`, `super::` and `self::` paths in `text`, braces expanded
/// one level (`crate::a::{b, c::d}` is `crate::a::b` and `crate::a::c::d`).
fn paths(text: &str) -> Vec<String> {
    let code: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start).map(|i| from + i) {
            from = at + start.len();
            // A whole word: not `my_crate::`.
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let mut end = at;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b':')
            {
                end += 1;
            }
            let path = &code[at..end];
            if end < bytes.len() && bytes[end] == b'{' {
                let close = code[end..].find('}').map_or(code.len(), |i| end + i);
                for item in code[end + 1..close].split(',') {
                    let item = item.trim().split(' ').next().unwrap_or_default();
                    if !item.is_empty() && item != "self" {
                        found.push(format!("{path}{item}"));
                    }
                }
            }
            found.push(path.trim_end_matches(':').to_owned());
        }
    }
    found
}

/// `path`, as written in `module`, from the crate root.
fn absolute(module: &str, path: &str) -> Option<String> {
    let mut here: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    let mut segments = path.split("::").peekable();
    match segments.next()? {
        "crate" => here.clear(),
        "self" => {}
        "super" => {
            here.pop()?;
            while segments.peek() == Some(&"super") {
                segments.next();
                here.pop()?;
            }
        }
        _ => return None,
    }
    here.extend(segments);
    Some(here.join("::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_modules_and_cycles_are_found() {
        let dir = std::env::temp_dir().join(format!("agimo-layers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a")).unwrap();
        std::fs::write(dir.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
        std::fs::write(dir.join("a/mod.rs"), "mod c;\nuse self::c::X;\n").unwrap();
        std::fs::write(dir.join("a/c.rs"), "use crate::b::{Y, Z};\n// use crate::a::X;\n").unwrap();
        std::fs::write(dir.join("b.rs"), "fn f() { super::a::c::g(); }\n#[cfg(test)]\nuse crate::a;\n").unwrap();
        let g = graph(&dir);
        assert_eq!(g["a"], BTreeSet::from(["a::c".to_owned()]));
        assert_eq!(g["a::c"], BTreeSet::from(["b".to_owned()]));
        assert_eq!(g["b"], BTreeSet::from(["a::c".to_owned()]));
        assert_eq!(cycle(&g), Some(vec!["a::c".to_owned(), "b".to_owned(), "a::c".to_owned()]));
        assert_eq!(upward_uses(&g, &[&["b"], &["a"]]), ["b uses a::c"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
