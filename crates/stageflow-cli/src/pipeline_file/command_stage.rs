//! The stages a pipeline file runs: [`CommandStage`] (a process) and [`ChildStage`] (a nested run
//! of another pipeline file), both plain `stageflow::Stage` implementations.
//!
//! **How upstream outputs reach a command.** A stage's output is its stdout parsed as a JSON
//! object when it is one (each key becomes an output key), otherwise `{"stdout": "<text without
//! trailing newlines>", "exit_code": 0}`. Downstream, the same data is available two ways:
//! `{{ stages.NAME.KEY }}` templates in `run`, `cmd`, `env` and `dir` (checked by `check`), and
//! the file named by `$STAGEFLOW_INPUTS`, a JSON document
//! `{"run_id", "pipeline", "stage", "matrix", "stages": {"dep": {"status", "data"}}}` holding
//! every dependency's whole output (how a fan-in stage reads all matrix instances).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use stageflow::{async_trait, ConditionInputs, Stage, StageContext, StageOutput, StageResult};
use tokio::time::Instant;

use super::check::{LoadedPipeline, MAX_DEPTH};
use super::control::Control;
use super::duration::human;
use super::format::{matrix_value, matrix_value_text, Action, CommandLine};
use super::policy::{Attempt, Policy};
use super::process::{self, Ending, ProcResult, ProcSpec, RunOpts};
use super::runtime::{self, PipelineRun, State};
use super::template::{lookup, RefPath, Reference, Template};

/// Runs a stage's command.
pub(crate) struct CommandStage {
    pub(crate) run: Arc<PipelineRun>,
    pub(crate) idx: usize,
}

/// Runs a stage's child pipeline as a nested run.
pub(crate) struct ChildStage {
    pub(crate) run: Arc<PipelineRun>,
    pub(crate) idx: usize,
}

#[async_trait]
impl Stage for CommandStage {
    async fn execute(&self, ctx: StageContext) -> StageResult {
        Ok(run_command(&self.run, self.idx, &ctx).await)
    }
}

#[async_trait]
impl Stage for ChildStage {
    async fn execute(&self, ctx: StageContext) -> StageResult {
        Ok(run_child(&self.run, self.idx, &ctx).await)
    }
}

fn policy_of(run: &PipelineRun, i: usize) -> Policy {
    let def = run.loaded.stage_def(i);
    Policy {
        timeout: def.timeout,
        retries: def.retries,
        retry_delay: def.retry_delay,
    }
}

fn on_retry(run: &PipelineRun, i: usize, delay: std::time::Duration) -> impl FnMut(u32, &str) + '_ {
    move |n, error| {
        let name = run.full_name(i);
        run.env.reporter.info(&format!(
            " retry  {name}: attempt {n} failed: {error}; retrying{}",
            if delay.is_zero() {
                String::new()
            } else {
                format!(" in {}", human(delay))
            }
        ));
        run.env.emit(|ev| {
            ev.stage_event(
                stageflow::observe::EventKind::StageRetried,
                run.loaded.name(),
                &name,
            )
            .with_data(json!({"attempt": n + 1, "reason": error}))
        });
    }
}

/// Ends a stage that was interrupted: waits until every interrupted command has exited (they got
/// SIGTERM; the run is cancelled hard after the grace period), so no command is cut short by the
/// engine stopping the run early.
async fn interrupted(run: &PipelineRun, i: usize, attempts: u32) -> StageOutput {
    run.finish(i, State::Cancelled, Some("interrupted".into()), attempts);
    run.env.control.wait_until_idle().await;
    StageOutput::cancel("interrupted")
}

async fn run_command(run: &PipelineRun, i: usize, ctx: &StageContext) -> StageOutput {
    let env = &run.env;
    let control = &env.control;
    let permit = tokio::select! {
        p = env.permits.clone().acquire_owned() => p.ok(),
        () = control.interrupted() => None,
    };
    if permit.is_none() || control.is_interrupted() {
        return interrupted(run, i, 0).await;
    }
    run.begin(i);
    let def = run.loaded.stage_def(i);
    let prepared = prepare(run, i, ctx);
    let mut spec = match prepared {
        Ok(spec) => spec,
        Err(msg) => {
            run.finish(i, State::Failed, Some(msg.clone()), 0);
            return StageOutput::fail(msg);
        }
    };
    if def.cleanup.is_some() {
        run.set_cleanup_context(i, spec.env.clone(), spec.dir.clone());
    }
    let inputs_file = match write_inputs(run, i, ctx).await {
        Ok(path) => path,
        Err(msg) => {
            run.finish(i, State::Failed, Some(msg.clone()), 0);
            return StageOutput::fail(msg);
        }
    };
    spec.env
        .push(("STAGEFLOW_INPUTS".into(), inputs_file.display().to_string()));
    let policy = policy_of(run, i);
    let name = run.full_name(i);
    let (outcome, attempts) = policy
        .run(
            control,
            on_retry(run, i, policy.retry_delay),
            |n, deadline| attempt(run, &spec, &name, n, deadline, policy),
        )
        .await;
    let _ = tokio::fs::remove_file(&inputs_file).await;
    drop(permit);
    conclude(run, i, outcome, attempts).await
}

