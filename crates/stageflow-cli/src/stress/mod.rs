//! `stageflow stress`: measure the engine at sizes that break naive executors, and prove the
//! answers are right while doing it.
//!
//! Four scenarios, each a shape that stresses a different part of an executor:
//! - `depth`: a chain of N stages (recursion depth, per-stage overhead, memory that should not grow
//!   with N under `Retention::Sinks`);
//! - `wide`: one source, N parallel stages, one sink (spawning, fan-in of N inputs);
//! - `lattice`: L layers of W nodes, each depending on the whole previous layer (dense edges);
//! - `fail`: a chain where stage K fails (fail-fast: exactly K stages run, K-1 partial results,
//!   and how long the failure takes to reach the caller).
//!
//! Every row carries a golden check (see [`scenarios`]), so a fast number can never come from a
//! run that skipped work. `stageflow stress` with no scenario runs all four at moderate defaults
//! and prints one Markdown table per scenario: the quick "is the engine healthy" report.
//!
//! Module layout: this file holds the command line and row types; [`scenarios`] builds the
//! pipelines; [`measure`] times and counts them; [`report`] prints Markdown or JSON; [`memory`]
//! reads peak RSS.

pub mod measure;
pub mod memory;
pub mod report;
pub mod scenarios;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tokio::runtime::Runtime;

use crate::CliError;

/// Largest stage count accepted, to fail with a message rather than by exhausting memory (building
/// a pipeline costs a few hundred bytes a stage before the graph is laid out).
pub const MAX_STAGES: usize = 100_000_000;
/// Largest number of dependency edges a lattice may have.
pub const MAX_EDGES: usize = 100_000_000;

/// Arguments of `stageflow stress`.
#[derive(Debug, Args)]
pub struct StressArgs {
    /// The scenario; all of them at default sizes when omitted.
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
    /// Options shared by every scenario.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Options shared by every scenario; accepted before or after the scenario name.
#[derive(Clone, Debug, Args)]
pub struct CommonArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Md, global = true)]
    pub format: Format,
    /// Run each size this many times and report medians (golden checks must hold in every run).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub repeat: u32,
    /// At most this many stages run at once (passed to RunOptions::max_concurrency).
    #[arg(long, value_name = "N", value_parser = parse_count, global = true)]
    pub max_concurrency: Option<usize>,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Markdown tables, ready to paste into a report.
    Md,
    /// One JSON document: `{"scenario": ..., "rows": [...]}` (`{"scenarios": [...]}` for all).
    Json,
}

/// The stress scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// A chain of N stages; stage k reads k-1 from its predecessor and outputs k.
    Depth(DepthArgs),
    /// One source, N parallel stages, one sink that checks the count and sum of all N.
    Wide(WideArgs),
    /// L layers of W stages, each depending on every stage of the previous layer.
    Lattice(LatticeArgs),
    /// A chain of N stages where stage K fails: checks fail-fast and partial results.
    Fail(FailArgs),
}

/// Arguments of `stress depth`.
#[derive(Debug, Args)]
pub struct DepthArgs {
    /// Chain lengths to measure, comma-separated (underscores allowed: 1_000_000).
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_count,
          default_value = "100,500,1000,2000,100000,1000000")]
    pub stages: Vec<usize>,
}

/// Arguments of `stress wide`.
#[derive(Debug, Args)]
pub struct WideArgs {
    /// Numbers of parallel stages to measure, comma-separated.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_count,
          default_value = "100000")]
    pub width: Vec<usize>,
}

/// Arguments of `stress lattice`.
#[derive(Debug, Args)]
pub struct LatticeArgs {
    /// Number of layers.
    #[arg(long, value_name = "L", value_parser = parse_count, default_value = "100")]
    pub layers: usize,
    /// Stages per layer.
    #[arg(long, value_name = "W", value_parser = parse_count, default_value = "10")]
    pub width: usize,
}

