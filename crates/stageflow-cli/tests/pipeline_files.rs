//! End-to-end tests of `stageflow run`, `check` and `graph`: they run the binary on the example
//! files and on small pipelines written to temporary directories.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{
    bin, examples, interrupt, json_of, run, run_path, run_with_events, spawn_with_events, stderr,
    TempDir,
};

/// A pipeline whose only stage ignores SIGTERM, and whose cleanup touches `cleaned`.
const STUBBORN: &str =
    "[pipeline]\ncleanup = [\"touch cleaned\"]\n[stages.stubborn]\nrun = \"trap '' TERM; sleep 30\"\n";

fn stage<'a>(result: &'a Value, name: &str) -> &'a Value {
    result["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {result}"))
}

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")))
        .collect()
}

#[test]
fn build_test_package_example_runs() {
    let tmp = TempDir::new("btp");
    let events_file = tmp.path("events.jsonl");
    let file = examples().join("build-test-package.toml");
    let out = run_with_events(&file, &["--json", "--max-parallel", "4"], &events_file);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let result = json_of(&out);
    assert_eq!(result["status"], "completed");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(stage(&result, "deploy")["status"], "skipped");
    assert_eq!(
        stage(&result, "report")["output"]["stdout"],
        "packaged 35 bytes"
    );
    assert!(stage(&result, "package")["output"]["package"]
        .as_str()
        .unwrap()
        .ends_with("app-1.4.2.pkg"));
    assert_eq!(result["cleanup"][0]["status"], "ok", "{result}");
    // The summary table lists every stage with its status, then the final line.
    assert!(err.contains("summary:"), "{err}");
    for name in [
        "prepare",
        "lint",
        "build",
        "unit-tests",
        "integration-tests",
        "package",
        "report",
    ] {
        assert!(
            err.lines()
                .any(|l| l.trim_start().starts_with(name) && l.contains(" ok ")),
            "{name} in {err}"
        );
    }
    assert!(
        err.lines()
            .any(|l| l.trim_start().starts_with("deploy") && l.contains("skipped")),
        "{err}"
    );
    assert!(
        err.contains("[build] built "),
        "stderr is forwarded with the stage name: {err}"
    );
    assert!(
        err.contains("pipeline `build-test-package` completed in"),
        "{err}"
    );
    // Events, with the library's types and format: pipeline.started first, pipeline.completed
    // last, every stage started and finished.
    let ev = events(&events_file);
    assert_eq!(ev.first().unwrap()["type"], "pipeline.started");
    assert_eq!(ev.first().unwrap()["data"]["stages"], 8);
    assert_eq!(ev.last().unwrap()["type"], "pipeline.completed");
    let run_id = result["run_id"].as_str().unwrap();
    assert!(ev.iter().all(|e| e["run_id"] == run_id
        && e["pipeline"] == "build-test-package"
        && e["timestamp"].is_string()));
    let completed: Vec<&str> = ev
        .iter()
        .filter(|e| e["type"].as_str().unwrap().ends_with(".completed") && e["stage"].is_string())
        .map(|e| e["stage"].as_str().unwrap())
        .collect();
    assert_eq!(completed.len(), 7, "{completed:?}");
    assert!(ev
        .iter()
        .any(|e| e["type"] == "stage.deploy.skipped" && e["status"] == "skip"));
    let build = ev
        .iter()
        .find(|e| e["type"] == "stage.build.completed")
        .unwrap();
    assert!(
        build["duration_ms"].as_f64().is_some()
            && build["data"]["started_at"].is_string()
            && build["status"] == "ok"
            && build["stage"] == "build",
        "{build}"
    );
    assert!(ev.iter().any(|e| e["type"] == "cleanup.completed"));
    // The work directory was removed by the pipeline's cleanup.
    let work = stage(&result, "package")["output"]["package"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!Path::new(&work).exists(), "cleanup removed {work}");
}

