//! The core's top modules import each other one way (docs/architecture.md, "Which core
//! module may import which"): read from the `crate::` paths of the sources, unit tests and
//! comments left out. The crate's `Error` is no exception: it wraps the errors of the leaf
//! modules (`package`, `inventory`, `fetch`, `source`, `render`) that never return it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top module of `src`, with the top modules its code names through `crate::`.
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let first = rel.components().next().expect("a component");
            let first = first.as_os_str().to_string_lossy();
            let module = first.strip_suffix(".rs").unwrap_or(&first).to_string();
            if module == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            let names = graph.entry(module.clone()).or_default();
            for name in crate_paths(&text) {
                if name != module {
                    names.insert(name);
                }
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for names in graph.values_mut() {
        names.retain(|n| modules.contains(n));
    }
    graph
}

/// The first segment of every `crate::` path in `text` (a group `crate::{a, b::c}` gives
/// each), before its unit tests, comments left out.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let code: String = code
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or_default();
            names.extend(group.split(',').map(ident));
        } else {
            names.insert(ident(rest));
        }
    }
    names.retain(|n| n.starts_with(|c: char| c.is_ascii_lowercase()));
    names
}

/// A path of imports from `from` back to itself, if there is one.
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![vec![from.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().expect("non-empty");
        for next in graph.get(last).into_iter().flatten() {
            if next == from {
                let mut cycle = path.clone();
                cycle.push(next.clone());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn the_core_modules_import_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = imports(&src);
    for module in [
        "model",
        "load",
        "resolve",
        "render",
        "plan",
        "pipeline",
        "diff",
        "report",
        "error",
        "fetch",
        "inventory",
        "expand",
    ] {
        assert!(
            graph.contains_key(module),
            "no module {module} in {graph:?}"
        );
    }
    for module in graph.keys() {
        if let Some(cycle) = cycle_through(&graph, module) {
            panic!("an import cycle: {}", cycle.join(" -> "));
        }
    }
    // The presenter knows plans and plugins, not how revisions are made or compared.
    for above in ["pipeline", "diff"] {
        assert!(!graph["report"].contains(above), "report imports {above}");
    }
    // The stages return the crate's `Error`; the modules it wraps must not.
    for wrapped in ["package", "inventory", "fetch", "source", "render"] {
        assert!(
            !graph[wrapped].contains("error"),
            "{wrapped} imports error, which wraps its errors"
        );
    }
    assert!(
        graph["model"].is_empty(),
        "model imports {:?}",
        graph["model"]
    );
}

#[test]
fn a_cycle_is_found() {
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(
        cycle_through(&graph, "a").map(|c| c.join(" -> ")),
        Some("a -> b -> c -> a".to_string())
    );
    assert_eq!(
        crate_paths("use crate::{model::X, plan};\n// crate::diff\nlet x = crate::render::y;"),
        BTreeSet::from(["model".into(), "plan".into(), "render".into()])
    );
}