/// Arguments of `stress fail`.
#[derive(Debug, Args)]
pub struct FailArgs {
    /// Length of the chain.
    #[arg(long, value_name = "N", value_parser = parse_count, default_value = "2000")]
    pub stages: usize,
    /// Which stage fails, counting from 1; a comma-separated list gives one row each.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = parse_count,
          default_value = "1000")]
    pub at: Vec<usize>,
}

/// Parses a positive count: digits with optional `_` separators, between 1 and [`MAX_STAGES`].
pub fn parse_count(text: &str) -> Result<usize, String> {
    let digits: String = text.trim().chars().filter(|&c| c != '_').collect();
    if digits.is_empty() {
        return Err(
            "expected a number, got nothing (lists are comma-separated, e.g. 100,1000)".into(),
        );
    }
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("`{}` is not a whole number", text.trim()));
    }
    match digits.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) if n <= MAX_STAGES => Ok(n),
        _ => Err(format!(
            "`{}` is too large (at most {MAX_STAGES})",
            text.trim()
        )),
    }
}

/// One scenario to measure, with its sizes resolved and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Shapes that run to completion (depth, wide, lattice); one row per shape.
    Scale {
        /// `depth`, `wide` or `lattice`.
        scenario: &'static str,
        /// The shapes, one row each.
        shapes: Vec<scenarios::Shape>,
    },
    /// A chain of `stages` failing at each of `at` (1-based); one row per failure point.
    Fail {
        /// Length of the chain.
        stages: usize,
        /// Failure points.
        at: Vec<usize>,
    },
}

impl Plan {
    /// The plan for one scenario's arguments, or a usage error when the combination is impossible.
    pub fn from_scenario(scenario: &Scenario) -> Result<Plan, CliError> {
        match scenario {
            Scenario::Depth(args) => Ok(Plan::Scale {
                scenario: "depth",
                shapes: args
                    .stages
                    .iter()
                    .map(|&stages| scenarios::Shape::Chain { stages })
                    .collect(),
            }),
            Scenario::Wide(args) => {
                if let Some(&w) = args.width.iter().find(|&&w| w > MAX_STAGES - 2) {
                    return Err(CliError::Usage(format!(
                        "--width {w} is too large: the graph would have {} stages (at most {MAX_STAGES})",
                        w + 2
                    )));
                }
                Ok(Plan::Scale {
                    scenario: "wide",
                    shapes: args
                        .width
                        .iter()
                        .map(|&width| scenarios::Shape::Wide { width })
                        .collect(),
                })
            }
            Scenario::Lattice(args) => {
                let (layers, width) = (args.layers, args.width);
                let stages = layers.checked_mul(width).filter(|&s| s <= MAX_STAGES);
                let edges = stages
                    .and_then(|s| (s - width).checked_mul(width))
                    .filter(|&e| e <= MAX_EDGES);
                if stages.is_none() || edges.is_none() {
                    return Err(CliError::Usage(format!(
                        "--layers {layers} --width {width} is too large: at most {MAX_STAGES} stages \
                         and {MAX_EDGES} dependency edges (layers x width x width)"
                    )));
                }
                Ok(Plan::Scale {
                    scenario: "lattice",
                    shapes: vec![scenarios::Shape::Lattice { layers, width }],
                })
            }
            Scenario::Fail(args) => {
                if let Some(&at) = args.at.iter().find(|&&at| at > args.stages) {
                    return Err(CliError::Usage(format!(
                        "--at {at} is out of range: the chain has {} stages, numbered 1 to {}",
                        args.stages, args.stages
                    )));
                }
                Ok(Plan::Fail {
                    stages: args.stages,
                    at: args.at.clone(),
                })
            }
        }
    }

