//! The executor's side of failure policies, the cancel grace period, cleanup, and guard retry.
//!
//! **Guard retry** (see [`GuardRetry`](crate::GuardRetry)) runs inside the executor because it
//! changes what the rest of the graph sees: when a guarded producer completes, only its guard is
//! released; its other dependents are held until the guard's final verdict, so they see the output
//! the guard accepted. When the guard fails and the policy allows another attempt, the producer is
//! re-run (with the inputs it had the first time) as a task, then the guard (with its original
//! inputs, the producer's slot replaced by the new output). Re-runs do not count as new stage
//! starts in [`RunStats`](crate::RunStats).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hashbrown::HashMap;
use serde_json::json;
use tokio::time::Instant;

use super::{Finished, Run, StageFuture, UPSTREAM_FAILED};
use crate::cleanup::CleanupError;
use crate::context::{InputOutputs, StageContext};
use crate::error::StageError;
use crate::graph::GraphInner;
use crate::observe::EventKind;
use crate::output::{StageOutput, StageStatus};
use crate::results::{FailureCause, FailurePolicy, RunOptions, DEFAULT_CLEANUP_TIMEOUT};
use crate::stage::StageResult;

/// Per-run state of the resilience features. Costs nothing per stage unless used.
pub(super) struct Resilience {
    pub(super) continue_on_failure: bool,
    pub(super) grace: Duration,
    pub(super) cleanup_timeout: Duration,
    /// Every failure, in order (fail-fast: at most a few).
    pub(super) failures: Vec<(u32, FailureCause)>,
    /// `(skipped stage, failed stage)` under `FailurePolicy::Continue`.
    pub(super) skipped_upstream: Vec<(u32, u32)>,
    /// For stages skipped as "upstream failed": the failed stage they are downstream of.
    failure_root: HashMap<u32, u32>,
    pub(super) cleanup_errors: Vec<CleanupError>,
    /// `Some` when the graph has guard retry policies.
    pub(super) guards: Option<Box<GuardRuntime>>,
    /// Re-runs to spawn, queued by `complete` (which cannot reach the task set).
    pub(super) respawn: Vec<(u32, StageFuture)>,
}

impl Default for Resilience {
    fn default() -> Self {
        Resilience {
            continue_on_failure: false,
            grace: Duration::ZERO,
            cleanup_timeout: DEFAULT_CLEANUP_TIMEOUT,
            failures: Vec::new(),
            skipped_upstream: Vec::new(),
            failure_root: HashMap::new(),
            cleanup_errors: Vec::new(),
            guards: None,
            respawn: Vec::new(),
        }
    }
}

impl Resilience {
    pub(super) fn configure(&mut self, options: &RunOptions, graph: &GraphInner) {
        self.continue_on_failure = options.failure_policy == FailurePolicy::Continue;
        self.grace = options.cancel_grace;
        self.cleanup_timeout = options.cleanup_timeout.unwrap_or(DEFAULT_CLEANUP_TIMEOUT);
        if !graph.guards.is_empty() {
            self.guards = Some(Box::new(GuardRuntime {
                states: (0..graph.guards.len())
                    .map(|_| GuardState::default())
                    .collect(),
            }));
        }
    }

    /// If `output` (of dependency `dep`) means "a stage upstream failed", the failed stage.
    pub(super) fn failed_root(&self, dep: u32, output: &StageOutput) -> Option<u32> {
        match output.status() {
            StageStatus::Fail | StageStatus::Retry => Some(dep),
            StageStatus::Skip if output.message() == Some(UPSTREAM_FAILED) => {
                Some(self.failure_root.get(&dep).copied().unwrap_or(dep))
            }
            _ => None,
        }
    }

    pub(super) fn skipped_because(&mut self, idx: u32, root: u32) {
        self.failure_root.insert(idx, root);
        self.skipped_upstream.push((idx, root));
    }
}

