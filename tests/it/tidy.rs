//! What can be checked of the architecture by reading the source: every module is on the
//! maps (lib.rs's `# Layout`, ARCHITECTURE.md's code map), and the grep-able invariants hold.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The module path of a file under `src/` (`turn/core.rs` is `turn::core`), or `None` for
/// the crate roots and unit-test files.
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root().join("src")).unwrap();
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    let is_test = parts.iter().any(|p| p == "tests");
    let is_root = parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main");
    (!is_test && !is_root).then(|| parts.join("::"))
}

fn modules() -> Vec<String> {
    sources(&root().join("src"))
        .iter()
        .filter_map(|p| module_of(p))
        .collect()
}

/// The text of ARCHITECTURE.md's code map.
fn code_map() -> String {
    let text = read(&root().join("ARCHITECTURE.md"));
    let start = text.find("## Code Map").expect("a code map");
    let end = text[start + 3..]
        .find("\n## ")
        .map_or(text.len(), |i| start + 3 + i);
    text[start..end].to_owned()
}

#[test]
fn every_top_level_module_is_in_the_layout_of_lib_rs() {
    let lib = read(&root().join("src/lib.rs"));
    let missing: Vec<String> = modules()
        .into_iter()
        .filter(|m| !m.contains("::"))
        .filter(|m| !lib.contains(&format!("//! - `{m}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "src/lib.rs's `# Layout` does not list {missing:?}"
    );
}

#[test]
fn every_module_is_named_in_the_code_map() {
    let map = code_map();
    // A module is on the map when the map names it, as a heading or in its parent's paragraph
    // (`config::turn` is part of `config`'s, for example, as `turn` under config).
    let missing: Vec<String> = modules()
        .into_iter()
        .filter(|m| {
            let last = m.rsplit("::").next().unwrap();
            let parent = m.rsplit_once("::").map(|(p, _)| p);
            let named = map.contains(&format!("`{m}`"))
                || parent.is_some_and(|p| {
                    map.contains(&format!("`{p}::{last}")) || section(&map, p).contains(last)
                });
            !named
        })
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map does not name {missing:?}"
    );
}

/// The paragraph under `### \`module\``, empty when there is none.
fn section(map: &str, module: &str) -> String {
    let heading = format!("### `{module}`");
    let Some(start) = map.find(&heading) else {
        return String::new();
    };
    let rest = &map[start + heading.len()..];
    rest[..rest.find("\n### ").unwrap_or(rest.len())].to_owned()
}

/// Files under `src/` whose text matches `needle`, outside `allowed` (path prefixes).
fn offenders(needle: impl Fn(&str) -> bool, allowed: &[&str]) -> Vec<String> {
    sources(&root().join("src"))
        .iter()
        .filter_map(|p| {
            let rel = p
                .strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let allowed = allowed.iter().any(|a| rel.starts_with(a));
            (!allowed && needle(&read(p))).then_some(rel)
        })
        .collect()
}

/// Whether `text` names the crate `name` as a path (`name::x`), not as a module of ours
/// (`crate::name::`, `super::name::`, `switchboard::name::`).
fn names_crate(text: &str, name: &str) -> bool {
    // A module of that name declared in the same file (`config` has its own `turn`).
    if text.contains(&format!("mod {name};")) {
        return false;
    }
    let pattern = format!("{name}::");
    text.match_indices(&pattern).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        !before.is_some_and(|c| c == ':' || c == '_' || c.is_alphanumeric())
    })
}

#[test]
fn only_tls_builds_rustls_configuration() {
    let found = offenders(
        |t| t.contains("ServerConfig::builder") || t.contains("ClientConfig::builder"),
        &["src/tls/"],
    );
    assert!(found.is_empty(), "rustls configuration built in {found:?}");
}

#[test]
fn only_turn_names_the_stun_and_turn_crates() {
    let found = offenders(
        |t| names_crate(t, "stun") || names_crate(t, "turn"),
        &["src/turn/"],
    );
    assert!(
        found.is_empty(),
        "the stun/turn crates are used in {found:?}"
    );
}

#[test]
fn nothing_outside_turn_reaches_into_its_core() {
    let inner = [
        "turn::core",
        "turn::server",
        "turn::allocation",
        "turn::wire",
        "turn::route",
        "turn::stream",
    ];
    let found = offenders(
        |t| inner.iter().any(|m| t.contains(&format!("crate::{m}"))),
        &["src/turn/"],
    );
    assert!(
        found.is_empty(),
        "TURN's insides are reached from {found:?}; go through turn::Turn"
    );
}

#[test]
fn metrics_and_model_depend_on_no_other_module() {
    let mut files = sources(&root().join("src/metrics"));
    files.push(root().join("src/model.rs"));
    let others = [
        "crate::signaling",
        "crate::state",
        "crate::turn",
        "crate::http",
        "crate::app",
        "crate::config",
        "crate::admin",
    ];
    let found: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = read(f);
            others.iter().any(|m| text.contains(m))
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(found.is_empty(), "{found:?} reach other modules");
}

/// A source file's text without its unit-test module (`#[cfg(test)]` then `mod …`); other
/// `#[cfg(test)]` items stay, being few and small.
fn without_unit_tests(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod ").map_or(text, |i| &text[..i])
}

