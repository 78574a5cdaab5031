//! `stageflow run FILE`: progress, summary, `--json`, `--events`, exit codes and signals.
//!
//! Exit codes: `0` every stage succeeded or was skipped (and cleanup succeeded); `1` a stage (or
//! a cleanup command) failed; `2` the pipeline file is invalid; `130` the run was interrupted.
//!
//! Ctrl-C (or SIGTERM) once: no new stage starts, every running command's process group gets
//! SIGTERM, and the run ends when they have exited, or after `--grace` (default 5 s), when what is
//! still running is SIGKILLed; cleanup then runs, and the exit code is 130. Ctrl-C again: every
//! command is SIGKILLed and `stageflow` exits at once with 130, skipping cleanup.
//!
//! Unless `--no-record` is given, the run is recorded in the run store (`--store`, default
//! `.stageflow/runs.db`): it runs through the library's durable executor, which commits every
//! finished stage (group commit: at most [`COMMIT_EVERY_STAGES`] stages or
//! [`COMMIT_EVERY_MS`] ms after a stage finished), so `stageflow runs resume` can continue it
//! after a failure, a Ctrl-C or a crash without running the committed stages again.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use serde_json::{json, Value};
use stageflow::durable::{Checkpoint, Durability};
use stageflow::{CancellationToken, RunIdentity, RunStatus};
use stageflow_store::SqliteStore;
use tokio::runtime::Runtime;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::runs::record::{self, RunInfo, RunLock};

use super::check::{load, LoadedPipeline};
use super::cli::RunArgs;
use super::control::Control;
use super::duration::human;
use super::events::EventLog;
use super::progress::Reporter;
use super::runtime::{self, DurableSetup, Outcome, PipelineRun, Record, RunEnv, State};

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: a stage (or cleanup) failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the pipeline file is invalid.
pub const EXIT_INVALID: u8 = 2;
/// Exit code: interrupted.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Stages listed one by one in the summary; bigger pipelines show the slowest ones.
const SUMMARY_ALL_UP_TO: usize = 40;
const SUMMARY_SLOWEST: usize = 15;

/// Group commit of recorded runs: a transaction at most every this many finished stages...
pub const COMMIT_EVERY_STAGES: usize = 256;
/// ...or this many milliseconds after the first uncommitted stage finished. A crash makes at most
/// the stages finished in the last 50 ms run again on resume.
pub const COMMIT_EVERY_MS: u64 = 50;

/// How a run is recorded in the run store.
pub(crate) enum Recording {
    /// `--no-record`.
    Off,
    /// A new run.
    New {
        store: Arc<SqliteStore>,
        path: PathBuf,
    },
    /// `stageflow runs resume`: continue run `run_id`; the stages at `restored` are committed.
    Resume {
        store: Arc<SqliteStore>,
        path: PathBuf,
        run_id: Uuid,
        restored: Vec<usize>,
        force: bool,
        lock: RunLock,
    },
}

/// Prints the file's problems; exit code 2.
pub(crate) fn invalid(args: &RunArgs, diags: &super::Diagnostics) -> ExitCode {
    if args.exec.json {
        println!(
            "{}",
            json!({"status": "invalid", "exit_code": EXIT_INVALID, "errors": diags.to_json()["errors"]})
        );
    }
    eprintln!("{}", diags.render());
    ExitCode::from(EXIT_INVALID)
}

/// Runs `stageflow run`.
pub fn run(args: &RunArgs, rt: &Runtime) -> ExitCode {
    let loaded = match load(&args.file) {
        Ok(l) => l,
        Err(diags) => return invalid(args, &diags),
    };
    let recording = if args.no_record {
        Recording::Off
    } else {
        match record::open_store(&args.store) {
            Ok(store) => Recording::New {
                store: Arc::new(store),
                path: args.store.clone(),
            },
            Err(e) => {
                eprintln!(
                    "error: {e}
  (or run with --no-record)"
                );
                return ExitCode::from(EXIT_INVALID);
            }
        }
    };
    run_loaded(args, loaded, recording, rt)
}

/// `stageflow runs resume ...` with the store, for the resume hint.
fn resume_command(run_id: &str, store: &Path) -> String {
    if store == Path::new(crate::runs::DEFAULT_STORE) {
        format!("stageflow runs resume {run_id}")
    } else {
        format!("stageflow runs resume {run_id} --store {}", store.display())
    }
}

