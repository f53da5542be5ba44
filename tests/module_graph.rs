//! The import graph of the library's top-level modules must have no cycle, and a few edges
//! are forbidden outright (see `docs/ARCHITECTURE.md`, "Daemon, ops, metrics and server").
//!
//! The graph is read from the source: every file under `src/<module>` (or `src/<module>.rs`)
//! is lexed (comments, strings and character literals dropped), and every path that starts
//! with `crate::` — including each item of a `crate::{…}` group — or that climbs to the crate
//! root with `super::` is an edge from the file's top-level module to the module the path
//! names. `src/main.rs` (the binary) and `src/lib.rs` (the root) belong to no module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Edges that must not exist, with the reason each would be wrong.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    (
        "server",
        "raft",
        "the server reaches partitions only through replica types",
    ),
    (
        "server",
        "node",
        "the server reaches the node only through its Service trait",
    ),
    (
        "node",
        "server",
        "the node knows nothing of the client server; the daemon wires them",
    ),
    (
        "node",
        "daemon",
        "the daemon composes the node, not the other way round",
    ),
    (
        "metrics",
        "node",
        "metrics keeps names, handles and the exporter",
    ),
    (
        "metrics",
        "server",
        "metrics keeps names, handles and the exporter",
    ),
    (
        "metrics",
        "replica",
        "the replica reports to metrics, never the reverse",
    ),
];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// What the lexer keeps of the source: identifiers and punctuation, `::` as one token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Splits Rust source into tokens, dropping comments, string, byte-string, raw-string and
/// character literals, and lifetimes. Numbers come out as identifiers; they never matter.
fn lex(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        let next = chars.get(at + 1).copied();
        if c.is_whitespace() {
            at += 1;
        } else if c == '/' && next == Some('/') {
            while at < chars.len() && chars[at] != '\n' {
                at += 1;
            }
        } else if c == '/' && next == Some('*') {
            at = skip_block_comment(&chars, at);
        } else if c == '"' {
            at = skip_string(&chars, at + 1);
        } else if let Some(end) = raw_string_end(&chars, at) {
            at = end;
        } else if c == '\'' {
            at = skip_char_or_lifetime(&chars, at);
        } else if c.is_alphanumeric() || c == '_' {
            let start = at;
            while at < chars.len() && (chars[at].is_alphanumeric() || chars[at] == '_') {
                at += 1;
            }
            let word: String = chars[start..at].iter().collect();
            // A byte string or byte character right after its prefix.
            if word == "b" && at < chars.len() && (chars[at] == '"' || chars[at] == '\'') {
                continue;
            }
            tokens.push(Token::Ident(word));
        } else if c == ':' && next == Some(':') {
            tokens.push(Token::PathSep);
            at += 2;
        } else {
            tokens.push(Token::Punct(c));
            at += 1;
        }
    }
    tokens
}

/// The index after a (possibly nested) block comment starting at `at`.
fn skip_block_comment(chars: &[char], mut at: usize) -> usize {
    let mut depth = 0;
    while at < chars.len() {
        if chars[at] == '/' && chars.get(at + 1) == Some(&'*') {
            depth += 1;
            at += 2;
        } else if chars[at] == '*' && chars.get(at + 1) == Some(&'/') {
            depth -= 1;
            at += 2;
            if depth == 0 {
                return at;
            }
        } else {
            at += 1;
        }
    }
    at
}

/// The index after the closing quote of a string whose body starts at `at`.
fn skip_string(chars: &[char], mut at: usize) -> usize {
    while at < chars.len() {
        match chars[at] {
            '\\' => at += 2,
            '"' => return at + 1,
            _ => at += 1,
        }
    }
    at
}

/// If a raw string (`r"…"`, `r#"…"#`, `br#"…"#`) starts at `at`, the index after it.
fn raw_string_end(chars: &[char], at: usize) -> Option<usize> {
    let mut cursor = at;
    if chars.get(cursor) == Some(&'b') {
        cursor += 1;
    }
    if chars.get(cursor) != Some(&'r') {
        return None;
    }
    // Only at the start of a token: `bar"` is not a raw string.
    if at > 0 && (chars[at - 1].is_alphanumeric() || chars[at - 1] == '_') {
        return None;
    }
    cursor += 1;
    let hashes = chars[cursor..].iter().take_while(|&&c| c == '#').count();
    cursor += hashes;
    if chars.get(cursor) != Some(&'"') {
        return None;
    }
    cursor += 1;
    while cursor < chars.len() {
        if chars[cursor] == '"'
            && chars[cursor + 1..]
                .iter()
                .take_while(|&&c| c == '#')
                .count()
                >= hashes
        {
            return Some(cursor + 1 + hashes);
        }
        cursor += 1;
    }
    Some(cursor)
}

