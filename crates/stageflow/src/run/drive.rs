//! The driver: one run's state and the loop from "ready" to "started" to "finished".
//!
//! See the [module docs](super) for how ready stages are started and how a run stops.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::ext::{Extensions, RunHook, Schedule};
use super::guard::{self, GuardHost, GuardRuntime};
use super::node::{
    spawn_stage, Finished, NodeState, Outcome, StageFuture, CONDITION_NOT_MET, RESTORED,
    UPSTREAM_FAILED, UPSTREAM_SKIPPED,
};
use super::observer::Observer;
use super::options::{Retention, RunOptions};
use super::report::{
    FailureCause, RunFailure, RunReport, RunStats, RunStatus, StageFailure, UpstreamSkip,
};
use super::resilience::Resilience;
use super::results::Results;
use crate::context::{ConditionInputs, InputOutputs, RunShared, RunTimer, StageContext};
use crate::error::panic_message;
use crate::graph::GraphInner;
use crate::observe::emitter::ObsShared;
use crate::output::{StageOutput, StageStatus};
use crate::stage::StageResult;

/// How many stages the driver completes inline before yielding to the scheduler, so a long chain
/// never monopolizes a worker thread.
const INLINE_YIELD_EVERY: u32 = 256;

/// What spawning a stage as a task costs, roughly (spawn, cross-thread wake, join), on the
/// machines we measure. With `w` workers, running a stage of `t` on the driver beats spawning it
/// when `t < SPAWN_COST / (w - 1)`; see [`Run::drive`].
const SPAWN_COST: Duration = Duration::from_micros(1);

/// While siblings are being spawned, one in this many is still tried inline; see [`Run::drive`].
const INLINE_PROBE_EVERY: u32 = 32;

/// Why the run stopped early.
enum Stop {
    Failed { stage: u32, cause: FailureCause },
    Cancelled { stage: Option<u32>, reason: String },
}

/// Runs `graph` once: sets up the run's shared state and observer, attaches the extensions,
/// drives the loop to the end, and builds the result.
#[allow(clippy::result_large_err)]
pub(crate) async fn execute(
    graph: Arc<GraphInner>,
    input: Value,
    options: RunOptions,
    ext: Extensions,
) -> Result<RunReport, RunFailure> {
    let cancel = match &options.cancel {
        Some(parent) => parent.child_token(),
        None => CancellationToken::new(),
    };
    let identity = options.identity.clone().unwrap_or_default();
    let timer = RunTimer::start();
    let obs = Observer::new(options.observe.as_deref(), &graph, &identity, timer);
    let shared = Arc::new(RunShared {
        topo: graph.topo.clone(),
        identity,
        input,
        cancel,
        timer,
        observe: obs.as_ref().map(|o| o.shared()),
        cleanup: Default::default(),
    });
    let mut run = Run::new(graph, shared, options.retention);
    run.res.configure(&options, &run.graph);
    run.attach(ext);
    let max_concurrency = options.max_concurrency.unwrap_or(usize::MAX);
    let Some(mut obs) = obs else {
        run.drive(max_concurrency).await;
        return run.finish();
    };
    obs.run_started();
    let span = obs.run_span();
    run.publish = obs.publishes_counts().then(|| obs.shared());
    // Observers that need nothing per stage (progress, memory sampling) stay off the per-stage
    // path entirely.
    let mut run_level = None;
    if obs.per_stage() {
        run.obs = Some(obs);
    } else {
        run_level = Some(obs);
    }
    match span {
        Some(span) => run.drive(max_concurrency).instrument(span).await,
        None => run.drive(max_concurrency).await,
    }
    let obs = run.obs.take().or(run_level);
    let mut result = run.finish();
    if let Some(obs) = obs {
        obs.finish(&mut result).await;
    }
    result
}

pub(super) struct Run {
    graph: Arc<GraphInner>,
    shared: Arc<RunShared>,
    state: Vec<NodeState>,
    ready: VecDeque<u32>,
    retention: Retention,
    stats: RunStats,
    stop: Option<Stop>,
    /// Observability; `None` when the run observes nothing (then it costs one branch per stage
    /// start and one per stage end).
    obs: Option<Box<Observer>>,
    /// Where to publish the counts for progress and the watchdog, when either is on. Done at the
    /// points where the driver yields or waits (every few hundred inline stages, before each
    /// wait for a task), never per stage.
    publish: Option<Arc<ObsShared>>,
    /// Checkpoint recording and segment gating (see [`crate::durable`], [`crate::segment`]);
    /// empty for plain runs (then it costs one not-taken branch per stage start and end).
    hooks: Vec<Box<dyn RunHook>>,
    /// Failure policy, cancel grace period, cleanup and guard retry state.
    res: Resilience,
}

