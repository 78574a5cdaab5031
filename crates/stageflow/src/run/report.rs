//! What a run gives back: how it ended ([`RunReport`] or [`RunFailure`]), its outputs and
//! counts.

use std::fmt;
use std::time::Duration;

use super::results::Results;
use crate::cleanup::CleanupError;
use crate::context::RunIdentity;
use crate::observe::emitter::Counts;
use crate::observe::ObservabilityReport;

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
    /// The counts progress reports are built from.
    pub(crate) fn counts(&self) -> Counts {
        Counts {
            started: self.started as u64,
            succeeded: self.succeeded as u64,
            failed: self.failed as u64,
            skipped: self.skipped as u64,
        }
    }

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
    /// A stage returned [`StageOutput::cancel`](crate::StageOutput::cancel), or the caller cancelled the run.
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
    /// final progress), when any observability was configured in [`RunOptions`](crate::RunOptions).
    pub fn observability(&self) -> Option<&ObservabilityReport> {
        self.observability.as_deref()
    }
}

/// Why a stage failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailureCause {
    /// The stage returned an error or a [`StageOutput::fail`](crate::StageOutput::fail).
    Error {
        /// The error text, with its cause chain.
        message: String,
        /// Whether the error was marked retryable (or the stage returned
        /// [`StageOutput::retry`](crate::StageOutput::retry)); no retry policy was configured to act on it.
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
    /// Every failure (more than one only under [`FailurePolicy::Continue`](crate::FailurePolicy::Continue)).
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

/// A stage skipped because a stage upstream of it failed (under [`FailurePolicy::Continue`](crate::FailurePolicy::Continue)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamSkip {
    /// The skipped stage.
    pub stage: String,
    /// The failed stage it is downstream of (the first one found, when several).
    pub failed: String,
}

impl RunFailure {
    /// Every stage that failed, in the order they failed: just [`stage`](Self::stage) in a
    /// fail-fast run, all of them under [`FailurePolicy::Continue`](crate::FailurePolicy::Continue).
    pub fn failures(&self) -> &[StageFailure] {
        &self.failures
    }

    /// Stages skipped because a stage upstream of them failed (under
    /// [`FailurePolicy::Continue`](crate::FailurePolicy::Continue)), in the order they were skipped.
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
    /// [`Retention`](crate::Retention)).
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
    /// [`RunOptions`](crate::RunOptions); see [`RunReport::observability`].
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