/// Runs a loaded pipeline file: `stageflow run` and `stageflow runs resume`.
pub(crate) fn run_loaded(
    args: &RunArgs,
    loaded: Arc<LoadedPipeline>,
    recording: Recording,
    rt: &Runtime,
) -> ExitCode {
    let mut identity = RunIdentity::new();
    if let Recording::Resume { run_id, .. } = &recording {
        identity.run_id = *run_id;
    }
    let run_id = identity.run_id.to_string();
    let mut _lock = None;
    let (durable, store_path, restored) = match recording {
        Recording::Off => (None, None, Vec::new()),
        Recording::New { store, path } => {
            _lock = RunLock::acquire(&path, identity.run_id).ok().flatten();
            let setup = DurableSetup {
                checkpoint: Checkpoint::new(store)
                    .durability(Durability::group(COMMIT_EVERY_STAGES, COMMIT_EVERY_MS)),
                input: RunInfo::of(&loaded).to_input(),
                resume: false,
            };
            (Some(setup), Some(path), Vec::new())
        }
        Recording::Resume {
            store,
            path,
            restored,
            force,
            lock,
            ..
        } => {
            _lock = Some(lock);
            let setup = DurableSetup {
                checkpoint: Checkpoint::new(store)
                    .durability(Durability::group(COMMIT_EVERY_STAGES, COMMIT_EVERY_MS))
                    .force_resume(force),
                input: Value::Null,
                resume: true,
            };
            (Some(setup), Some(path), restored)
        }
    };
    let resumed = durable.as_ref().is_some_and(|d| d.resume);
    let events = match &args.exec.events {
        Some(path) => match EventLog::create(path, identity.run_id) {
            Ok(log) => Some(Arc::new(log)),
            Err(e) => {
                eprintln!(
                    "error: cannot create the events file {}: {e}",
                    path.display()
                );
                return ExitCode::from(EXIT_INVALID);
            }
        },
        None => None,
    };
    let max_parallel = args
        .exec
        .max_parallel
        .or(loaded.def.max_parallel)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let show_bar = !args.exec.no_progress && !args.exec.quiet && std::io::stderr().is_terminal();
    let reporter = Arc::new(Reporter::new(loaded.len(), show_bar, args.exec.quiet));
    let env = Arc::new(RunEnv {
        control: Arc::new(Control::new()),
        events,
        reporter: reporter.clone(),
        permits: Arc::new(Semaphore::new(max_parallel)),
        max_parallel,
        grace: args.exec.grace,
        identity,
        run_id: run_id.clone(),
        pipeline: loaded.name().to_owned(),
        scratch: std::env::temp_dir().join(format!("stageflow-{run_id}")),
        file_counter: AtomicU64::new(0),
        start_seq: AtomicU64::new(0),
        durable,
    });
    let token = CancellationToken::new();
    let top = Arc::new(PipelineRun::new(
        env.clone(),
        loaded.clone(),
        String::new(),
        0,
        Vec::new(),
    ));
    for &i in &restored {
        top.mark_restored(i);
    }
    if let Some(store) = &store_path {
        if resumed {
            reporter.notice(&format!(
                "resuming run {run_id} of pipeline `{}`: {} of {} stages restored from {}, {} to run",
                loaded.name(),
                restored.len(),
                loaded.len(),
                store.display(),
                loaded.len() - restored.len()
            ));
        } else if !args.exec.quiet {
            reporter.line(&format!("run {run_id} (recorded in {})", store.display()));
        }
    }
    let outcome = rt.block_on(async {
        let signals = tokio::spawn(handle_signals(env.clone(), token.clone()));
        let outcome = runtime::execute(top.clone(), token).await;
        signals.abort();
        outcome
    });
    reporter.finish();
    let _ = std::fs::remove_dir_all(&env.scratch);
    let interrupted = env.control.is_interrupted();
    let events_error = env.events.as_ref().and_then(|e| rt.block_on(e.close()));
    let durable = outcome.durable.clone();
    let record_error = durable.as_ref().and_then(|d| d.error.clone());
    if let Some(d) = durable.as_ref().filter(|d| !d.started) {
        // The store refused before anything ran.
        eprintln!(
            "error: {}
  (or run with --no-record)",
            d.error.as_deref().unwrap_or("the run store failed")
        );
        if args.exec.json {
            println!(
                "{}",
                json!({"run_id": run_id, "status": "failed", "exit_code": EXIT_FAILED, "error": d.error})
            );
        }
        return ExitCode::from(EXIT_FAILED);
    }
    let code = exit_code(
        &outcome,
        interrupted,
        events_error.is_some() || record_error.is_some(),
    );
    let records = top.records().clone();
    if !args.exec.quiet {
        eprint!("{}", summary_table(&loaded, &records));
    }
    for c in outcome.cleanup_failures() {
        eprintln!(
            "cleanup failed: {}`{}`: {}",
            c.stage
                .as_deref()
                .map(|s| format!("stage `{s}`: "))
                .unwrap_or_default(),
            c.command,
            c.error.as_deref().unwrap_or("")
        );
    }
    if let Some(e) = &events_error {
        eprintln!("error: {e}");
    }
    if let Some(e) = &record_error {
        eprintln!("error: {e}");
    }
    let mut last = final_line(&loaded, &outcome, &records, interrupted);
    if let Some(d) = &durable {
        if resumed {
            let ran = records
                .iter()
                .filter(|r| !matches!(r.state, State::Restored | State::NotRun))
                .count();
            last.push_str(&format!(
                "; run {run_id} resumed: {} restored, {ran} run",
                d.restored
            ));
        } else {
            last.push_str(&format!("; run {run_id}"));
        }
    }
    eprintln!("{last}");
    if let Some(store) = store_path.as_ref().filter(|_| code != EXIT_OK) {
        eprintln!("resume with: {}", resume_command(&run_id, store));
    }
    if args.exec.json {
        let mut result = json_result(&args.file, &loaded, &outcome, &records, code, &run_id);
        result["recorded"] = Value::Bool(durable.is_some());
        if let (Some(store), Some(d)) = (&store_path, &durable) {
            result["store"] = store.display().to_string().into();
            result["resumed"] = resumed.into();
            result["restored"] = d.restored.into();
            result["record_error"] = d.error.clone().into();
        }
        println!("{result}");
    }
    ExitCode::from(code)
}

