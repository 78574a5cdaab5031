//! Guard retry policy (the executor implements it; see [`GuardRetry`]).

use std::time::Duration;

/// When a guard stage ([`StageKind::Guard`](crate::StageKind::Guard)) fails, re-run the stage it
/// guards (its producer), then the guard again.
///
/// Set it on the guard with [`Pipeline::guard_retry`](crate::Pipeline::guard_retry). The producer
/// is the guard's single dependency, or the dependency named with [`producer`](Self::producer);
/// a guard that is not of kind `Guard`, or whose producer is not a direct dependency, does not
/// build.
///
/// Implemented in the executor, so that the rest of the graph sees the right outputs:
/// - the producer's other dependents wait until the guard has accepted (or finally rejected) its
///   output, so they never see an output the guard rejected and then replaced;
/// - the producer re-runs with the inputs it had the first time, and the guard with its original
///   inputs except the producer's new output (the guard's condition is not evaluated again);
/// - a guard failure is a `fail`/`retry` output or an error (not a panic or a cancel).
///
/// It stops, and the guard fails for good with its last failure plus the reason, when:
/// - the guard has run [`attempts`](Self::attempts) times (default 3: the first check and two
///   retries, so the producer runs at most 3 times too);
/// - the producer's re-run output serializes exactly as the one before (stagnation; on by
///   default, see [`stop_on_stagnation`](Self::stop_on_stagnation)): running the guard again
///   would only repeat its verdict;
/// - the [`time_limit`](Self::time_limit), counted from the guard's first failure, passes; a
///   re-run still going at that moment is dropped;
/// - the run stops (cancelled, or another stage failed fail-fast).
///
/// A re-run of the producer that fails fails the producer (and the run, fail-fast). Each new
/// attempt emits `stage.<producer>.retried` and `stage.<guard>.retried` events with data
/// `{"attempt", "guard", "reason"}`.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use stageflow::{GuardRetry, Pipeline, StageContext, StageKind, StageOutput};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let drafts = Arc::new(AtomicU32::new(0));
/// let d = drafts.clone();
/// let graph = Pipeline::builder("write")
///     .stage("draft", move |_ctx: StageContext| {
///         let n = d.fetch_add(1, Ordering::SeqCst);
///         async move { StageOutput::ok().with("words", 100 * (n + 1)) }
///     })
///     .stage("check_length", |ctx: StageContext| async move {
///         let words: u32 = ctx.get_from("draft", "words")?;
///         Ok::<_, stageflow::InputError>(if words >= 300 {
///             StageOutput::ok()
///         } else {
///             StageOutput::fail(format!("too short: {words} words"))
///         })
///     })
///     .after("draft")
///     .kind(StageKind::Guard)
///     .guard_retry(GuardRetry::attempts(5))
///     .build()
///     .unwrap();
/// let report = graph.run(()).await.unwrap();
/// assert_eq!(drafts.load(Ordering::SeqCst), 3);
/// assert_eq!(report.results().get_data::<u32>("draft", "words").unwrap(), 300);
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardRetry {
    pub(crate) attempts: u32,
    pub(crate) producer: Option<String>,
    pub(crate) stagnation: bool,
    pub(crate) time_limit: Option<Duration>,
}

impl GuardRetry {
    /// At most `attempts` executions of the guard (at least 1; 1 means no retry).
    pub fn attempts(attempts: u32) -> Self {
        GuardRetry {
            attempts: attempts.max(1),
            producer: None,
            stagnation: true,
            time_limit: None,
        }
    }

    /// The stage to re-run: a direct dependency of the guard. Needed when the guard has several
    /// dependencies.
    pub fn producer(mut self, stage: impl Into<String>) -> Self {
        self.producer = Some(stage.into());
        self
    }

    /// Whether to stop when the producer's re-run output is the same as before (default `true`).
    pub fn stop_on_stagnation(mut self, on: bool) -> Self {
        self.stagnation = on;
        self
    }

    /// Stop retrying once `limit` has passed since the guard first failed.
    pub fn time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// The most guard executions.
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }
}

impl Default for GuardRetry {
    fn default() -> Self {
        Self::attempts(3)
    }
}