impl Run {
    fn new(graph: Arc<GraphInner>, shared: Arc<RunShared>, retention: Retention) -> Self {
        let n = graph.len();
        let mut ready = VecDeque::new();
        let state = (0..n as u32)
            .map(|i| {
                let pending_deps = graph.deps(i).len() as u32;
                if pending_deps == 0 {
                    ready.push_back(i);
                }
                NodeState {
                    pending_deps,
                    pending_consumers: graph.dependents(i).len() as u32,
                    output: None,
                }
            })
            .collect();
        Run {
            stats: RunStats {
                total: n,
                ..RunStats::default()
            },
            graph,
            shared,
            state,
            ready,
            retention,
            stop: None,
            obs: None,
            publish: None,
            hooks: Vec::new(),
            res: Resilience::default(),
        }
    }

    /// Attaches checkpointing / segments, first marking the stages restored from a checkpoint as
    /// done: their outputs are preloaded, their dependents' counters drop, and they never start.
    /// Linear in the number of stages; plain runs never get past the first check.
    fn attach(&mut self, ext: Extensions) {
        let Extensions {
            restored,
            mut hooks,
        } = ext;
        if restored.is_empty() && hooks.is_empty() {
            return;
        }
        if !restored.is_empty() {
            self.restore(restored);
        }
        for hook in &mut hooks {
            hook.attach(Schedule {
                state: &mut self.state,
                ready: &mut self.ready,
            });
        }
        self.hooks = hooks;
    }

    fn restore(&mut self, restored: Vec<(u32, Arc<StageOutput>)>) {
        let graph = self.graph.clone();
        for (idx, output) in restored {
            let i = idx as usize;
            if self.state[i].pending_deps == RESTORED {
                continue; // listed twice
            }
            self.state[i].pending_deps = RESTORED;
            for &d in graph.deps(idx) {
                // A restored stage never starts, so it never takes its inputs.
                self.state[d as usize].pending_consumers -= 1;
            }
            for &j in graph.dependents(idx) {
                let s = &mut self.state[j as usize];
                if s.pending_deps != RESTORED {
                    s.pending_deps -= 1;
                }
            }
            self.count_output(&output);
            self.state[i].output = Some(output);
        }
        let sinks_only = self.retention == Retention::Sinks;
        self.ready.clear();
        for (i, s) in self.state.iter_mut().enumerate() {
            if s.pending_deps == 0 {
                self.ready.push_back(i as u32);
            } else if s.pending_deps == RESTORED
                && s.pending_consumers == 0
                && sinks_only
                && !graph.dependents(i as u32).is_empty()
            {
                s.output = None; // nothing left to run needs it
            }
        }
    }