/// The index after a character literal (`'x'`, `'\n'`, `'\u{1F600}'`) or a lifetime (`'a`).
fn skip_char_or_lifetime(chars: &[char], at: usize) -> usize {
    if chars.get(at + 1) == Some(&'\\') {
        let mut cursor = at + 2;
        while cursor < chars.len() && chars[cursor] != '\'' {
            cursor += 1;
        }
        return cursor + 1;
    }
    if chars.get(at + 2) == Some(&'\'') {
        return at + 3;
    }
    // A lifetime or label: skip the quote, the name follows as an identifier we ignore.
    let mut cursor = at + 1;
    while cursor < chars.len() && (chars[cursor].is_alphanumeric() || chars[cursor] == '_') {
        cursor += 1;
    }
    cursor
}

/// The top-level modules named by the crate-rooted paths in `tokens`, for a file whose
/// module path has `file_depth` segments (`src/a.rs` and `src/a/mod.rs`: 1, `src/a/b.rs`: 2).
fn crate_paths(tokens: &[Token], file_depth: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    // Inline `mod name { … }` blocks deepen `super::`; each entry is the brace depth at
    // which one opened.
    let mut inline_mods: Vec<usize> = Vec::new();
    let mut braces = 0usize;
    let ident = |i: usize| match tokens.get(i) {
        Some(Token::Ident(word)) => Some(word.as_str()),
        _ => None,
    };
    for i in 0..tokens.len() {
        match &tokens[i] {
            Token::Punct('{') => {
                braces += 1;
                if i >= 2 && ident(i - 2) == Some("mod") && ident(i - 1).is_some() {
                    inline_mods.push(braces);
                }
            }
            Token::Punct('}') => {
                if inline_mods.last() == Some(&braces) {
                    inline_mods.pop();
                }
                braces = braces.saturating_sub(1);
            }
            Token::Ident(word) if word == "crate" => {
                let macro_crate = i > 0 && tokens[i - 1] == Token::Punct('$');
                if !macro_crate && tokens.get(i + 1) == Some(&Token::PathSep) {
                    found.extend(path_heads(tokens, i + 2));
                }
            }
            Token::Ident(word) if word == "super" => {
                let starts_chain = i == 0 || tokens[i - 1] != Token::PathSep;
                if !starts_chain {
                    continue;
                }
                let mut climbs = 0;
                let mut cursor = i;
                while ident(cursor) == Some("super")
                    && tokens.get(cursor + 1) == Some(&Token::PathSep)
                {
                    climbs += 1;
                    cursor += 2;
                }
                if climbs == file_depth + inline_mods.len() {
                    found.extend(path_heads(tokens, cursor));
                }
            }
            _ => {}
        }
    }
    found
}

/// The first segment of the path at `at`, or of each item of the `{…}` group there.
fn path_heads(tokens: &[Token], at: usize) -> Vec<String> {
    match tokens.get(at) {
        Some(Token::Ident(word)) => vec![word.clone()],
        Some(Token::Punct('{')) => {
            let mut heads = Vec::new();
            let mut depth = 0;
            let mut expect_head = true;
            for token in &tokens[at..] {
                match token {
                    Token::Punct('{') => {
                        depth += 1;
                        if depth > 1 {
                            expect_head = false;
                        }
                    }
                    Token::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Token::Punct(',') if depth == 1 => expect_head = true,
                    Token::Ident(word) if depth == 1 && expect_head => {
                        heads.push(word.clone());
                        expect_head = false;
                    }
                    _ => {}
                }
            }
            heads
        }
        _ => Vec::new(),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source directory readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The graph of the library's top-level modules, from the files under `src`.
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut modules = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(src).expect("under src");
        let first = relative.components().next().expect("a component");
        let name = first.as_os_str().to_string_lossy();
        let name = name.trim_end_matches(".rs");
        if name != "lib" && name != "main" {
            modules.insert(name.to_owned());
        }
    }
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for file in &files {
        let relative = file.strip_prefix(src).expect("under src");
        let segments: Vec<String> = relative
            .components()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_owned()
            })
            .collect();
        let module = &segments[0];
        if !modules.contains(module) {
            continue;
        }
        let file_depth = segments.len() - usize::from(segments.last().unwrap() == "mod");
        let text = std::fs::read_to_string(file).expect("readable source");
        for target in crate_paths(&lex(&text), file_depth) {
            if modules.contains(&target) && &target != module {
                graph.get_mut(module).unwrap().insert(target);
            }
        }
    }
    graph
}

