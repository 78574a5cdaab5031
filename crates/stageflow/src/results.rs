//! What a run gives back: per-stage outputs by name, how the run ended, and counts.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cleanup::CleanupError;
use crate::context::RunIdentity;
use crate::error::DataError;
use crate::graph::GraphInner;
use crate::observe::{
    EventSink, ObservabilityReport, ObserveConfig, ProgressObserver, SummaryOptions, Watchdog,
    WideEvents,
};
use crate::output::StageOutput;

/// Which stage outputs a run keeps for its [`Results`].
///
/// Outputs that a later stage still needs are always kept until that stage has started; the
/// policy decides what happens after.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retention {
    /// Keep every stage's output (the default).
    #[default]
    All,
    /// Keep only the outputs of sink stages (no dependents); release every other output as soon as
    /// its last dependent has started. Memory then follows the graph's width, not its size, so a
    /// run of millions of stages stays small.
    Sinks,
}

/// What a run does when a stage fails.
///
/// ```
/// use stageflow::{FailurePolicy, RunOptions};
/// let opts = RunOptions::new().failure_policy(FailurePolicy::Continue);
/// # let _ = opts;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Stop at the first failure (the default): no new stage starts, running stages are cancelled,
    /// and the run returns a [`RunFailure`] for that stage.
    #[default]
    FailFast,
    /// Keep going: every stage downstream of a failed stage is skipped with reason
    /// [`UPSTREAM_FAILED`](crate::executor::UPSTREAM_FAILED) (`"upstream failed"`), and independent
    /// branches run to the end. If anything failed, the run returns a [`RunFailure`] naming the
    /// first failure, with every failure in [`RunFailure::failures`], the stages skipped because
    /// of them in [`RunFailure::skipped_upstream`], and the outputs of every stage that finished
    /// (the failed ones as `fail` outputs) in [`RunFailure::partial_results`]. A run with no
    /// failure returns a [`RunReport`] as usual.
    Continue,
}

/// Options for one run. The defaults are: a fresh [`RunIdentity`], unlimited concurrency, keep all
/// outputs, no external cancellation, fail-fast, no cancel grace period, 5 s per cleanup action.
///
/// ```
/// use stageflow::{Retention, RunOptions};
/// let opts = RunOptions::new().max_concurrency(8).retention(Retention::Sinks);
/// assert_eq!(opts.concurrency_limit(), Some(8));
/// ```
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub(crate) identity: Option<RunIdentity>,
    pub(crate) max_concurrency: Option<usize>,
    pub(crate) retention: Retention,
    pub(crate) cancel: Option<CancellationToken>,
    /// Observability settings; `None` (one null pointer) when nothing is observed.
    pub(crate) observe: Option<Box<ObserveConfig>>,
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) cancel_grace: Duration,
    pub(crate) cleanup_timeout: Option<Duration>,
}

/// Default time limit of one cleanup action.
pub(crate) const DEFAULT_CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