    async fn drive(&mut self, max_concurrency: usize) {
        let mut tasks: JoinSet<(u32, Finished)> = JoinSet::new();
        let mut running = 0usize;
        let mut inline_streak = 0u32;
        let cancel = self.shared.cancel.clone();
        let mut cancelled = pin!(cancel.cancelled());
        if cancel.is_cancelled() {
            self.stop_by_caller(); // cancelled before it started: run nothing
        }
        // Several stages ready at once (a fan-out, a lattice layer): siblings start as tasks so
        // that CPU-heavy ones run in parallel, but the driver learns whether that pays. It times
        // the inline polls it does anyway (the batch's last stage) plus one probe in every
        // `INLINE_PROBE_EVERY` siblings; while those finish faster than a spawn would pay off
        // (`SPAWN_COST / (workers - 1)`), later siblings are polled inline too, which for cheap
        // stages beats any parallel schedule. One slow poll switches back to spawning. Stages that
        // wait (return pending) become tasks in every case. Pure chains never time anything.
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let inline_budget = match workers {
            0 | 1 => Duration::MAX,
            w => SPAWN_COST / (w as u32 - 1),
        };
        let mut siblings_cheap = false;
        let mut probe = 0u32;
        let mut batch = 0u32;

        loop {
            // Start whatever is ready, up to the concurrency cap.
            while self.stop.is_none() && running < max_concurrency {
                let Some(idx) = self.ready.pop_front() else {
                    batch = 0;
                    break;
                };
                let Some(mut fut) = self.start(idx) else {
                    continue; // skipped or failed before running
                };
                batch += 1;
                let last = self.ready.is_empty() || running + 1 >= max_concurrency;
                let probing = !last && !siblings_cheap && {
                    probe = probe.wrapping_add(1);
                    probe % INLINE_PROBE_EVERY == 0
                };
                if last || siblings_cheap || probing {
                    // Poll it inline and spawn it only if it has to wait. A last stage's
                    // siblings, if any, are already running as tasks.
                    let timed = (batch > 1).then(Instant::now);
                    if last {
                        batch = 0; // a chain step is a batch of one: never timed
                    }
                    let polled =
                        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await;
                    if let Some(started) = timed {
                        siblings_cheap = started.elapsed() <= inline_budget;
                    }
                    match polled {
                        Poll::Ready(result) => {
                            self.complete(idx, result.into());
                            inline_streak += 1;
                            if inline_streak == INLINE_YIELD_EVERY {
                                // Let other tasks in, and notice a caller's cancel: checking
                                // here rather than per stage keeps the chain's hot path free
                                // of the token's lock.
                                inline_streak = 0;
                                if let Some(counts) = &self.publish {
                                    counts.publish(self.stats.counts());
                                }
                                if let Some(obs) = self.obs.as_deref_mut() {
                                    obs.time_passed();
                                }
                                tokio::task::yield_now().await;
                                if self.shared.cancel.is_cancelled() {
                                    self.stop_by_caller();
                                }
                            }
                            continue;
                        }
                        Poll::Pending => {}
                    }
                }
                running += 1;
                spawn_stage(&mut tasks, idx, fut);
            }
            // Guard retry re-runs (see `resilience`), queued by `complete`.
            if !self.res.respawn.is_empty() {
                for (idx, fut) in self.res.respawn.drain(..) {
                    if self.stop.is_none() {
                        running += 1;
                        spawn_stage(&mut tasks, idx, fut);
                    }
                }
            }

            if running == 0 {
                if self.stop.is_some() || self.ready.is_empty() {
                    break;
                }
                continue;
            }
            if self.stop.is_some() {
                break;
            }

            if let Some(counts) = &self.publish {
                counts.publish(self.stats.counts());
            }
            // The caller's cancel goes first so a busy wide run cannot starve it.
            tokio::select! {
                biased;
                () = &mut cancelled, if self.stop.is_none() => self.stop_by_caller(),
                joined = tasks.join_next() => {
                    running -= 1;
                    match joined {
                        Some(Ok((idx, finished))) => self.complete(idx, finished),
                        Some(Err(err)) => self.fail_unknown(err),
                        None => running = 0,
                    }
                }
            }
        }

        // Stopped early: tell running stages, give them the grace period, then abort them, and
        // wait until they are gone.
        if self.stop.is_some() {
            self.shared.cancel.cancel();
        }
        if running > 0 && !self.res.grace.is_zero() {
            let deadline = tokio::time::Instant::now() + self.res.grace;
            while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, tasks.join_next()).await
            {
                self.settle(joined);
            }
        }
        if !tasks.is_empty() {
            tasks.abort_all();
            while let Some(joined) = tasks.join_next().await {
                self.settle(joined);
            }
        }
        // Every stage is finished or dropped: run the cleanup actions, last registered first.
        if !self.shared.cleanup.is_empty() {
            self.res.cleanup_errors = self.shared.cleanup.run_all(self.res.cleanup_timeout).await;
        }
    }

    /// A stage task that ended after the run stopped.
    fn settle(&mut self, joined: Result<(u32, Finished), tokio::task::JoinError>) {
        match joined {
            // Finished before the abort landed (or within the grace period): keep its output,
            // start nothing after it.
            Ok((idx, Finished::Returned(Ok(out)))) if !out.status().is_failure() => {
                if let Some(obs) = self.obs.as_deref_mut() {
                    obs.stage_done(idx, Outcome::Output(&out));
                }
                self.count_output(&out);
                self.state[idx as usize].output = Some(Arc::new(out));
            }
            _ => self.stats.cancelled += 1,
        }
    }

    /// Takes the stage's inputs and turns it into a future, or finishes it right away when it is
    /// skipped (all inputs skipped, or condition false) or its condition fails.
    fn start(&mut self, idx: u32) -> Option<StageFuture> {
        self.stats.started += 1;
        for hook in &mut self.hooks {
            hook.started(idx);
        }
        let graph = &*self.graph;
        let deps = graph.deps(idx);
        let mut inputs = InputOutputs::with_capacity(deps.len());
        let mut all_skipped = !deps.is_empty();
        for &d in deps {
            let dep = &mut self.state[d as usize];
            let output = dep
                .output
                .clone()
                .expect("a dependency's output is kept until all its dependents have started");
            all_skipped &= output.is_skipped();
            inputs.push(output);
            dep.pending_consumers -= 1;
            if dep.pending_consumers == 0 && self.retention == Retention::Sinks {
                dep.output = None;
            }
        }
        // Under `FailurePolicy::Continue`: skip it if a stage upstream failed.
        let failed_upstream = if self.res.continue_on_failure {
            deps.iter()
                .zip(&inputs)
                .find_map(|(&d, output)| self.res.failed_root(d, output))
        } else {
            None
        };
        if let Some(root) = failed_upstream {
            self.res.skipped_because(idx, root);
            self.complete(
                idx,
                Finished::Returned(Ok(StageOutput::skip(UPSTREAM_FAILED))),
            );
            return None;
        }
        if all_skipped {
            self.complete(
                idx,
                Finished::Returned(Ok(StageOutput::skip(UPSTREAM_SKIPPED))),
            );
            return None;
        }
        if let Some(guards) = self.res.guards.as_deref_mut() {
            guards.stash(graph, idx, &inputs);
        }
        let node = &graph.nodes[idx as usize];
        let ctx = StageContext::new(self.shared.clone(), idx, inputs);
        if let Some(condition) = &node.condition {
            let verdict = catch_unwind(AssertUnwindSafe(|| {
                condition(&ConditionInputs { ctx: &ctx })
            }));
            let verdict = match verdict {
                Ok(Ok(true)) => None,
                Ok(Ok(false)) => Some(Finished::Returned(Ok(StageOutput::skip(CONDITION_NOT_MET)))),
                Ok(Err(err)) => {
                    let message = err.to_string();
                    if let Some(obs) = self.obs.as_deref_mut() {
                        obs.stage_done(idx, Outcome::Condition(&message));
                    }
                    self.fail(idx, FailureCause::Condition { message });
                    return None;
                }
                Err(payload) => Some(Finished::Panicked(format!(
                    "in condition: {}",
                    panic_message(payload.as_ref())
                ))),
            };
            if let Some(finished) = verdict {
                self.complete(idx, finished);
                return None;
            }
        }
        let stage = node.stage.clone();
        // Creating the future runs user code (closure stages run up to their first await), so it
        // is inside the panic guard too.
        let fut = match self.obs.as_deref_mut() {
            None => catch_unwind(AssertUnwindSafe(move || stage.execute_shared(ctx))),
            // Started event, span (the future is created and polled inside it), allocations.
            Some(obs) => obs.start_stage(idx, move || stage.execute_shared(ctx)),
        };
        self.launched(idx, fut)
    }

    /// Wraps a freshly created stage future, or completes the stage as panicked if creating it
    /// panicked.
    fn launched(
        &mut self,
        idx: u32,
        fut: std::thread::Result<futures_util::future::BoxFuture<'static, StageResult>>,
    ) -> Option<StageFuture> {
        match fut {
            Ok(fut) => Some(AssertUnwindSafe(fut).catch_unwind()),
            Err(payload) => {
                self.complete(idx, Finished::Panicked(panic_message(payload.as_ref())));
                None
            }
        }
    }

    /// Records a finished stage and releases its dependents, or stops the run.
    fn complete(&mut self, idx: u32, finished: Finished) {
        if let Some(obs) = self.obs.as_deref_mut() {
            obs.stage_done(idx, finished.outcome());
        }
        if self.res.guards.is_some() {
            // A guard's failure may re-run its producer instead of failing; see `resilience`.
            return guard::complete_guarded(self, idx, finished);
        }
        self.record(idx, finished, None);
    }

    /// The body of [`complete`](Self::complete). `held`: a guarded producer's guard, the only
    /// dependent to release now (see `resilience`).
    fn record(&mut self, idx: u32, finished: Finished, held: Option<u32>) {
        let output = match finished {
            Finished::Returned(Ok(output)) => output,
            Finished::Returned(Err(err)) => {
                let cause = FailureCause::Error {
                    message: err.to_string(),
                    retryable: err.is_retryable(),
                };
                return self.fail(idx, cause);
            }
            Finished::Panicked(message) => return self.fail(idx, FailureCause::Panic { message }),
        };
        match output.status() {
            StageStatus::Ok | StageStatus::Skip => {}
            StageStatus::Fail | StageStatus::Retry => {
                let cause = FailureCause::Error {
                    message: output.message().unwrap_or("stage failed").to_owned(),
                    retryable: output.status() == StageStatus::Retry,
                };
                return self.fail(idx, cause);
            }
            StageStatus::Cancel => {
                if self.stop.is_none() {
                    self.stop = Some(Stop::Cancelled {
                        stage: Some(idx),
                        reason: output.message().unwrap_or("cancelled").to_owned(),
                    });
                }
                self.state[idx as usize].output = Some(Arc::new(output));
                return;
            }
        }
        self.count_output(&output);
        // A producer under guard retry releases only its guard for now; the others wait for the
        // guard's verdict.
        self.release_dependents(idx, |j| held.is_none_or(|guard| guard == j));
        let output = Arc::new(output);
        self.state[idx as usize].output = Some(output.clone());
        if !self.hooks.is_empty() {
            self.hooks_finished(idx, &output, held.is_none());
        }
    }

    /// Tells the hooks that `idx` finished, then about the segment boundaries that completed.
    #[cold]
    fn hooks_finished(&mut self, idx: u32, output: &Arc<StageOutput>, record: bool) {
        let mut boundaries = 0;
        for hook in &mut self.hooks {
            boundaries += hook.finished(
                idx,
                output,
                record,
                Schedule {
                    state: &mut self.state,
                    ready: &mut self.ready,
                },
                &self.shared,
            );
        }
        for _ in 0..boundaries {
            for hook in &mut self.hooks {
                hook.boundary();
            }
        }
    }

    /// Stage `idx`'s output was accepted by its guard: the hooks record it now.
    pub(super) fn hooks_record(&mut self, idx: u32, output: Arc<StageOutput>) {
        for hook in &mut self.hooks {
            hook.record(idx, output.clone());
        }
    }

    /// `idx` finished: each dependent selected by `release` has one dependency fewer to wait for,
    /// and becomes ready when none is left.
    pub(super) fn release_dependents(&mut self, idx: u32, release: impl Fn(u32) -> bool) {
        let Run {
            graph,
            state,
            ready,
            ..
        } = self;
        for &j in graph.dependents(idx) {
            if !release(j) {
                continue;
            }
            let s = &mut state[j as usize];
            s.pending_deps -= 1;
            if s.pending_deps == 0 {
                ready.push_back(j);
            }
        }
    }

    fn count_output(&mut self, output: &StageOutput) {
        if output.is_skipped() {
            self.stats.skipped += 1;
        } else {
            self.stats.succeeded += 1;
        }
    }

    fn fail(&mut self, idx: u32, cause: FailureCause) {
        self.stats.failed += 1;
        if self.res.continue_on_failure && self.stop.is_none() {
            // Keep going: record the failure as the stage's output and release its dependents,
            // which `start` then skips as "upstream failed".
            self.state[idx as usize].output = Some(Arc::new(StageOutput::fail(cause.to_string())));
            self.res.failures.push((idx, cause));
            self.release_dependents(idx, |_| true);
            if self.res.guards.is_some() {
                guard::guard_failed(self, idx);
            }
            return;
        }
        self.res.failures.push((idx, cause.clone()));
        if !matches!(self.stop, Some(Stop::Failed { .. })) {
            self.stop = Some(Stop::Failed { stage: idx, cause });
        }
    }

    /// A stage task ended without a result. Stage panics are caught inside the task, and tasks
    /// are only aborted after the run stopped, so this means the runtime is shutting down; it is
    /// still reported, never ignored.
    fn fail_unknown(&mut self, err: tokio::task::JoinError) {
        self.stats.failed += 1;
        if self.stop.is_none() {
            self.stop = Some(Stop::Cancelled {
                stage: None,
                reason: format!("a stage task ended without a result: {err}"),
            });
        }
    }

    fn stop_by_caller(&mut self) {
        if self.stop.is_none() {
            self.stop = Some(Stop::Cancelled {
                stage: None,
                reason: "cancelled by caller".to_owned(),
            });
        }
    }

    #[allow(clippy::result_large_err)]
    fn finish(self) -> Result<RunReport, RunFailure> {
        let keep_all = self.retention == Retention::All;
        let Run {
            graph,
            shared,
            state,
            stats,
            mut stop,
            res,
            ..
        } = self;
        let Resilience {
            failures,
            skipped_upstream,
            cleanup_errors,
            ..
        } = res;
        // Under `FailurePolicy::Continue` the run went on after its failures; it still ends as a
        // failure, for the first one.
        if !matches!(stop, Some(Stop::Failed { .. })) {
            if let Some((stage, cause)) = failures.first() {
                stop = Some(Stop::Failed {
                    stage: *stage,
                    cause: cause.clone(),
                });
            }
        }
        // Under `Retention::Sinks` a stopped run may still hold outputs its unstarted dependents
        // were waiting for; the policy promises sinks only, so those are dropped here.
        let entries = state
            .into_iter()
            .enumerate()
            .filter(|&(i, _)| keep_all || graph.dependents(i as u32).is_empty())
            .filter_map(|(i, s)| s.output.map(|o| (i as u32, o)))
            .collect();
        let results = Results {
            graph: graph.topo.clone(),
            entries,
        };
        let duration = shared.timer.elapsed();
        let identity = shared.identity.clone();
        let status = match stop {
            None => RunStatus::Completed,
            Some(Stop::Cancelled { stage, reason }) => RunStatus::Cancelled {
                stage: stage.map(|i| graph.name(i).to_owned()),
                reason,
            },
            Some(Stop::Failed { stage, cause }) => {
                return Err(RunFailure {
                    identity,
                    stage: graph.name(stage).to_owned(),
                    cause,
                    partial: results,
                    stats,
                    duration,
                    observability: None,
                    failures: failures
                        .into_iter()
                        .map(|(i, cause)| StageFailure {
                            stage: graph.name(i).to_owned(),
                            cause,
                        })
                        .collect(),
                    skipped_upstream: skipped_upstream
                        .into_iter()
                        .map(|(i, root)| UpstreamSkip {
                            stage: graph.name(i).to_owned(),
                            failed: graph.name(root).to_owned(),
                        })
                        .collect(),
                    cleanup_errors,
                });
            }
        };
        Ok(RunReport {
            identity,
            status,
            results,
            stats,
            duration,
            observability: None,
            cleanup_errors,
        })
    }
}