/// A cycle of `graph` as a path `a → b → … → a`, if there is one.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_owned(), Mark::OnPath);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next.as_str()).copied().unwrap_or(Mark::New) {
                Mark::OnPath => {
                    let start = path.iter().position(|n| n == next).expect("on the path");
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

fn describe(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(module, uses)| {
            let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
            format!("  {module} → {}", uses.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn crate_graph() -> Graph {
    module_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn the_module_graph_has_no_cycle() {
    let graph = crate_graph();
    assert!(
        graph.len() >= 10 && graph.contains_key("daemon") && graph.contains_key("server"),
        "expected the crate's modules, found:\n{}",
        describe(&graph)
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle {}; the graph:\n{}",
            cycle.join(" → "),
            describe(&graph)
        );
    }
}

#[test]
fn no_forbidden_edge_exists() {
    let graph = crate_graph();
    let found: Vec<String> = FORBIDDEN
        .iter()
        .filter(|(from, to, _)| graph.get(*from).is_some_and(|uses| uses.contains(*to)))
        .map(|(from, to, why)| format!("{from} → {to}: {why}"))
        .collect();
    assert!(
        found.is_empty(),
        "forbidden imports:\n{}\nthe graph:\n{}",
        found.join("\n"),
        describe(&graph)
    );
}

#[test]
fn the_daemon_composes_the_node_the_server_and_metrics() {
    // Guards the reader against going blind: if it stopped seeing edges, the two tests above
    // would pass on an empty graph.
    let graph = crate_graph();
    let daemon = &graph["daemon"];
    for used in ["node", "server", "shutdown", "metrics"] {
        assert!(
            daemon.contains(used),
            "daemon → {used} not seen:\n{}",
            describe(&graph)
        );
    }
    assert!(graph["server"].contains("replica"), "{}", describe(&graph));
}

#[test]
fn the_reader_sees_paths_and_skips_comments_strings_and_macros() {
    let source = r##"
        use crate::{config::NodeConfig, proto::{self, Entry}, wire};
        use crate::batch;
        // use crate::commented;
        /* crate::blocked /* nested crate::deeper */ */
        const TEXT: &str = "crate::quoted";
        const RAW: &str = r#"crate::raw "quote" inside"#;
        const QUOTE: char = '"';
        fn f<'a>(x: &'a str) -> crate::after_lifetime::T { $crate::from_macro::f() }
        pub(crate) fn g() {}
        mod tests {
            use super::*;
            fn h() { super::super::through_inline::f(); }
        }
    "##;
    let heads = crate_paths(&lex(source), 1);
    let expected: BTreeSet<String> = [
        "config",
        "proto",
        "wire",
        "batch",
        "after_lifetime",
        "through_inline",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(heads, expected);
    // In `src/a/b.rs`, `super::x` is `a::x`; `super::super::y` is the crate's `y`.
    let nested = crate_paths(&lex("use super::x; use super::super::y;"), 2);
    assert_eq!(nested, BTreeSet::from(["y".to_owned()]));
}

#[test]
fn the_checker_finds_a_planted_cycle() {
    fn edge(graph: &mut Graph, from: &str, to: &str) {
        graph
            .entry(from.to_owned())
            .or_default()
            .insert(to.to_owned());
        graph.entry(to.to_owned()).or_default();
    }
    let mut graph: Graph = BTreeMap::new();
    edge(&mut graph, "daemon", "server");
    edge(&mut graph, "server", "replica");
    edge(&mut graph, "replica", "metrics");
    assert_eq!(find_cycle(&graph), None);
    edge(&mut graph, "metrics", "server");
    let cycle = find_cycle(&graph).expect("a cycle");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"metrics".to_owned()) && cycle.contains(&"server".to_owned()));
}
