//! Every `stageflow check` error, on small malformed files: code, position and message. These
//! call the library half of the command directly, so they are fast.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use stageflow_cli::pipeline_file::{load, load_str, Diagnostic, Diagnostics};

fn errors(text: &str) -> Diagnostics {
    match load_str(Path::new("bad.toml"), text) {
        Ok(p) => panic!(
            "expected problems, got a valid pipeline with {} stages",
            p.len()
        ),
        Err(d) => d,
    }
}

/// The only problem, asserting its code, `line:column`, offending text and a message fragment.
fn only(
    text: &str,
    code: &str,
    line_col: (usize, usize),
    offending: &str,
    message: &str,
) -> Diagnostic {
    let d = errors(text);
    assert_eq!(d.items.len(), 1, "expected one problem:\n{d}");
    let e = d.items.into_iter().next().unwrap();
    check(&e, code, line_col, offending, message);
    e
}

fn check(e: &Diagnostic, code: &str, line_col: (usize, usize), offending: &str, message: &str) {
    let loc = e.location().unwrap();
    assert_eq!(
        (e.code, loc.line, loc.column),
        (code, line_col.0, line_col.1),
        "{}",
        e.render()
    );
    assert_eq!(e.offending_text(), Some(offending), "{}", e.render());
    assert!(
        e.message.contains(message),
        "`{message}` not in:\n{}",
        e.render()
    );
    let rendered = e.render();
    assert!(
        rendered.starts_with(&format!(
            "bad.toml:{}:{}: error[{code}]",
            loc.line, loc.column
        )),
        "{rendered}"
    );
}

#[test]
fn parse_error_with_line_and_column() {
    only(
        "[stages.a]\nrun = \"echo\n",
        "SF101",
        (2, 12),
        "",
        "invalid TOML",
    );
    let d = only("[stages.a\nrun = 1\n", "SF101", (1, 10), "", "invalid TOML");
    assert!(d.render().contains("1 | [stages.a"), "{}", d.render());
}

#[test]
fn missing_dependency_with_suggestion() {
    only(
        "[stages.build]\nrun = \"make\"\n\n[stages.test]\nrun = \"make test\"\nneeds = [\"biuld\"]\n",
        "SF004",
        (6, 10),
        "\"biuld\"",
        "stage `test` needs `biuld`, which does not exist; did you mean `build`?",
    );
    only(
        "[stages.work]\nrun = \"x\"\nmatrix = { os = [\"linux\", \"mac\"] }\n[stages.post]\nrun = \"x\"\nneeds = [\"work[windows]\"]\n",
        "SF004",
        (6, 10),
        "\"work[windows]\"",
        "`work[windows]` is not an instance of matrix stage `work` (instances: work[linux], work[mac])",
    );
}

#[test]
fn self_dependency() {
    only(
        "[stages.a]\nrun = \"x\"\nneeds = [\"a\"]\n",
        "SF005",
        (3, 10),
        "\"a\"",
        "stage `a` needs itself",
    );
}

