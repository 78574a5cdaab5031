//! One run of a pipeline file (top-level or nested): builds the graph with command stages, runs
//! it, records what happened to every stage, emits events, and runs cleanup.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use stageflow::durable::{Checkpoint, DurableError};
use stageflow::observe::{Event, EventKind};
use stageflow::{
    CancellationToken, Graph, Results, Retention, RunFailure, RunIdentity, RunOptions, RunReport,
    RunStatus, Stage, StageOutput,
};
use tokio::sync::Semaphore;

use super::check::LoadedPipeline;
use super::command_stage::{self, ChildStage, CommandStage};
use super::control::Control;
use super::duration::human;
use super::events::{without_nulls, EventLog, StageEnd};
use super::format::Action;
use super::lower::{self, ConditionFn};
use super::process::{self, Ending, ProcSpec, RunOpts};
use super::progress::Reporter;

/// What every run and nested run of one `stageflow run` shares.
pub(crate) struct RunEnv {
    pub(crate) control: Arc<Control>,
    pub(crate) events: Option<Arc<EventLog>>,
    pub(crate) reporter: Arc<Reporter>,
    /// Commands running at once, across nested runs: `--max-parallel`.
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) max_parallel: usize,
    pub(crate) grace: Duration,
    pub(crate) identity: RunIdentity,
    pub(crate) run_id: String,
    /// The top-level pipeline's name.
    pub(crate) pipeline: String,
    /// Where `$STAGEFLOW_INPUTS` files are written; removed when the run ends.
    pub(crate) scratch: PathBuf,
    pub(crate) file_counter: AtomicU64,
    pub(crate) start_seq: AtomicU64,
    /// Set when the top-level run is recorded in a run store (`stageflow run` without
    /// `--no-record`, and `stageflow runs resume`).
    pub(crate) durable: Option<DurableSetup>,
}

/// How the top-level run is recorded.
pub(crate) struct DurableSetup {
    pub(crate) checkpoint: Checkpoint,
    /// The run's input (what `stageflow runs resume` needs to find the file again).
    pub(crate) input: Value,
    /// Resume run `identity.run_id` instead of starting it.
    pub(crate) resume: bool,
}

/// What recording did.
#[derive(Clone, Debug, Default)]
pub(crate) struct DurableSummary {
    /// Stages restored from the store (a resume).
    pub(crate) restored: usize,
    /// Stage records committed by this execution.
    pub(crate) committed: u64,
    /// The store failed: before the run started (`started == false`), or while recording.
    pub(crate) error: Option<String>,
    pub(crate) started: bool,
}

impl RunEnv {
    /// Emits the event `build` makes, when the run writes an events file.
    pub(crate) fn emit(&self, build: impl FnOnce(&EventLog) -> Event) {
        if let Some(events) = &self.events {
            events.emit(build(events));
        }
    }
}

/// What happened to one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    NotRun,
    Running,
    Ok,
    Failed,
    Skipped,
    Cancelled,
    /// Committed by an earlier execution of the run and restored from the store on resume.
    Restored,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::NotRun => "not_run",
            State::Running => "running",
            State::Ok => "ok",
            State::Failed => "failed",
            State::Skipped => "skipped",
            State::Cancelled => "cancelled",
            State::Restored => "restored",
        }
    }

    /// The state once the run is over: a stage still running then was cut short.
    pub(crate) fn settled(self) -> State {
        match self {
            State::Running => State::Cancelled,
            other => other,
        }
    }

    /// The state in text for people (`not run` rather than `not_run`).
    pub(crate) fn label(self) -> &'static str {
        match self {
            State::NotRun => "not run",
            other => other.as_str(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub(crate) state: State,
    pub(crate) started: Option<Instant>,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) duration: Option<Duration>,
    pub(crate) attempts: u32,
    /// The error, skip reason or cancel reason.
    pub(crate) note: Option<String>,
    /// Start order, for last-started-first cleanup.
    pub(crate) seq: u64,
    /// Set when the stage started work and has a `cleanup` command: its environment and directory.
    pub(crate) cleanup: Option<(Vec<(String, String)>, PathBuf)>,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            state: State::NotRun,
            started: None,
            started_at: None,
            duration: None,
            attempts: 0,
            note: None,
            seq: 0,
            cleanup: None,
        }
    }
}