impl RunOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs with this identity instead of a fresh one.
    pub fn identity(mut self, identity: RunIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// At most `n` stages run at once (`n` is raised to 1 if 0).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = Some(n.max(1));
        self
    }

    /// The concurrency cap, if any.
    pub fn concurrency_limit(&self) -> Option<usize> {
        self.max_concurrency
    }

    /// Which outputs to keep.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Cancels the run when `token` is cancelled: no new stage starts, the run's own token fires
    /// (stages waiting on [`StageContext::cancelled`](crate::StageContext::cancelled) wake up at
    /// once), running stages get the [grace period](Self::cancel_grace) to finish and are then
    /// dropped. The run returns with [`RunStatus::Cancelled`] and the partial results (including
    /// the outputs of stages that finished within the grace period).
    pub fn cancel_token(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// How long running stages may take to finish once the run stops (cancelled, or failed
    /// fail-fast) before they are dropped. Default: zero, they are dropped at once (at their
    /// next await point). Stages that finish within the grace period keep their outputs (when
    /// successful); nothing new starts meanwhile. Cleanup actions run after that either way.
    ///
    /// ```
    /// use std::time::Duration;
    /// let opts = stageflow::RunOptions::new().cancel_grace(Duration::from_millis(500));
    /// # let _ = opts;
    /// ```
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// What to do when a stage fails; see [`FailurePolicy`].
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Time limit of each cleanup action registered with
    /// [`StageContext::on_cleanup`](crate::StageContext::on_cleanup) (default 5 s).
    pub fn cleanup_timeout(mut self, timeout: Duration) -> Self {
        self.cleanup_timeout = Some(timeout);
        self
    }

    fn observe_mut(&mut self) -> &mut ObserveConfig {
        self.observe.get_or_insert_with(Box::default)
    }

    /// Sends the run's lifecycle events (and the custom events and artifacts of stage outputs)
    /// to `sink`. See [`observe`](crate::observe) for the event taxonomy and the built-in sinks.
    ///
    /// The executor offers events with the non-blocking [`EventSink::try_emit`]; refused events
    /// are counted ([`ObservabilityReport::events_dropped`]) and logged. It awaits
    /// [`EventSink::flush`] before the run returns.
    ///
    /// ```
    /// use stageflow::{observe::MemorySink, RunOptions};
    /// let sink = MemorySink::new();
    /// let opts = RunOptions::new().events(sink.clone());
    /// # let _ = opts;
    /// ```
    pub fn events(self, sink: impl EventSink) -> Self {
        self.event_sink(Arc::new(sink))
    }

    /// Like [`events`](Self::events), with an already shared sink.
    pub fn event_sink(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.observe_mut().sink = Some(sink);
        self
    }

    /// Tracing spans: with `true` (the default) the run creates a `stageflow.run` span and a
    /// `stageflow.stage` child span per stage whenever a `tracing` subscriber is interested in
    /// them (target `stageflow`, level `INFO`), and none otherwise; with `false`, never.
    ///
    /// ```
    /// let quiet = stageflow::RunOptions::new().tracing(false);
    /// # let _ = quiet;
    /// ```
    pub fn tracing(mut self, on: bool) -> Self {
        self.observe_mut().tracing = Some(on);
        self
    }

    /// Reports progress to `observer` (throttled; see [`ProgressObserver`]).
    pub fn progress(mut self, observer: ProgressObserver) -> Self {
        self.observe_mut().progress = Some(observer);
        self
    }

    /// Watches for stalls (no stage finishing for a while); see [`Watchdog`].
    pub fn watchdog(mut self, watchdog: Watchdog) -> Self {
        self.observe_mut().watchdog = Some(watchdog);
        self
    }

    /// Samples resident memory during the run and, when an allocation counter is registered
    /// ([`set_allocation_counter`](crate::observe::memory::set_allocation_counter)), counts bytes
    /// allocated per stage. Reported in [`ObservabilityReport::memory`] and in the events.
    pub fn memory(mut self, on: bool) -> Self {
        self.observe_mut().memory = on;
        self
    }

    /// Computes an end-of-run summary (slowest stages, duration percentiles, critical path),
    /// reported in [`ObservabilityReport::summary`]. Records one duration per stage.
    ///
    /// ```
    /// use stageflow::{observe::SummaryOptions, RunOptions};
    /// let opts = RunOptions::new().summary(SummaryOptions::default());
    /// # let _ = opts;
    /// ```
    pub fn summary(mut self, options: SummaryOptions) -> Self {
        self.observe_mut().summary = Some(options);
        self
    }

    /// Emits wide events (`stage.wide`, `pipeline.wide`) through the event sink.
    pub fn wide_events(mut self, wide: WideEvents) -> Self {
        self.observe_mut().wide = wide;
        self
    }
}

/// Outputs of a run's stages, by stage name, in definition order.
#[derive(Clone)]
pub struct Results {
    pub(crate) graph: Arc<GraphInner>,
    /// `(stage index, output)`, sorted by index.
    pub(crate) entries: Vec<(u32, Arc<StageOutput>)>,
}

impl Results {
    /// The output of stage `name`, if it finished and was retained.
    pub fn get(&self, name: &str) -> Option<&StageOutput> {
        let idx = self.graph.index_of(name)?;
        self.entries
            .binary_search_by_key(&idx, |(i, _)| *i)
            .ok()
            .map(|pos| &*self.entries[pos].1)
    }

