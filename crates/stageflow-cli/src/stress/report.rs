//! Printing stress results: Markdown tables for people, JSON for tools.
//!
//! Markdown is the default because the usual destination is a report or an issue: each scenario
//! becomes a heading, a one-line description and a table whose column names are the JSON field
//! names, so the two formats read the same. Columns are padded so the table is also readable in a
//! terminal, and numbers get the precision that matters at their scale (µs per stage to the
//! nanosecond, MiB to a tenth).

use super::{FailRow, Rows, ScaleRow, ScenarioReport};

/// Column headers of `depth`, `wide` and `lattice` tables.
const SCALE_HEADERS: [&str; 10] = [
    "stages",
    "build_ms",
    "run_ms",
    "per_stage_us",
    "graph_bytes_per_stage",
    "peak_rss_mb",
    "alloc_bytes_per_stage",
    "allocs_per_stage",
    "golden_ok",
    "completed",
];

/// Column headers of `fail` tables.
const FAIL_HEADERS: [&str; 7] = [
    "stages",
    "at",
    "stages_ran",
    "partial_results",
    "surface_ms",
    "golden_ok",
    "error",
];

/// One scenario as Markdown: heading, description, table.
pub fn markdown(report: &ScenarioReport) -> String {
    let concurrency = match report.max_concurrency {
        Some(n) => n.to_string(),
        None => "unlimited".to_owned(),
    };
    let repeat = if report.repeat > 1 {
        format!("repeat {} (medians)", report.repeat)
    } else {
        "repeat 1".to_owned()
    };
    let mut out = format!(
        "## stress {}\n\n{}.\n{repeat}, {} worker threads, max concurrency {concurrency}.\n",
        report.scenario, report.description, report.worker_threads
    );
    if !report.peak_rss_reset && matches!(report.rows, Rows::Scale(_)) {
        out.push_str("peak_rss_mb could not be reset between sizes: each value is the process peak so far.\n");
    }
    out.push('\n');
    let table = match &report.rows {
        Rows::Scale(rows) => table(&SCALE_HEADERS, rows.iter().map(scale_cells), 0),
        Rows::Fail(rows) => table(&FAIL_HEADERS, rows.iter().map(fail_cells), 1),
    };
    out.push_str(&table);
    out
}

/// The JSON output: one scenario's document, or `{"scenarios": [...]}` for the whole suite. Fields
/// keep their declaration order (`scenario` first, `rows` last).
pub fn json(reports: &[ScenarioReport], suite: bool) -> String {
    /// The whole suite's document.
    #[derive(serde::Serialize)]
    struct Suite<'a> {
        scenarios: &'a [ScenarioReport],
    }
    let text = match reports {
        [single] if !suite => serde_json::to_string_pretty(single),
        _ => serde_json::to_string_pretty(&Suite { scenarios: reports }),
    };
    // Serializing plain structs of numbers, strings and options cannot fail.
    let mut text = text.unwrap_or_else(|err| format!("{{\"error\": {:?}}}", err.to_string()));
    text.push('\n');
    text
}

fn scale_cells(row: &ScaleRow) -> Vec<String> {
    vec![
        thousands(row.stages),
        fixed_ms(row.build_ms),
        fixed_ms(row.run_ms),
        format!("{:.3}", row.per_stage_us),
        format!("{:.0}", row.graph_bytes_per_stage),
        row.peak_rss_mb
            .map_or_else(|| "n/a".to_owned(), |mb| format!("{mb:.1}")),
        format!("{:.1}", row.alloc_bytes_per_stage),
        format!("{:.2}", row.allocs_per_stage),
        flag(row.golden_ok),
        flag(row.completed),
    ]
}

fn fail_cells(row: &FailRow) -> Vec<String> {
    vec![
        thousands(row.stages),
        thousands(row.at),
        row.stages_ran.to_string(),
        row.partial_results.to_string(),
        row.surface_ms
            .map_or_else(|| "n/a".to_owned(), |ms| format!("{ms:.3}")),
        flag(row.golden_ok),
        row.error
            .as_deref()
            .map_or_else(|| "(no error)".to_owned(), |e| e.replace('|', "\\|")),
    ]
}

/// A padded Markdown table; all columns but the last `text_columns` are right-aligned numbers.
fn table(headers: &[&str], rows: impl Iterator<Item = Vec<String>>, text_columns: usize) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([headers[c].len(), 3])
                .max()
                .unwrap_or(3)
        })
        .collect();
    let numeric = headers.len() - text_columns;
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c < numeric {
                    format!("{cell:>w$}", w = widths[c])
                } else {
                    format!("{cell:<w$}", w = widths[c])
                }
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    let separator: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(c, &w)| {
            if c < numeric {
                format!("{}:", "-".repeat(w - 1))
            } else {
                "-".repeat(w)
            }
        })
        .collect();
    out.push_str(&format!("| {} |\n", separator.join(" | ")));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// Milliseconds with precision that matters at their scale.
fn fixed_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.3}")
    } else if ms < 1_000.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A check result; failures stand out.
fn flag(ok: bool) -> String {
    if ok { "true" } else { "**false**" }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(10_000_000), "10,000,000");
    }

    #[test]
    fn markdown_table_has_header_separator_and_rows() {
        let report = ScenarioReport {
            scenario: "fail",
            description: "test".into(),
            repeat: 1,
            worker_threads: 2,
            max_concurrency: None,
            peak_rss_reset: true,
            rows: Rows::Fail(vec![FailRow {
                stages: 10,
                at: 3,
                error: Some("stage `a|b` failed: x".into()),
                stages_ran: 3,
                partial_results: 2,
                surface_ms: Some(0.0123),
                golden_ok: true,
            }]),
        };
        let md = markdown(&report);
        let lines: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(lines.len(), 3, "{md}");
        assert!(lines[0].contains("stages_ran") && lines[0].contains("error"));
        assert!(lines[1].contains("---:"));
        assert!(
            lines[2].contains("0.012") && lines[2].contains("a\\|b"),
            "{md}"
        );
    }
}