/// One cleanup command's result.
#[derive(Clone, Debug)]
pub(crate) struct CleanupReport {
    /// The stage it belongs to, or `None` for the pipeline's own cleanup.
    pub(crate) stage: Option<String>,
    pub(crate) command: String,
    pub(crate) error: Option<String>,
    pub(crate) duration: Duration,
}

/// One run of one pipeline file.
pub(crate) struct PipelineRun {
    pub(crate) env: Arc<RunEnv>,
    pub(crate) loaded: Arc<LoadedPipeline>,
    /// `""` at the top; `"stage/"` for the child pipeline of `stage`.
    pub(crate) prefix: String,
    pub(crate) depth: usize,
    /// Environment handed down from parent pipelines.
    pub(crate) inherited_env: Vec<(String, String)>,
    records: Mutex<Vec<Record>>,
}

/// How a run ended, with its cleanup.
pub(crate) struct Outcome {
    pub(crate) result: Result<RunReport, RunFailure>,
    pub(crate) cleanup: Vec<CleanupReport>,
    pub(crate) duration: Duration,
    /// For a recorded top-level run.
    pub(crate) durable: Option<DurableSummary>,
}

/// The outputs a run ended with: all of them, or the partial results of a failed run.
fn results_of(result: &Result<RunReport, RunFailure>) -> &Results {
    match result {
        Ok(r) => r.results(),
        Err(f) => f.partial_results(),
    }
}

impl Outcome {
    pub(crate) fn results(&self) -> &Results {
        results_of(&self.result)
    }

    pub(crate) fn cleanup_failures(&self) -> impl Iterator<Item = &CleanupReport> {
        self.cleanup.iter().filter(|c| c.error.is_some())
    }
}

fn status_line(state: State, name: &str, duration: Option<Duration>, note: Option<&str>) -> String {
    let label = match state {
        State::Ok => "    ok",
        State::Failed => "FAILED",
        State::Skipped => "  skip",
        State::Cancelled => "  stop",
        State::NotRun | State::Running | State::Restored => "     -",
    };
    let mut line = format!("{label}  {name}");
    if let Some(d) = duration {
        line.push_str(&format!(" ({})", human(d)));
    }
    if let Some(n) = note {
        line.push_str(": ");
        line.push_str(n);
    }
    line
}

impl PipelineRun {
    pub(crate) fn new(
        env: Arc<RunEnv>,
        loaded: Arc<LoadedPipeline>,
        prefix: String,
        depth: usize,
        inherited_env: Vec<(String, String)>,
    ) -> Self {
        let records = vec![Record::default(); loaded.len()];
        PipelineRun {
            env,
            loaded,
            prefix,
            depth,
            inherited_env,
            records: Mutex::new(records),
        }
    }

