//! Guard retry in the run loop (see [`GuardRetry`](crate::GuardRetry)).
//!
//! It lives in the run loop because it changes what the rest of the graph sees: when a guarded
//! producer completes, only its guard is released; its other dependents are held until the
//! guard's final verdict, so they see the output the guard accepted. When the guard fails and the
//! policy allows another attempt, the producer is re-run (with the inputs it had the first time)
//! as a task, then the guard (with its original inputs, the producer's slot replaced by the new
//! output). Re-runs do not count as new stage starts in [`RunStats`](crate::RunStats).
//!
//! The logic reaches the loop only through [`GuardHost`], which the driver implements.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::node::Finished;
use crate::context::{InputOutputs, StageContext};
use crate::error::StageError;
use crate::graph::GraphInner;
use crate::output::{StageOutput, StageStatus};
use crate::stage::{SharedStage, StageResult};

/// What guard retry needs from the run loop.
pub(super) trait GuardHost {
    /// The graph being run.
    fn graph(&self) -> Arc<GraphInner>;
    /// The run's guard retry state.
    fn guards(&mut self) -> &mut GuardRuntime;
    /// Whether the run is stopping (no re-run starts then).
    fn stopping(&self) -> bool;
    /// The current output of stage `idx`.
    fn output(&self, idx: u32) -> Option<Arc<StageOutput>>;
    /// Replaces the output of stage `idx` (a producer's re-run).
    fn set_output(&mut self, idx: u32, output: Arc<StageOutput>);
    /// The guard accepted `output` of producer `idx`: it is final (recorded now).
    fn accept(&mut self, idx: u32, output: Arc<StageOutput>);
    /// Releases the dependents of `producer` other than `guard`.
    fn release_except(&mut self, producer: u32, guard: u32);
    /// Completes stage `idx` (the guard's final failure).
    fn complete(&mut self, idx: u32, finished: Finished);
    /// Records stage `idx`'s result; `held`: the only dependent to release now.
    fn record(&mut self, idx: u32, finished: Finished, held: Option<u32>);
    /// Starts `future` as a re-run of stage `idx` with `ctx` (started like a stage, as a task).
    fn respawn(
        &mut self,
        idx: u32,
        make: Box<dyn FnOnce() -> BoxFuture<'static, StageResult> + Send>,
    );
    /// The run's shared state, to build a re-run's context.
    fn context(&self, idx: u32, inputs: InputOutputs) -> StageContext;
    /// Emits `stage.<name>.retried` for stage `idx`.
    fn emit_retried(&self, idx: u32, data: Value);
}

/// Guard retry state of one run, one entry per `GraphInner::guards` plan.
pub(crate) struct GuardRuntime {
    states: Vec<GuardState>,
}

#[derive(Default)]
struct GuardState {
    /// Guard executions that failed so far.
    failures: u32,
    producer_inputs: Option<InputOutputs>,
    guard_inputs: Option<InputOutputs>,
    deadline: Option<Instant>,
    phase: Phase,
    last_failure: String,
    /// The producer completed and its other dependents wait for the guard's verdict.
    holding: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Idle,
    RerunProducer,
    RerunGuard,
    /// The guard's final failure is being completed.
    Final,
}

fn plan_of(graph: &GraphInner, idx: u32) -> Option<usize> {
    graph
        .guards
        .iter()
        .position(|p| p.guard == idx || p.producer == idx)
}

impl GuardRuntime {
    /// The state of a graph with guard retry plans, or `None` when it has none.
    pub(super) fn for_graph(graph: &GraphInner) -> Option<Box<GuardRuntime>> {
        (!graph.guards.is_empty()).then(|| {
            Box::new(GuardRuntime {
                states: (0..graph.guards.len())
                    .map(|_| GuardState::default())
                    .collect(),
            })
        })
    }

    /// Keeps the inputs of a guarded producer or a guard, for re-runs.
    pub(super) fn stash(&mut self, graph: &GraphInner, idx: u32, inputs: &InputOutputs) {
        if let Some(i) = plan_of(graph, idx) {
            let st = &mut self.states[i];
            if graph.guards[i].producer == idx {
                st.producer_inputs = Some(inputs.clone());
            } else {
                st.guard_inputs = Some(inputs.clone());
            }
        }
    }