    /// The output of stage `name`, or an error naming the stages that do have results.
    pub fn require(&self, name: &str) -> Result<&StageOutput, DataError> {
        self.get(name).ok_or_else(|| DataError::MissingKey {
            key: name.to_owned(),
            available: self.names().take(20).map(str::to_owned).collect(),
        })
    }

    /// The value `key` of stage `name`'s output.
    pub fn get_data<T: DeserializeOwned>(&self, name: &str, key: &str) -> Result<T, DataError> {
        self.require(name)?.get(key)
    }

    /// `true` if stage `name` has a retained output.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Names of the stages with a retained output.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(i, _)| self.graph.name(*i))
    }

    /// `(stage name, output)` in definition order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &StageOutput)> {
        self.entries
            .iter()
            .map(|(i, o)| (self.graph.name(*i), &**o))
    }

    /// Number of retained outputs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` when no output is retained.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All retained outputs as a JSON object `{stage: output}`.
    pub fn to_json(&self) -> Value {
        let map = self
            .iter()
            .map(|(name, out)| {
                (
                    name.to_owned(),
                    serde_json::to_value(out).unwrap_or(Value::Null),
                )
            })
            .collect();
        Value::Object(map)
    }
}

impl fmt::Debug for Results {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Counts of what happened to the stages of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Stages in the graph.
    pub total: usize,
    /// Stages that were started (including skipped ones, whose condition was evaluated).
    pub started: usize,
    /// Stages that finished with [`StageStatus::Ok`](crate::StageStatus::Ok).
    pub succeeded: usize,
    /// Stages that finished skipped.
    pub skipped: usize,
    /// Stages that failed (0 or 1 in a fail-fast run).
    pub failed: usize,
    /// Stages that were running when the run stopped and were cancelled.
    pub cancelled: usize,
}

impl RunStats {
    /// Stages that finished (succeeded, skipped, or failed).
    pub fn finished(&self) -> usize {
        self.succeeded + self.skipped + self.failed
    }
}

/// How a run that did not fail ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// Every stage finished.
    Completed,
    /// A stage returned [`StageOutput::cancel`], or the caller cancelled the run.
    Cancelled {
        /// The cancelling stage, or `None` when the caller cancelled.
        stage: Option<String>,
        /// Why.
        reason: String,
    },
}

/// A run that finished without failure: completed, or cancelled gracefully.
#[derive(Debug)]
pub struct RunReport {
    pub(crate) identity: RunIdentity,
    pub(crate) status: RunStatus,
    pub(crate) results: Results,
    pub(crate) stats: RunStats,
    pub(crate) duration: Duration,
    pub(crate) observability: Option<Box<ObservabilityReport>>,
    pub(crate) cleanup_errors: Vec<CleanupError>,
}

impl RunReport {
    /// Cleanup actions that failed, panicked or timed out (see
    /// [`StageContext::on_cleanup`](crate::StageContext::on_cleanup)); empty when all succeeded.
    pub fn cleanup_errors(&self) -> &[CleanupError] {
        &self.cleanup_errors
    }

    /// The run's identity.
    pub fn identity(&self) -> &RunIdentity {
        &self.identity
    }

    /// Completed or cancelled.
    pub fn status(&self) -> &RunStatus {
        &self.status
    }

    /// `true` when every stage finished.
    pub fn is_completed(&self) -> bool {
        self.status == RunStatus::Completed
    }

    /// The retained outputs (all of them, or partial ones after a cancel).
    pub fn results(&self) -> &Results {
        &self.results
    }

    /// Takes the results out of the report.
    pub fn into_results(self) -> Results {
        self.results
    }

    /// Counts.
    pub fn stats(&self) -> &RunStats {
        &self.stats
    }

    /// Wall time of the run.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// What the run observed about itself (events emitted and dropped, stalls, memory, summary,
    /// final progress), when any observability was configured in [`RunOptions`].
    pub fn observability(&self) -> Option<&ObservabilityReport> {
        self.observability.as_deref()
    }
}

