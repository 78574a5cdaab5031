//! `stageflow`: the command-line front end of the Stageflow engine.
//!
//! The binary is a thin dispatcher. Each subcommand lives in its own module, takes its parsed
//! arguments plus the shared tokio runtime, and returns an [`ExitCode`] or a [`CliError`]; `main`
//! only parses, builds the runtime, dispatches and turns errors into exit codes. Adding a
//! subcommand is therefore a three-line change here: a documented variant in [`Commands`] and one
//! match arm in `main`.
//!
//! Exit codes: `0` success; `1` the command ran but found a problem (for `stress`, a failed golden
//! check); `2` bad usage (clap's own parse errors use 2 as well).
#![warn(missing_docs)]

mod alloc;
mod stress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use stageflow_cli::{pipeline_file, runs};

/// Every heap allocation of the process goes through this counter, so `stress` can report heap
/// bytes allocated per stage. Counting costs two relaxed atomic adds per allocation.
#[global_allocator]
static ALLOCATOR: alloc::CountingAllocator = alloc::CountingAllocator;

/// The `stageflow` command line.
#[derive(Debug, Parser)]
#[command(
    name = "stageflow",
    version,
    about = "Run and stress Stageflow pipelines."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Commands,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Stress the engine: deep chains, wide fan-outs, dense lattices and failure propagation, with golden checks.
    ///
    /// Without a scenario, runs all four at moderate default sizes and prints one Markdown table each.
    Stress(stress::StressArgs),
    /// Run a pipeline file: stages in parallel where possible, with progress, a summary table and exit codes (0 ok, 1 a stage failed, 2 invalid file, 130 interrupted).
    Run(pipeline_file::cli::RunArgs),
    /// Check a pipeline file without running anything; every problem is shown with file:line:column.
    Check(pipeline_file::cli::CheckArgs),
    /// Print a pipeline file's DAG as Graphviz dot or Mermaid text.
    Graph(pipeline_file::cli::GraphArgs),
    /// Recorded runs: `list`, `show RUN_ID`, `resume RUN_ID` (runs are recorded by `stageflow run` in `.stageflow/runs.db`).
    Runs(runs::RunsArgs),
    /// Generate a chain pipeline file of N stages (for scale tests).
    #[command(hide = true)]
    Generate(pipeline_file::cli::GenerateArgs),
}

/// Why a subcommand could not finish normally.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The arguments parse but ask for something impossible (exit code 2, like clap's usage errors).
    #[error("{0}")]
    Usage(String),
    /// The command could not do its job (exit code 1).
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process exit code for this error.
    fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Failed(_) => ExitCode::FAILURE,
        }
    }
}

/// The multi-threaded runtime, one worker per core. `stress` needs only timers: leaving out the
/// I/O, signal and process drivers lets idle workers park on a plain condition variable, which
/// makes the cross-thread wake-ups of wide stress runs cheaper.
fn runtime(with_io: bool) -> Result<tokio::runtime::Runtime, CliError> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers);
    if with_io {
        builder.enable_all();
    } else {
        builder.enable_time();
    }
    builder
        .build()
        .map_err(|err| CliError::Failed(format!("cannot start the tokio runtime: {err}")))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let with_io = !matches!(cli.command, Commands::Stress(_));
    let outcome = runtime(with_io).and_then(|rt| match cli.command {
        Commands::Stress(args) => stress::run(&args, &rt),
        Commands::Run(args) => Ok(pipeline_file::cli::run(&args, &rt)),
        Commands::Check(args) => Ok(pipeline_file::cli::check(&args)),
        Commands::Graph(args) => Ok(pipeline_file::cli::graph(&args)),
        Commands::Runs(args) => Ok(runs::main(&args, &rt)),
        Commands::Generate(args) => Ok(pipeline_file::cli::generate(&args)),
    });
    match outcome {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            if matches!(err, CliError::Usage(_)) {
                eprintln!("\nFor more information, try '--help'.");
            }
            err.exit_code()
        }
    }
}