    /// One line saying what the plan measures.
    pub fn description(&self) -> String {
        match self {
            Plan::Scale {
                scenario: "depth", ..
            } => "a chain; stage k reads k-1 from its predecessor \
                 and outputs k (Retention::Sinks)"
                .to_owned(),
            Plan::Scale {
                scenario: "wide", ..
            } => "one source, N parallel stages, one sink that \
                 checks the count and sum of all N (Retention::Sinks)"
                .to_owned(),
            Plan::Scale { shapes, .. } => match shapes.first() {
                Some(&scenarios::Shape::Lattice { layers, width }) => format!(
                    "{layers} layers x {width} stages, each depending on every stage of the \
                     previous layer ({} edges; Retention::Sinks)",
                    (layers - 1) * width * width
                ),
                _ => String::new(),
            },
            Plan::Fail { stages, .. } => format!(
                "a chain of {stages} stages where stage `at` fails; Retention::All, so the at-1 \
                 outputs before it come back with the error"
            ),
        }
    }

    /// What `stageflow stress` runs without a scenario: all four at moderate sizes.
    pub fn suite() -> Vec<Plan> {
        use scenarios::Shape;
        vec![
            Plan::Scale {
                scenario: "depth",
                shapes: [100, 500, 1_000, 2_000, 100_000, 1_000_000]
                    .map(|stages| Shape::Chain { stages })
                    .to_vec(),
            },
            Plan::Scale {
                scenario: "wide",
                shapes: vec![Shape::Wide { width: 100_000 }],
            },
            Plan::Scale {
                scenario: "lattice",
                shapes: vec![Shape::Lattice {
                    layers: 100,
                    width: 10,
                }],
            },
            Plan::Fail {
                stages: 2_000,
                at: vec![1, 1_000, 2_000],
            },
        ]
    }
}

/// One measured size of `depth`, `wide` or `lattice` (medians over repeats).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScaleRow {
    /// Total stages in the graph.
    pub stages: usize,
    /// Time to define and build (validate, lay out) the graph, in ms.
    pub build_ms: f64,
    /// Time of `run_with` until the caller has the report, in ms.
    pub run_ms: f64,
    /// `run_ms` per stage, in µs.
    pub per_stage_us: f64,
    /// Heap bytes of the built graph's own structure (names, adjacency, node table) per stage,
    /// from [`stageflow::Graph::structure_bytes`]; stage objects are shared and not counted.
    pub graph_bytes_per_stage: f64,
    /// Peak resident memory while building and running this size (all repeats), in MiB; `null`
    /// where it cannot be measured.
    pub peak_rss_mb: Option<f64>,
    /// Heap bytes allocated (by every thread) during the run, per stage.
    pub alloc_bytes_per_stage: f64,
    /// Heap allocation calls during the run, per stage.
    pub allocs_per_stage: f64,
    /// Every repeat: no stage read a wrong value, every stage ran once, sinks hold the expected result.
    pub golden_ok: bool,
    /// Every repeat's run ended `Completed`.
    pub completed: bool,
}

/// One failure point of `fail`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailRow {
    /// Length of the chain.
    pub stages: usize,
    /// The failing stage, counting from 1.
    pub at: usize,
    /// What the caller got (`RunFailure`'s Display); `null` if the run did not fail.
    pub error: Option<String>,
    /// Stages that executed (counted inside the stages); must equal `at`.
    pub stages_ran: u64,
    /// Outputs returned with the error (`Retention::All`); must equal `at - 1`.
    pub partial_results: usize,
    /// Time from the failing stage returning its failure to the caller holding the error, in ms
    /// (median over repeats); `null` if the stage never failed.
    pub surface_ms: Option<f64>,
    /// Every repeat: error names stage `at`, `stages_ran == at`, `partial_results == at - 1`, and
    /// the stages before it read the expected values.
    pub golden_ok: bool,
}

/// The rows of one scenario.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Rows {
    /// Rows of `depth`, `wide` or `lattice`.
    Scale(Vec<ScaleRow>),
    /// Rows of `fail`.
    Fail(Vec<FailRow>),
}

