//! The run loop: dependency counting over the graph's adjacency lists.
//!
//! Each run owns a flat vector of per-stage counters (dependencies still pending, dependents not
//! yet started) and outputs. When a stage finishes, its dependents' counters drop; a stage whose
//! counter reaches zero is ready and starts at once. Nothing scans the whole graph per stage, and
//! nothing recurses, so per-stage cost is flat from ten stages to ten million.
//!
//! **How a ready stage is started.** The last stage the driver can start at a given moment (the
//! only one, in a chain) is polled once, inline. A stage that completes on that first poll (most
//! CPU-light stages do) costs no task spawn and no cross-thread wake-up, which is what keeps a long
//! chain near the cost of a plain loop. When several stages are ready at once, the others start as
//! tokio tasks so that they run in parallel on the multi-threaded runtime, unless the driver has
//! measured that these siblings finish faster than a spawn would pay off: then it polls them inline
//! too, and switches back to spawning as soon as one is slow (see `Run::drive`). A stage that is
//! still pending after an inline poll becomes a task. Moving a polled future into a task is sound
//! because stage futures are boxed (pinned on the heap).
//!
//! **Stopping.** A failure (error, `fail`/`retry` output, panic, or failing condition) or a cancel
//! (a `cancel` output, or the caller's token) stops the run: no new stage starts, the run's
//! cancellation token fires so stages can notice, running stage tasks are aborted and awaited, and
//! only then does the caller get the result, so no stage of a finished run is still executing.

use std::any::Any;
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

mod resilience;

use crate::context::{ConditionInputs, InputOutputs, RunShared, RunTimer, StageContext};
use crate::durable::hooks::RunExt;
use crate::graph::{Graph, GraphInner};
use crate::observe::runtime::{ObsShared, Observer, Outcome};
use crate::output::{StageOutput, StageStatus};
use crate::results::{
    FailureCause, Results, Retention, RunFailure, RunOptions, RunReport, RunStats, RunStatus,
    StageFailure, UpstreamSkip,
};
use crate::stage::StageResult;
use resilience::Resilience;

/// How many stages the driver completes inline before yielding to the scheduler, so a long chain
/// never monopolizes a worker thread.
const INLINE_YIELD_EVERY: u32 = 256;

/// What spawning a stage as a task costs, roughly (spawn, cross-thread wake, join), on the
/// machines we measure. With `w` workers, running a stage of `t` on the driver beats spawning it
/// when `t < SPAWN_COST / (w - 1)`; see [`Run::drive`].
const SPAWN_COST: Duration = Duration::from_micros(1);

/// While siblings are being spawned, one in this many is still tried inline; see [`Run::drive`].
const INLINE_PROBE_EVERY: u32 = 32;

/// Reason given to stages skipped because every input was skipped.
pub const UPSTREAM_SKIPPED: &str = "all upstream stages skipped";
/// Reason given to stages whose condition returned false.
pub const CONDITION_NOT_MET: &str = "condition not met";
/// Reason given, under [`FailurePolicy::Continue`](crate::FailurePolicy::Continue), to stages
/// downstream of a failed stage.
pub const UPSTREAM_FAILED: &str = "upstream failed";

/// How a stage execution ended, before the executor interprets it.
enum Finished {
    Returned(StageResult),
    Panicked(String),
}

impl From<Result<StageResult, Box<dyn Any + Send>>> for Finished {
    fn from(r: Result<StageResult, Box<dyn Any + Send>>) -> Self {
        match r {
            Ok(result) => Finished::Returned(result),
            Err(payload) => Finished::Panicked(panic_message(payload.as_ref())),
        }
    }
}

impl Finished {
    fn outcome(&self) -> Outcome<'_> {
        match self {
            Finished::Returned(Ok(output)) => Outcome::Output(output),
            Finished::Returned(Err(err)) => Outcome::Error(err),
            Finished::Panicked(message) => Outcome::Panic(message),
        }
    }
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Why the run stopped early.
enum Stop {
    Failed { stage: u32, cause: FailureCause },
    Cancelled { stage: Option<u32>, reason: String },
}

/// Per-stage, per-run state: 16 bytes a stage.
pub(crate) struct NodeState {
    /// Dependencies that have not finished yet.
    pub(crate) pending_deps: u32,
    /// Dependents that have not started yet (they take their inputs when they start).
    pub(crate) pending_consumers: u32,
    pub(crate) output: Option<Arc<StageOutput>>,
}

/// `pending_deps` of a stage restored from a checkpoint: so large that finishing dependencies
/// never brings it to zero, so it never becomes ready (it is done already).
pub(crate) const RESTORED: u32 = u32::MAX;

type StageFuture = futures_util::future::CatchUnwind<
    AssertUnwindSafe<futures_util::future::BoxFuture<'static, StageResult>>,
>;

