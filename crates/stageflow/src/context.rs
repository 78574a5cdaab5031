//! What a running stage can see: its declared dependencies' outputs, the run's identity and input,
//! the run's cancellation signal, and a timer.
//!
//! A [`StageContext`] is built by the executor for each stage execution. It holds shared handles
//! only (an `Arc` to the run, and `Arc`s to the dependency outputs), so creating one costs a few
//! reference-count increments, and the stage may move it into spawned tasks.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use smallvec::SmallVec;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use uuid::Uuid;

use crate::cleanup::{CleanupRegistry, IntoCleanupResult};
use crate::error::{DataError, InputError};
use crate::kind::StageKind;
use crate::observe::emitter::ObsShared;
use crate::observe::EventKind;
use crate::output::StageOutput;
use crate::topology::Topology;

/// Who and what a run is for. Every run gets a fresh time-ordered `run_id` (UUIDv7); the other ids
/// are optional correlation ids supplied by the caller.
///
/// ```
/// use stageflow::RunIdentity;
/// let id = RunIdentity::new().with_request_id("req-7").with_user_id("u-1");
/// assert_eq!(id.request_id.as_deref(), Some("req-7"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIdentity {
    /// Unique id of this run.
    pub run_id: Uuid,
    /// Id of the request that started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Session the run belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// User the run acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Organization the run acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// For a [subpipeline](crate::subpipeline) run: the run of the stage that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<Uuid>,
    /// For a [subpipeline](crate::subpipeline) run: the outermost run of the tree (`None` for a
    /// top-level run, which is its own root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_run_id: Option<Uuid>,
    /// Nesting depth: 0 for a top-level run, parent's depth + 1 for a subpipeline run.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u32,
}

fn is_zero(depth: &u32) -> bool {
    *depth == 0
}

impl RunIdentity {
    /// A fresh identity with a new run id and no correlation ids.
    pub fn new() -> Self {
        RunIdentity {
            run_id: Uuid::now_v7(),
            request_id: None,
            session_id: None,
            user_id: None,
            org_id: None,
            parent_run_id: None,
            root_run_id: None,
            depth: 0,
        }
    }

    /// The identity of a child run started by this run (a [subpipeline](crate::subpipeline)): a
    /// fresh run id, this run as parent, this run's root (or this run) as root, depth + 1, and
    /// the same correlation ids.
    ///
    /// ```
    /// use stageflow::RunIdentity;
    /// let root = RunIdentity::new().with_request_id("r");
    /// let child = root.child();
    /// let grandchild = child.child();
    /// assert_eq!(grandchild.parent_run_id, Some(child.run_id));
    /// assert_eq!(grandchild.root_run_id, Some(root.run_id));
    /// assert_eq!((grandchild.depth, grandchild.request_id.as_deref()), (2, Some("r")));
    /// ```
    pub fn child(&self) -> RunIdentity {
        RunIdentity {
            run_id: Uuid::now_v7(),
            request_id: self.request_id.clone(),
            session_id: self.session_id.clone(),
            user_id: self.user_id.clone(),
            org_id: self.org_id.clone(),
            parent_run_id: Some(self.run_id),
            root_run_id: Some(self.root_run_id.unwrap_or(self.run_id)),
            depth: self.depth.saturating_add(1),
        }
    }

    /// Sets the request id.
    pub fn with_request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Sets the session id.
    pub fn with_session_id(mut self, id: impl Into<String>) -> Self {
        self.session_id = Some(id.into());
        self
    }

    /// Sets the user id.
    pub fn with_user_id(mut self, id: impl Into<String>) -> Self {
        self.user_id = Some(id.into());
        self
    }

    /// Sets the organization id.
    pub fn with_org_id(mut self, id: impl Into<String>) -> Self {
        self.org_id = Some(id.into());
        self
    }
}

impl Default for RunIdentity {
    fn default() -> Self {
        Self::new()
    }
}