    /// When `idx` is a guarded producer completing for the first time: the guard, the only
    /// dependent to release now.
    fn hold(&mut self, graph: &GraphInner, idx: u32) -> Option<u32> {
        let i = graph.guards.iter().position(|p| p.producer == idx)?;
        let st = &mut self.states[i];
        if st.phase != Phase::Idle {
            return None;
        }
        st.holding = true;
        Some(graph.guards[i].guard)
    }
}

/// A guard retry's time limit passed while a re-run was still going.
#[derive(Debug, thiserror::Error)]
#[error("guard retry time limit of {limit:?} reached")]
struct GuardTimeLimit {
    limit: Duration,
}

fn failure_message(finished: &Finished) -> Option<String> {
    match finished {
        Finished::Returned(Ok(out)) if out.status().is_failure() => {
            Some(out.message().unwrap_or("guard failed").to_owned())
        }
        Finished::Returned(Err(e)) => Some(e.to_string()),
        _ => None,
    }
}

fn state<H: GuardHost>(host: &mut H, i: usize) -> &mut GuardState {
    &mut host.guards().states[i]
}

/// `complete` for graphs with guard retry policies (kept off the common path).
#[cold]
#[inline(never)]
pub(super) fn complete_guarded<H: GuardHost>(host: &mut H, idx: u32, finished: Finished) {
    let Some(finished) = intercept_completion(host, idx, finished) else {
        return;
    };
    let succeeded = matches!(
        &finished,
        Finished::Returned(Ok(out)) if matches!(out.status(), StageStatus::Ok | StageStatus::Skip)
    );
    let graph = host.graph();
    let held = if succeeded {
        host.guards().hold(&graph, idx)
    } else {
        None
    };
    host.record(idx, finished, held);
}

/// Intercepts the completion of a guard or guarded producer. Returns what `complete` should go
/// on with, or `None` when a re-run took over.
fn intercept_completion<H: GuardHost>(
    host: &mut H,
    idx: u32,
    finished: Finished,
) -> Option<Finished> {
    let graph = host.graph();
    let Some(i) = plan_of(&graph, idx) else {
        return Some(finished);
    };
    let plan = &graph.guards[i];
    if idx == plan.producer {
        if state(host, i).phase != Phase::RerunProducer {
            return Some(finished);
        }
        producer_rerun_done(host, i, finished);
        return None;
    }
    // The guard.
    if state(host, i).phase == Phase::Final {
        state(host, i).phase = Phase::Idle;
        release_held(host, i);
        return Some(finished);
    }
    let Some(message) = failure_message(&finished) else {
        return Some(guard_accepted(host, i, finished));
    };
    let policy = &plan.policy;
    let stopping = host.stopping();
    let st = state(host, i);
    st.failures += 1;
    let now = Instant::now();
    if st.failures == 1 {
        st.deadline = policy.time_limit.map(|limit| now + limit);
    }
    let verdict = if policy.attempts <= 1 || stopping {
        Some(None)
    } else if st.failures >= policy.attempts {
        Some(Some(format!(
            "guard retry exhausted after {} attempts",
            st.failures
        )))
    } else if st.deadline.is_some_and(|d| now >= d) {
        Some(Some(format!(
            "guard retry time limit of {:?} reached",
            policy.time_limit.unwrap_or_default()
        )))
    } else {
        None
    };
    if let Some(suffix) = verdict {
        st.phase = Phase::Idle;
        release_held(host, i);
        return Some(match suffix {
            None => finished,
            Some(suffix) => {
                Finished::Returned(Err(StageError::msg(format!("{message} ({suffix})"))))
            }
        });
    }
    st.last_failure = message.clone();
    st.phase = Phase::RerunProducer;
    let attempt = st.failures + 1;
    let inputs = st
        .producer_inputs
        .clone()
        .expect("a producer's inputs are kept from its start");
    let deadline = st.deadline;
    for stage in [plan.producer, plan.guard] {
        host.emit_retried(
            stage,
            json!({"attempt": attempt, "guard": graph.name(plan.guard), "reason": message}),
        );
    }
    rerun(host, plan.producer, inputs, deadline, policy.time_limit);
    None
}

