//! `stageflow runs list|show|resume`: the runs `stageflow run` recorded in the run store (an
//! embedded SQLite file, `.stageflow/runs.db` in the working directory by default).
//!
//! - `list`: the most recent runs, newest first;
//! - `show RUN_ID`: one run and its committed stages;
//! - `resume RUN_ID`: re-opens the run's pipeline file and continues the run through the
//!   library's [`Graph::resume`](stageflow::Graph::resume): committed stages are restored with
//!   their recorded outputs, the others run.
//!
//! A run id may be abbreviated to any unambiguous prefix. Exit codes: `0` ok; `2` the store, the
//! run id or the pipeline file does not allow the command (nothing was changed); `resume` then
//! exits like `stageflow run` (0, 1, 130).

pub mod record;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Subcommand;
use serde_json::{json, Value};
use stageflow::observe::Rfc3339;
use stageflow::store::{RunRecord, RunState, RunStore, StageRecord};
use stageflow::StageStatus;

use crate::pipeline_file::cli::{ExecutionArgs, RunArgs};
use crate::pipeline_file::duration::human;
use crate::pipeline_file::lower::build_shape;
use crate::pipeline_file::run::{run_loaded, Recording};
use crate::pipeline_file::{load, EXIT_INVALID, EXIT_OK};
use record::{is_locked, resolve, RunInfo, RunLock};

/// Where runs are recorded unless `--store` says otherwise (relative to the working directory).
pub const DEFAULT_STORE: &str = ".stageflow/runs.db";

/// Recorded stages listed one by one by `show`; bigger runs show counts and the slowest ones.
const SHOW_ALL_UP_TO: usize = 40;
const SHOW_SLOWEST: usize = 15;

/// `stageflow runs ...`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunsArgs {
    /// The run store.
    #[arg(long, global = true, value_name = "PATH", default_value = DEFAULT_STORE)]
    pub store: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: RunsCommand,
}

/// The `runs` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum RunsCommand {
    /// List recorded runs, newest first.
    List(ListArgs),
    /// Show one run and its recorded stages.
    Show(ShowArgs),
    /// Resume a failed, cancelled or crashed run: only the stages not committed run again.
    Resume(ResumeArgs),
}

/// `stageflow runs list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Most runs listed.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub limit: usize,
    /// Print a JSON array on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `stageflow runs show RUN_ID`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// The run id, or an unambiguous prefix of it.
    pub run_id: String,
    /// Print a JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `stageflow runs resume RUN_ID`.
#[derive(Debug, Clone, clap::Args)]
pub struct ResumeArgs {
    /// The run id, or an unambiguous prefix of it.
    pub run_id: String,
    /// Resume even if the pipeline file changed since the run started (committed stages keep
    /// their recorded outputs and are not run again).
    #[arg(long)]
    pub force: bool,
    /// How the resumed run executes and reports (the same flags as `stageflow run`).
    #[command(flatten)]
    pub exec: ExecutionArgs,
}