/// Clock of one run: when it started, and how long it has been going.
#[derive(Clone, Copy, Debug)]
pub struct RunTimer {
    started: Instant,
    started_at: SystemTime,
}

impl RunTimer {
    pub(crate) fn start() -> Self {
        RunTimer {
            started: Instant::now(),
            started_at: SystemTime::now(),
        }
    }

    /// Wall-clock time at which the run started.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Monotonic instant at which the run started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Time since the run started (monotonic).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// State shared by every stage of one run. Lives in the run, never in the graph, so one graph can
/// run many times at once.
pub(crate) struct RunShared {
    pub(crate) topo: Arc<Topology>,
    pub(crate) identity: RunIdentity,
    pub(crate) input: Value,
    pub(crate) cancel: CancellationToken,
    pub(crate) timer: RunTimer,
    /// The run's observability state, when anything is observed.
    pub(crate) observe: Option<Arc<ObsShared>>,
    /// Cleanup actions registered by stages ([`StageContext::on_cleanup`]).
    pub(crate) cleanup: CleanupRegistry,
}

/// The outputs of a stage's declared dependencies, in the graph's dependency order.
pub(crate) type InputOutputs = SmallVec<[Arc<StageOutput>; 2]>;

/// A stage's view of its run. See the [module docs](self).
///
/// ```
/// use stageflow::{Pipeline, StageContext, StageOutput};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let graph = Pipeline::builder("doc")
///     .stage("a", |_ctx: StageContext| async { StageOutput::ok().with("n", 20) })
///     .stage("b", |ctx: StageContext| async move {
///         let n: i64 = ctx.get_from("a", "n")?;
///         let k: i64 = ctx.input()?;
///         Ok::<_, stageflow::InputError>(StageOutput::ok().with("n", n + k))
///     })
///     .after(["a"])
///     .build()
///     .unwrap();
/// let report = graph.run(serde_json::json!(22)).await.unwrap();
/// assert_eq!(report.results().get_data::<i64>("b", "n").unwrap(), 42);
/// # }
/// ```
///
/// Cloning is cheap (reference counts only); interceptors clone it to run a stage again.
#[derive(Clone)]
pub struct StageContext {
    run: Arc<RunShared>,
    stage: u32,
    inputs: InputOutputs,
}

impl StageContext {
    pub(crate) fn new(run: Arc<RunShared>, stage: u32, inputs: InputOutputs) -> Self {
        StageContext { run, stage, inputs }
    }

    /// This stage's name.
    pub fn stage_name(&self) -> &str {
        self.run.topo.name(self.stage)
    }

    /// This stage's kind.
    pub fn kind(&self) -> StageKind {
        self.run.topo.kind(self.stage)
    }

    /// The pipeline's name.
    pub fn pipeline_name(&self) -> &str {
        self.run.topo.pipeline_name()
    }

    /// The run's identity.
    pub fn identity(&self) -> &RunIdentity {
        &self.run.identity
    }

    /// The run's shared state (for the engine's own stages, e.g. subpipelines).
    pub(crate) fn run_shared(&self) -> &Arc<RunShared> {
        &self.run
    }

    /// Shorthand for `identity().run_id`.
    pub fn run_id(&self) -> Uuid {
        self.run.identity.run_id
    }

    /// The run's input, as given to [`Graph::run`](crate::Graph::run). Immutable for the whole run.
    pub fn input_value(&self) -> &Value {
        &self.run.input
    }

    /// The run's input deserialized as `T`.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, InputError> {
        T::deserialize(&self.run.input).map_err(|source| InputError::RunInput {
            stage: self.stage_name().to_owned(),
            expected: std::any::type_name::<T>(),
            source,
        })
    }

    /// Names of this stage's declared dependencies.
    pub fn dependencies(&self) -> impl Iterator<Item = &str> {
        let graph = &self.run.topo;
        graph.deps(self.stage).iter().map(move |&d| graph.name(d))
    }

