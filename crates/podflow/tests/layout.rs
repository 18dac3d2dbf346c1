//! The architecture, checked: which crate may depend on which (from `cargo metadata`),
//! what the pure crates must not pull in (from `cargo tree`), and no two modules of a
//! crate importing each other, directly or in a circle.
//!
//! A new edge between podflow's crates is a design decision: add it to [`ALLOWED`] in
//! the same commit, with the reason in README's *Layout*.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every podflow crate and the podflow crates it may depend on (normal dependencies).
/// Dependencies point one way: binary → roles → api / pipeline / store / enrich /
/// inventory / sources → model.
const ALLOWED: &[(&str, &[&str])] = &[
    ("podflow-model", &[]),
    ("podflow-conntrack", &["podflow-model"]),
    ("podflow-netflow", &["podflow-model"]),
    ("podflow-inventory", &["podflow-model"]),
    ("podflow-proto", &["podflow-model"]),
    ("podflow-enrich", &["podflow-model", "podflow-inventory"]),
    ("podflow-store", &["podflow-model"]),
    ("podflow-pipeline", &["podflow-model", "podflow-netflow"]),
    // The cost endpoints price the store's sums when queried (enrich's bill).
    (
        "podflow-api",
        &["podflow-enrich", "podflow-model", "podflow-store"],
    ),
    (
        "podflow-role",
        &[
            "podflow-api",
            "podflow-conntrack",
            "podflow-inventory",
            "podflow-model",
            "podflow-netflow",
            "podflow-pipeline",
            "podflow-store",
        ],
    ),
    (
        "podflow-agent",
        &[
            "podflow-api",
            "podflow-conntrack",
            "podflow-inventory",
            "podflow-model",
            "podflow-probe",
            "podflow-proto",
            "podflow-role",
        ],
    ),
    (
        "podflow-server",
        &[
            "podflow-api",
            "podflow-enrich",
            "podflow-inventory",
            "podflow-model",
            "podflow-netflow",
            "podflow-pipeline",
            "podflow-probe",
            "podflow-proto",
            "podflow-role",
            "podflow-store",
        ],
    ),
    (
        "podflow",
        &[
            "podflow-agent",
            "podflow-api",
            "podflow-conntrack",
            "podflow-enrich",
            "podflow-impair",
            "podflow-model",
            "podflow-pipeline",
            "podflow-probe",
            "podflow-role",
            "podflow-server",
            "podflow-store",
        ],
    ),
    ("podflow-probe", &[]),
    ("podflow-impair", &[]),
    ("podflow-testkit", &[]),
];

/// External crates only one podflow crate may import directly.
const OWNERS: &[(&str, &[&str])] = &[
    // The Kubernetes client: only the inventory talks to the API server. The binary
    // names the k8s-openapi version (a library that does makes its build script panic).
    ("kube", &["podflow-inventory"]),
    ("k8s-openapi", &["podflow-inventory", "podflow"]),
    // Database drivers: only the store.
    ("rusqlite", &["podflow-store"]),
    ("clickhouse", &["podflow-store"]),
];

/// Crates a pure crate must not have anywhere in its normal dependency tree.
const PURE: &[(&str, &[&str])] = &[
    ("podflow-model", &["tokio", "nix", "podflow-conntrack"]),
    (
        "podflow-pipeline",
        &["tokio", "nix", "podflow-conntrack", "rusqlite"],
    ),
    ("podflow-netflow", &["tokio", "nix"]),
    ("podflow-enrich", &["tokio", "nix"]),
    ("podflow-api", &["podflow-conntrack", "nix", "tonic"]),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cargo(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// (package, its normal dependencies by name) for every workspace member.
fn members() -> BTreeMap<String, BTreeSet<String>> {
    let meta: serde_json::Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--offline",
    ]))
    .expect("cargo metadata JSON");
    let mut out = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().expect("name").to_string();
        let deps = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().expect("dep name").to_string())
            .collect();
        out.insert(name, deps);
    }
    out
}

#[test]
fn crates_depend_only_along_the_allowed_edges() {
    let members = members();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    for (name, deps) in &members {
        let Some(ok) = allowed.get(name.as_str()) else {
            panic!("{name} is not in tests/layout.rs ALLOWED: add it with its allowed edges");
        };
        for d in deps.iter().filter(|d| d.starts_with("podflow")) {
            assert!(
                ok.contains(&d.as_str()),
                "{name} depends on {d}, an edge tests/layout.rs does not allow"
            );
        }
        for (ext, owners) in OWNERS {
            assert!(
                !deps.contains(*ext) || owners.contains(&name.as_str()),
                "{name} imports {ext}; only {owners:?} may"
            );
        }
    }
    for (name, _) in ALLOWED {
        assert!(members.contains_key(*name), "{name} is no longer a member");
    }
}