/// Guard retry state of one run, one entry per `GraphInner::guards` plan.
pub(super) struct GuardRuntime {
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
    pub(super) fn hold(&mut self, graph: &GraphInner, idx: u32) -> Option<u32> {
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

impl Run {
    fn guard_state(&mut self, i: usize) -> &mut GuardState {
        &mut self
            .res
            .guards
            .as_deref_mut()
            .expect("guard state exists when the graph has guards")
            .states[i]
    }

    /// `complete` for graphs with guard retry policies (kept off the common path).
    #[cold]
    #[inline(never)]
    pub(super) fn complete_guarded(&mut self, idx: u32, finished: Finished) {
        let Some(finished) = self.guard_complete(idx, finished) else {
            return;
        };
        let succeeded = matches!(
            &finished,
            Finished::Returned(Ok(out)) if matches!(out.status(), StageStatus::Ok | StageStatus::Skip)
        );
        let graph = self.graph.clone();
        let held = match self.res.guards.as_deref_mut() {
            Some(guards) if succeeded => guards.hold(&graph, idx),
            _ => None,
        };
        self.record(idx, finished, held);
    }

    /// Intercepts the completion of a guard or guarded producer. Returns what `complete` should
    /// go on with, or `None` when a re-run took over.
    pub(super) fn guard_complete(&mut self, idx: u32, finished: Finished) -> Option<Finished> {
        let graph = self.graph.clone();
        let Some(i) = plan_of(&graph, idx) else {
            return Some(finished);
        };
        let plan = &graph.guards[i];
        if idx == plan.producer {
            if self.guard_state(i).phase != Phase::RerunProducer {
                return Some(finished);
            }
            self.producer_rerun_done(i, finished);
            return None;
        }
        // The guard.
        let phase = self.guard_state(i).phase;
        if phase == Phase::Final {
            self.guard_state(i).phase = Phase::Idle;
            self.release_held(i);
            return Some(finished);
        }
        let Some(message) = failure_message(&finished) else {
            // Accepted: the producer is recorded now, with the output the guard saw, and both
            // count every execution the guard retry made.
            let mut finished = finished;
            if let Finished::Returned(Ok(out)) = &mut finished {
                out.add_attempts(self.guard_state(i).failures);
            }
            let producer = plan.producer;
            if let (Some(ext), Some(output)) = (
                self.ext.as_deref_mut(),
                self.state[producer as usize].output.as_ref(),
            ) {
                ext.record(producer, output.clone());
            }
            self.guard_state(i).phase = Phase::Idle;
            self.release_held(i);
            return Some(finished);
        };
        let policy = &plan.policy;
        let stopping = self.stop.is_some();
        let st = self.guard_state(i);
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
            self.release_held(i);
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
            self.emit_retried(
                stage,
                json!({"attempt": attempt, "guard": graph.name(plan.guard), "reason": message}),
            );
        }
        self.rerun(plan.producer, inputs, deadline, policy.time_limit);
        None
    }

    fn producer_rerun_done(&mut self, i: usize, finished: Finished) {
        let graph = self.graph.clone();
        let plan = &graph.guards[i];
        let producer = graph.name(plan.producer);
        let pos = graph
            .deps(plan.guard)
            .binary_search(&plan.producer)
            .expect("the producer is a dependency of its guard");
        let last = self.guard_state(i).last_failure.clone();
        let output = match finished {
            Finished::Returned(Ok(out)) if out.status() == StageStatus::Ok => out,
            Finished::Returned(Err(e)) if e.source().downcast_ref::<GuardTimeLimit>().is_some() => {
                return self.finalize_guard(i, format!("{last} ({e})"));
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
                return self.finalize_guard(
                    i,
                    format!("{last} (guard retry stopped: re-running `{producer}` {what})"),
                );
            }
        };
        let st = self.guard_state(i);
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
        self.state[plan.producer as usize].output = Some(output);
        if same {
            return self.finalize_guard(
                i,
                format!(
                    "{last} (guard retry stopped: `{producer}` produced the same output again)"
                ),
            );
        }
        self.guard_state(i).phase = Phase::RerunGuard;
        self.rerun(plan.guard, inputs, deadline, plan.policy.time_limit);
    }

    /// Completes the guard as failed for good with `message`.
    fn finalize_guard(&mut self, i: usize, message: String) {
        self.guard_state(i).phase = Phase::Final;
        let guard = self.graph.guards[i].guard;
        self.complete(guard, Finished::Returned(Err(StageError::msg(message))));
    }

    /// A stage failed without going through `complete` (its condition failed): if it is a
    /// guard, release what its producer held back.
    pub(super) fn guard_failed(&mut self, idx: u32) {
        if self.res.guards.is_none() {
            return;
        }
        if let Some(i) = self.graph.guards.iter().position(|p| p.guard == idx) {
            self.release_held(i);
        }
    }

    /// Releases the producer's dependents other than the guard.
    fn release_held(&mut self, i: usize) {
        let st = self.guard_state(i);
        if !std::mem::take(&mut st.holding) {
            return;
        }
        let plan = &self.graph.guards[i];
        let (producer, guard) = (plan.producer, plan.guard);
        self.release_dependents(producer, |j| j != guard);
    }

    /// Queues a re-run of `idx` with `inputs`, limited by the guard retry's deadline.
    fn rerun(
        &mut self,
        idx: u32,
        inputs: InputOutputs,
        deadline: Option<Instant>,
        limit: Option<Duration>,
    ) {
        let ctx = StageContext::new(self.shared.clone(), idx, inputs);
        let stage = self.graph.nodes[idx as usize].stage.clone();
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
        let fut = match self.obs.as_deref_mut() {
            None => catch_unwind(AssertUnwindSafe(make)),
            Some(obs) => obs.start_stage(idx, make),
        };
        if let Some(fut) = self.launched(idx, fut) {
            self.res.respawn.push((idx, fut));
        }
    }

    fn emit_retried(&self, idx: u32, data: serde_json::Value) {
        tracing::debug!(target: "stageflow", stage = self.graph.name(idx), %data, "guard retry");
        if let Some(obs) = &self.shared.observe {
            let event = obs
                .event(EventKind::StageRetried)
                .with_stage(self.graph.name(idx), self.graph.kind(idx))
                .with_data(data);
            obs.emit_external(event);
        }
    }
}