    /// `(dependency name, output)` for every declared dependency.
    pub fn inputs(&self) -> impl Iterator<Item = (&str, &StageOutput)> {
        self.dependencies().zip(self.inputs.iter().map(|o| &**o))
    }

    /// The whole output of the declared dependency `dep`.
    pub fn output_of(&self, dep: &str) -> Result<&StageOutput, InputError> {
        let graph = &self.run.topo;
        let position = graph
            .index_of(dep)
            .and_then(|idx| graph.deps(self.stage).binary_search(&idx).ok());
        match position {
            Some(pos) => Ok(&self.inputs[pos]),
            None => Err(InputError::Undeclared {
                stage: self.stage_name().to_owned(),
                requested: dep.to_owned(),
                declared: self.dependencies().map(str::to_owned).collect(),
            }),
        }
    }

    /// The value `key` in the output of the declared dependency `dep`, deserialized as `T`.
    ///
    /// Reading a stage that is not a declared dependency is an [`InputError::Undeclared`], even if
    /// that stage has already finished.
    pub fn get_from<T: DeserializeOwned>(&self, dep: &str, key: &str) -> Result<T, InputError> {
        self.output_of(dep)?
            .get(key)
            .map_err(|source| self.data_error(dep, source))
    }

    /// The value `key` from whichever dependency has it.
    ///
    /// Deterministic by construction: if several dependencies have `key`, this is an
    /// [`InputError::Ambiguous`] naming them, never "whichever finished first".
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, InputError> {
        let mut holders = self
            .inputs()
            .filter(|(_, output)| output.data().contains_key(key));
        match (holders.next(), holders.next()) {
            (Some((name, output)), None) => output
                .get(key)
                .map_err(|source| self.data_error(name, source)),
            (Some(_), Some(_)) => Err(InputError::Ambiguous {
                stage: self.stage_name().to_owned(),
                key: key.to_owned(),
                sources: self
                    .inputs()
                    .filter(|(_, output)| output.data().contains_key(key))
                    .map(|(name, _)| name.to_owned())
                    .collect(),
            }),
            (None, _) => Err(InputError::NotFound {
                stage: self.stage_name().to_owned(),
                key: key.to_owned(),
            }),
        }
    }

    fn data_error(&self, dep: &str, source: DataError) -> InputError {
        InputError::Data {
            stage: self.stage_name().to_owned(),
            dependency: dep.to_owned(),
            source,
        }
    }

    /// `true` once the run has been cancelled (by a failure, a cancel output, or the caller).
    pub fn is_cancelled(&self) -> bool {
        self.run.cancel.is_cancelled()
    }

