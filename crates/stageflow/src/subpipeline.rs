//! Subpipelines: a stage that runs a whole child pipeline.
//!
//! [`Subpipeline`] is a [`Stage`] wrapping a built [`Graph`]. When it runs, it starts a **child
//! run** of that graph:
//! - with its own run id, linked to its parent and root runs: the child's
//!   [`RunIdentity`] has `parent_run_id` = the parent run, `root_run_id` = the outermost run,
//!   `depth` = the parent's + 1, and the parent's correlation ids (see [`RunIdentity::child`]);
//! - with, as input, the parent's run input, or what [`Subpipeline::input`] computes from the
//!   stage's context;
//! - cancelled with its parent: the child's cancellation token is a child of the parent run's
//!   token, so cancelling a run (or its failing) cancels every descendant, however deep;
//! - sending its events to the parent's event sink (unless the child's own options name a sink),
//!   every event carrying `parent_run_id` and `root_run_id`;
//! - as its own tokio task, so nesting does not nest polls: a tree 10,000 runs deep uses no more
//!   stack than a single run.
//!
//! The stage's output holds, for each **sink** stage of the child (no dependents) that finished,
//! one key named after that stage, whose value is the sink's output data as a JSON object. It
//! also carries a `subpipeline.completed` custom event with the child's run id. A child that fails
//! fails the stage (naming the child run and its failed stage); a child cancelled by one of its
//! own stages cancels the parent run in turn.
//!
//! Nesting is limited: a child deeper than [`Subpipeline::max_depth`] (default
//! [`DEFAULT_MAX_DEPTH`]) is not started, and the stage fails with [`MaxDepthExceeded`].
//!
//! ```
//! use stageflow::subpipeline::Subpipeline;
//! use stageflow::{Pipeline, StageContext, StageOutput};
//!
//! # #[tokio::main] async fn main() {
//! let child = Pipeline::builder("double")
//!     .stage("twice", |ctx: StageContext| async move {
//!         let n: i64 = ctx.input()?;
//!         Ok::<_, stageflow::InputError>(StageOutput::ok().with("n", 2 * n))
//!     })
//!     .build()
//!     .unwrap();
//! let parent = Pipeline::builder("outer")
//!     .stage("sub", Subpipeline::new(child))
//!     .stage("read", |ctx: StageContext| async move {
//!         let twice: serde_json::Value = ctx.get_from("sub", "twice")?;
//!         Ok::<_, stageflow::InputError>(StageOutput::ok().with("n", twice["n"].clone()))
//!     })
//!     .after("sub")
//!     .build()
//!     .unwrap();
//! let report = parent.run(21).await.unwrap();
//! assert_eq!(report.results().get_data::<i64>("read", "n").unwrap(), 42);
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::context::{RunIdentity, StageContext};
use crate::error::{BoxError, StageError};
use crate::graph::Graph;
use crate::kind::StageKind;
use crate::output::StageOutput;
use crate::run::{RunOptions, RunStatus};
use crate::stage::{Stage, StageResult};

/// Default [`Subpipeline::max_depth`].
pub const DEFAULT_MAX_DEPTH: u32 = 64;

type InputFn = dyn Fn(&StageContext) -> Result<Value, BoxError> + Send + Sync;

/// A stage that runs a child pipeline; see the [module docs](self).
///
/// ```
/// use stageflow::subpipeline::Subpipeline;
/// use stageflow::{Pipeline, RunOptions, StageContext, StageOutput};
/// let child = Pipeline::builder("c")
///     .stage("x", |_c: StageContext| async { StageOutput::ok() })
///     .build()
///     .unwrap();
/// let stage = Subpipeline::new(child)
///     .max_depth(8)
///     .input(|ctx| Ok(serde_json::json!({"from": ctx.stage_name()})))
///     .options(RunOptions::new().max_concurrency(4));
/// # let _ = stage;
/// ```
#[derive(Clone)]
pub struct Subpipeline {
    graph: Graph,
    max_depth: u32,
    input: Option<Arc<InputFn>>,
    options: RunOptions,
}

impl fmt::Debug for Subpipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subpipeline")
            .field("graph", &self.graph)
            .field("max_depth", &self.max_depth)
            .finish_non_exhaustive()
    }
}

/// A subpipeline was not started because it would be nested deeper than allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "subpipeline `{pipeline}` not started: it would run at nesting depth {depth}, deeper than the \
     maximum of {max_depth} (parent run {parent_run_id}); raise Subpipeline::max_depth if the \
     nesting is intended"
)]
pub struct MaxDepthExceeded {
    /// The child pipeline.
    pub pipeline: String,
    /// Depth the child would have had.
    pub depth: u32,
    /// The limit.
    pub max_depth: u32,
    /// The run that tried to start it.
    pub parent_run_id: Uuid,
}

