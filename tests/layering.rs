//! The crate's layers point one way (DESIGN.md §2): the broker sits on top, and the modules below
//! it — registry, middleware, metrics, transports, codec, identity — never name it. This test
//! reads `src/`, builds the graph of `crate::` references between top-level modules, and fails on
//! an upward reference or any cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that sit on top of everything else: the broker, and what drives one (the CLI, the
/// HTTP gateway, the cluster monitor).
const TOP: [&str; 4] = ["broker", "cli", "gateway", "monitor"];

/// Top-level module → the top-level modules its files name through `crate::`.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        let targets = graph.entry(module.clone()).or_default();
        for target in crate_references(&strip_comments(&text)) {
            if target != module {
                targets.insert(target);
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The source without `//` comments (doc comments name modules in links and examples).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment after every `crate::`, including each one in `crate::{a, b::c}`.
fn crate_references(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            found.extend(group.split(',').map(ident));
        } else {
            found.insert(ident(rest));
        }
    }
    // Items at the crate root (`crate::Error`) are re-exports, not modules.
    found.retain(|name| name.starts_with(|c: char| c.is_ascii_lowercase()));
    found
}

#[test]
fn no_module_below_the_broker_imports_it() {
    let graph = import_graph();
    assert!(graph.contains_key("broker") && graph.contains_key("transport"));
    let upward: Vec<String> = graph
        .iter()
        .filter(|(module, _)| !TOP.contains(&module.as_str()))
        .flat_map(|(module, targets)| {
            targets
                .iter()
                .filter(|t| TOP.contains(&t.as_str()))
                .map(move |t| format!("{module} -> {t}"))
        })
        .collect();
    assert!(
        upward.is_empty(),
        "lower modules import the top: {upward:?}"
    );
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = import_graph();
    // Depth-first search; a grey node met again closes a cycle.
    fn visit<'g>(
        node: &'g str,
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'g str>,
        done: &mut BTreeSet<&'g str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        let cycle = visit(module, &graph, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "import cycle: {}",
            cycle.unwrap().join(" -> ")
        );
    }
}

#[test]
fn the_scanner_sees_grouped_and_nested_paths() {
    let refs = crate_references(
        "use crate::{error::Result, packet};\nlet x = crate::broker::Broker::new(); crate::Error",
    );
    let want: BTreeSet<String> = ["broker", "error", "packet"].map(String::from).into();
    assert_eq!(refs, want);
}