#[test]
fn fan_out_example_merges_matrix_outputs() {
    let out = run_path(
        &["run", "--json", "--max-parallel", "4"],
        &examples().join("fan-out.toml"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let result = json_of(&out);
    for (shard, words) in [("alpha", 3), ("beta", 3), ("gamma", 1), ("delta", 4)] {
        assert_eq!(
            stage(&result, &format!("count[{shard}]"))["output"]["words"],
            words
        );
    }
    assert_eq!(stage(&result, "merge")["output"]["total"], 11);
    assert_eq!(
        stage(&result, "report")["output"]["stdout"],
        "total words: 11"
    );
}

#[test]
fn nested_example_runs_the_child_pipeline() {
    let tmp = TempDir::new("nested");
    let events_file = tmp.path("events.jsonl");
    let out = run_with_events(&examples().join("nested.toml"), &["--json"], &events_file);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let result = json_of(&out);
    assert_eq!(
        stage(&result, "build-test-package")["output"]["report"]["stdout"],
        "packaged 35 bytes"
    );
    assert_eq!(
        stage(&result, "announce")["output"]["stdout"],
        "released: packaged 35 bytes"
    );
    let ev = events(&events_file);
    assert!(ev
        .iter()
        .any(|e| e["type"] == "stage.build-test-package/package.completed"));
    assert_eq!(ev.last().unwrap()["type"], "pipeline.completed");
    assert_eq!(ev.last().unwrap()["pipeline"], "release");
}

#[test]
fn chain_example_runs_and_matches_the_generator() {
    let file = examples().join("chain-500.toml");
    let committed = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        committed,
        stageflow_cli::pipeline_file::generate::chain(500),
        "regenerate with `stageflow generate --stages 500 -o examples/chain-500.toml`"
    );
    let out = run_path(&["run", "--json"], &file);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let result = json_of(&out);
    assert_eq!(result["counts"]["ok"], 500);
    // A big pipeline's summary shows the slowest stages, not all 500.
    let summary = err
        .split("summary (500 stages; the 15 slowest shown):")
        .nth(1)
        .unwrap_or_else(|| panic!("{err}"));
    let rows = summary
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with("  "))
        .count();
    assert_eq!(rows, 15, "{summary}");
    assert!(err.contains("pipeline `chain-500` completed in"), "{err}");
}

#[test]
fn quiet_prints_only_the_final_line() {
    let out = run_path(&["run", "--quiet"], &examples().join("fan-out.toml"));
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("pipeline `word-count` completed in"),
        "{err}"
    );
}

#[test]
fn every_example_checks_and_graphs() {
    for entry in std::fs::read_dir(examples()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = run_path(&["check"], &path);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                path.display(),
                stderr(&out)
            );
            assert!(stderr(&out).contains("is valid"));
            for format in ["dot", "mermaid"] {
                let out = bin()
                    .arg("graph")
                    .arg(&path)
                    .args(["--format", format])
                    .output()
                    .unwrap();
                assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
            }
        }
    }
}

#[test]
fn graph_formats() {
    let file = examples().join("fan-out.toml");
    let dot = String::from_utf8(run_path(&["graph", "--format", "dot"], &file).stdout).unwrap();
    assert!(dot.starts_with("digraph \"word-count\" {"), "{dot}");
    assert!(dot.contains("\"split\" -> \"count[alpha]\";"), "{dot}");
    assert!(dot.contains("\"count[delta]\" -> \"merge\";"), "{dot}");
    let mermaid =
        String::from_utf8(run_path(&["graph", "--format", "mermaid"], &file).stdout).unwrap();
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    assert!(mermaid.contains("s1[\"count[alpha]\"]"), "{mermaid}");
    assert!(mermaid.contains("s0 --> s1"), "{mermaid}");
    let btp = String::from_utf8(
        run_path(
            &["graph", "-f", "mermaid"],
            &examples().join("build-test-package.toml"),
        )
        .stdout,
    )
    .unwrap();
    assert!(
        btp.contains("{{\"deploy\"}}"),
        "conditional stages are hexagons: {btp}"
    );
    let nested =
        String::from_utf8(run_path(&["graph"], &examples().join("nested.toml")).stdout).unwrap();
    assert!(nested.contains("shape=box3d"), "{nested}");
}

