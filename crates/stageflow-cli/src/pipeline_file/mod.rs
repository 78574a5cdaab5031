//! Pipeline files: the `stageflow run`, `check` and `graph` commands.
//!
//! A pipeline file is TOML (YAML is not supported: the maintained Rust YAML parsers are not in a
//! state we want to depend on, and one format keeps error positions and docs simple). The format
//! is described in `docs/pipeline-files.md`; in short:
//!
//! ```toml
//! [pipeline]
//! name = "build-test-package"
//!
//! [stages.build]
//! run = "printf '{\"version\": \"1.2.3\"}'"
//!
//! [stages.test]
//! needs = ["build"]
//! cmd = ["echo", "testing {{ stages.build.version }}"]
//! timeout = "30s"
//! retries = 1
//! ```
//!
//! The pieces:
//! - [`diag`]: positions (`file:line:column`) and rendering of problems;
//! - `parse` (TOML -> `format` types, every problem collected), `template` and `expr` (the
//!   `{{ ... }}` and `if` mini-languages), `check` (references, matrices, unreachable stages,
//!   child pipelines) and `lower` (-> `stageflow::Pipeline`, library errors mapped to positions);
//! - `command_stage` (the `stageflow::Stage` that runs a process or a child pipeline), `process`
//!   (process groups, output capture, SIGTERM/SIGKILL), `policy` (timeouts and retries),
//!   `control` (interrupts), `runtime` (a run: records, events, cleanup), `events` (JSONL),
//!   `progress` (the progress bar);
//! - [`cli`]: the commands' arguments and entry points; [`graph_export`]: dot and Mermaid;
//!   [`generate`]: generated pipelines for scale tests.

mod check;
pub mod cli;
mod command_stage;
mod control;
pub mod diag;
pub(crate) mod duration;
pub(crate) mod events;
mod expr;
pub(crate) mod format;
pub mod generate;
pub mod graph_export;
pub(crate) mod lower;
mod parse;
mod policy;
mod process;
mod progress;
pub(crate) mod run;
mod runtime;
mod template;

pub use check::{load, load_str, LoadedPipeline, MAX_DEPTH};
pub use diag::{Diagnostic, Diagnostics, SourceFile};
pub use duration::parse_duration;
pub use run::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK};