fn exit_code(outcome: &Outcome, interrupted: bool, events_failed: bool) -> u8 {
    if interrupted {
        return EXIT_INTERRUPTED;
    }
    match &outcome.result {
        Err(_) => EXIT_FAILED,
        Ok(r) if !r.is_completed() => EXIT_INTERRUPTED,
        Ok(_) if outcome.cleanup_failures().next().is_some() || events_failed => EXIT_FAILED,
        Ok(_) => EXIT_OK,
    }
}

async fn handle_signals(env: Arc<RunEnv>, token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        env.reporter.notice(
            "warning: cannot install signal handlers; Ctrl-C will stop stageflow without cleanup",
        );
        return;
    };
    let mut count = 0;
    loop {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        count += 1;
        if count == 1 {
            env.reporter.notice(&format!(
                "interrupted: stopping running stages (SIGTERM, SIGKILL after {}); press Ctrl-C again to stop at once",
                human(env.grace)
            ));
            env.control.interrupt();
            let token = token.clone();
            let grace = env.grace;
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                token.cancel();
            });
        } else {
            // The events file is ended first: writing it out takes a moment, during which the
            // commands must still be running, or the run could end (and clean up) meanwhile.
            if let Some(events) = &env.events {
                events.last(
                    events
                        .event(
                            stageflow::observe::EventKind::PipelineCancelled,
                            &env.pipeline,
                        )
                        .with_status("cancelled")
                        .with_error("interrupted twice: stopped at once, cleanup skipped"),
                    true,
                );
                events.close().await;
            }
            env.control.kill_all();
            env.reporter.finish();
            let _ = std::fs::remove_dir_all(&env.scratch);
            eprintln!("stageflow: interrupted twice: stopped at once; cleanup skipped");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    }
}

fn counts(records: &[Record]) -> [(State, usize); 6] {
    let mut c = [
        (State::Restored, 0),
        (State::Ok, 0),
        (State::Failed, 0),
        (State::Skipped, 0),
        (State::Cancelled, 0),
        (State::NotRun, 0),
    ];
    for r in records {
        let state = r.state.settled();
        if let Some(slot) = c.iter_mut().find(|(s, _)| *s == state) {
            slot.1 += 1;
        }
    }
    c
}

fn truncate(s: &str, n: usize) -> String {
    let first_line = s.lines().next().unwrap_or("");
    if first_line.chars().count() <= n {
        first_line.to_owned()
    } else {
        let mut t: String = first_line.chars().take(n.saturating_sub(3)).collect();
        t.push_str("...");
        t
    }
}