#[test]
fn a_failing_command_in_the_middle_stops_the_run() {
    let tmp = TempDir::new("fail");
    let file = tmp.write(
        "p.toml",
        r#"
[stages.first]
run = "echo first"
[stages.middle]
needs = ["first"]
run = "echo 'disk on fire' >&2; exit 3"
[stages.last]
needs = ["middle"]
run = "echo never > never.txt"
"#,
    );
    let out = run_path(&["run", "--json"], &file);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let result = json_of(&out);
    assert_eq!(result["status"], "failed");
    assert_eq!(result["failed_stage"], "middle");
    assert_eq!(stage(&result, "first")["status"], "ok");
    assert_eq!(stage(&result, "middle")["status"], "failed");
    assert_eq!(
        stage(&result, "middle")["error"],
        "exit code 3: disk on fire"
    );
    assert_eq!(stage(&result, "last")["status"], "not_run");
    assert!(!tmp.path("never.txt").exists());
    assert!(
        err.lines()
            .any(|l| l.contains("middle") && l.contains("failed") && l.contains("exit code 3")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.trim_start().starts_with("last") && l.contains("not run")),
        "{err}"
    );
    assert!(err.contains("pipeline `p` failed"), "{err}");
}

#[test]
fn a_timeout_fails_the_stage() {
    let tmp = TempDir::new("timeout");
    let file = tmp.write(
        "p.toml",
        "[stages.slow]\nrun = \"sleep 30\"\ntimeout = \"300ms\"\n",
    );
    let started = Instant::now();
    let out = run_path(&["run", "--json"], &file);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let result = json_of(&out);
    assert_eq!(stage(&result, "slow")["error"], "timed out after 300ms");
}

#[test]
fn a_retry_succeeds_on_the_second_attempt() {
    let tmp = TempDir::new("retry");
    let file = tmp.write(
        "p.toml",
        r#"
[stages.flaky]
retries = 2
retry_delay = "50ms"
run = '''
if [ -e marker ]; then echo "second try, attempt $STAGEFLOW_ATTEMPT"; else touch marker; echo "first try fails" >&2; exit 1; fi
'''
"#,
    );
    let events_file = tmp.path("events.jsonl");
    let out = run_with_events(&file, &["--json"], &events_file);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let result = json_of(&out);
    let flaky = stage(&result, "flaky");
    assert_eq!(flaky["attempts"], 2);
    assert_eq!(flaky["output"]["stdout"], "second try, attempt 2");
    assert!(
        err.contains("retry  flaky: attempt 1 failed: exit code 1: first try fails"),
        "{err}"
    );
    // The events file has the retry as the library reports retries, and the attempts.
    let ev = events(&events_file);
    let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "pipeline.started",
            "stage.flaky.started",
            "stage.flaky.retried",
            "stage.flaky.completed",
            "pipeline.completed"
        ]
    );
    assert_eq!(ev[2]["data"]["attempt"], 2);
    assert_eq!(ev[3]["data"]["attempts"], 2);
}

