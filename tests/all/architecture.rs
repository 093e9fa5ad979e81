//! The shape of the host's code, as `docs/architecture.md` describes it: no module imports one
//! that imports it back (the OpenAPI document naming its handlers excepted), no source file
//! over about 500 lines, no function over about 80 unless it reads better whole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Functions that read better whole: a list of metric definitions.
const LONG_BY_DESIGN: &[&str] = &["metrics/mod.rs::new"];

fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = crate::common::root().join("host/src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            // Unit tests are not part of a module's size or its imports.
            let code = text.split("\n#[cfg(test)]").next().unwrap().to_owned();
            (rel, code)
        })
        .collect()
}

/// `http/tools.rs` → `http::tools`, `http/mod.rs` → `http`, `main.rs` → none.
fn module_of(rel: &str) -> Option<String> {
    let path = rel.strip_suffix(".rs")?;
    let path = path.strip_suffix("/mod").unwrap_or(path);
    (path != "main" && path != "lib").then(|| path.replace('/', "::"))
}

/// The modules a file names through `crate::` or `super::` paths, outside comments (a module
/// naming its own ancestors is not counted: that is how children reach their parent's items).
fn imports(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let mut out = BTreeSet::new();
    for line in code.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
        for (prefix, base) in [("crate::", ""), ("super::", parent)] {
            for (i, _) in line.match_indices(prefix) {
                // The longest known module the path names.
                let mut name = base.to_owned();
                for segment in line[i + prefix.len()..].split("::") {
                    let ident: String = segment.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    let candidate = if name.is_empty() { ident.clone() } else { format!("{name}::{ident}") };
                    if ident.is_empty() || !known.contains(&candidate) {
                        break;
                    }
                    name = candidate;
                }
                if !name.is_empty() && name != module && !module.starts_with(&format!("{name}::")) {
                    out.insert(name);
                }
            }
        }
    }
    out
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let files = sources();
    let known: BTreeSet<String> = files.iter().filter_map(|(rel, _)| module_of(rel)).collect();
    let graph: BTreeMap<String, BTreeSet<String>> = files
        .iter()
        .filter_map(|(rel, code)| module_of(rel).map(|m| (m.clone(), imports(&m, code, &known))))
        .collect();
    // The exception: the OpenAPI document lists the handlers it describes.
    let allowed = |from: &str, to: &str| from == "http::openapi" && to.starts_with("http::");
    let mut cycles = Vec::new();
    for (a, deps) in &graph {
        for b in deps.iter().filter(|b| !allowed(a, b)) {
            // Is `a` reachable from `b`?
            let mut seen = BTreeSet::new();
            let mut todo = vec![b.clone()];
            while let Some(m) = todo.pop() {
                if !seen.insert(m.clone()) {
                    continue;
                }
                for next in graph.get(&m).into_iter().flatten().filter(|n| !allowed(&m, n)) {
                    if next == a {
                        cycles.push(format!("{a} -> {b} -> ... -> {a}"));
                    }
                    todo.push(next.clone());
                }
            }
        }
    }
    assert!(graph.get("metrics").is_some_and(|d| !d.contains("runtime")), "metrics takes outcomes, not runtime types");
    assert!(graph.get("config").is_some_and(|d| !d.contains("runtime") && !d.contains("export")), "defaults live with the configuration");
    assert!(graph.get("runtime").is_some_and(|d| d.contains("config")), "the check must see the imports it looks for");
    assert!(cycles.is_empty(), "import circles:\n{}", cycles.join("\n"));
}

#[test]
fn files_and_functions_stay_readable() {
    let mut long = Vec::new();
    for (rel, code) in sources() {
        let lines: Vec<&str> = code.lines().collect();
        if lines.len() > 520 {
            long.push(format!("{rel}: {} lines", lines.len()));
        }
        let mut i = 0;
        while i < lines.len() {
            let l = lines[i].trim_start();
            let is_fn = ["fn ", "pub fn ", "pub(crate) fn ", "pub(super) fn ", "async fn ", "pub async fn ", "pub(crate) async fn ", "pub(super) async fn "]
                .iter()
                .any(|p| l.starts_with(p));
            if is_fn && !lines[i].trim_end().ends_with(';') {
                let name: String = l.split("fn ").nth(1).unwrap().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let (mut depth, mut opened, mut j) = (0i32, false, i);
                while j < lines.len() {
                    depth += lines[j].matches('{').count() as i32 - lines[j].matches('}').count() as i32;
                    opened |= lines[j].contains('{');
                    if opened && depth <= 0 {
                        break;
                    }
                    j += 1;
                }
                let len = j - i + 1;
                if len > 85 && !LONG_BY_DESIGN.contains(&format!("{rel}::{name}").as_str()) {
                    long.push(format!("{rel}:{} fn {name}: {len} lines", i + 1));
                }
                i = j;
            }
            i += 1;
        }
    }
    assert!(long.is_empty(), "too long to read at once:\n{}", long.join("\n"));
}