#[test]
fn cycle_as_a_path() {
    let d = errors(
        "[stages.a]\nrun = \"x\"\nneeds = [\"c\"]\n\n[stages.b]\nrun = \"x\"\nneeds = [\"a\"]\n\n[stages.c]\nrun = \"x\"\nneeds = [\"b\"]\n\n[stages.d]\nrun = \"x\"\n",
    );
    assert_eq!(d.items.len(), 1, "{d}");
    let e = &d.items[0];
    assert_eq!(e.code, "SF006");
    assert!(
        e.message.contains("dependency cycle: ") && e.message.contains(" -> "),
        "{}",
        e.message
    );
    // The path visits a, b and c and ends where it started.
    let path = e
        .message
        .split("dependency cycle: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .filter(|w| *w != "->")
        .take(4)
        .collect::<Vec<_>>();
    assert_eq!(path.len(), 4, "{path:?}");
    assert_eq!(path[0], path[3]);
    let mut on_cycle = path[..3].to_vec();
    on_cycle.sort();
    assert_eq!(on_cycle, ["a", "b", "c"]);
    assert!(e.location().is_some() && e.offending_text().unwrap().starts_with('"'));
    assert_eq!(
        e.notes.len(),
        2,
        "every edge of the cycle is located: {}",
        e.render()
    );
}

#[test]
fn duplicate_stage_tables() {
    only(
        "[stages.build]\nrun = \"make\"\n\n[stages.test]\nrun = \"x\"\n\n[stages.build]\nrun = \"make again\"\n",
        "SF002",
        (7, 9),
        "build",
        "stage `build` is defined twice (first defined at line 1)",
    );
    only(
        "[stages.a]\nrun = \"x\"\nrun = \"y\"\n",
        "SF002",
        (3, 1),
        "run",
        "key `run` is set twice in the same table (first set at line 2)",
    );
}

#[test]
fn bad_timeout_and_other_values() {
    only(
        "[stages.a]\nrun = \"x\"\ntimeout = \"10 parsecs\"\n",
        "SF103",
        (3, 11),
        "\"10 parsecs\"",
        "unknown unit `parsecs`",
    );
    only(
        "[stages.a]\nrun = \"x\"\ntimeout = \"0s\"\n",
        "SF103",
        (3, 11),
        "\"0s\"",
        "must be longer than zero",
    );
    only(
        "[stages.a]\nrun = \"x\"\ntimeout = true\n",
        "SF103",
        (3, 11),
        "true",
        "`timeout` must be a duration",
    );
    only(
        "[stages.a]\nrun = \"x\"\nretries = -1\n",
        "SF103",
        (3, 11),
        "-1",
        "between 0 and 100",
    );
    only(
        "[stages.a]\nrun = \"x\"\nretry_delay = \"soon\"\n",
        "SF103",
        (3, 15),
        "\"soon\"",
        "bad `retry_delay`",
    );
    only(
        "[stages.a]\nrun = \"x\"\nneeds = \"\"\n",
        "SF103",
        (3, 9),
        "\"\"",
        "empty stage name",
    );
    only(
        "[stages.a]\nrun = \"x\"\nkind = \"robot\"\n",
        "SF103",
        (3, 8),
        "\"robot\"",
        "unknown stage kind",
    );
    only(
        "[stages.a]\nrun = \"x\"\nenv = { A = [1] }\n",
        "SF103",
        (3, 13),
        "[1]",
        "environment variable `A` must be a string",
    );
    only(
        "[pipeline]\nmax_parallel = 0\n[stages.a]\nrun = \"x\"\n",
        "SF103",
        (2, 16),
        "0",
        "between 1 and",
    );
    only(
        "[stages.a]\ncmd = \"make build\"\n",
        "SF103",
        (2, 7),
        "\"make build\"",
        "for a shell line use `run`",
    );
    only(
        "[stages.a]\ncmd = []\n",
        "SF103",
        (2, 7),
        "[]",
        "empty argument list",
    );
    let d = errors("[stages.a]\nrun = \"x\"\ndir = \"sub\"\n[stages.b]\npipeline = \"child.toml\"\ndir = \"x\"\n");
    let dir = d.items.iter().find(|e| e.code == "SF103").expect("a SF103");
    check(dir, "SF103", (6, 7), "\"x\"", "`dir` does not apply");
    only(
        "[[stages]]\nname = \"a\"\n",
        "SF103",
        (1, 1),
        "[[stages]]",
        "`[[stages]]` arrays are not supported",
    );
}

#[test]
fn unknown_fields_with_suggestions() {
    only(
        "[stages.a]\nrun = \"x\"\nneds = [\"b\"]\n",
        "SF102",
        (3, 1),
        "neds",
        "unknown key `neds` in stage `a`; did you mean `needs`?",
    );
    only(
        "[pipline]\nname = \"x\"\n[stages.a]\nrun = \"x\"\n",
        "SF102",
        (1, 2),
        "pipline",
        "did you mean `pipeline`?",
    );
    only(
        "[pipeline]\nnmae = \"x\"\n[stages.a]\nrun = \"x\"\n",
        "SF102",
        (2, 1),
        "nmae",
        "did you mean `name`?",
    );
    only(
        "[stages.a]\nrun = \"x\"\nzzzzzzz = 1\n",
        "SF102",
        (3, 1),
        "zzzzzzz",
        "known keys: run, cmd",
    );
}

#[test]
fn condition_referencing_a_non_dependency() {
    only(
        "[stages.check]\nrun = \"x\"\n[stages.deploy]\nrun = \"x\"\nif = \"stages.check.changed == true\"\n",
        "SF106",
        (5, 7),
        "stages.check.changed",
        "reads the output of `check`, which is not a dependency of stage `deploy`; add it to `needs`: needs = [\"check\"]",
    );
    only(
        "[stages.a]\nrun = \"x\"\n[stages.b]\nneeds = [\"a\"]\nrun = \"echo {{ stages.nope.x }}\"\n",
        "SF106",
        (5, 16),
        "stages.nope.x",
        "refers to stage `nope`, which does not exist",
    );
    only(
        "[stages.m]\nrun = \"x\"\nmatrix = { k = [1, 2] }\n[stages.b]\nneeds = [\"m\"]\nrun = \"echo {{ stages.m.x }}\"\n",
        "SF106",
        (6, 16),
        "stages.m.x",
        "`m` is a matrix stage; name one instance (e.g. `stages.m[1]`)",
    );
    only(
        "[stages.m]\nrun = \"x\"\nmatrix = { k = [1, 2] }\n[stages.b]\nneeds = [\"m\"]\nrun = \"echo {{ stages.m[3].x }}\"\n",
        "SF106",
        (6, 16),
        "stages.m[3].x",
        "`m[3]` is not an instance of matrix stage `m`",
    );
    only(
        "[stages.a]\nrun = \"x\"\ncleanup = \"echo {{ stages.a.x }}\"\n",
        "SF106",
        (3, 20),
        "stages.a.x",
        "cannot read stage outputs",
    );
}

#[test]
fn bad_conditions() {
    only(
        "[stages.a]\nrun = \"x\"\nif = \"stages.a.b = 1\"\n",
        "SF105",
        (3, 18),
        "=",
        "compare with `==`",
    );
    only(
        "[stages.a]\nrun = \"x\"\nif = \"(true\"\n",
        "SF105",
        (3, 12),
        "\"",
        "expected `)`",
    );
    only(
        "[stages.a]\nrun = \"x\"\nif = \"env.HOME == 'x'\"\n",
        "SF105",
        (3, 7),
        "env",
        "unknown reference root `env`",
    );
    only(
        "[stages.a]\nrun = \"x\"\nif = 'x and y'\n",
        "SF105",
        (3, 7),
        "x",
        "unknown reference root",
    );
}

#[test]
fn bad_matrices() {
    let m =
        |spec: &str| format!("[stages.a]\nrun = \"echo {{{{ matrix.os }}}}\"\nmatrix = {spec}\n");
    only(
        &m("[\"linux\"]"),
        "SF107",
        (3, 10),
        "[\"linux\"]",
        "`matrix` must be a table of value lists",
    );
    only(&m("{}"), "SF107", (3, 10), "{}", "`matrix` is empty");
    only(
        &m("{ os = [] }"),
        "SF107",
        (3, 17),
        "[]",
        "matrix key `os` has no values",
    );
    only(
        &m("{ os = \"linux\" }"),
        "SF107",
        (3, 17),
        "\"linux\"",
        "must list its values",
    );
    only(
        &m("{ os = [\"linux\", \"linux\"] }"),
        "SF107",
        (3, 27),
        "\"linux\"",
        "duplicate value \"linux\"",
    );
    only(
        &m("{ os = [\"a,b\"] }"),
        "SF107",
        (3, 18),
        "\"a,b\"",
        "without `[`, `]`, `,`",
    );
    only(
        &m("{ os = [[1]] }"),
        "SF107",
        (3, 18),
        "[1]",
        "matrix values must be strings, numbers or booleans",
    );
    only(
        &m("{ \"o s\" = [1] }"),
        "SF107",
        (3, 12),
        "\"o s\"",
        "must use only letters",
    );
    let huge = "[stages.a]\nrun = \"x\"\nmatrix = { a = [RANGE], b = [RANGE] }\n".replace(
        "RANGE",
        &(0..101)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    let d = errors(&huge);
    assert_eq!(d.items[0].code, "SF107");
    assert!(
        d.items[0]
            .message
            .contains("expands to 10201 stages; the limit is 10000"),
        "{d}"
    );
}

#[test]
fn bad_templates() {
    only(
        "[stages.a]\nrun = \"echo {{ stages.a\"\n",
        "SF108",
        (2, 13),
        "{{ stages.a",
        "unclosed `{{`",
    );
    only(
        "[stages.a]\nrun = \"echo {{ matrix.os }}\"\n",
        "SF108",
        (2, 16),
        "matrix.os",
        "stage `a` has no matrix",
    );
    only(
        "[stages.a]\nrun = \"echo {{ matrix.oss }}\"\nmatrix = { os = [\"l\"] }\n",
        "SF108",
        (2, 16),
        "matrix.oss",
        "has no key `oss` (keys: os); did you mean `matrix.os`?",
    );
    only(
        "[pipeline]\nenv = { A = \"{{ matrix.x }}\" }\n[stages.a]\nrun = \"x\"\n",
        "SF108",
        (2, 17),
        "matrix.x",
        "cannot be used in pipeline-level `env`",
    );
}

#[test]
fn stage_actions() {
    only(
        "[stages.a]\nneeds = []\n",
        "SF104",
        (1, 9),
        "a",
        "stage `a` has nothing to run",
    );
    only(
        "[stages.a]\nrun = \"x\"\ncmd = [\"y\"]\n",
        "SF104",
        (3, 1),
        "cmd",
        "sets both `run` and `cmd`",
    );
}

#[test]
fn names_and_empty_pipelines() {
    only(
        "[stages.\"has space\"]\nrun = \"x\"\n",
        "SF003",
        (1, 9),
        "\"has space\"",
        "invalid stage name `has space`",
    );
    only(
        "[pipeline]\nname = \"x\"\n",
        "SF001",
        (1, 1),
        "",
        "the pipeline has no stages",
    );
}

#[test]
fn unreachable_stages() {
    only(
        "[stages.a]\nrun = \"x\"\nif = \"1 == 2\"\n",
        "SF110",
        (3, 6),
        "\"1 == 2\"",
        "stage `a` can never run: its condition `1 == 2` is always false",
    );
    let d = errors(
        "[stages.m]\nrun = \"x\"\nmatrix = { os = [\"linux\", \"mac\"] }\nif = \"matrix.os == 'windows'\"\n[stages.after]\nneeds = [\"m\"]\nrun = \"x\"\n",
    );
    assert_eq!(d.items.len(), 2, "{d}");
    check(
        &d.items[0],
        "SF110",
        (4, 6),
        "\"matrix.os == 'windows'\"",
        "can never run",
    );
    check(
        &d.items[1],
        "SF110",
        (5, 9),
        "after",
        "none of the stages it needs (m) can run",
    );
    // Filtering some matrix instances is normal, and so is one dependency that never runs.
    load_str(
        Path::new("ok.toml"),
        "[stages.m]\nrun = \"x\"\nmatrix = { os = [\"linux\", \"mac\"] }\nif = \"matrix.os == 'linux'\"\n[stages.n]\nrun = \"x\"\nif = \"false\"\n[stages.k]\nneeds = [\"n\", \"m\"]\nrun = \"x\"\n",
    )
    .map(|_| ())
    .unwrap_or_else(|d| {
        // `n` alone is unreachable; `k` is not (it has `m`).
        assert_eq!(d.items.len(), 1, "{d}");
        assert!(d.items[0].message.contains("stage `n` can never run"));
    });
}

#[test]
fn not_utf8_and_unreadable() {
    let dir = temp_dir("utf8");
    let file = dir.join("bin.toml");
    std::fs::write(&file, b"[stages.a]\nrun = \"\xff\xfe\"\n").unwrap();
    let d = load(&file).unwrap_err();
    assert_eq!(d.items[0].code, "SF101");
    assert!(d.items[0].message.contains("not valid UTF-8"));
    assert_eq!(d.items[0].location().unwrap().line, 2);
    let d = load(&dir.join("missing.toml")).unwrap_err();
    assert_eq!(d.items[0].code, "SF111");
    let _ = std::fs::remove_dir_all(dir);
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "stageflow-check-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn child_pipeline_problems() {
    let dir = temp_dir("child");
    std::fs::write(
        dir.join("loop-a.toml"),
        "[stages.x]\npipeline = \"loop-b.toml\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("loop-b.toml"),
        "[stages.y]\npipeline = \"loop-a.toml\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("self.toml"),
        "[stages.me]\npipeline = \"self.toml\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("bad-child.toml"),
        "[stages.c]\nrun = \"x\"\nneeds = [\"zz\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("parent.toml"),
        "[stages.p]\npipeline = \"bad-child.toml\"\n[stages.q]\npipeline = \"nowhere.toml\"\n",
    )
    .unwrap();

    let d = load(&dir.join("self.toml")).unwrap_err();
    assert_eq!(d.items[0].code, "SF109", "{d}");
    assert!(
        d.items[0]
            .message
            .contains("child pipeline loop: self.toml -> self.toml"),
        "{d}"
    );

    let d = load(&dir.join("loop-a.toml")).unwrap_err();
    assert!(d.has("SF109"));
    assert!(
        d.to_string()
            .contains("loop-a.toml -> loop-b.toml -> loop-a.toml"),
        "{d}"
    );

    let d = load(&dir.join("parent.toml")).unwrap_err();
    let codes: Vec<_> = d.items.iter().map(|e| e.code).collect();
    assert!(
        codes.contains(&"SF004"),
        "the child's own problem is shown with its file: {d}"
    );
    let child_problem = d.items.iter().find(|e| e.code == "SF004").unwrap();
    assert!(child_problem
        .location()
        .unwrap()
        .path
        .ends_with("bad-child.toml"));
    assert!(
        d.items.iter().any(|e| e.code == "SF109"
            && e.message
                .contains("`bad-child.toml` of stage `p` is invalid")),
        "{d}"
    );
    assert!(
        d.items.iter().any(|e| e.code == "SF109"
            && e.message
                .contains("`nowhere.toml` of stage `q` cannot be read")),
        "{d}"
    );

    // 33 nested files: too deep.
    for i in 0..34 {
        std::fs::write(
            dir.join(format!("deep{i}.toml")),
            format!("[stages.s]\npipeline = \"deep{}.toml\"\n", i + 1),
        )
        .unwrap();
    }
    std::fs::write(dir.join("deep34.toml"), "[stages.s]\nrun = \"true\"\n").unwrap();
    let d = load(&dir.join("deep0.toml")).unwrap_err();
    assert!(d.to_string().contains("nest deeper than 32 levels"), "{d}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn all_problems_of_a_file_are_reported_together() {
    let d = errors(
        r#"[pipeline]
name = "many"

[stages.build]
run = "make"
neds = ["fetch"]
timeout = "10 parsecs"

[stages.test]
needs = ["biuld"]
run = "echo {{ stages.build.version }}"
if = "stages.deploy.ok = true"

[stages.m]
run = "echo {{ matrix.os }}"
matrix = { os = [] }
"#,
    );
    let codes: Vec<_> = d.items.iter().map(|e| e.code).collect();
    assert_eq!(
        codes,
        ["SF102", "SF103", "SF004", "SF106", "SF105", "SF107"],
        "{d}"
    );
    assert!(d.render().ends_with("6 problems found"));
}