/// Records how the last attempt of stage `i` ended and gives the stage's output.
async fn conclude(run: &PipelineRun, i: usize, outcome: Attempt, attempts: u32) -> StageOutput {
    match outcome {
        Attempt::Ok(out) => {
            run.finish(i, State::Ok, None, attempts);
            out
        }
        Attempt::Failed(msg) => {
            run.finish(i, State::Failed, Some(msg.clone()), attempts);
            StageOutput::fail(msg)
        }
        Attempt::Interrupted => interrupted(run, i, attempts).await,
    }
}

async fn attempt(
    run: &PipelineRun,
    spec: &ProcSpec,
    name: &str,
    number: u32,
    deadline: Option<Instant>,
    policy: Policy,
) -> Attempt {
    let env = &run.env;
    let mut spec = spec.clone();
    spec.env
        .push(("STAGEFLOW_ATTEMPT".into(), number.to_string()));
    let reporter = env.reporter.clone();
    let mut forward = |line: &str| reporter.stage_stderr(name, line);
    let result = process::run(
        &spec,
        &env.control,
        RunOpts {
            deadline,
            grace: env.grace,
            interruptible: true,
            on_stderr: &mut forward,
        },
    )
    .await;
    let r = match result {
        Ok(r) => r,
        Err(e) => return Attempt::Failed(format!("cannot start `{}`: {e}", spec.program)),
    };
    match r.ending {
        Ending::Interrupted => Attempt::Interrupted,
        Ending::TimedOut => Attempt::Failed(format!(
            "timed out after {}",
            human(policy.timeout.unwrap_or_default())
        )),
        Ending::Exited if r.status.success() => Attempt::Ok(output_of(&r)),
        Ending::Exited if env.control.is_interrupted() => Attempt::Interrupted,
        Ending::Exited => Attempt::Failed(match r.last_stderr_line() {
            Some(line) => format!("{}: {line}", r.describe_status()),
            None => r.describe_status(),
        }),
    }
}

/// stdout as a JSON object's keys, or `{stdout, exit_code}`.
pub(crate) fn output_of(r: &ProcResult) -> StageOutput {
    let text = String::from_utf8_lossy(&r.stdout);
    let trimmed = text.trim();
    let mut out = StageOutput::ok();
    let object = trimmed
        .starts_with('{')
        .then(|| serde_json::from_str::<Map<String, Value>>(trimmed).ok())
        .flatten();
    match object {
        Some(map) => {
            for (k, v) in map {
                out.data_mut().insert_value(k, v);
            }
        }
        None => {
            let data = out.data_mut();
            data.insert_value(
                "stdout",
                Value::String(text.trim_end_matches(['\n', '\r']).to_owned()),
            );
            data.insert_value("exit_code", Value::from(r.status.code().unwrap_or(0)));
        }
    }
    if r.stdout_truncated {
        out.data_mut()
            .insert_value("stdout_truncated", Value::Bool(true));
    }
    out
}

/// `STAGEFLOW_*` variables, then the pipeline's `env`.
pub(crate) fn base_env(run: &PipelineRun, stage: Option<usize>) -> Vec<(String, String)> {
    let mut env = vec![
        ("STAGEFLOW_RUN_ID".to_owned(), run.env.run_id.clone()),
        (
            "STAGEFLOW_PIPELINE".to_owned(),
            run.loaded.name().to_owned(),
        ),
    ];
    if let Some(i) = stage {
        env.push(("STAGEFLOW_STAGE".to_owned(), run.full_name(i)));
    }
    env.extend(run.inherited_env.iter().cloned());
    for var in &run.loaded.def.env {
        if let Some(value) = var.value.as_literal() {
            env.push((var.name.clone(), value.to_owned()));
        }
    }
    env
}