#[test]
fn pure_crates_pull_in_no_runtime_sockets_or_sources() {
    for (name, banned) in PURE {
        // `cargo tree -p` resolves features for this package alone, as its users see it.
        let tree = cargo(&[
            "tree",
            "-p",
            name,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ]);
        let crates: BTreeSet<&str> = tree
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for b in *banned {
            assert!(
                !crates.contains(b),
                "{name} pulls in {b} (cargo tree -p {name} -e normal -i {b} says how)"
            );
        }
    }
}

/// Rust source with comments, strings and `#[cfg(test)]` items blanked out.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &src[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |e| e + 2);
        } else if let Some(raw) = rest.strip_prefix("r#\"") {
            i += 3 + raw.find("\"#").map_or(raw.len(), |e| e + 2);
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if rest.starts_with("'")
            && rest.len() > 3
            && (rest.as_bytes()[2] == b'\'' || rest.starts_with("'\\"))
        {
            // A char literal ('x', '\n', '\''); lifetimes have no closing quote.
            let end = rest[2..].find('\'').map_or(1, |e| e + 3);
            i += end;
        } else if rest.starts_with("#[cfg(test)]") {
            // Skip the attribute and the item after it, up to its closing brace or `;`.
            let mut j = i + "#[cfg(test)]".len();
            let mut depth = 0usize;
            while j < b.len() {
                match b[j] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            j += 1;
                            break;
                        }
                    }
                    b';' if depth == 0 => {
                        j += 1;
                        break;
                    }
                    _ => {}
                }
                j += 1;
            }
            i = j;
        } else {
            let c = rest.chars().next().expect("a char");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The names a piece of code reaches through `crate::` (`crate::a::b`, `crate::{a, b::c}`).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `podflow_crate::` or similar
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && (c.is_alphanumeric() || c == '_' || c == ':') {
                    item.push(c);
                } else if depth == 0 && c.is_whitespace() {
                    continue;
                }
            }
            out.insert(item);
        } else {
            out.insert(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out.into_iter()
        .map(|p| p.split("::").next().unwrap_or_default().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Top-level module name → the top-level modules it imports, for one crate's `src/`.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let root = ["lib.rs", "main.rs"]
        .iter()
        .map(|f| src.join(f))
        .find(|p| p.exists());
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") || Some(&p) == root.as_ref() {
                continue;
            }
            let rel = p.strip_prefix(src).expect("under src");
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .unwrap_or_default()
                .trim_end_matches(".rs")
                .to_string();
            files.entry(top).or_default().push(p);
        }
    }
    // Items the root re-exports (`pub use m::{A, B}`) lead to their module.
    let mut reexports: BTreeMap<String, String> = BTreeMap::new();
    if let Some(root) = &root {
        let code = code_only(&std::fs::read_to_string(root).expect("root"));
        for stmt in code.split(';') {
            let stmt = stmt.trim();
            let Some(path) = stmt
                .strip_prefix("pub use ")
                .map(|p| p.trim_start_matches("self::"))
            else {
                continue;
            };
            let Some((module, items)) = path.split_once("::") else {
                continue;
            };
            if !files.contains_key(module) {
                continue;
            }
            for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
                let name = item.rsplit("::").next().unwrap_or_default().trim();
                let name = name.rsplit(" as ").next().unwrap_or(name).trim();
                reexports.insert(name.to_string(), module.to_string());
            }
        }
    }
    let mut graph = BTreeMap::new();
    for (module, paths) in &files {
        let mut deps = BTreeSet::new();
        for p in paths {
            let code = code_only(&std::fs::read_to_string(p).expect("source"));
            for name in crate_paths(&code) {
                let target = if files.contains_key(&name) {
                    Some(name)
                } else {
                    reexports.get(&name).cloned()
                };
                if let Some(t) = target.filter(|t| t != module) {
                    deps.insert(t);
                }
            }
        }
        graph.insert(module.clone(), deps);
    }
    graph
}

/// A circle in `graph`, if there is one.
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    let crates = workspace().join("crates");
    let mut checked = 0;
    for e in std::fs::read_dir(&crates).expect("crates/") {
        let src = e.expect("entry").path().join("src");
        if !src.is_dir() {
            continue;
        }
        let graph = module_graph(&src);
        if let Some(c) = find_circle(&graph) {
            panic!(
                "{}: modules import each other: {}",
                src.display(),
                c.join(" → ")
            );
        }
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} crates found under crates/");
}

#[test]
fn the_circle_finder_finds_circles_and_only_those() {
    let src = "use crate::{a::X, b};\nfn f() { crate::c::g(); }\n#[cfg(test)]\nmod tests { use crate::d; }\n// crate::e\nconst S: &str = \"crate::f\";";
    assert_eq!(
        crate_paths(&code_only(src)),
        ["a", "b", "c"].map(String::from).into()
    );
    let g = |edges: &[(&str, &str)]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            m.entry(a.to_string()).or_default().insert(b.to_string());
            m.entry(b.to_string()).or_default();
        }
        m
    };
    assert_eq!(find_circle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert_eq!(
        find_circle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
}
