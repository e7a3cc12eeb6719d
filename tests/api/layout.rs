//! The layout shows the architecture: each top-level module of `src/` imports only modules
//! below it, so the modules' imports have no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the top-level modules it names through `crate::`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(
                std::fs::read_dir(&path)
                    .expect("src/")
                    .map(|e| e.expect("entry").path()),
            );
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(&src).expect("under src/");
        let first = relative.components().next().expect("a name");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let text = std::fs::read_to_string(&path).expect("a source file");
        let named = graph.entry(module.clone()).or_default();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                // `use crate::{a, b::c};`
                Some(list) => list
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(|n| n.trim().split("::").next().unwrap_or(""))
                    .collect(),
                None => vec![
                    rest.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                        .next()
                        .unwrap_or(""),
                ],
            };
            for name in names {
                if !name.is_empty() && name != module {
                    named.insert(name.to_owned());
                }
            }
        }
    }
    graph
}

#[test]
fn no_module_of_src_imports_a_module_that_imports_it_back() {
    let graph = imports();
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut next = vec![from.to_owned()];
        while let Some(module) = next.pop() {
            for named in graph.get(&module).into_iter().flatten() {
                if named == to {
                    return true;
                }
                if seen.insert(named.clone()) {
                    next.push(named.clone());
                }
            }
        }
        false
    };
    let cycles: Vec<(&String, &String)> = graph
        .iter()
        .flat_map(|(module, named)| named.iter().map(move |n| (module, n)))
        .filter(|(module, named)| reaches(named, module))
        .collect();

    assert!(
        graph.contains_key("service") && graph["service"].contains("db"),
        "the graph is read: {graph:?}"
    );
    assert!(cycles.is_empty(), "imports that come back: {cycles:?}");
    for bottom in ["domain", "metrics", "config"] {
        let above: Vec<_> = graph[bottom]
            .iter()
            .filter(|n| !["domain", "config"].contains(&n.as_str()))
            .collect();
        assert!(above.is_empty(), "{bottom} imports {above:?}");
    }
}