impl Rows {
    /// Number of rows whose golden check failed.
    pub fn failed(&self) -> usize {
        match self {
            Rows::Scale(rows) => rows.iter().filter(|r| !r.golden_ok || !r.completed).count(),
            Rows::Fail(rows) => rows.iter().filter(|r| !r.golden_ok).count(),
        }
    }
}

/// The measured result of one scenario: the JSON document `{"scenario": ..., "rows": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScenarioReport {
    /// `depth`, `wide`, `lattice` or `fail`.
    pub scenario: &'static str,
    /// One line saying what was measured (shape, retention), for people.
    pub description: String,
    /// Runs per size.
    pub repeat: u32,
    /// Tokio worker threads.
    pub worker_threads: usize,
    /// The concurrency cap, if any.
    pub max_concurrency: Option<usize>,
    /// Whether peak RSS was reset before each size (if not, peaks are cumulative).
    pub peak_rss_reset: bool,
    /// One row per size or failure point.
    pub rows: Rows,
}

/// Runs `stageflow stress`: measures the requested scenario (or all four) and prints the report.
/// Returns exit code 1 when a golden check failed.
pub fn run(args: &StressArgs, rt: &Runtime) -> Result<ExitCode, CliError> {
    let plans = match &args.scenario {
        Some(scenario) => vec![Plan::from_scenario(scenario)?],
        None => Plan::suite(),
    };
    let env = measure::Env {
        rt,
        repeat: args.common.repeat,
        max_concurrency: args.common.max_concurrency,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let format = args.common.format;
    let suite = args.scenario.is_none();
    let mut out = std::io::stdout().lock();
    let mut reports = Vec::with_capacity(plans.len());
    if format == Format::Md && suite {
        write_out(&mut out, "# stageflow stress\n\n")?;
    }
    for (i, plan) in plans.iter().enumerate() {
        let report = measure::run_plan(plan, &env)?;
        if format == Format::Md {
            // Print each table as soon as it is measured: the suite takes a while.
            if i > 0 {
                write_out(&mut out, "\n")?;
            }
            write_out(&mut out, &report::markdown(&report))?;
        }
        reports.push(report);
    }
    if format == Format::Json {
        write_out(&mut out, &report::json(&reports, suite))?;
    }
    let failed: usize = reports.iter().map(|r| r.rows.failed()).sum();
    if failed > 0 {
        eprintln!("error: golden check failed in {failed} row(s); see golden_ok/completed above");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes to stdout; a closed pipe (`stageflow stress | head`) is not an error worth a message.
fn write_out(out: &mut impl Write, text: &str) -> Result<(), CliError> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(err) => Err(CliError::Failed(format!("cannot write the report: {err}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_count_accepts_and_rejects() {
        assert_eq!(parse_count("1000"), Ok(1000));
        assert_eq!(parse_count(" 1_000_000 "), Ok(1_000_000));
        assert!(parse_count("").unwrap_err().contains("nothing"));
        assert!(parse_count("0").unwrap_err().contains("at least 1"));
        assert!(parse_count("-5")
            .unwrap_err()
            .contains("not a whole number"));
        assert!(parse_count("1e6")
            .unwrap_err()
            .contains("not a whole number"));
        assert!(parse_count("999999999999999999999999")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn fail_at_beyond_chain_is_a_usage_error() {
        let scenario = Scenario::Fail(FailArgs {
            stages: 10,
            at: vec![1, 11],
        });
        let err = Plan::from_scenario(&scenario).unwrap_err();
        assert!(
            matches!(err, CliError::Usage(ref m) if m.contains("--at 11")),
            "{err}"
        );
    }

    #[test]
    fn huge_lattice_is_a_usage_error() {
        let scenario = Scenario::Lattice(LatticeArgs {
            layers: 100_000,
            width: 100_000,
        });
        assert!(matches!(
            Plan::from_scenario(&scenario),
            Err(CliError::Usage(_))
        ));
    }
}