/// The guard accepted: the producer is recorded now, with the output the guard saw, and both
/// count every execution the guard retry made.
fn guard_accepted<H: GuardHost>(host: &mut H, i: usize, mut finished: Finished) -> Finished {
    let failures = state(host, i).failures;
    if let Finished::Returned(Ok(out)) = &mut finished {
        out.add_attempts(failures);
    }
    let producer = host.graph().guards[i].producer;
    if let Some(output) = host.output(producer) {
        host.accept(producer, output);
    }
    state(host, i).phase = Phase::Idle;
    release_held(host, i);
    finished
}

fn producer_rerun_done<H: GuardHost>(host: &mut H, i: usize, finished: Finished) {
    let graph = host.graph();
    let plan = &graph.guards[i];
    let producer = graph.name(plan.producer);
    let pos = graph
        .deps(plan.guard)
        .binary_search(&plan.producer)
        .expect("the producer is a dependency of its guard");
    let last = state(host, i).last_failure.clone();
    let output = match finished {
        Finished::Returned(Ok(out)) if out.status() == StageStatus::Ok => out,
        Finished::Returned(Err(e)) if e.source().downcast_ref::<GuardTimeLimit>().is_some() => {
            return finalize_guard(host, i, format!("{last} ({e})"));
        }
        other => {
            let what = match other {
                Finished::Returned(Ok(out)) => format!(
                    "returned {}{}",
                    out.status(),
                    out.message().map(|m| format!(": {m}")).unwrap_or_default()
                ),
                Finished::Returned(Err(e)) => format!("failed: {e}"),
                Finished::Panicked(m) => format!("panicked: {m}"),
            };
            return finalize_guard(
                host,
                i,
                format!("{last} (guard retry stopped: re-running `{producer}` {what})"),
            );
        }
    };
    let st = state(host, i);
    let mut inputs = st
        .guard_inputs
        .clone()
        .expect("a guard's inputs are kept from its start");
    let same = plan.policy.stagnation
        && serde_json::to_string(&*inputs[pos]).ok() == serde_json::to_string(&output).ok();
    let mut output = output;
    output.add_attempts(st.failures);
    let output = Arc::new(output);
    inputs[pos] = output.clone();
    st.guard_inputs = Some(inputs.clone());
    let deadline = st.deadline;
    host.set_output(plan.producer, output);
    if same {
        return finalize_guard(
            host,
            i,
            format!("{last} (guard retry stopped: `{producer}` produced the same output again)"),
        );
    }
    state(host, i).phase = Phase::RerunGuard;
    rerun(host, plan.guard, inputs, deadline, plan.policy.time_limit);
}

/// Completes the guard as failed for good with `message`.
fn finalize_guard<H: GuardHost>(host: &mut H, i: usize, message: String) {
    state(host, i).phase = Phase::Final;
    let guard = host.graph().guards[i].guard;
    host.complete(guard, Finished::Returned(Err(StageError::msg(message))));
}

/// A stage failed without going through `complete` (its condition failed): if it is a guard,
/// release what its producer held back.
pub(super) fn guard_failed<H: GuardHost>(host: &mut H, idx: u32) {
    let graph = host.graph();
    if let Some(i) = graph.guards.iter().position(|p| p.guard == idx) {
        release_held(host, i);
    }
}

/// Releases the producer's dependents other than the guard.
fn release_held<H: GuardHost>(host: &mut H, i: usize) {
    if !std::mem::take(&mut state(host, i).holding) {
        return;
    }
    let graph = host.graph();
    let plan = &graph.guards[i];
    host.release_except(plan.producer, plan.guard);
}

/// Queues a re-run of `idx` with `inputs`, limited by the guard retry's deadline.
fn rerun<H: GuardHost>(
    host: &mut H,
    idx: u32,
    inputs: InputOutputs,
    deadline: Option<Instant>,
    limit: Option<Duration>,
) {
    let ctx = host.context(idx, inputs);
    let stage: SharedStage = host.graph().nodes[idx as usize].stage.clone();
    let make = move || -> BoxFuture<'static, StageResult> {
        let fut = stage.execute_shared(ctx);
        match deadline {
            None => fut,
            Some(at) => Box::pin(async move {
                match tokio::time::timeout_at(at, fut).await {
                    Ok(result) => result,
                    Err(_) => Err(StageError::from(GuardTimeLimit {
                        limit: limit.unwrap_or_default(),
                    })),
                }
            }),
        }
    };
    host.respawn(idx, Box::new(make));
}
