//! The parsed form of a pipeline file, with the source position of everything that can be wrong.
//!
//! See `docs/pipeline-files.md` for the format itself. In short:
//!
//! ```toml
//! [pipeline]
//! name = "release"
//!
//! [stages.build]
//! run = "make build && printf '{\"version\": \"1.2.3\"}'"
//! timeout = "10m"
//!
//! [stages.package]
//! needs = ["build"]
//! cmd = ["tar", "czf", "app-{{ stages.build.version }}.tgz", "target/app"]
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use stageflow::StageKind;

use super::diag::{SourceFile, Span};
use super::expr::Expr;
use super::template::Template;

/// A whole pipeline file.
#[derive(Debug)]
pub struct PipelineDef {
    /// The file's text and path.
    pub source: Arc<SourceFile>,
    /// `[pipeline] name`, else the file stem.
    pub name: String,
    /// `[pipeline] description`.
    pub description: Option<String>,
    /// `[pipeline] max_parallel`: the default of `--max-parallel`.
    pub max_parallel: Option<usize>,
    /// `[pipeline] env`: set for every command of the pipeline.
    pub env: Vec<EnvVar>,
    /// `[pipeline] cleanup`: commands run after the run, whatever its outcome.
    pub cleanup: Vec<CommandLine>,
    /// `[pipeline] cleanup_timeout`: limit for each cleanup command (default 60 s).
    pub cleanup_timeout: Duration,
    /// The stages, in file order.
    pub stages: Vec<StageDef>,
    /// Span of the `[stages]` table (or the start of the file).
    pub stages_span: Span,
}

/// One `[stages.NAME]` table.
#[derive(Debug)]
pub struct StageDef {
    /// The name (the table key).
    pub name: String,
    /// Where the name is written.
    pub name_span: Span,
    /// `description`.
    pub description: Option<String>,
    /// `kind`.
    pub kind: Option<StageKind>,
    /// `needs`: names of stages (or of single matrix instances, `name[value]`) this one runs after.
    pub needs: Vec<(String, Span)>,
    /// What the stage runs.
    pub action: Action,
    /// `env`.
    pub env: Vec<EnvVar>,
    /// `dir`, relative to the pipeline file's directory.
    pub dir: Option<Template>,
    /// `timeout`, per attempt.
    pub timeout: Option<Duration>,
    /// `retries`: extra attempts after a failure.
    pub retries: u32,
    /// `retry_delay`: pause between attempts.
    pub retry_delay: Duration,
    /// `if`: run only when this holds.
    pub condition: Option<Condition>,
    /// `matrix`: one stage per combination of values.
    pub matrix: Option<Matrix>,
    /// `matrix` was given but is invalid (already reported): `matrix.KEY` references are not
    /// reported again.
    pub matrix_invalid: bool,
    /// `cleanup`: run after the whole run if this stage started.
    pub cleanup: Option<CommandLine>,
}

/// `NAME = "value"` in an `env` table. Values are templates.
#[derive(Debug)]
pub struct EnvVar {
    /// Variable name.
    pub name: String,
    /// Value, possibly with `{{ ... }}` references.
    pub value: Template,
}

/// What a stage runs.
#[derive(Debug)]
pub enum Action {
    /// A command: `run = "shell line"` or `cmd = ["program", "arg"]`.
    Command(CommandLine),
    /// `pipeline = "child.toml"`: a nested run of another pipeline file.
    Pipeline {
        /// The path as written (relative to this file's directory).
        path: String,
        /// Where it is written.
        span: Span,
    },
}

/// A command line: a shell line (`sh -c`) or an argument vector.
#[derive(Debug)]
pub enum CommandLine {
    /// Run by `sh -c`.
    Shell(Template),
    /// Program and arguments, no shell.
    Argv(Vec<Template>),
}

impl CommandLine {
    /// Every template of the command.
    pub fn templates(&self) -> Vec<&Template> {
        match self {
            CommandLine::Shell(t) => vec![t],
            CommandLine::Argv(args) => args.iter().collect(),
        }
    }
}

/// An `if` condition.
#[derive(Debug)]
pub struct Condition {
    /// The text as written.
    pub text: String,
    /// Where it is written (the whole string value).
    pub span: Span,
    /// The parsed expression.
    pub expr: Expr,
}

/// A `matrix` table: keys, each with a list of values; one stage instance per combination.
#[derive(Debug)]
pub struct Matrix {
    /// `(key, values)` in file order.
    pub axes: Vec<(String, Vec<Value>)>,
}

impl Matrix {
    /// Number of combinations.
    pub fn combinations(&self) -> usize {
        self.axes.iter().map(|(_, v)| v.len()).product()
    }

    /// The `i`-th combination: `(key, value)` pairs, first key varying slowest.
    pub fn combination(&self, mut i: usize) -> Vec<(String, Value)> {
        let mut out = vec![(String::new(), Value::Null); self.axes.len()];
        for (slot, (key, values)) in out.iter_mut().zip(&self.axes).rev() {
            let n = values.len();
            *slot = (key.clone(), values[i % n].clone());
            i /= n;
        }
        out
    }
}

/// The value of `key` in a matrix instance's values, if it has that key.
pub fn matrix_value<'a>(matrix: Option<&'a [(String, Value)]>, key: &str) -> Option<&'a Value> {
    matrix?.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// The text of a matrix value as it appears in instance names and templates.
pub fn matrix_value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The name of a matrix instance: `base[v1,v2]`.
pub fn instance_name(base: &str, combination: &[(String, Value)]) -> String {
    let mut name = String::with_capacity(base.len() + 8);
    name.push_str(base);
    name.push('[');
    for (i, (_, v)) in combination.iter().enumerate() {
        if i > 0 {
            name.push(',');
        }
        name.push_str(&matrix_value_text(v));
    }
    name.push(']');
    name
}
