//! Arguments and entry points of `stageflow run`, `check`, `graph` and the hidden `generate`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;

use super::check::load;
use super::duration::parse_duration;
use super::graph_export::{self, GraphFormat};
use super::run::{EXIT_INVALID, EXIT_OK};

/// `stageflow run FILE`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The pipeline file (TOML).
    pub file: PathBuf,
    /// How the run executes and reports (shared with `stageflow runs resume`).
    #[command(flatten)]
    pub exec: ExecutionArgs,
    /// The run store the run is recorded in (created if missing), for `stageflow runs`.
    #[arg(long, value_name = "PATH", default_value = crate::runs::DEFAULT_STORE)]
    pub store: PathBuf,
    /// Do not record the run in the run store (it cannot be resumed then).
    #[arg(long, conflicts_with = "store")]
    pub no_record: bool,
}

/// The flags of every command that executes a pipeline file: `run` and `runs resume`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecutionArgs {
    /// Most commands running at once (default: `[pipeline] max_parallel`, else the number of CPUs).
    #[arg(long, short = 'j', value_name = "N")]
    pub max_parallel: Option<usize>,
    /// Write one JSON event per line to this file.
    #[arg(long, value_name = "FILE.jsonl")]
    pub events: Option<PathBuf>,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// After Ctrl-C, how long running commands get after SIGTERM before SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
    /// No per-stage lines, forwarded stderr or summary table; only the final line and errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Never draw the progress bar (it is drawn only when stderr is a terminal anyway).
    #[arg(long)]
    pub no_progress: bool,
}

/// `stageflow check FILE`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The pipeline file (TOML).
    pub file: PathBuf,
    /// Print the result as JSON on stdout: `{"valid": true, ...}` or `{"valid": false, "errors": [...]}`.
    #[arg(long)]
    pub json: bool,
}

/// `stageflow graph FILE --format dot|mermaid`.
#[derive(Debug, Clone, clap::Args)]
pub struct GraphArgs {
    /// The pipeline file (TOML).
    pub file: PathBuf,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value = "dot")]
    pub format: GraphFormat,
}

/// `stageflow generate --stages N`: prints a generated chain pipeline (for scale tests).
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// Number of stages.
    #[arg(long, default_value_t = 1000)]
    pub stages: usize,
    /// Write to this file instead of stdout.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
}

/// Runs `stageflow run`: exit code 0, 1 (a stage or cleanup failed), 2 (invalid file) or 130
/// (interrupted).
pub fn run(args: &RunArgs, rt: &tokio::runtime::Runtime) -> ExitCode {
    super::run::run(args, rt)
}

/// Runs `stageflow check`: exit code 0 when valid, 2 when not (every problem printed on stderr).
pub fn check(args: &CheckArgs) -> ExitCode {
    let started = std::time::Instant::now();
    match load(&args.file) {
        Ok(p) => {
            let children = p.children.len();
            if args.json {
                println!(
                    "{}",
                    json!({"valid": true, "pipeline": p.name(), "stages": p.len(), "child_pipelines": children})
                );
            } else {
                eprintln!(
                    "{}: pipeline `{}` is valid: {} stage{}{} (checked in {})",
                    args.file.display(),
                    p.name(),
                    p.len(),
                    if p.len() == 1 { "" } else { "s" },
                    if children > 0 {
                        format!(", {children} child pipeline(s)")
                    } else {
                        String::new()
                    },
                    super::duration::human(started.elapsed())
                );
            }
            ExitCode::from(EXIT_OK)
        }
        Err(diags) => {
            if args.json {
                println!("{}", diags.to_json());
            }
            eprintln!("{}", diags.render());
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// Runs `stageflow graph`: the DAG on stdout; exit code 2 when the file is invalid.
pub fn graph(args: &GraphArgs) -> ExitCode {
    match load(&args.file) {
        Ok(p) => {
            print!("{}", graph_export::render(&p, args.format));
            ExitCode::from(EXIT_OK)
        }
        Err(diags) => {
            eprintln!("{}", diags.render());
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// Runs `stageflow generate`.
pub fn generate(args: &GenerateArgs) -> ExitCode {
    let text = super::generate::chain(args.stages);
    match &args.output {
        Some(path) => match std::fs::write(path, text) {
            Ok(()) => ExitCode::from(EXIT_OK),
            Err(e) => {
                eprintln!("error: cannot write {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::from(EXIT_OK),
                Err(_) => ExitCode::FAILURE,
            }
        }
    }
}