/// Runs `stageflow runs ...`.
pub fn main(args: &RunsArgs, rt: &tokio::runtime::Runtime) -> ExitCode {
    let result = match &args.command {
        RunsCommand::List(a) => list(args, a),
        RunsCommand::Show(a) => show(args, a),
        RunsCommand::Resume(a) => resume(args, a, rt),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

/// `2024-05-01 12:00:00Z`.
fn when(t: SystemTime) -> String {
    let s = Rfc3339(t).to_string();
    format!("{}Z", s[..19].replace('T', " "))
}

/// How a run is shown.
struct Shown {
    /// Its status, except that a run marked `running` whose process is gone shows as `crashed`.
    status: &'static str,
    crashed: bool,
    /// Until its last change, or until now while it runs.
    duration: Duration,
}

impl Shown {
    fn of(store: &std::path::Path, run: &RunRecord) -> Self {
        let running = run.status == RunState::Running;
        let crashed = running && !is_locked(store, run.run_id);
        let end = if running && !crashed {
            SystemTime::now()
        } else {
            run.updated_at
        };
        Shown {
            status: if crashed {
                "crashed"
            } else {
                run.status.as_str()
            },
            crashed,
            duration: end.duration_since(run.created_at).unwrap_or_default(),
        }
    }
}

fn summary_json(run: &RunRecord, shown: &Shown, info: Option<&RunInfo>, recorded: u64) -> Value {
    json!({
        "run_id": run.run_id.to_string(),
        "pipeline": run.pipeline,
        "file": info.map(|i| i.file.display().to_string()),
        "status": run.status.as_str(),
        "shown_status": shown.status,
        "crashed": shown.crashed,
        "error": run.error,
        "started_at": Rfc3339(run.created_at).to_string(),
        "updated_at": Rfc3339(run.updated_at).to_string(),
        "duration_ms": shown.duration.as_millis() as u64,
        "stages_recorded": recorded,
        "stages_total": info.map(|i| i.stages),
    })
}

fn list(args: &RunsArgs, a: &ListArgs) -> Result<ExitCode, String> {
    let store = record::open_store_read(&args.store)?;
    let runs = store
        .list_runs(a.limit)
        .map_err(|e| format!("{}: {e}", args.store.display()))?;
    let mut rows = Vec::with_capacity(runs.len());
    for run in &runs {
        let recorded = store
            .count_stages(run.run_id)
            .map_err(|e| format!("{}: {e}", args.store.display()))?;
        rows.push((
            run,
            Shown::of(&args.store, run),
            RunInfo::from_input(&run.input),
            recorded,
        ));
    }
    if a.json {
        let rows = rows
            .iter()
            .map(|(run, shown, info, recorded)| summary_json(run, shown, info.as_ref(), *recorded))
            .collect();
        println!("{}", Value::Array(rows));
        return Ok(ExitCode::from(EXIT_OK));
    }
    if rows.is_empty() {
        eprintln!("no runs recorded in {}", args.store.display());
        return Ok(ExitCode::from(EXIT_OK));
    }
    let table: Vec<[String; 6]> = rows
        .iter()
        .map(|(run, shown, info, recorded)| {
            [
                run.run_id.to_string(),
                run.pipeline.clone(),
                shown.status.to_owned(),
                when(run.created_at),
                human(shown.duration),
                format!(
                    "{recorded}/{}",
                    info.as_ref()
                        .map_or_else(|| "?".to_owned(), |i| i.stages.to_string())
                ),
            ]
        })
        .collect();
    print!(
        "{}",
        render_table(
            &["RUN ID", "PIPELINE", "STATUS", "STARTED", "DURATION", "STAGES"],
            &table
        )
    );
    Ok(ExitCode::from(EXIT_OK))
}

/// Left-aligned columns, two spaces apart.
fn render_table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) -> String {
    let mut width = head.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(&format!("{cell:<w$}"));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(head.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn stage_note(s: &StageRecord) -> Option<String> {
    s.error.clone().or_else(|| {
        s.output
            .as_ref()
            .filter(|o| o.status() != StageStatus::Ok)
            .and_then(|o| o.message().map(str::to_owned))
    })
}

fn status_name(s: StageStatus) -> &'static str {
    match s {
        StageStatus::Ok => "ok",
        StageStatus::Skip => "skipped",
        StageStatus::Fail => "failed",
        StageStatus::Retry => "failed (retryable)",
        StageStatus::Cancel => "cancelled",
    }
}

/// `12 ok, 3 skipped, 1 failed`: the count of each status present, in a fixed order.
fn status_counts(stages: &[StageRecord]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for s in stages {
        let name = status_name(s.status);
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    let order = |n: &str| {
        ["ok", "skipped", "failed", "failed (retryable)", "cancelled"]
            .iter()
            .position(|o| *o == n)
    };
    counts.sort_by_key(|(n, _)| order(n));
    counts
        .iter()
        .map(|(n, c)| format!("{c} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The stages of the run's pipeline file that have no record (when the file can be read).
fn not_recorded(info: Option<&RunInfo>, recorded: &HashSet<&str>) -> Option<Vec<String>> {
    let loaded = load(&info?.file).ok()?;
    Some(
        loaded
            .stage_names()
            .filter(|n| !recorded.contains(n))
            .map(str::to_owned)
            .collect(),
    )
}

fn show(args: &RunsArgs, a: &ShowArgs) -> Result<ExitCode, String> {
    let store = record::open_store_read(&args.store)?;
    let run = resolve(&store, &args.store, &a.run_id)?;
    let stages = store
        .load_stages(run.run_id)
        .map_err(|e| format!("{}: {e}", args.store.display()))?;
    let info = RunInfo::from_input(&run.input);
    let names: HashSet<&str> = stages.iter().map(|s| s.stage.as_str()).collect();
    let missing = not_recorded(info.as_ref(), &names);
    if a.json {
        let mut out = summary_json(
            &run,
            &Shown::of(&args.store, &run),
            info.as_ref(),
            stages.len() as u64,
        );
        out["fingerprint"] = run.fingerprint.clone().into();
        out["store"] = args.store.display().to_string().into();
        out["stages"] = stages
            .iter()
            .map(|s| {
                json!({
                    "name": s.stage,
                    "status": status_name(s.status),
                    "duration_ms": s.duration_ms,
                    "attempts": s.attempts,
                    "started_at": Rfc3339(s.started_at).to_string(),
                    "note": stage_note(s),
                })
            })
            .collect();
        out["not_recorded"] = missing.map_or(Value::Null, |m| m.into());
        println!("{out}");
        return Ok(ExitCode::from(EXIT_OK));
    }
    let shown = Shown::of(&args.store, &run);
    let mut out = String::new();
    out.push_str(&format!("run       {}\n", run.run_id));
    out.push_str(&format!(
        "pipeline  {}{}\n",
        run.pipeline,
        info.as_ref()
            .map(|i| format!(" ({})", i.file.display()))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "status    {}{}{}\n",
        shown.status,
        if shown.crashed {
            " (marked running, but no process is executing it)"
        } else {
            ""
        },
        run.error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    ));
    out.push_str(&format!("started   {}\n", when(run.created_at)));
    out.push_str(&format!("updated   {}\n", when(run.updated_at)));
    out.push_str(&format!("duration  {}\n", human(shown.duration)));
    out.push_str(&format!(
        "stages    {} recorded of {}\n",
        stages.len(),
        info.as_ref()
            .map_or_else(|| "?".to_owned(), |i| i.stages.to_string())
    ));
    out.push_str(&format!("store     {}\n", args.store.display()));
    let mut chosen: Vec<&StageRecord> = stages.iter().collect();
    if stages.len() > SHOW_ALL_UP_TO {
        out.push_str(&format!(
            "\n{} stages recorded ({}); the {SHOW_SLOWEST} slowest:\n",
            stages.len(),
            status_counts(&stages)
        ));
        chosen.sort_by_key(|s| std::cmp::Reverse(s.duration_ms));
        chosen.truncate(SHOW_SLOWEST);
    } else if !stages.is_empty() {
        out.push_str("\nrecorded stages:\n");
    }
    if !chosen.is_empty() {
        let rows: Vec<[String; 5]> = chosen
            .iter()
            .map(|s| {
                [
                    format!("  {}", s.stage),
                    status_name(s.status).to_owned(),
                    human(s.duration()),
                    s.attempts.to_string(),
                    stage_note(s).unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &["  STAGE", "STATUS", "DURATION", "ATTEMPTS", "NOTE"],
            &rows,
        ));
    }
    if let Some(missing) = missing.filter(|m| !m.is_empty()) {
        let shown: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
        out.push_str(&format!(
            "\nnot recorded ({}; they run on resume): {}{}\n",
            missing.len(),
            shown.join(", "),
            if missing.len() > 10 { ", ..." } else { "" }
        ));
    }
    print!("{out}");
    Ok(ExitCode::from(EXIT_OK))
}

fn resume(
    args: &RunsArgs,
    a: &ResumeArgs,
    rt: &tokio::runtime::Runtime,
) -> Result<ExitCode, String> {
    let store = record::open_store(&args.store)?;
    let run = resolve(&store, &args.store, &a.run_id)?;
    let id = run.run_id;
    let info = RunInfo::from_input(&run.input).ok_or_else(|| {
        format!(
            "run {id} was not recorded by `stageflow run` (its record names no pipeline file); it cannot be resumed from the command line"
        )
    })?;
    if run.status == RunState::Completed {
        let msg = format!(
            "run {id} of pipeline `{}` already completed; nothing to resume",
            run.pipeline
        );
        if a.exec.json {
            println!(
                "{}",
                json!({"run_id": id.to_string(), "pipeline": run.pipeline, "status": "completed",
                       "exit_code": EXIT_OK, "resumed": false, "message": msg})
            );
        }
        eprintln!("{msg}");
        return Ok(ExitCode::from(EXIT_OK));
    }
    if !info.file.is_file() {
        return Err(format!(
            "cannot resume run {id}: its pipeline file {} no longer exists",
            info.file.display()
        ));
    }
    let loaded = match load(&info.file) {
        Ok(l) => l,
        Err(diags) => {
            eprintln!("{}", diags.render());
            return Err(format!(
                "cannot resume run {id}: its pipeline file {} is no longer valid (see above)",
                info.file.display()
            ));
        }
    };
    let current = RunInfo::of(&loaded);
    let mut changes = Vec::new();
    let shape_changed = build_shape(&loaded)
        .map(|g| g.fingerprint().to_string() != run.fingerprint)
        .unwrap_or(true);
    if shape_changed {
        changes.push("its stages or their dependencies changed");
    }
    if current.commands_hash != info.commands_hash {
        changes.push("stage commands changed");
    }
    if changes.is_empty() && current.file_hash != info.file_hash {
        changes.push("its content changed (stages, dependencies and commands are the same)");
    }
    if !changes.is_empty() {
        let what = format!(
            "the pipeline file {} changed since run {id} started: {}",
            info.file.display(),
            changes.join("; ")
        );
        if !a.force {
            return Err(format!(
                "refusing to resume: {what}\n  hint: --force resumes anyway: committed stages keep their recorded outputs and do not run again"
            ));
        }
        eprintln!("warning: {what}; resuming anyway (--force)");
    }
    let lock = match RunLock::acquire(&args.store, id) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            return Err(format!(
                "run {id} is being executed by another stageflow process right now; wait for it to end (or stop it) before resuming"
            ))
        }
        Err(e) => {
            return Err(format!(
                "cannot create the run lock {}: {e}",
                record::lock_path(&args.store, id).display()
            ))
        }
    };
    let mut committed = HashSet::new();
    store
        .for_each_stage_state(id, &mut |name, status| {
            if matches!(status, StageStatus::Ok | StageStatus::Skip) {
                committed.insert(name.to_owned());
            }
        })
        .map_err(|e| format!("{}: {e}", args.store.display()))?;
    let restored: Vec<usize> = loaded
        .stage_names()
        .enumerate()
        .filter(|(_, n)| committed.contains(*n))
        .map(|(i, _)| i)
        .collect();
    let run_args = RunArgs {
        file: info.file.clone(),
        exec: a.exec.clone(),
        store: args.store.clone(),
        no_record: false,
    };
    let recording = Recording::Resume {
        store: std::sync::Arc::new(store),
        path: args.store.clone(),
        run_id: id,
        restored,
        force: a.force,
        lock,
    };
    Ok(run_loaded(&run_args, loaded, recording, rt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counts_name_each_status_once_in_a_fixed_order() {
        let run = uuid::Uuid::now_v7();
        let records: Vec<StageRecord> = [
            StageStatus::Fail,
            StageStatus::Ok,
            StageStatus::Skip,
            StageStatus::Ok,
            StageStatus::Retry,
            StageStatus::Cancel,
        ]
        .into_iter()
        .enumerate()
        .map(|(i, status)| StageRecord::new(run, format!("s{i}"), status))
        .collect();
        assert_eq!(
            status_counts(&records),
            "2 ok, 1 skipped, 1 failed, 1 failed (retryable), 1 cancelled"
        );
        assert_eq!(status_counts(&records[1..2]), "1 ok");
    }
}