    /// Completes when the run is cancelled. Use it in `tokio::select!` around long awaits.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.run.cancel.cancelled()
    }

    /// A clone of the run's cancellation token, for handing to spawned work.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.run.cancel.clone()
    }

    /// The run's clock.
    pub fn timer(&self) -> &RunTimer {
        &self.run.timer
    }

    /// Registers a cleanup action, run when the run ends, whether it completed, failed or was
    /// cancelled: after every stage has finished or been dropped, last registered first, each
    /// under [`RunOptions::cleanup_timeout`](crate::RunOptions::cleanup_timeout). The action may
    /// return `()` or a `Result`; errors, panics and timeouts are reported in
    /// [`RunReport::cleanup_errors`](crate::RunReport::cleanup_errors) (or the same on
    /// [`RunFailure`](crate::RunFailure)). See [`cleanup`](crate::cleanup).
    ///
    /// ```
    /// use stageflow::{Pipeline, StageContext, StageOutput};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let graph = Pipeline::builder("p")
    ///     .stage("tmp", |ctx: StageContext| async move {
    ///         let path = std::env::temp_dir().join(format!("stageflow-{}", ctx.run_id()));
    ///         std::fs::write(&path, b"scratch")?;
    ///         ctx.on_cleanup("remove scratch file", move || async move { std::fs::remove_file(path) });
    ///         Ok::<_, std::io::Error>(StageOutput::ok())
    ///     })
    ///     .build()
    ///     .unwrap();
    /// let report = graph.run(()).await.unwrap();
    /// assert!(report.cleanup_errors().is_empty());
    /// # }
    /// ```
    pub fn on_cleanup<F, Fut>(&self, name: impl Into<String>, action: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: IntoCleanupResult,
    {
        self.run
            .cleanup
            .register(self.stage_name(), name.into(), action);
    }

    /// Emits a lifecycle event of `kind` for this stage (used by interceptors, e.g.
    /// `stage.<name>.retried`). Returns whether a sink took it.
    pub(crate) fn emit_lifecycle(&self, kind: EventKind, data: Value) -> bool {
        let Some(obs) = &self.run.observe else {
            return false;
        };
        if obs.sink.is_none() {
            return false;
        }
        let event = obs
            .event(kind)
            .with_stage(self.stage_name(), self.kind())
            .with_data(data);
        obs.emit_external(event)
    }

    /// Emits a custom event right away to the run's event sink (see
    /// [`RunOptions::events`](crate::RunOptions::events)), with the run id and this stage's name
    /// and kind filled in. Returns `false` when the run has no sink or the sink refused the event
    /// (then counted as dropped). Never blocks.
    ///
    /// To attach an event to the stage's result instead (forwarded when the stage finishes, and
    /// kept in the output), use [`StageOutput::event`].
    ///
    /// ```
    /// use stageflow::{observe::MemorySink, Pipeline, RunOptions, StageContext, StageOutput};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let graph = Pipeline::builder("p")
    ///     .stage("a", |ctx: StageContext| async move {
    ///         ctx.emit_event("progress.note", serde_json::json!({"pct": 50}));
    ///         StageOutput::ok()
    ///     })
    ///     .build()
    ///     .unwrap();
    /// let sink = MemorySink::new();
    /// graph.run_with((), RunOptions::new().events(sink.clone())).await.unwrap();
    /// assert!(sink.event_types().contains(&"progress.note".to_owned()));
    /// # }
    /// ```
    pub fn emit_event(&self, event_type: impl Into<String>, data: impl Serialize) -> bool {
        if self
            .run
            .observe
            .as_ref()
            .is_none_or(|obs| obs.sink.is_none())
        {
            return false; // nothing listens: do not even serialize the data
        }
        let data = serde_json::to_value(data)
            .unwrap_or_else(|e| Value::String(format!("unserializable event data: {e}")));
        self.emit_lifecycle(EventKind::Custom(event_type.into().into()), data)
    }
}

impl std::fmt::Debug for StageContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageContext")
            .field("stage", &self.stage_name())
            .field("run_id", &self.run_id())
            .finish_non_exhaustive()
    }
}

/// The inputs a [condition](crate::Pipeline::when) sees: the declared dependencies'
/// outputs and the run input, before the stage runs.
pub struct ConditionInputs<'a> {
    pub(crate) ctx: &'a StageContext,
}

impl ConditionInputs<'_> {
    /// See [`StageContext::get_from`].
    pub fn get_from<T: DeserializeOwned>(&self, dep: &str, key: &str) -> Result<T, InputError> {
        self.ctx.get_from(dep, key)
    }

    /// See [`StageContext::output_of`].
    pub fn output_of(&self, dep: &str) -> Result<&StageOutput, InputError> {
        self.ctx.output_of(dep)
    }

    /// See [`StageContext::input`].
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, InputError> {
        self.ctx.input()
    }

    /// See [`StageContext::inputs`].
    pub fn inputs(&self) -> impl Iterator<Item = (&str, &StageOutput)> {
        self.ctx.inputs()
    }
}