    pub(crate) fn records(&self) -> MutexGuard<'_, Vec<Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_top(&self) -> bool {
        self.prefix.is_empty()
    }

    /// The stage's name as shown in events and output (`parent/child` for nested runs).
    pub(crate) fn full_name(&self, i: usize) -> String {
        format!("{}{}", self.prefix, self.loaded.instances[i].name)
    }

    /// A stage started its work.
    pub(crate) fn begin(&self, i: usize) {
        let name = self.full_name(i);
        let now = SystemTime::now();
        {
            let mut records = self.records();
            let r = &mut records[i];
            r.state = State::Running;
            r.started = Some(Instant::now());
            r.started_at = Some(now);
            r.seq = self.env.start_seq.fetch_add(1, Ordering::Relaxed);
        }
        self.env.reporter.stage_started(&name);
        self.env.emit(|ev| {
            ev.stage_event(EventKind::StageStarted, self.loaded.name(), &name)
                .with_status("running")
                .with_timestamp(now)
        });
    }

    /// A stage ended (`Ok`, `Failed`, `Cancelled`, or `Skipped` by its condition).
    pub(crate) fn finish(&self, i: usize, state: State, note: Option<String>, attempts: u32) {
        let name = self.full_name(i);
        let (duration, started_at) = {
            let mut records = self.records();
            let r = &mut records[i];
            r.state = state;
            r.duration = r.started.map(|s| s.elapsed());
            r.attempts = attempts;
            r.note = note.clone();
            (r.duration, r.started_at)
        };
        if let Some(events) = &self.env.events {
            // The library's event kinds and status names.
            let (kind, status) = match state {
                State::Ok => (EventKind::StageCompleted, "ok"),
                State::Failed => (EventKind::StageFailed, "fail"),
                State::Skipped => (EventKind::StageSkipped, "skip"),
                _ => (EventKind::StageCancelled, "cancel"),
            };
            let end = StageEnd {
                kind,
                status,
                started_at,
                duration,
                attempts,
                error: note.as_deref(),
            };
            events.stage_end(self.loaded.name(), &name, end);
        }
        let line = status_line(state, &name, duration, note.as_deref());
        self.env
            .reporter
            .stage_finished(&name, self.is_top(), &line);
    }

    /// Stage `i` was committed by an earlier execution of the run: it will not run.
    pub(crate) fn mark_restored(&self, i: usize) {
        let name = self.full_name(i);
        self.records()[i].state = State::Restored;
        self.env.emit(|ev| {
            let kind = EventKind::Custom(format!("stage.{name}.restored").into());
            ev.stage_event(kind, self.loaded.name(), &name)
                .with_status("restored")
        });
        self.env.reporter.advance(1);
    }

    pub(crate) fn set_cleanup_context(&self, i: usize, env: Vec<(String, String)>, dir: PathBuf) {
        self.records()[i].cleanup = Some((env, dir));
    }

    fn make_stage(self: &Arc<Self>, i: usize) -> (Arc<dyn Stage>, Option<ConditionFn>) {
        let def = self.loaded.stage_def(i);
        let stage: Arc<dyn Stage> = match def.action {
            Action::Command(_) => Arc::new(CommandStage {
                run: self.clone(),
                idx: i,
            }),
            Action::Pipeline { .. } => Arc::new(ChildStage {
                run: self.clone(),
                idx: i,
            }),
        };
        let condition = def.condition.as_ref().map(|_| {
            let run = self.clone();
            Box::new(move |inputs: &stageflow::ConditionInputs<'_>| {
                Ok(command_stage::evaluate_condition(&run, i, inputs))
            }) as ConditionFn
        });
        (stage, condition)
    }
}

