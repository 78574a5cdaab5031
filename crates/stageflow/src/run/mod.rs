//! Running a graph: the run loop, what goes into a run and what comes out.
//!
//! **The loop** counts dependencies over the graph's adjacency lists.
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

mod drive;
pub(crate) mod ext;
mod guard;
pub(crate) mod node;
mod observer;
mod options;
mod report;
mod resilience;
mod results;

use serde_json::Value;

use crate::graph::Graph;
pub(crate) use ext::Extensions;
pub use node::{CONDITION_NOT_MET, UPSTREAM_FAILED, UPSTREAM_SKIPPED};
pub use options::{FailurePolicy, Retention, RunOptions};
pub use report::{
    FailureCause, RunFailure, RunReport, RunStats, RunStatus, StageFailure, UpstreamSkip,
};
pub use results::Results;

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
        self.run_extended(input.into(), options, Extensions::default())
            .await
    }

    /// [`run_with`](Self::run_with), with checkpointing, restored stages or segments attached.
    #[allow(clippy::result_large_err)]
    pub(crate) async fn run_extended(
        &self,
        input: Value,
        options: RunOptions,
        ext: Extensions,
    ) -> Result<RunReport, RunFailure> {
        drive::execute(self.inner.clone(), input, options, ext).await
    }
}