#[test]
fn invalid_files_exit_with_2_and_point_at_the_problem() {
    let tmp = TempDir::new("invalid");
    let file = tmp.write("bad.toml", "[stages.a]\nrun = \"x\"\nneeds = [\"b\"]\n");
    for cmd in ["check", "run", "graph"] {
        let out = run_path(&[cmd], &file);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "{}:3:10: error[SF004]: stage `a` needs `b`, which does not exist",
                file.display()
            )),
            "{err}"
        );
    }
    let out = run_path(&["check", "--json"], &file);
    let result = json_of(&out);
    assert_eq!(result["valid"], false);
    assert_eq!(result["errors"][0]["line"], 3);
    assert_eq!(result["errors"][0]["column"], 10);
    assert_eq!(result["errors"][0]["text"], "\"b\"");
    let out = run(&["check", "/definitely/not/here.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
}

#[test]
fn skipped_branches_propagate_and_merges_still_run() {
    let tmp = TempDir::new("skip");
    let file = tmp.write(
        "p.toml",
        r#"
[stages.detect]
run = 'printf "{\"lang\": \"rust\", \"changed\": false}"'
[stages.rust]
needs = ["detect"]
if = "stages.detect.lang == 'rust'"
run = "echo cargo build"
[stages.go]
needs = ["detect"]
if = "stages.detect.lang == 'go'"
run = "echo go build"
[stages.go-vet]
needs = ["go"]
run = "echo vet"
[stages.merge]
needs = ["rust", "go"]
run = "echo merged"
[stages.rebuild]
needs = ["detect"]
if = "stages.detect.changed"
run = "echo rebuild"
"#,
    );
    let out = run_path(&["run", "--json"], &file);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let result = json_of(&out);
    assert_eq!(stage(&result, "rust")["status"], "ok");
    assert_eq!(stage(&result, "go")["status"], "skipped");
    assert_eq!(stage(&result, "go-vet")["status"], "skipped");
    assert_eq!(
        stage(&result, "go-vet")["reason"],
        "all upstream stages skipped"
    );
    assert_eq!(stage(&result, "merge")["status"], "ok");
    assert_eq!(stage(&result, "rebuild")["status"], "skipped");
}

#[test]
fn templates_env_dir_and_inputs_file_reach_commands() {
    let tmp = TempDir::new("inputs");
    std::fs::create_dir_all(tmp.path("sub")).unwrap();
    let file = tmp.write(
        "p.toml",
        r#"
[pipeline]
env = { GREETING = "hello" }
[stages.produce]
run = '''printf '{"name": "it'"'"'s me", "nested": {"list": [1, 2, 3]}}' '''
[stages.consume]
needs = ["produce"]
dir = "sub"
env = { NAME = "{{ stages.produce.name }}" }
cmd = ["sh", "-c", 'printf "%s|%s|%s|%s|%s" "$GREETING" "$NAME" "$1" "$(basename "$PWD")" "$STAGEFLOW_STAGE"; cat "$STAGEFLOW_INPUTS" > ../inputs.json', "x", "{{ stages.produce.nested.list.2 }}"]
"#,
    );
    let out = run_path(&["run", "--json"], &file);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let result = json_of(&out);
    assert_eq!(
        stage(&result, "consume")["output"]["stdout"],
        "hello|it's me|3|sub|consume"
    );
    let inputs: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path("inputs.json")).unwrap()).unwrap();
    assert_eq!(inputs["stage"], "consume");
    assert_eq!(inputs["stages"]["produce"]["status"], "ok");
    assert_eq!(inputs["stages"]["produce"]["data"]["nested"]["list"][1], 2);
}

#[test]
fn a_missing_output_key_fails_the_stage_with_the_keys_it_has() {
    let tmp = TempDir::new("missing-key");
    let file = tmp.write(
        "p.toml",
        "[stages.a]\nrun = \"echo plain\"\n[stages.b]\nneeds = [\"a\"]\nrun = \"echo {{ stages.a.version }}\"\n",
    );
    let out = run_path(&["run", "--json"], &file);
    assert_eq!(out.status.code(), Some(1));
    let result = json_of(&out);
    let error = stage(&result, "b")["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("has no output `version`") && error.contains("stdout, exit_code"),
        "{error}"
    );
}

#[test]
fn cleanup_failures_are_reported_and_fail_the_run() {
    let tmp = TempDir::new("cleanup-fail");
    let file = tmp.write(
        "p.toml",
        r#"
[pipeline]
cleanup = ["echo pipeline cleanup >> log", "echo cannot clean up >&2; exit 4"]
[stages.a]
run = "echo a"
cleanup = "echo a cleanup >> log"
[stages.b]
needs = ["a"]
run = "echo b"
cleanup = ["sh", "-c", "echo b cleanup >> log"]
"#,
    );
    let out = run_path(&["run", "--json"], &file);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let result = json_of(&out);
    assert_eq!(result["status"], "failed");
    assert_eq!(result["cleanup"][3]["status"], "failed");
    assert!(
        err.contains(
            "cleanup failed: `echo cannot clean up >&2; exit 4`: exit code 4: cannot clean up"
        ),
        "{err}"
    );
    // Last started first, then the pipeline's commands in order.
    let log = std::fs::read_to_string(tmp.path("log")).unwrap();
    assert_eq!(log, "b cleanup\na cleanup\npipeline cleanup\n");
}