/// Runs `run`'s pipeline to the end (cancelled by `token`), then its cleanup.
pub(crate) fn execute(
    run: Arc<PipelineRun>,
    token: CancellationToken,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send>> {
    Box::pin(async move {
        let started = Instant::now();
        let env = run.env.clone();
        let loaded = run.loaded.clone();
        let graph = match lower::build(&loaded, |i| run.make_stage(i)) {
            Ok(g) => g,
            Err(diags) => {
                // Cannot happen for a checked file; reported rather than assumed.
                return Outcome {
                    result: failed_run(loaded.name(), "invalid", diags.to_string()).await,
                    cleanup: Vec::new(),
                    duration: started.elapsed(),
                    durable: None,
                };
            }
        };
        let identity = if run.is_top() {
            env.identity.clone()
        } else {
            RunIdentity::new()
        };
        env.emit(|ev| {
            ev.event(EventKind::PipelineStarted, loaded.name())
                .with_data(without_nulls(json!({
                    "file": loaded.source().path().display().to_string(),
                    "stages": loaded.len(),
                    "parent_stage": (!run.is_top()).then(|| run.prefix.trim_end_matches('/').to_owned()),
                })))
        });
        let options = RunOptions::new()
            .identity(identity)
            .max_concurrency(env.max_parallel)
            .cancel_token(token)
            .retention(if run.is_top() {
                Retention::All
            } else {
                Retention::Sinks
            });
        let (result, durable) = match env.durable.as_ref().filter(|_| run.is_top()) {
            Some(setup) => {
                run_recorded(&graph, loaded.name(), setup, env.identity.run_id, options).await
            }
            None => (graph.run_with(Value::Null, options).await, None),
        };
        drop(graph);
        settle(&run, &result);
        let cleanup = run_cleanup(&run).await;
        let duration = started.elapsed();
        let (event, status, error) = match &result {
            Ok(r) => match r.status() {
                RunStatus::Completed => (EventKind::PipelineCompleted, "completed", None),
                RunStatus::Cancelled { reason, .. } => (
                    EventKind::PipelineCancelled,
                    "cancelled",
                    Some(reason.clone()),
                ),
            },
            Err(f) => (EventKind::PipelineFailed, "failed", Some(f.to_string())),
        };
        let failed_cleanups = cleanup.iter().filter(|c| c.error.is_some()).count();
        if let Some(events) = &env.events {
            let mut event = events
                .event(event, loaded.name())
                .with_status(status)
                .with_duration(duration)
                .with_data(without_nulls(json!({
                    "failed_stage": result.as_ref().err().map(|f| format!("{}{}", run.prefix, f.stage())),
                    "cleanup_failures": (failed_cleanups > 0).then_some(failed_cleanups),
                    "parent_stage": (!run.is_top()).then(|| run.prefix.trim_end_matches('/').to_owned()),
                })));
            event.error = error;
            if run.is_top() {
                events.last(event, false);
            } else {
                events.emit(event);
            }
        }
        Outcome {
            result,
            cleanup,
            duration,
            durable,
        }
    })
}

/// A failed run of a one-stage pipeline whose stage `stage` fails with `message`: how a run that
/// could not start is reported like any other failed run.
async fn failed_run(pipeline: &str, stage: &str, message: String) -> Result<RunReport, RunFailure> {
    stageflow::Pipeline::builder(pipeline)
        .stage(stage, move |_ctx: stageflow::StageContext| {
            let message = message.clone();
            async move { StageOutput::fail(message) }
        })
        .build()
        .expect("one-stage pipeline")
        .run(())
        .await
}

/// Runs (or resumes) the top-level graph through the durable executor, which commits every
/// finished stage to the store.
async fn run_recorded(
    graph: &Graph,
    pipeline: &str,
    setup: &DurableSetup,
    run_id: uuid::Uuid,
    options: RunOptions,
) -> (Result<RunReport, RunFailure>, Option<DurableSummary>) {
    let result = if setup.resume {
        graph.resume(run_id, options, &setup.checkpoint).await
    } else {
        graph
            .run_durable(setup.input.clone(), options, &setup.checkpoint)
            .await
    };
    let mut summary = DurableSummary {
        started: true,
        ..DurableSummary::default()
    };
    let result = match result {
        Ok(done) => {
            summary.restored = done.restored();
            summary.committed = done.committed();
            Ok(done.into_report())
        }
        Err(DurableError::Failed(failure)) => Err(*failure),
        Err(DurableError::Recording {
            source, outcome, ..
        }) => {
            summary.error = Some(format!(
                "recording the run failed: {source} (stages committed before stay committed)"
            ));
            *outcome
        }
        Err(other) => {
            let message = format!("the run store refused the run: {other}");
            summary.started = false;
            summary.error = Some(message.clone());
            failed_run(pipeline, "record", message).await
        }
    };
    (result, Some(summary))
}

/// After the run: stages skipped by the engine because all their inputs were skipped, and stages
/// that were still running when the run stopped.
fn settle(run: &PipelineRun, result: &Result<RunReport, RunFailure>) {
    let results = results_of(result);
    let stop_note = match result {
        Ok(r) => match r.status() {
            RunStatus::Cancelled { .. } if run.env.control.is_interrupted() => {
                "interrupted; killed after the grace period".to_owned()
            }
            RunStatus::Cancelled { reason, .. } => format!("stopped: {reason}"),
            RunStatus::Completed => "stopped".to_owned(),
        },
        Err(f) => format!("stopped because stage `{}{}` failed", run.prefix, f.stage()),
    };
    let mut todo = Vec::new();
    {
        let records = run.records();
        for (i, r) in records.iter().enumerate() {
            match r.state {
                State::NotRun => {
                    if let Some(out) = results.get(&run.loaded.instances[i].name) {
                        if out.is_skipped() {
                            todo.push((
                                i,
                                State::Skipped,
                                out.message().unwrap_or("skipped").to_owned(),
                            ));
                        }
                    }
                }
                State::Running => todo.push((i, State::Cancelled, stop_note.clone())),
                _ => {}
            }
        }
    }
    for (i, state, note) in todo {
        run.finish(i, state, Some(note), 0);
    }
}

/// Per-stage cleanup (last started first), then the pipeline's cleanup commands in order.
async fn run_cleanup(run: &PipelineRun) -> Vec<CleanupReport> {
    let loaded = &run.loaded;
    type Due = (u64, usize, Vec<(String, String)>, PathBuf);
    let mut due: Vec<Due> = run
        .records()
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.cleanup.clone().map(|(env, dir)| (r.seq, i, env, dir)))
        .collect();
    due.sort_by_key(|d| std::cmp::Reverse(d.0));
    // (stage, command, matrix values, environment, directory), in the order they run.
    let stage_jobs = due.into_iter().filter_map(|(_, i, env, dir)| {
        let command = loaded.stage_def(i).cleanup.as_ref()?;
        Some((
            Some(run.full_name(i)),
            command,
            loaded.instances[i].matrix(),
            env,
            dir,
        ))
    });
    let mut base_env = command_stage::base_env(run, None);
    // Kept as it was: inherited variables are appended once more here, so in a child pipeline
    // they take precedence over the child's own `[pipeline] env` in pipeline-level cleanup.
    base_env.extend(run.inherited_env.iter().cloned());
    let pipeline_jobs = loaded.def.cleanup.iter().map(|command| {
        (
            None,
            command,
            None,
            base_env.clone(),
            loaded.base_dir.clone(),
        )
    });
    let mut reports = Vec::new();
    for (stage, command, matrix, env, dir) in stage_jobs.chain(pipeline_jobs) {
        let report = match command_stage::render_command(command, matrix, env, dir) {
            Ok(spec) => cleanup_one(run, stage, spec).await,
            Err(e) => report_cleanup(run, stage, "?".into(), Some(e), Duration::ZERO),
        };
        reports.push(report);
    }
    reports
}

