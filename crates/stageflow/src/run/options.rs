//! What goes into a run: [`RunOptions`](crate::RunOptions) (identity, concurrency, retention, cancellation, failure
//! policy, observability) and the policies they name.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::context::RunIdentity;
use crate::observe::{
    EventSink, ObserveConfig, ProgressObserver, SummaryOptions, Watchdog, WideEvents,
};

/// Which stage outputs a run keeps for its [`Results`](crate::Results).
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
    /// and the run returns a [`RunFailure`](crate::RunFailure) for that stage.
    #[default]
    FailFast,
    /// Keep going: every stage downstream of a failed stage is skipped with reason
    /// [`UPSTREAM_FAILED`](crate::run::UPSTREAM_FAILED) (`"upstream failed"`), and independent
    /// branches run to the end. If anything failed, the run returns a [`RunFailure`](crate::RunFailure) naming the
    /// first failure, with every failure in [`RunFailure::failures`](crate::RunFailure::failures), the stages skipped because
    /// of them in [`RunFailure::skipped_upstream`](crate::RunFailure::skipped_upstream), and the outputs of every stage that finished
    /// (the failed ones as `fail` outputs) in [`RunFailure::partial_results`](crate::RunFailure::partial_results). A run with no
    /// failure returns a [`RunReport`](crate::RunReport) as usual.
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
    /// dropped. The run returns with [`RunStatus::Cancelled`](crate::RunStatus::Cancelled) and the partial results (including
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

    /// What to do when a stage fails; see [`FailurePolicy`](crate::FailurePolicy).
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
    /// are counted ([`ObservabilityReport::events_dropped`](crate::observe::ObservabilityReport::events_dropped)) and logged. It awaits
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
    /// allocated per stage. Reported in [`ObservabilityReport::memory`](crate::observe::ObservabilityReport::memory) and in the events.
    pub fn memory(mut self, on: bool) -> Self {
        self.observe_mut().memory = on;
        self
    }

    /// Computes an end-of-run summary (slowest stages, duration percentiles, critical path),
    /// reported in [`ObservabilityReport::summary`](crate::observe::ObservabilityReport::summary). Records one duration per stage.
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