/// The table of stages: all of them for small pipelines; for big ones the slowest, plus every
/// failed one.
pub(crate) fn summary_table(loaded: &LoadedPipeline, records: &[Record]) -> String {
    let n = records.len();
    let mut rows: Vec<usize> = (0..n).collect();
    let mut heading = String::from("\nsummary:\n");
    if n > SUMMARY_ALL_UP_TO {
        rows.sort_by(|&a, &b| records[b].duration.cmp(&records[a].duration));
        let mut chosen: Vec<usize> = rows.iter().copied().take(SUMMARY_SLOWEST).collect();
        let failed: Vec<usize> = (0..n)
            .filter(|&i| records[i].state == State::Failed && !chosen.contains(&i))
            .take(10)
            .collect();
        chosen.extend(failed);
        rows = chosen;
        heading = format!(
            "\nsummary ({n} stages; the {} slowest shown):\n",
            SUMMARY_SLOWEST.min(n)
        );
    }
    let name_width = rows
        .iter()
        .map(|&i| loaded.instances[i].name.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 48);
    let mut out = heading;
    out.push_str(&format!(
        "  {:<name_width$}  {:<9}  {:>9}  {:>8}  NOTE\n",
        "STAGE", "STATUS", "DURATION", "ATTEMPTS"
    ));
    for i in rows {
        let r = &records[i];
        let row = format!(
            "  {:<name_width$}  {:<9}  {:>9}  {:>8}  {}",
            truncate(&loaded.instances[i].name, name_width),
            r.state.settled().label(),
            r.duration.map(human).unwrap_or_else(|| "-".into()),
            if r.attempts > 1 {
                r.attempts.to_string()
            } else {
                String::new()
            },
            r.note
                .as_deref()
                .map(|s| truncate(s, 80))
                .unwrap_or_default(),
        );
        out.push_str(row.trim_end());
        out.push('\n');
    }
    out
}

fn final_line(
    loaded: &LoadedPipeline,
    outcome: &Outcome,
    records: &[Record],
    interrupted: bool,
) -> String {
    let c = counts(records);
    let tally: Vec<String> = c
        .iter()
        .filter(|(_, k)| *k > 0)
        .map(|(s, k)| format!("{k} {}", s.label()))
        .collect();
    let (what, detail) = match &outcome.result {
        _ if interrupted => ("interrupted".to_owned(), None),
        Ok(r) => match r.status() {
            RunStatus::Completed if outcome.cleanup_failures().next().is_some() => (
                "failed".to_owned(),
                Some("a cleanup command failed".to_owned()),
            ),
            RunStatus::Completed => ("completed".to_owned(), None),
            RunStatus::Cancelled { reason, .. } => ("cancelled".to_owned(), Some(reason.clone())),
        },
        Err(f) => ("failed".to_owned(), Some(f.to_string())),
    };
    format!(
        "pipeline `{}` {what} in {} ({}){}",
        loaded.name(),
        human(outcome.duration),
        tally.join(", "),
        detail.map(|d| format!(": {d}")).unwrap_or_default()
    )
}

fn json_result(
    file: &Path,
    loaded: &LoadedPipeline,
    outcome: &Outcome,
    records: &[Record],
    code: u8,
    run_id: &str,
) -> Value {
    let results = outcome.results();
    let stages: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let name = &loaded.instances[i].name;
            let state = r.state.settled();
            let output = results
                .get(name)
                .filter(|o| o.is_ok())
                .map(|o| serde_json::to_value(o.data()).unwrap_or(Value::Null));
            json!({
                "name": name,
                "status": state.as_str(),
                "duration_ms": r.duration.map(|d| d.as_secs_f64() * 1000.0),
                "attempts": r.attempts,
                "error": (state == State::Failed).then(|| r.note.clone()).flatten(),
                "reason": (state != State::Failed).then(|| r.note.clone()).flatten(),
                "output": output,
            })
        })
        .collect();
    let c = counts(records);
    let status = match (&outcome.result, code) {
        (_, EXIT_INTERRUPTED) => "cancelled",
        (Err(_), _) => "failed",
        (Ok(_), EXIT_FAILED) => "failed",
        (Ok(r), _) if !r.is_completed() => "cancelled",
        _ => "completed",
    };
    json!({
        "run_id": run_id,
        "pipeline": loaded.name(),
        "file": file.display().to_string(),
        "status": status,
        "exit_code": code,
        "duration_ms": outcome.duration.as_secs_f64() * 1000.0,
        "failed_stage": outcome.result.as_ref().err().map(|f| f.stage().to_owned()),
        "error": outcome.result.as_ref().err().map(|f| f.to_string()),
        "counts": c.iter().map(|(s, k)| (s.as_str().to_owned(), Value::from(*k))).collect::<serde_json::Map<_, _>>(),
        "stages": stages,
        "cleanup": outcome.cleanup.iter().map(|c| json!({
            "stage": c.stage,
            "command": c.command,
            "status": if c.error.is_some() { "failed" } else { "ok" },
            "error": c.error,
            "duration_ms": c.duration.as_secs_f64() * 1000.0,
        })).collect::<Vec<_>>(),
    })
}