/// Guard retry's view of the run (see [`guard`]).
impl GuardHost for Run {
    fn graph(&self) -> Arc<GraphInner> {
        self.graph.clone()
    }

    fn guards(&mut self) -> &mut GuardRuntime {
        self.res
            .guards
            .as_deref_mut()
            .expect("guard state exists when the graph has guards")
    }

    fn stopping(&self) -> bool {
        self.stop.is_some()
    }

    fn output(&self, idx: u32) -> Option<Arc<StageOutput>> {
        self.state[idx as usize].output.clone()
    }

    fn set_output(&mut self, idx: u32, output: Arc<StageOutput>) {
        self.state[idx as usize].output = Some(output);
    }

    fn accept(&mut self, idx: u32, output: Arc<StageOutput>) {
        self.hooks_record(idx, output);
    }

    fn release_except(&mut self, producer: u32, guard: u32) {
        self.release_dependents(producer, |j| j != guard);
    }

    fn complete(&mut self, idx: u32, finished: Finished) {
        Run::complete(self, idx, finished);
    }

    fn record(&mut self, idx: u32, finished: Finished, held: Option<u32>) {
        Run::record(self, idx, finished, held);
    }

    fn respawn(
        &mut self,
        idx: u32,
        make: Box<dyn FnOnce() -> futures_util::future::BoxFuture<'static, StageResult> + Send>,
    ) {
        let fut = match self.obs.as_deref_mut() {
            None => catch_unwind(AssertUnwindSafe(make)),
            Some(obs) => obs.start_stage(idx, make),
        };
        if let Some(fut) = self.launched(idx, fut) {
            self.res.respawn.push((idx, fut));
        }
    }

    fn context(&self, idx: u32, inputs: InputOutputs) -> StageContext {
        StageContext::new(self.shared.clone(), idx, inputs)
    }

    fn emit_retried(&self, idx: u32, data: Value) {
        tracing::debug!(target: "stageflow", stage = self.graph.name(idx), %data, "guard retry");
        if let Some(obs) = &self.shared.observe {
            let event = obs
                .event(crate::observe::EventKind::StageRetried)
                .with_stage(self.graph.name(idx), self.graph.kind(idx))
                .with_data(data);
            obs.emit_external(event);
        }
    }
}