/// Waits until the events file has an event of type `event_type`.
fn wait_for_event(path: &Path, event_type: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|e| e["type"] == event_type)
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no {event_type} event");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `stage` has started, then a little longer so its command is running.
fn wait_until_running(events_file: &Path, stage: &str) {
    wait_for_event(events_file, &format!("stage.{stage}.started"));
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn ctrl_c_cancels_gracefully_runs_cleanup_and_exits_130() {
    let tmp = TempDir::new("sigint");
    let events_file = tmp.path("events.jsonl");
    let file = tmp.write(
        "p.toml",
        r#"
[pipeline]
cleanup = ["echo pipeline >> cleanup-marker"]
[stages.setup]
run = "echo ready"
cleanup = "echo setup >> cleanup-marker"
[stages.sleeper]
needs = ["setup"]
run = "trap 'echo got SIGTERM >&2; exit 143' TERM; sleep 30 & wait"
cleanup = "echo sleeper >> cleanup-marker"
[stages.after]
needs = ["sleeper"]
run = "echo never > never.txt"
"#,
    );
    let started = Instant::now();
    let child = spawn_with_events(&file, &["--json"], &events_file);
    wait_until_running(&events_file, "sleeper");
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        err.contains("[sleeper] got SIGTERM"),
        "the command got SIGTERM: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path("cleanup-marker")).unwrap(),
        "sleeper\nsetup\npipeline\n"
    );
    assert!(!tmp.path("never.txt").exists());
    let result = json_of(&out);
    assert_eq!(result["status"], "cancelled");
    assert_eq!(stage(&result, "sleeper")["status"], "cancelled");
    assert_eq!(stage(&result, "after")["status"], "not_run");
    let ev = events(&events_file);
    assert_eq!(ev.last().unwrap()["type"], "pipeline.cancelled");
    assert!(ev.iter().any(|e| e["type"] == "stage.sleeper.cancelled"));
}

#[test]
fn a_command_ignoring_sigterm_is_killed_after_the_grace_period() {
    let tmp = TempDir::new("grace");
    let events_file = tmp.path("events.jsonl");
    let file = tmp.write("p.toml", STUBBORN);
    let child = spawn_with_events(&file, &["--grace", "300ms"], &events_file);
    wait_until_running(&events_file, "stubborn");
    let started = Instant::now();
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert!(tmp.path("cleaned").exists());
}

#[test]
fn a_second_ctrl_c_stops_at_once() {
    let tmp = TempDir::new("sigint2");
    let events_file = tmp.path("events.jsonl");
    let file = tmp.write("p.toml", STUBBORN);
    let child = spawn_with_events(&file, &["--grace", "30s"], &events_file);
    wait_until_running(&events_file, "stubborn");
    let started = Instant::now();
    interrupt(&child);
    std::thread::sleep(Duration::from_millis(200));
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        stderr(&out).contains("interrupted twice"),
        "{}",
        stderr(&out)
    );
    assert!(!tmp.path("cleaned").exists(), "cleanup is skipped");
    let ev = events(&events_file);
    assert_eq!(ev.last().unwrap()["type"], "pipeline.cancelled", "{ev:#?}");
}

#[test]
fn generate_writes_a_checkable_file() {
    let tmp = TempDir::new("generate");
    let file = tmp.path("chain.toml");
    let out = bin()
        .args(["generate", "--stages", "2000", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = run_path(&["check", "--json"], &file);
    assert_eq!(json_of(&out)["stages"], 2000);
}
