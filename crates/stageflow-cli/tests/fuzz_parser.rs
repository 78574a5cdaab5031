//! Property tests: the parser and `check` never panic, whatever the input (random bytes, random
//! TOML-ish text, mutations of the example files), and they scale linearly to generated files of
//! 100,000 (always) and 1,000,000 (release builds) stages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use stageflow_cli::pipeline_file::{generate, graph_export, load, load_str};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn example_texts() -> Vec<(PathBuf, String)> {
    ["build-test-package.toml", "fan-out.toml", "nested.toml"]
        .iter()
        .map(|name| {
            let path = examples().join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            (path, text)
        })
        .chain(std::iter::once((
            examples().join("chain-generated.toml"),
            generate::chain(30),
        )))
        .collect()
}

/// Checks `text` and exercises everything that runs on the result; panics are the failure.
fn exercise(path: &Path, text: &str) {
    match load_str(path, text) {
        Ok(p) => {
            let _ = graph_export::to_dot(&p);
            let _ = graph_export::to_mermaid(&p);
            assert!(!p.is_empty());
        }
        Err(d) => {
            assert!(!d.items.is_empty());
            let _ = d.render();
            let _ = d.to_json();
            for item in &d.items {
                let _ = item.location();
                let _ = item.offending_text();
            }
        }
    }
}

const TOKENS: &[&str] = &[
    "{{",
    "}}",
    "{{ stages.",
    "{{ matrix.",
    "[",
    "]",
    "[[",
    "]]",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "=",
    "==",
    "!=",
    "!",
    "&&",
    "||",
    "(",
    ")",
    "\n",
    ",",
    ".",
    "#",
    "\\",
    "\\u",
    "needs = [\"prepare\"]",
    "needs = [\"nope\"]",
    "matrix = { k = [1, 2] }",
    "matrix = {}",
    "if = \"",
    "if = \"stages.prepare.x == 1\"",
    "timeout = \"",
    "retries = 99999",
    "pipeline = \"nested.toml\"",
    "pipeline = \"fan-out.toml\"",
    "[stages.",
    "[stages.dup]\nrun = \"x\"\n",
    "[pipeline]\n",
    "cleanup = ",
    "cmd = []",
    "run = ''",
    "é",
    "\u{0}",
    "\u{feff}",
    "999999999999999999999999",
];

#[derive(Clone, Debug)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: usize },
    InsertChar { at: usize, c: char },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..20usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), any::<char>()).prop_map(|(at, c)| Mutation::InsertChar { at, c }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn boundary(s: &str, at: usize) -> usize {
    let mut at = at % (s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &mut String, m: &Mutation) {
    match *m {
        Mutation::Delete { at, len } => {
            let start = boundary(text, at);
            let end = boundary(text, (start + len).min(text.len()));
            if end > start {
                text.replace_range(start..end, "");
            }
        }
        Mutation::Insert { at, token } => {
            let at = boundary(text, at);
            text.insert_str(at, TOKENS[token]);
        }
        Mutation::InsertChar { at, c } => {
            let at = boundary(text, at);
            text.insert(at, c);
        }
        Mutation::DuplicateLine { line } | Mutation::SwapLines { a: line, .. }
            if text.is_empty() =>
        {
            let _ = line;
        }
        Mutation::DuplicateLine { line } => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let i = line % lines.len();
            let dup = lines[i];
            lines.insert(i, dup);
            *text = lines.join("\n");
        }
        Mutation::SwapLines { a, b } => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let n = lines.len();
            lines.swap(a % n, b % n);
            *text = lines.join("\n");
        }
        Mutation::Truncate { at } => {
            let at = boundary(text, at);
            text.truncate(at);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        exercise(Path::new("fuzz.toml"), &String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn random_toml_like_text_never_panics(text in "([\\[\\]a-z=\"'{}., \n#0-9!&|()]|stages|matrix|needs|run|if|\\{\\{|\\}\\}){0,120}") {
        exercise(Path::new("fuzz.toml"), &text);
    }

    #[test]
    fn mutated_examples_never_panic(which in 0..4usize, mutations in proptest::collection::vec(mutation(), 1..6)) {
        let (path, mut text) = example_texts().swap_remove(which);
        for m in &mutations {
            apply(&mut text, m);
        }
        exercise(&path, &text);
    }

    #[test]
    fn arbitrary_conditions_and_templates_never_panic(cond in "\\PC{0,60}", template in "\\PC{0,60}", matrix in "\\PC{0,20}") {
        let quote = |s: &str| toml_string(s);
        let text = format!(
            "[stages.a]\nrun = \"printf x\"\n[stages.b]\nneeds = [\"a\"]\nif = {}\nrun = {}\nmatrix = {{ k = [{}] }}\n",
            quote(&cond), quote(&template), quote(&matrix)
        );
        exercise(Path::new("fuzz.toml"), &text);
    }
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[test]
fn the_examples_are_valid() {
    for (path, text) in example_texts() {
        load_str(&path, &text).unwrap_or_else(|d| panic!("{}: {d}", path.display()));
    }
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("stageflow-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn check_generated(n: usize, limit: Duration) {
    let path = temp_file(&format!("chain-{n}.toml"), &generate::chain(n));
    let started = Instant::now();
    let result = load(&path);
    let took = started.elapsed();
    let _ = std::fs::remove_file(&path);
    let p = result.unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(p.len(), n);
    assert!(took < limit, "checking {n} stages took {took:?}");
}

#[test]
fn checks_a_generated_100k_stage_file() {
    check_generated(100_000, Duration::from_secs(30));
}

#[test]
fn checks_a_generated_1m_stage_file() {
    check_generated(1_000_000, Duration::from_secs(60));
}

#[test]
fn errors_in_a_big_file_are_found_and_located() {
    let n = 100_000;
    let mut text = generate::chain(n);
    text.push_str("s100000 = { run = \"true\", needs = [\"s99999x\"] }\n");
    text.push_str("s100001 = { run = \"true\", needs = [\"s100002\"] }\n");
    text.push_str("s100002 = { run = \"true\", needs = [\"s100001\"] }\n");
    let d = load_str(Path::new("big.toml"), &text).unwrap_err();
    assert_eq!(d.items.len(), 2, "{d}");
    let missing = &d.items[0];
    assert_eq!(missing.code, "SF004");
    assert!(
        missing.message.contains("did you mean `s99999`?"),
        "{}",
        missing.message
    );
    assert_eq!(missing.location().unwrap().line, n + 8);
    let cycle = &d.items[1];
    assert_eq!(cycle.code, "SF006");
    assert!(
        cycle.message.contains("s100001 -> s100002 -> s100001")
            || cycle.message.contains("s100002 -> s100001 -> s100002"),
        "{}",
        cycle.message
    );
}
