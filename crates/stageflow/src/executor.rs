//! The run loop: dependency counting over the graph's adjacency lists.
//!
//! Each run owns a flat vector of per-stage counters (dependencies still pending, dependents not
//! yet started) and outputs. When a stage finishes, its dependents' counters drop; a stage whose
//! counter reaches zero is ready and starts at once. Nothing scans the whole graph per stage, and
//! nothing recurses, so per-stage cost is flat from ten stages to ten million.
//!
//! **How a ready stage is started.** Ready stages are spawned as tokio tasks, except the last one
//! the driver can start at that moment (the only one, in a chain), whose future it polls once,
//! inline. A stage that completes on that first poll (most CPU-light stages do) costs no task
//! spawn and no cross-thread wake-up, which is what keeps a long chain near the cost of a plain
//! loop. A stage that is still pending after that poll becomes a task too, so independent stages
//! run in parallel on the multi-threaded runtime.
//! Moving a polled future into a task is sound because stage futures are boxed (pinned on the heap).
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

use futures_util::FutureExt;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::context::{ConditionInputs, InputOutputs, RunShared, RunTimer, StageContext};
use crate::graph::{Graph, GraphInner};
use crate::observe::runtime::{ObsShared, Observer, Outcome};
use crate::output::{StageOutput, StageStatus};
use crate::results::{
    FailureCause, Results, Retention, RunFailure, RunOptions, RunReport, RunStats, RunStatus,
};
use crate::stage::StageResult;

/// How many stages the driver completes inline before yielding to the scheduler, so a long chain
/// never monopolizes a worker thread.
const INLINE_YIELD_EVERY: u32 = 256;

/// Reason given to stages skipped because every input was skipped.
pub const UPSTREAM_SKIPPED: &str = "all upstream stages skipped";
/// Reason given to stages whose condition returned false.
pub const CONDITION_NOT_MET: &str = "condition not met";

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

fn panic_message(payload: &(dyn Any + Send)) -> String {
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
struct NodeState {
    /// Dependencies that have not finished yet.
    pending_deps: u32,
    /// Dependents that have not started yet (they take their inputs when they start).
    pending_consumers: u32,
    output: Option<Arc<StageOutput>>,
}

type StageFuture = futures_util::future::CatchUnwind<
    AssertUnwindSafe<futures_util::future::BoxFuture<'static, StageResult>>,
>;

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
            input: input.into(),
            cancel,
            timer,
            observe: obs.as_ref().map(|o| o.shared()),
        });
        let mut run = Run::new(graph, shared, options.retention);
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

        loop {
            // Start whatever is ready, up to the concurrency cap.
            while self.stop.is_none() && running < max_concurrency {
                let Some(idx) = self.ready.pop_front() else {
                    break;
                };
                let Some(mut fut) = self.start(idx) else {
                    continue; // skipped or failed before running
                };
                if self.ready.is_empty() || running + 1 >= max_concurrency {
                    // The last stage we can start now: poll it inline and spawn it only if it
                    // has to wait. Its siblings (if any) are already running as tasks.
                    let polled =
                        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await;
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
                tasks.spawn(async move { (idx, Finished::from(fut.await)) });
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

        // Stopped early: tell running stages, abort them, and wait until they are gone.
        if self.stop.is_some() {
            self.shared.cancel.cancel();
        }
        if running > 0 {
            tasks.abort_all();
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    // Finished before the abort landed: keep its output, start nothing after it.
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
        }
    }

    /// Takes the stage's inputs and turns it into a future, or finishes it right away when it is
    /// skipped (all inputs skipped, or condition false) or its condition fails.
    fn start(&mut self, idx: u32) -> Option<StageFuture> {
        self.stats.started += 1;
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
        if all_skipped {
            self.complete(
                idx,
                Finished::Returned(Ok(StageOutput::skip(UPSTREAM_SKIPPED))),
            );
            return None;
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
        let graph = &*self.graph;
        for &j in graph.dependents(idx) {
            let s = &mut self.state[j as usize];
            s.pending_deps -= 1;
            if s.pending_deps == 0 {
                self.ready.push_back(j);
            }
        }
        self.state[idx as usize].output = Some(Arc::new(output));
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
            stop,
            ..
        } = self;
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
        match stop {
            None => Ok(RunReport {
                identity,
                status: RunStatus::Completed,
                results,
                stats,
                duration,
                observability: None,
            }),
            Some(Stop::Cancelled { stage, reason }) => Ok(RunReport {
                identity,
                status: RunStatus::Cancelled {
                    stage: stage.map(|i| graph.name(i).to_owned()),
                    reason,
                },
                results,
                stats,
                duration,
                observability: None,
            }),
            Some(Stop::Failed { stage, cause }) => Err(RunFailure {
                identity,
                stage: graph.name(stage).to_owned(),
                cause,
                partial: results,
                stats,
                duration,
                observability: None,
            }),
        }
    }
}