/// Runs a stage future as its own task; it reports back through the task set.
fn spawn_stage(tasks: &mut JoinSet<(u32, Finished)>, idx: u32, fut: StageFuture) {
    tasks.spawn(async move { (idx, Finished::from(fut.await)) });
}

struct Run {
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
    /// `None` for plain runs (then it costs one not-taken branch per stage start and end).
    ext: Option<Box<RunExt>>,
    /// Failure policy, cancel grace period, cleanup and guard retry state.
    res: Resilience,
}

impl Graph {
    /// Runs the pipeline with `input` and default [`RunOptions`].
    ///
    /// Returns a [`RunReport`] when the run completed or was cancelled gracefully, and a
    /// [`RunFailure`] (with partial results) when a stage failed. Must be called within a tokio
    /// runtime; stages run in parallel on a multi-threaded one.
    ///
    /// ```
    /// use stageflow::{Pipeline, StageContext, StageOutput};
    /// # #[tokio::main] async fn main() {
    /// let graph = Pipeline::builder("hello")
    ///     .stage("greet", |ctx: StageContext| async move {
    ///         let who: String = ctx.input()?;
    ///         Ok::<_, stageflow::InputError>(StageOutput::ok().with("text", format!("hello, {who}")))
    ///     })
    ///     .build()
    ///     .unwrap();
    /// let report = graph.run("world").await.unwrap();
    /// assert_eq!(report.results().get_data::<String>("greet", "text").unwrap(), "hello, world");
    /// # }
    /// ```
    #[allow(clippy::result_large_err)]
    pub async fn run(&self, input: impl Into<Value>) -> Result<RunReport, RunFailure> {
        self.run_with(input, RunOptions::default()).await
    }

    /// Runs the pipeline with `input` and `options`.
    // A run's result is produced once per run; boxing the failure would buy nothing.
    #[allow(clippy::result_large_err)]
    pub async fn run_with(
        &self,
        input: impl Into<Value>,
        options: RunOptions,
    ) -> Result<RunReport, RunFailure> {
        self.run_extended(input.into(), options, None).await
    }

    /// [`run_with`](Self::run_with), with checkpointing, restored stages or segments attached.
    #[allow(clippy::result_large_err)]
    pub(crate) async fn run_extended(
        &self,
        input: Value,
        options: RunOptions,
        ext: Option<Box<RunExt>>,
    ) -> Result<RunReport, RunFailure> {
        let graph = self.inner.clone();
        let cancel = match &options.cancel {
            Some(parent) => parent.child_token(),
            None => CancellationToken::new(),
        };
        let identity = options.identity.clone().unwrap_or_default();
        let timer = RunTimer::start();
        let obs = Observer::new(options.observe.as_deref(), &graph, &identity, timer);
        let shared = Arc::new(RunShared {
            graph: graph.clone(),
            identity,
            input,
            cancel,
            timer,
            observe: obs.as_ref().map(|o| o.shared()),
            cleanup: Default::default(),
        });
        let mut run = Run::new(graph, shared, options.retention);
        run.res.configure(&options, &run.graph);
        if let Some(ext) = ext {
            run.attach(ext);
        }
        let max_concurrency = options.max_concurrency.unwrap_or(usize::MAX);
        let Some(mut obs) = obs else {
            run.drive(max_concurrency).await;
            return run.finish();
        };
        obs.run_started();
        let span = obs.run_span();
        run.publish = obs.publishes_counts().then(|| obs.shared());
        // Observers that need nothing per stage (progress, memory sampling) stay off the
        // per-stage path entirely.
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
            ext: None,
            res: Resilience::default(),
        }
    }

    /// Attaches checkpointing / segments, first marking the stages restored from a checkpoint as
    /// done: their outputs are preloaded, their dependents' counters drop, and they never start.
    /// Linear in the number of stages; plain runs never come here.
    fn attach(&mut self, mut ext: Box<RunExt>) {
        let restored = std::mem::take(&mut ext.restored);
        if !restored.is_empty() {
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
        ext.attach(&mut self.state, &mut self.ready);
        self.ext = Some(ext);
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
                                    counts.publish(&self.stats);
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
                counts.publish(&self.stats);
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
        if let Some(ext) = self.ext.as_deref_mut() {
            ext.started(idx);
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
            return self.complete_guarded(idx, finished);
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
        self.state[idx as usize].output = Some(Arc::new(output));
        if let Some(ext) = self.ext.as_deref_mut() {
            ext.finished(
                idx,
                held.is_none(),
                &self.shared,
                &mut self.state,
                &mut self.ready,
            );
        }
    }

    /// `idx` finished: each dependent selected by `release` has one dependency fewer to wait for,
    /// and becomes ready when none is left.
    fn release_dependents(&mut self, idx: u32, release: impl Fn(u32) -> bool) {
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
            self.guard_failed(idx);
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
            graph: graph.clone(),
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