/// Why a stage failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureCause {
    /// The stage returned an error or a [`StageOutput::fail`].
    Error {
        /// The error text, with its cause chain.
        message: String,
        /// Whether the error was marked retryable (or the stage returned
        /// [`StageOutput::retry`]); no retry policy was configured to act on it.
        retryable: bool,
    },
    /// The stage panicked.
    Panic {
        /// The panic message.
        message: String,
    },
    /// The stage's condition returned an error.
    Condition {
        /// The error text.
        message: String,
    },
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureCause::Error {
                message,
                retryable: false,
            } => f.write_str(message),
            FailureCause::Error {
                message,
                retryable: true,
            } => write!(f, "{message} (retryable; no retry policy configured)"),
            FailureCause::Panic { message } => write!(f, "panicked: {message}"),
            FailureCause::Condition { message } => write!(f, "condition failed: {message}"),
        }
    }
}

/// A run stopped because a stage failed. Carries the failed stage, the cause, and the outputs of
/// every stage that finished before the run stopped.
///
/// ```
/// use stageflow::{Pipeline, StageContext, StageOutput};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let graph = Pipeline::builder("p")
///     .stage("a", |_ctx: StageContext| async { StageOutput::ok().with("x", 1) })
///     .stage("b", |_ctx: StageContext| async { StageOutput::fail("disk full") })
///     .after("a")
///     .build()
///     .unwrap();
/// let failure = graph.run(()).await.unwrap_err();
/// assert_eq!(failure.stage(), "b");
/// assert_eq!(failure.to_string(), "stage `b` failed: disk full");
/// assert!(failure.partial_results().contains("a"));
/// # }
/// ```
#[derive(Debug)]
pub struct RunFailure {
    pub(crate) identity: RunIdentity,
    pub(crate) stage: String,
    pub(crate) cause: FailureCause,
    pub(crate) partial: Results,
    pub(crate) stats: RunStats,
    pub(crate) duration: Duration,
    pub(crate) observability: Option<Box<ObservabilityReport>>,
    /// Every failure (more than one only under [`FailurePolicy::Continue`]).
    pub(crate) failures: Vec<StageFailure>,
    pub(crate) skipped_upstream: Vec<UpstreamSkip>,
    pub(crate) cleanup_errors: Vec<CleanupError>,
}

/// One failed stage; see [`RunFailure::failures`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageFailure {
    /// The stage.
    pub stage: String,
    /// Why it failed.
    pub cause: FailureCause,
}

/// A stage skipped because a stage upstream of it failed (under [`FailurePolicy::Continue`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSkip {
    /// The skipped stage.
    pub stage: String,
    /// The failed stage it is downstream of (the first one found, when several).
    pub failed: String,
}

impl RunFailure {
    /// Every stage that failed, in the order they failed: just [`stage`](Self::stage) in a
    /// fail-fast run, all of them under [`FailurePolicy::Continue`].
    pub fn failures(&self) -> &[StageFailure] {
        &self.failures
    }

    /// Stages skipped because a stage upstream of them failed (under
    /// [`FailurePolicy::Continue`]), in the order they were skipped.
    pub fn skipped_upstream(&self) -> &[UpstreamSkip] {
        &self.skipped_upstream
    }

    /// Cleanup actions that failed, panicked or timed out; see [`RunReport::cleanup_errors`].
    pub fn cleanup_errors(&self) -> &[CleanupError] {
        &self.cleanup_errors
    }

    /// The failed stage.
    pub fn stage(&self) -> &str {
        &self.stage
    }

    /// Why it failed.
    pub fn cause(&self) -> &FailureCause {
        &self.cause
    }

    /// Outputs of every stage that finished before the run stopped (subject to
    /// [`Retention`]).
    pub fn partial_results(&self) -> &Results {
        &self.partial
    }

    /// Counts.
    pub fn stats(&self) -> &RunStats {
        &self.stats
    }

    /// The run's identity.
    pub fn identity(&self) -> &RunIdentity {
        &self.identity
    }

    /// Wall time until the failure was surfaced.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// What the run observed about itself, when any observability was configured in
    /// [`RunOptions`]; see [`RunReport::observability`].
    pub fn observability(&self) -> Option<&ObservabilityReport> {
        self.observability.as_deref()
    }
}

impl fmt::Display for RunFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stage `{}` failed: {}", self.stage, self.cause)?;
        if self.failures.len() > 1 {
            write!(f, " (and {} more failed stages)", self.failures.len() - 1)?;
        }
        Ok(())
    }
}

impl std::error::Error for RunFailure {}