/// A child run failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("subpipeline `{pipeline}` (run {child_run_id}) failed: stage `{stage}` failed: {cause}")]
pub struct ChildFailed {
    /// The child pipeline.
    pub pipeline: String,
    /// The child run.
    pub child_run_id: Uuid,
    /// The child's failed stage.
    pub stage: String,
    /// Why it failed.
    pub cause: String,
}

impl Subpipeline {
    /// A stage running `graph` as a child run.
    pub fn new(graph: Graph) -> Self {
        Subpipeline {
            graph,
            max_depth: DEFAULT_MAX_DEPTH,
            input: None,
            options: RunOptions::default(),
        }
    }

    /// The deepest a child run started by this stage may be (a top-level run has depth 0, its
    /// children 1, ...). Default [`DEFAULT_MAX_DEPTH`].
    pub fn max_depth(mut self, depth: u32) -> Self {
        self.max_depth = depth;
        self
    }

    /// Computes the child's input from the stage's context (its dependencies' outputs, the run
    /// input). By default the child gets the parent's run input.
    pub fn input(
        mut self,
        input: impl Fn(&StageContext) -> Result<Value, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.input = Some(Arc::new(input));
        self
    }

    /// Options for the child runs (concurrency, retention, events, ...). Their identity and
    /// cancellation token are replaced by the child's; without an event sink, the child uses the
    /// parent's.
    pub fn options(mut self, options: RunOptions) -> Self {
        self.options = options;
        self
    }

    /// The child pipeline.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
}

/// Aborts the child run's task if the stage is dropped before it finished (the parent stopped).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait::async_trait]
impl Stage for Subpipeline {
    async fn execute(&self, ctx: StageContext) -> StageResult {
        let parent: &RunIdentity = ctx.identity();
        let identity = parent.child();
        if identity.depth > self.max_depth {
            return Err(StageError::from(MaxDepthExceeded {
                pipeline: self.graph.name().to_owned(),
                depth: identity.depth,
                max_depth: self.max_depth,
                parent_run_id: parent.run_id,
            }));
        }
        let input = match &self.input {
            Some(f) => f(&ctx).map_err(StageError::from_boxed)?,
            None => ctx.input_value().clone(),
        };
        let child_run_id = identity.run_id;
        let mut options = self
            .options
            .clone()
            .identity(identity)
            .cancel_token(ctx.cancellation_token());
        let parent_sink = ctx
            .run_shared()
            .observe
            .as_ref()
            .and_then(|obs| obs.sink.clone());
        if let Some(sink) = parent_sink {
            if options.observe.as_ref().is_none_or(|o| o.sink.is_none()) {
                options = options.event_sink(sink);
            }
        }
        ctx.emit_event(
            "subpipeline.started",
            json!({"child_run_id": child_run_id, "pipeline": self.graph.name()}),
        );
        let graph = self.graph.clone();
        // Its own task: a deep tree of runs is a set of tasks awaiting each other, not a stack of
        // nested polls.
        let task = tokio::spawn(async move { graph.run_with(input, options).await });
        let _abort = AbortOnDrop(task.abort_handle());
        let result = match task.await {
            Ok(result) => result,
            Err(err) => match err.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(err) => return Err(StageError::msg(format!("subpipeline task ended: {err}"))),
            },
        };
        let report = match result {
            Ok(report) => report,
            Err(failure) => {
                return Err(StageError::from(ChildFailed {
                    pipeline: self.graph.name().to_owned(),
                    child_run_id,
                    stage: failure.stage().to_owned(),
                    cause: failure.cause().to_string(),
                }))
            }
        };
        if let RunStatus::Cancelled { stage, reason } = report.status() {
            return Ok(StageOutput::cancel(match stage {
                Some(stage) => format!(
                    "subpipeline `{}` (run {child_run_id}) cancelled by stage `{stage}`: {reason}",
                    self.graph.name()
                ),
                None => format!(
                    "subpipeline `{}` (run {child_run_id}) cancelled: {reason}",
                    self.graph.name()
                ),
            }));
        }
        let mut output = StageOutput::ok();
        let results = report.results();
        for sink in self.graph.sinks() {
            if let Some(out) = results.get(sink) {
                // `OutputData` serializes as a JSON object: one copy of the values.
                output = output.with(sink.to_owned(), out.data());
            }
        }
        let stats = report.stats();
        Ok(output.event(
            "subpipeline.completed",
            json!({
                "child_run_id": child_run_id,
                "pipeline": self.graph.name(),
                "stages": stats.total,
                "duration_ms": report.duration().as_secs_f64() * 1000.0,
            }),
        ))
    }

    fn kind(&self) -> StageKind {
        StageKind::Work
    }
}
