//! The shape of `src/`: dependencies between modules run one way. Reads every source file's
//! `crate::…` and `super::…` paths (comments and `#[cfg(test)]` modules left out) and checks that no module
//! reaches one above it, and that no modules, top-level or one level down, form a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What each top-level module may not use: the layers above it.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "domain",
        &[
            "store", "schema", "events", "api", "delivery", "http", "app", "cli", "tools",
        ],
    ),
    (
        "store",
        &[
            "schema", "events", "api", "delivery", "http", "app", "cli", "tools",
        ],
    ),
    (
        "schema",
        &["events", "api", "delivery", "http", "app", "cli", "tools"],
    ),
    (
        "events",
        &["api", "delivery", "http", "app", "cli", "tools"],
    ),
    ("api", &["http", "app", "cli", "tools"]),
    (
        "delivery",
        &["schema", "events", "api", "http", "app", "cli", "tools"],
    ),
    ("http", &["app", "cli", "tools", "delivery"]),
    ("app", &["cli", "tools"]),
];

/// The module path of a source file: `src/events/writer/mod.rs` is `events::writer`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The text of a file without comments and without its test module.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules named by `crate::a::b…` paths in `code`, `depth` segments deep, and by
/// `crate::{a, b}` groups (first segment only).
fn used(code: &str, depth: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
            continue;
        }
        let path: Vec<&str> = rest
            .split("::")
            .map(|segment| {
                let end = segment
                    .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(segment.len());
                &segment[..end]
            })
            .take_while(|segment| !segment.is_empty())
            .take(depth)
            .collect();
        if !path.is_empty() {
            found.insert(path.join("::"));
        }
    }
    found
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// Edges between modules `depth` segments deep (a module's own inner paths left out).
fn graph(depth: usize) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        if module.is_empty() {
            continue;
        }
        let me = module[..module.len().min(depth)].join("::");
        let code = code_of(&file);
        let mut targets = used(&code, depth);
        // `super::x` names a sibling of this module: `crate::<parent>::x`.
        let parent = module[..module.len() - 1].join("::");
        if !parent.is_empty() {
            let relative = code.replace("super::", &format!("crate::{parent}::"));
            targets.extend(used(&relative, depth));
        }
        for target in targets {
            let is_modules_own = me == target || me.starts_with(&format!("{target}::"));
            if !is_modules_own {
                edges.entry(me.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

/// A cycle among `edges`, if there is one.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|seen| seen == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|node| visit(node, edges, &mut Vec::new(), &mut done))
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let edges = graph(1);
    let mut wrong = Vec::new();
    for (module, above) in FORBIDDEN {
        for target in edges.get(*module).into_iter().flatten() {
            if above.contains(&target.as_str()) {
                wrong.push(format!("{module} uses {target}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn no_modules_form_a_cycle() {
    for depth in [1, 2] {
        let edges = graph(depth);
        assert!(edges.len() >= 8, "the sources were read: {edges:?}");
        if let Some(found) = cycle(&edges) {
            panic!("a cycle of modules: {}", found.join(" -> "));
        }
    }
}