async fn cleanup_one(run: &PipelineRun, stage: Option<String>, spec: ProcSpec) -> CleanupReport {
    let env = &run.env;
    let started = Instant::now();
    let label = match &stage {
        Some(s) => format!("cleanup {s}"),
        None if run.is_top() => "cleanup".to_owned(),
        None => format!("cleanup {}", run.prefix.trim_end_matches('/')),
    };
    let reporter = env.reporter.clone();
    let mut forward = |line: &str| reporter.stage_stderr(&label, line);
    let timeout = run.loaded.def.cleanup_timeout;
    let result = process::run(
        &spec,
        &env.control,
        RunOpts {
            deadline: Some(tokio::time::Instant::now() + timeout),
            grace: env.grace,
            interruptible: false,
            on_stderr: &mut forward,
        },
    )
    .await;
    let error = match result {
        Err(e) => Some(format!("cannot start `{}`: {e}", spec.program)),
        Ok(r) => match r.ending {
            Ending::TimedOut => Some(format!("timed out after {}", human(timeout))),
            _ if r.status.success() => None,
            _ => Some(match r.last_stderr_line() {
                Some(l) => format!("{}: {l}", r.describe_status()),
                None => r.describe_status(),
            }),
        },
    };
    report_cleanup(run, stage, spec.display(), error, started.elapsed())
}

fn report_cleanup(
    run: &PipelineRun,
    stage: Option<String>,
    command: String,
    error: Option<String>,
    duration: Duration,
) -> CleanupReport {
    let env = &run.env;
    env.emit(|ev| {
        let kind = if error.is_some() {
            "cleanup.failed"
        } else {
            "cleanup.completed"
        };
        let (kind, pipeline) = (EventKind::Custom(kind.into()), run.loaded.name());
        let mut event = match &stage {
            Some(stage) => ev.stage_event(kind, pipeline, stage),
            None => ev.event(kind, pipeline),
        }
        .with_duration(duration)
        .with_data(json!({ "command": command }));
        event.error.clone_from(&error);
        event
    });
    let who = stage.as_deref().map_or_else(
        || format!("pipeline `{}`", run.loaded.name()),
        |s| format!("stage `{s}`"),
    );
    match &error {
        Some(e) => env
            .reporter
            .notice(&format!("cleanup FAILED for {who}: `{command}`: {e}")),
        None => env.reporter.stage_finished(
            "cleanup",
            false,
            &format!("    ok  cleanup for {who} ({})", human(duration)),
        ),
    }
    CleanupReport {
        stage,
        command,
        error,
        duration,
    }
}

/// The `{stage: data}` of a finished child run's sinks: a `pipeline` stage's output.
pub(crate) fn sink_outputs(results: &Results) -> StageOutput {
    let mut out = StageOutput::ok();
    for (name, output) in results.iter() {
        if output.is_ok() {
            let data = serde_json::to_value(output.data()).unwrap_or(Value::Null);
            out.data_mut().insert_value(name.to_owned(), data);
        }
    }
    out
}
