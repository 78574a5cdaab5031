//! End-to-end tests of recorded runs: `stageflow run` records in `.stageflow/runs.db` of the
//! working directory, and `stageflow runs list|show|resume` read and continue those runs.
//!
//! Every test runs the binary with its working directory set to a fresh temporary directory, so
//! each has its own store. Stages append to `log.txt`, which tells which stages ran how often.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{interrupt, json_of, stderr, TempDir};

/// Waits (up to 15 s) until `log.txt` in `tmp` has at least `lines` lines.
fn wait_for_log(tmp: &TempDir, lines: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while tmp.log().len() < lines {
        assert!(Instant::now() < deadline, "the run did not progress");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `stageflow runs list --json` in `tmp`.
fn list_runs(tmp: &TempDir) -> Value {
    json_of(&tmp.run(&["runs", "list", "--json"]))
}

/// `stageflow runs show ID --json` in `tmp`.
fn show_run(tmp: &TempDir, id: &str) -> Value {
    json_of(&tmp.run(&["runs", "show", id, "--json"]))
}

fn counts(lines: &[String]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for l in lines {
        *c.entry(l.clone()).or_default() += 1;
    }
    c
}

/// `a -> b -> c`; `b` fails unless `marker` exists.
const FAILS_WITHOUT_MARKER: &str = r#"
[pipeline]
name = "abc"

[stages.a]
run = "echo a >> log.txt"

[stages.b]
needs = ["a"]
run = "test -f marker && echo b >> log.txt"

[stages.c]
needs = ["b"]
run = "echo c >> log.txt"
"#;

/// Runs `FAILS_WITHOUT_MARKER` without the marker: exit 1; returns the run id.
fn failed_run(tmp: &TempDir) -> String {
    tmp.write("p.toml", FAILS_WITHOUT_MARKER);
    let out = tmp.run(&["run", "p.toml", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let result = json_of(&out);
    assert_eq!(result["status"], "failed");
    assert_eq!(result["recorded"], true);
    let id = result["run_id"].as_str().unwrap().to_owned();
    assert!(
        stderr(&out).contains(&format!("resume with: stageflow runs resume {id}")),
        "{}",
        stderr(&out)
    );
    id
}

#[test]
fn a_run_is_recorded_listed_and_shown() {
    let tmp = TempDir::new("list");
    tmp.write(
        "p.toml",
        &FAILS_WITHOUT_MARKER.replace("test -f marker && ", ""),
    );
    let out = tmp.run(&["run", "p.toml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(tmp.path(".stageflow/runs.db").is_file());
    // The run id is printed at the start and in the final line.
    let first = err.lines().next().unwrap();
    assert!(
        first.starts_with("run ") && first.contains("recorded in .stageflow/runs.db"),
        "{err}"
    );
    let id = first.split_whitespace().nth(1).unwrap().to_owned();
    assert!(
        err.lines()
            .last()
            .unwrap()
            .ends_with(&format!("; run {id}")),
        "{err}"
    );

    let list = tmp.run(&["runs", "list", "--json"]);
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    let runs = json_of(&list);
    assert_eq!(runs.as_array().unwrap().len(), 1);
    let run = &runs[0];
    assert_eq!(run["run_id"], id.as_str());
    assert_eq!(run["pipeline"], "abc");
    assert_eq!(run["status"], "completed");
    assert_eq!(run["stages_recorded"], 3);
    assert_eq!(run["stages_total"], 3);
    assert!(run["file"].as_str().unwrap().ends_with("p.toml"));

    let text = tmp.run(&["runs", "list"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.starts_with("RUN ID"), "{text}");
    let row = text.lines().nth(1).unwrap();
    assert!(
        row.starts_with(&id) && row.contains(" completed ") && row.ends_with("3/3"),
        "{text}"
    );

    let show = tmp.run(&["runs", "show", &id]);
    assert_eq!(show.status.code(), Some(0), "{}", stderr(&show));
    let text = String::from_utf8_lossy(&show.stdout).into_owned();
    assert!(text.contains(&format!("run       {id}")), "{text}");
    assert!(text.contains("status    completed"), "{text}");
    assert!(text.contains("3 recorded of 3"), "{text}");
    for stage in ["a", "b", "c"] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{stage} ")) && l.contains(" ok ")),
            "{text}"
        );
    }
    let show = show_run(&tmp, &id);
    let names: Vec<&str> = show["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(show["stages"][0]["attempts"], 1);
    assert_eq!(show["not_recorded"], serde_json::json!([]));

    // `--no-record` leaves no trace in the store.
    let out = tmp.run(&["run", "p.toml", "--no-record", "--quiet"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!stderr(&out).contains("; run "), "{}", stderr(&out));
    assert_eq!(list_runs(&tmp).as_array().unwrap().len(), 1);
}

#[test]
fn a_failed_run_resumes_without_rerunning_committed_stages() {
    let tmp = TempDir::new("resume");
    let id = failed_run(&tmp);
    assert_eq!(tmp.log(), ["a"]);
    let show = show_run(&tmp, &id);
    assert_eq!(show["status"], "failed");
    assert!(
        show["error"].as_str().unwrap().contains("stage `b` failed"),
        "{show}"
    );
    assert_eq!(show["not_recorded"], serde_json::json!(["b", "c"]));

    tmp.write("marker", "");
    let out = tmp.run(&["runs", "resume", &id, "--json", "--events", "events.jsonl"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    // The events of the resumed execution: `a` restored, not run; `b` and `c` run.
    let events = std::fs::read_to_string(tmp.path("events.jsonl")).unwrap();
    let types: Vec<String> = events
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        types,
        [
            "stage.a.restored",
            "pipeline.started",
            "stage.b.started",
            "stage.b.completed",
            "stage.c.started",
            "stage.c.completed",
            "pipeline.completed"
        ]
    );
    assert!(err.contains("1 of 3 stages restored"), "{err}");
    assert!(
        err.contains(&format!("run {id} resumed: 1 restored, 2 run")),
        "{err}"
    );
    let result = json_of(&out);
    assert_eq!(result["run_id"], id.as_str());
    assert_eq!(result["status"], "completed");
    assert_eq!(result["restored"], 1);
    assert_eq!(result["stages"][0]["status"], "restored");
    assert_eq!(tmp.log(), ["a", "b", "c"], "stage a ran again");

    let list = list_runs(&tmp);
    assert_eq!(list[0]["status"], "completed");
    assert_eq!(list[0]["stages_recorded"], 3);

    // Resuming a completed run is a no-op that says so.
    let out = tmp.run(&["runs", "resume", &id]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("already completed; nothing to resume"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tmp.log(), ["a", "b", "c"]);
}

#[test]
fn a_killed_run_resumes_and_no_committed_stage_runs_twice() {
    let tmp = TempDir::new("kill");
    let n = 24;
    let mut text = String::from("[pipeline]\nname = \"slow-chain\"\n");
    for i in 0..n {
        text.push_str(&format!(
            "[stages.s{i}]\nrun = \"sleep 0.05; echo s{i} >> log.txt\"\n"
        ));
        if i > 0 {
            text.push_str(&format!("needs = [\"s{}\"]\n", i - 1));
        }
    }
    tmp.write("p.toml", &text);
    let mut child = tmp
        .cmd(&["run", "p.toml", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_log(&tmp, 8);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The command running at the kill may still append its line; let it.
    std::thread::sleep(Duration::from_millis(150));

    let runs = list_runs(&tmp);
    let run = &runs[0];
    let id = run["run_id"].as_str().unwrap().to_owned();
    assert_eq!(run["status"], "running");
    assert_eq!(run["crashed"], true, "{run}");
    assert_eq!(run["shown_status"], "crashed");
    let show = show_run(&tmp, &id);
    let committed: HashSet<String> = show["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(committed.len() >= 4 && committed.len() < n, "{show}");
    let before = tmp.log().len();

    let out = tmp.run(&["runs", "resume", &id[..13]]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("{} of {n} stages restored", committed.len())),
        "{err}"
    );
    let log = tmp.log();
    let seen = counts(&log);
    for i in 0..n {
        let name = format!("s{i}");
        let times = seen.get(&name).copied().unwrap_or(0);
        assert!(times >= 1, "{name} never ran: {log:?}");
        if committed.contains(&name) {
            assert_eq!(times, 1, "committed stage {name} ran again: {log:?}");
        }
    }
    // At most the stages in flight or finished in the last commit window ran twice.
    assert!(log.len() <= n + 3, "{before} then {log:?}");
    let run = &list_runs(&tmp)[0];
    assert_eq!(run["status"], "completed");
    assert_eq!(run["stages_recorded"], n);
}

#[test]
fn an_interrupted_run_is_cancelled_and_resumable() {
    let tmp = TempDir::new("sigint");
    tmp.write(
        "p.toml",
        r#"
[stages.first]
run = "echo first >> log.txt"
[stages.slow]
needs = ["first"]
run = "echo slow-started >> log.txt; sleep 30"
"#,
    );
    let child = tmp
        .cmd(&["run", "p.toml", "--quiet"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_log(&tmp, 2);
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let run = &list_runs(&tmp)[0];
    assert_eq!(run["status"], "cancelled", "{run}");
    let id = run["run_id"].as_str().unwrap().to_owned();
    tmp.write(
        "p.toml",
        &std::fs::read_to_string(tmp.path("p.toml"))
            .unwrap()
            .replace("sleep 30", "true"),
    );
    // The command changed: refused without --force.
    let out = tmp.run(&["runs", "resume", &id]);
    assert_eq!(out.status.code(), Some(2));
    let out = tmp.run(&["runs", "resume", &id, "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(tmp.log(), ["first", "slow-started", "slow-started"]);
}

#[test]
fn a_changed_or_missing_file_is_refused_unless_forced() {
    let tmp = TempDir::new("changed");
    let id = failed_run(&tmp);
    tmp.write("marker", "");
    tmp.write("p.toml", &FAILS_WITHOUT_MARKER.replace("echo c", "echo C"));
    let out = tmp.run(&["runs", "resume", &id]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("refusing to resume"), "{err}");
    assert!(err.contains("stage commands changed"), "{err}");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(tmp.log(), ["a"], "nothing ran");
    assert_eq!(list_runs(&tmp)[0]["status"], "failed");

    // A comment is a change too, reported as such.
    tmp.write("p.toml", &format!("# edited\n{FAILS_WITHOUT_MARKER}"));
    let out = tmp.run(&["runs", "resume", &id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("its content changed"),
        "{}",
        stderr(&out)
    );

    // A changed DAG.
    tmp.write(
        "p.toml",
        &FAILS_WITHOUT_MARKER.replace("needs = [\"b\"]", "needs = [\"a\"]"),
    );
    let out = tmp.run(&["runs", "resume", &id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("its stages or their dependencies changed"),
        "{}",
        stderr(&out)
    );

    // The file is gone.
    std::fs::rename(tmp.path("p.toml"), tmp.path("moved.toml")).unwrap();
    let out = tmp.run(&["runs", "resume", &id, "--force"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no longer exists"),
        "{}",
        stderr(&out)
    );
    std::fs::rename(tmp.path("moved.toml"), tmp.path("p.toml")).unwrap();

    tmp.write("p.toml", &FAILS_WITHOUT_MARKER.replace("echo c", "echo C"));
    let out = tmp.run(&["runs", "resume", &id, "--force"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("resuming anyway (--force)"), "{err}");
    assert_eq!(tmp.log(), ["a", "b", "C"]);
}

#[test]
fn unknown_ambiguous_and_unique_run_ids() {
    let tmp = TempDir::new("ids");
    let empty = tmp.run(&["runs", "list"]);
    assert_eq!(empty.status.code(), Some(2));
    assert!(
        stderr(&empty).contains("no run store at"),
        "{}",
        stderr(&empty)
    );

    let first = failed_run(&tmp);
    let second = failed_run(&tmp);
    for args in [
        vec!["runs", "show", "deadbeef"],
        vec!["runs", "resume", "00000000-0000-0000-0000-000000000000"],
        vec!["runs", "show", "not-hex"],
    ] {
        let out = tmp.run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&format!("no run `{}`", args[2])), "{err}");
        assert!(
            err.contains(&first) && err.contains(&second),
            "lists recent runs: {err}"
        );
    }

    let common = first
        .chars()
        .zip(second.chars())
        .take_while(|(a, b)| a == b)
        .count();
    assert!(common >= 1 && common < first.len());
    let out = tmp.run(&["runs", "show", &first[..common]]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is ambiguous: 2 runs match"), "{err}");
    assert!(err.contains(&first) && err.contains(&second), "{err}");

    let out = tmp.run(&["runs", "show", &second[..common + 1], "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_of(&out)["run_id"], second.as_str());
    // Without hyphens, in upper case.
    let compact = first.replace('-', "").to_uppercase();
    let out = tmp.run(&["runs", "show", &compact[..20], "--json"]);
    assert_eq!(json_of(&out)["run_id"], first.as_str());
    // Newest first.
    let list = json_of(&tmp.run(&["runs", "list", "--json", "--limit", "1"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["run_id"], second.as_str());
}

#[test]
fn a_corrupt_store_is_refused_and_left_untouched() {
    let tmp = TempDir::new("corrupt");
    tmp.write("p.toml", FAILS_WITHOUT_MARKER);
    std::fs::create_dir_all(tmp.path(".stageflow")).unwrap();
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    let store = tmp.path(".stageflow/runs.db");
    std::fs::write(&store, &garbage).unwrap();
    for args in [
        vec!["runs", "list"],
        vec!["runs", "show", "0123"],
        vec!["runs", "resume", "0123"],
        vec!["run", "p.toml"],
    ] {
        let out = tmp.run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("cannot open the run store"), "{err}");
        assert!(err.contains("not a SQLite database"), "{err}");
        assert!(err.contains("left untouched"), "{err}");
    }
    assert!(tmp.log().is_empty(), "nothing ran");
    assert_eq!(std::fs::read(&store).unwrap(), garbage);
    // `--no-record` still runs.
    let out = tmp.run(&["run", "p.toml", "--no-record"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&store).unwrap(), garbage);

    // `--store` elsewhere.
    let other = tmp.path("elsewhere/runs.db");
    let out = tmp.run(&["run", "p.toml", "--store", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(Path::new(&other).is_file());
    let list = json_of(&tmp.run(&["runs", "--store", other.to_str().unwrap(), "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
}
