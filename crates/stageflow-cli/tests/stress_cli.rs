//! End-to-end tests of `stageflow stress`: run the built binary with small sizes, parse its JSON,
//! and check the golden results and the error paths. Sizes are small so the tests stay fast in
//! debug builds.

use std::process::{Command, Output};

use serde_json::Value;

/// Runs `stageflow` with `args`.
fn stageflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stageflow"))
        .args(args)
        .output()
        .expect("the stageflow binary runs")
}

/// Runs `stageflow` with `args`, expects success, and parses stdout as JSON.
fn json(args: &[&str]) -> Value {
    let out = stageflow(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "{args:?}: stdout is not JSON ({err}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The rows of a scenario document, after checking its `scenario` field.
fn rows<'a>(doc: &'a Value, scenario: &str) -> &'a [Value] {
    assert_eq!(doc["scenario"], scenario, "{doc}");
    doc["rows"].as_array().expect("rows is an array")
}

/// Checks the fields every depth/wide/lattice row has.
fn assert_scale_row(row: &Value, stages: u64) {
    assert_eq!(row["stages"], stages, "{row}");
    assert_eq!(row["golden_ok"], true, "{row}");
    assert_eq!(row["completed"], true, "{row}");
    for field in [
        "build_ms",
        "run_ms",
        "per_stage_us",
        "alloc_bytes_per_stage",
    ] {
        let value = row[field].as_f64().unwrap_or(-1.0);
        assert!(value >= 0.0, "{field} in {row}");
    }
    // A number on Linux, null where peak RSS cannot be read.
    assert!(
        row["peak_rss_mb"].is_number() || row["peak_rss_mb"].is_null(),
        "{row}"
    );
    if cfg!(target_os = "linux") {
        assert!(row["peak_rss_mb"].as_f64().unwrap() > 0.0, "{row}");
    }
    // The engine allocates something per stage (its output, at least).
    assert!(
        row["alloc_bytes_per_stage"].as_f64().unwrap() > 0.0,
        "{row}"
    );
}

/// Runs `stageflow` with `args`, expects a usage failure, and returns stderr.
fn usage_error(args: &[&str]) -> String {
    let out = stageflow(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} should fail");
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(stderr.contains("error"), "{args:?}: {stderr}");
    stderr
}

#[test]
fn depth_rows_are_golden() {
    let doc = json(&["stress", "depth", "--stages", "10,100", "--format", "json"]);
    let rows = rows(&doc, "depth");
    assert_eq!(rows.len(), 2);
    assert_scale_row(&rows[0], 10);
    assert_scale_row(&rows[1], 100);
}

#[test]
fn depth_repeat_and_concurrency_cap() {
    let doc = json(&[
        "stress",
        "--format",
        "json",
        "depth",
        "--stages",
        "50",
        "--repeat",
        "3",
        "--max-concurrency",
        "2",
    ]);
    assert_eq!(doc["repeat"], 3);
    assert_eq!(doc["max_concurrency"], 2);
    assert_scale_row(&rows(&doc, "depth")[0], 50);
}

#[test]
fn wide_row_is_golden() {
    let doc = json(&["stress", "wide", "--width", "100", "--format", "json"]);
    let rows = rows(&doc, "wide");
    assert_eq!(rows.len(), 1);
    assert_scale_row(&rows[0], 102);
}

#[test]
fn lattice_row_is_golden() {
    let doc = json(&[
        "stress", "lattice", "--layers", "5", "--width", "3", "--format", "json",
    ]);
    let rows = rows(&doc, "lattice");
    assert_eq!(rows.len(), 1);
    assert_scale_row(&rows[0], 15);
}

#[test]
fn fail_stops_at_the_failing_stage() {
    let doc = json(&[
        "stress", "fail", "--stages", "100", "--at", "1,50,100", "--format", "json",
    ]);
    let rows = rows(&doc, "fail");
    assert_eq!(rows.len(), 3);
    for (row, at) in rows.iter().zip([1u64, 50, 100]) {
        assert_eq!(row["stages"], 100, "{row}");
        assert_eq!(row["at"], at, "{row}");
        assert_eq!(row["stages_ran"], at, "{row}");
        assert_eq!(row["partial_results"], at - 1, "{row}");
        assert_eq!(row["golden_ok"], true, "{row}");
        let error = row["error"].as_str().expect("error is a string");
        assert!(
            error.contains(&format!("`stage_{at}`")),
            "error should name stage_{at}: {error}"
        );
        assert!(
            row["surface_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{row}"
        );
    }
}

#[test]
fn markdown_is_the_default_and_has_a_table() {
    let out = stageflow(&["stress", "depth", "--stages", "10"]);
    assert!(out.status.success());
    let md = String::from_utf8(out.stdout).unwrap();
    let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(table.len(), 3, "header, separator, one row:\n{md}");
    for field in [
        "stages",
        "build_ms",
        "run_ms",
        "per_stage_us",
        "peak_rss_mb",
        "golden_ok",
    ] {
        assert!(table[0].contains(field), "missing {field}:\n{md}");
    }
    assert!(table[1].contains("---"), "{md}");
    assert!(table[2].contains("true"), "{md}");
}

#[test]
fn fail_markdown_shows_the_error() {
    let out = stageflow(&["stress", "fail", "--stages", "20", "--at", "5"]);
    assert!(out.status.success());
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.contains("| error"), "{md}");
    assert!(md.contains("stage `stage_5` failed"), "{md}");
}

#[test]
fn bad_input_is_a_clear_usage_error() {
    let err = usage_error(&["stress", "fail", "--stages", "10", "--at", "0"]);
    assert!(err.contains("at least 1"), "{err}");
    let err = usage_error(&["stress", "fail", "--stages", "10", "--at", "11"]);
    assert!(
        err.contains("--at 11") && err.contains("10 stages"),
        "{err}"
    );
    let err = usage_error(&["stress", "depth", "--stages", ""]);
    assert!(err.contains("--stages"), "{err}");
    let err = usage_error(&["stress", "depth", "--stages", "10,abc"]);
    assert!(
        err.contains("abc") && err.contains("not a whole number"),
        "{err}"
    );
    let err = usage_error(&["stress", "wide", "--width", "0"]);
    assert!(err.contains("--width"), "{err}");
    usage_error(&[
        "stress", "lattice", "--layers", "100000", "--width", "100000",
    ]);
    usage_error(&["stress", "depth", "--repeat", "0"]);
    usage_error(&["stress", "depth", "--format", "xml"]);
    usage_error(&["stress", "depth", "--max-concurrency", "0"]);
    usage_error(&["stress", "nonsense"]);
}