/// The value of a reference, strictly: a missing key is an error (a skipped dependency gives
/// `null`, rendered as nothing).
fn resolve_strict(
    r: &Reference,
    ctx: &StageContext,
    matrix: Option<&[(String, Value)]>,
) -> Result<Value, String> {
    match &r.path {
        RefPath::Matrix(key) => matrix_value(matrix, key)
            .map(|v| Value::String(matrix_value_text(v)))
            .ok_or_else(|| format!("`{{{{ {} }}}}`: no matrix key `{key}`", r.text)),
        RefPath::Stage { stage, keys } => {
            let out = ctx.output_of(stage).map_err(|e| e.to_string())?;
            if out.is_skipped() {
                return Ok(Value::Null);
            }
            let Some((first, rest)) = keys.split_first() else {
                return Ok(serde_json::to_value(out.data()).unwrap_or(Value::Null));
            };
            let missing = || {
                let keys: Vec<&str> = out.data().keys().collect();
                format!(
                    "`{{{{ {} }}}}`: stage `{stage}` has no output `{}` (its output keys: {})",
                    r.text,
                    keys_path(first, rest),
                    if keys.is_empty() {
                        "none".to_owned()
                    } else {
                        keys.join(", ")
                    }
                )
            };
            let value = out.data().get_value(first).ok_or_else(missing)?;
            lookup(value, rest).cloned().ok_or_else(missing)
        }
    }
}