/// The layers: `config` and `turn` know nothing of signaling, and signaling knows nothing of
/// the server around it (`state`, `http`, `app`, `admin`): its dialects see only
/// `signaling::host::Host`.
#[test]
fn lower_layers_do_not_reach_up() {
    let above_signaling = ["crate::state", "crate::http", "crate::app", "crate::admin"];
    let rules: [(&str, Vec<&str>); 3] = [
        ("src/signaling", above_signaling.to_vec()),
        (
            "src/turn",
            [&above_signaling[..], &["crate::signaling"]].concat(),
        ),
        (
            "src/config",
            [&above_signaling[..], &["crate::signaling", "crate::turn"]].concat(),
        ),
    ];
    let mut found = Vec::new();
    for (dir, forbidden) in rules {
        for file in sources(&root().join(dir)) {
            let text = read(&file);
            for m in &forbidden {
                if text.contains(&format!("{m}::")) || text.contains(&format!("{m};")) {
                    found.push(format!("{} uses {m}", file.display()));
                }
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// The sans-IO cores (ARCHITECTURE.md's first invariant): outside their unit tests they
/// await nothing, touch no runtime, file or socket, and read no clock (time is an argument).
#[test]
fn sans_io_cores_do_no_io_and_read_no_clock() {
    let cores = [
        "model.rs",
        "limiter.rs",
        "forwarded.rs",
        "signaling/room.rs",
        "signaling/frame.rs",
        "signaling/gate.rs",
        "signaling/bans.rs",
        "signaling/protocol.rs",
        "signaling/sdp.rs",
        "tokens.rs",
        "turn/auth.rs",
        "turn/policy.rs",
        "turn/fence.rs",
        "turn/budget.rs",
        "turn/allocation.rs",
        "turn/wire.rs",
        "turn/core.rs",
        "turn/route.rs",
    ];
    let io = [
        ".await",
        "tokio::",
        "std::fs",
        "std::net::TcpStream",
        "UdpSocket",
        "Instant::now",
        "SystemTime::now",
    ];
    let mut found = Vec::new();
    for core in cores {
        let text = read(&root().join("src").join(core));
        let code = without_unit_tests(&text);
        for needle in io {
            if code.contains(needle) {
                found.push(format!("src/{core} uses {needle}"));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

/// The modules each module's code (outside its unit tests) names: `crate::a::b` and
/// `super::b`, each resolved to the longest module of that path that exists.
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let all = modules();
    let resolve = |path: &str| -> Option<String> {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len())
            .rev()
            .map(|n| parts[..n].join("::"))
            .find(|m| all.contains(m))
    };
    let mut graph = std::collections::BTreeMap::new();
    for file in sources(&root().join("src")) {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let text = read(&file);
        let code = without_unit_tests(&text);
        let parent = module.rsplit_once("::").map(|(p, _)| p.to_owned());
        let mut uses = std::collections::BTreeSet::new();
        for (prefix, base) in [("crate::", None), ("super::", parent.as_deref())] {
            for (i, _) in code.match_indices(prefix) {
                let rest = &code[i + prefix.len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                let path = rest[..end].trim_end_matches(':');
                let full = match base {
                    Some(b) => format!("{b}::{path}"),
                    None => path.to_owned(),
                };
                if let Some(m) = resolve(&full).filter(|m| *m != module) {
                    uses.insert(m);
                }
            }
        }
        graph.insert(module, uses);
    }
    graph
}

/// A cycle in `graph`, if there is one (depth-first search).
fn find_cycle(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        done: &mut std::collections::BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

/// No module reaches, directly or through others, back to itself; for the top-level modules
/// as units too (`turn::x` using `config::y` is `turn` using `config`). Unit tests may.
#[test]
fn modules_have_no_cycles() {
    let graph = module_graph();
    assert!(graph["signaling::ws"].contains("signaling::conn"));
    if let Some(cycle) = find_cycle(&graph) {
        panic!("module cycle: {}", cycle.join(" -> "));
    }
    let top = |m: &str| m.split("::").next().unwrap().to_owned();
    let mut tops: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for (module, uses) in &graph {
        let entry = tops.entry(top(module)).or_default();
        entry.extend(uses.iter().map(|u| top(u)).filter(|u| *u != top(module)));
    }
    if let Some(cycle) = find_cycle(&tops) {
        panic!("top-level module cycle: {}", cycle.join(" -> "));
    }
    // The search itself finds a cycle where there is one.
    let mut looped = graph.clone();
    looped
        .get_mut("signaling::conn")
        .unwrap()
        .insert("signaling::ws".to_owned());
    assert!(find_cycle(&looped).is_some());
}

/// No lock outside unit tests panics on poison (`lock().expect(..)`): one panic would make
/// every later caller panic too. `crate::sync`'s `locked`, `reading`, `writing` take the lock
/// as it is.
#[test]
fn no_lock_panics_on_poison() {
    let panics = [
        ".lock().expect(",
        ".read().expect(",
        ".write().expect(",
        ".lock().unwrap()",
    ];
    let found: Vec<String> = sources(&root().join("src"))
        .into_iter()
        // Unit-test files (`tests.rs`) are no module of the server.
        .filter(|f| module_of(f).is_some())
        .filter(|f| {
            let text = read(f);
            // Without whitespace: rustfmt puts a long chain's calls on lines of their own.
            let code: String = without_unit_tests(&text)
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            panics.iter().any(|p| code.contains(p))
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(found.is_empty(), "locks that panic on poison in {found:?}");
}

#[test]
fn the_checks_see_what_they_look_for() {
    // The matchers themselves, so that the checks above cannot pass by seeing nothing.
    assert!(names_crate("use stun::message::Message;", "stun"));
    assert!(names_crate("let t = turn::proto::PROTO_UDP;", "turn"));
    assert!(!names_crate("use crate::turn::Turn;", "turn"));
    assert!(!names_crate("use super::turn::x;", "turn"));
    assert!(!names_crate("mod turn;\npub use turn::TurnConfig;", "turn"));
    assert!(modules().contains(&"turn::core".to_owned()));
    assert!(modules().contains(&"config".to_owned()));
    assert!(!modules().iter().any(|m| m.contains("tests")));
    assert!(code_map().contains("### `model`"));
}