fn keys_path(first: &str, rest: &[String]) -> String {
    std::iter::once(first)
        .chain(rest.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(".")
}

/// A condition's view: a missing key (or a skipped dependency) is `null`.
pub(crate) fn evaluate_condition(
    run: &PipelineRun,
    i: usize,
    inputs: &ConditionInputs<'_>,
) -> bool {
    let def = run.loaded.stage_def(i);
    let Some(condition) = &def.condition else {
        return true;
    };
    let matrix = run.loaded.instances[i].matrix();
    let holds = condition.expr.holds(&mut |r| match &r.path {
        RefPath::Matrix(key) => matrix_value(matrix, key).cloned().unwrap_or(Value::Null),
        RefPath::Stage { stage, keys } => match inputs.output_of(stage) {
            Ok(out) => match keys.split_first() {
                None => serde_json::to_value(out.data()).unwrap_or(Value::Null),
                Some((first, rest)) => out
                    .data()
                    .get_value(first)
                    .and_then(|v| lookup(v, rest))
                    .cloned()
                    .unwrap_or(Value::Null),
            },
            Err(_) => Value::Null,
        },
    });
    if !holds {
        run.finish(
            i,
            State::Skipped,
            Some(format!("condition not met: {}", condition.text)),
            0,
        );
    }
    holds
}

fn render(
    t: &Template,
    ctx: &StageContext,
    matrix: Option<&[(String, Value)]>,
) -> Result<String, String> {
    t.render(|r| resolve_strict(r, ctx, matrix))
}

/// Renders a stage's command, environment and directory.
fn prepare(run: &PipelineRun, i: usize, ctx: &StageContext) -> Result<ProcSpec, String> {
    let loaded = &run.loaded;
    let def = loaded.stage_def(i);
    let matrix = loaded.instances[i].matrix();
    let mut env = base_env(run, Some(i));
    for var in &def.env {
        env.push((var.name.clone(), render(&var.value, ctx, matrix)?));
    }
    let dir = match &def.dir {
        Some(t) => loaded.base_dir.join(render(t, ctx, matrix)?),
        None => loaded.base_dir.clone(),
    };
    let Action::Command(command) = &def.action else {
        return Err("internal error: not a command stage".into());
    };
    command_spec(command, |t| render(t, ctx, matrix), env, dir)
}

/// The process of `command`, its templates rendered by `render`: `sh -c LINE`, or the argument
/// vector.
fn command_spec(
    command: &CommandLine,
    mut render: impl FnMut(&Template) -> Result<String, String>,
    env: Vec<(String, String)>,
    dir: PathBuf,
) -> Result<ProcSpec, String> {
    let (program, args) = match command {
        CommandLine::Shell(t) => ("sh".to_owned(), vec!["-c".to_owned(), render(t)?]),
        CommandLine::Argv(parts) => {
            let mut rendered = parts.iter().map(render).collect::<Result<Vec<_>, _>>()?;
            if rendered.is_empty() {
                return Err("empty command".into());
            }
            let program = rendered.remove(0);
            (program, rendered)
        }
    };
    Ok(ProcSpec {
        program,
        args,
        env,
        dir,
    })
}

/// Renders a cleanup command: it may only use matrix values.
pub(crate) fn render_command(
    command: &CommandLine,
    matrix: Option<&[(String, Value)]>,
    env: Vec<(String, String)>,
    dir: PathBuf,
) -> Result<ProcSpec, String> {
    let render = |t: &Template| {
        t.render(|r| match &r.path {
            RefPath::Matrix(key) => matrix_value(matrix, key)
                .map(|v| Value::String(matrix_value_text(v)))
                .ok_or_else(|| format!("no matrix key `{key}`")),
            RefPath::Stage { .. } => Err("cleanup commands cannot read stage outputs".into()),
        })
    };
    command_spec(command, render, env, dir)
}

/// Writes the `$STAGEFLOW_INPUTS` document of stage `i`.
async fn write_inputs(run: &PipelineRun, i: usize, ctx: &StageContext) -> Result<PathBuf, String> {
    let env = &run.env;
    let mut stages = Map::new();
    for (name, output) in ctx.inputs() {
        stages.insert(
            name.to_owned(),
            serde_json::to_value(output).unwrap_or(Value::Null),
        );
    }
    let matrix = run.loaded.instances[i]
        .matrix
        .as_ref()
        .map(|m| Value::Object(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()));
    let doc = json!({
        "run_id": env.run_id,
        "pipeline": run.loaded.name(),
        "stage": run.full_name(i),
        "matrix": matrix,
        "stages": stages,
    });
    let n = env.file_counter.fetch_add(1, Ordering::Relaxed);
    let path = env.scratch.join(format!("inputs-{n}.json"));
    let write = async {
        tokio::fs::create_dir_all(&env.scratch).await?;
        tokio::fs::write(&path, doc.to_string()).await
    };
    write
        .await
        .map_err(|e| format!("cannot write the inputs file {}: {e}", path.display()))?;
    Ok(path)
}

async fn run_child(run: &PipelineRun, i: usize, ctx: &StageContext) -> StageOutput {
    let env = &run.env;
    if env.control.is_interrupted() {
        return interrupted(run, i, 0).await;
    }
    run.begin(i);
    let loaded = &run.loaded;
    let inst = &loaded.instances[i];
    let def = loaded.stage_def(i);
    let fail = |msg: String| {
        run.finish(i, State::Failed, Some(msg.clone()), 0);
        StageOutput::fail(msg)
    };
    if run.depth + 1 > MAX_DEPTH {
        return fail(format!(
            "child pipelines nest deeper than {MAX_DEPTH} levels"
        ));
    }
    let Some(child) = loaded.children.get(&inst.def).cloned() else {
        return fail("internal error: the child pipeline was not loaded".into());
    };
    // The child's commands get this pipeline's environment and the stage's `env`.
    let matrix = inst.matrix();
    let mut inherited = base_env(run, None);
    inherited.retain(|(k, _)| !k.starts_with("STAGEFLOW_"));
    for var in &def.env {
        match render(&var.value, ctx, matrix) {
            Ok(v) => inherited.push((var.name.clone(), v)),
            Err(e) => return fail(e),
        }
    }
    let policy = policy_of(run, i);
    let prefix = format!("{}/", run.full_name(i));
    let (outcome, attempts) = policy
        .run(
            &env.control,
            on_retry(run, i, policy.retry_delay),
            |_n, deadline| child_attempt(run, &child, &prefix, &inherited, ctx, deadline, policy),
        )
        .await;
    conclude(run, i, outcome, attempts).await
}

async fn child_attempt(
    run: &PipelineRun,
    child: &Arc<LoadedPipeline>,
    prefix: &str,
    inherited: &[(String, String)],
    ctx: &StageContext,
    deadline: Option<Instant>,
    policy: Policy,
) -> Attempt {
    let control: &Control = &run.env.control;
    let token = ctx.cancellation_token().child_token();
    let timer = deadline.map(|d| {
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(d).await;
            t.cancel();
        })
    });
    let child_run = Arc::new(PipelineRun::new(
        run.env.clone(),
        child.clone(),
        prefix.to_owned(),
        run.depth + 1,
        inherited.to_vec(),
    ));
    let outcome = runtime::execute(child_run, token).await;
    let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
    if let Some(t) = timer {
        t.abort();
    }
    let file = child.source().path().display().to_string();
    if let Some(c) = outcome.cleanup_failures().next() {
        return Attempt::Failed(format!(
            "child pipeline `{file}`: cleanup `{}` failed: {}",
            c.command,
            c.error.as_deref().unwrap_or("")
        ));
    }
    match &outcome.result {
        Ok(report) if report.is_completed() => {
            Attempt::Ok(runtime::sink_outputs(outcome.results()))
        }
        Ok(_) if control.is_interrupted() => Attempt::Interrupted,
        Ok(_) if timed_out => Attempt::Failed(format!(
            "timed out after {}",
            human(policy.timeout.unwrap_or_default())
        )),
        Ok(report) => Attempt::Failed(format!(
            "child pipeline `{file}` was cancelled: {:?}",
            report.status()
        )),
        Err(failure) => Attempt::Failed(format!("child pipeline `{file}`: {failure}")),
    }
}
