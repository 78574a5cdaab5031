//! What the store holds: one [`RunRecord`] per run and one [`StageRecord`] per finished stage.
//!
//! Times are [`SystemTime`]s kept at **millisecond** precision (the store writes them as unix
//! milliseconds); every store truncates them the same way, so a record reads back equal to what
//! [`RunRecord::normalized`] / [`StageRecord::normalized`] make of it.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{StageOutput, StageStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::error::StoreError;

/// Where a run stands, as the store knows it.
///
/// A run is [`Running`](Self::Running) from [`create_run`](crate::store::RunStore::create_run) until the
/// executor records how it ended. A run still `Running` when no process is executing it is a run
/// that crashed (or is being executed elsewhere): it can be resumed.
///
/// ```
/// use stageflow::store::RunState;
/// assert_eq!(RunState::Failed.as_str(), "failed");
/// assert_eq!("cancelled".parse::<RunState>().unwrap(), RunState::Cancelled);
/// assert!(!RunState::Running.is_terminal());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Started and not (yet) ended; after a crash, resumable.
    Running,
    /// Every stage finished.
    Completed,
    /// A stage failed.
    Failed,
    /// The run was cancelled (by a stage or by the caller).
    Cancelled,
}

impl RunState {
    /// All states, in declaration order.
    pub const ALL: [RunState; 4] = [
        RunState::Running,
        RunState::Completed,
        RunState::Failed,
        RunState::Cancelled,
    ];

    /// The lowercase name stored in the database and used in JSON (`"running"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// `true` for every state but [`Running`](Self::Running).
    pub fn is_terminal(self) -> bool {
        self != RunState::Running
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing an unknown [`RunState`] name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown run state `{0}` (expected running, completed, failed or cancelled)")]
pub struct ParseRunStateError(pub String);

impl FromStr for RunState {
    type Err = ParseRunStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseRunStateError(s.to_owned()))
    }
}

/// One run: what was run (pipeline name and fingerprint), on what input, and how it stands.
///
/// ```
/// use stageflow::store::{RunRecord, RunState};
/// let run = RunRecord::new(uuid::Uuid::now_v7(), "etl", "sha256:ab12", serde_json::json!({"day": 7}));
/// assert_eq!(run.status, RunState::Running);
/// assert!(run.check_fingerprint("sha256:ab12").is_ok());
/// assert!(run.check_fingerprint("sha256:ffff").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's id (the executor's [`RunIdentity::run_id`](crate::RunIdentity::run_id)).
    pub run_id: Uuid,
    /// Name of the pipeline.
    pub pipeline: String,
    /// Fingerprint of the pipeline definition the run was started with. A resume compares it with
    /// the current definition's ([`check_fingerprint`](Self::check_fingerprint)) and refuses to
    /// continue a run whose pipeline changed.
    pub fingerprint: String,
    /// The run's input, as JSON.
    pub input: Value,
    /// Where the run stands.
    pub status: RunState,
    /// When the run was created (millisecond precision).
    pub created_at: SystemTime,
    /// When the run last changed: status update or stage records committed (millisecond precision).
    pub updated_at: SystemTime,
    /// Why the run failed or was cancelled, if it did.
    pub error: Option<String>,
}

impl RunRecord {
    /// A [`Running`](RunState::Running) run created now, with no error.
    pub fn new(
        run_id: Uuid,
        pipeline: impl Into<String>,
        fingerprint: impl Into<String>,
        input: Value,
    ) -> Self {
        let now = now_millis();
        RunRecord {
            run_id,
            pipeline: pipeline.into(),
            fingerprint: fingerprint.into(),
            input,
            status: RunState::Running,
            created_at: now,
            updated_at: now,
            error: None,
        }
    }

    /// `Ok` when `current` is the fingerprint this run was started with, otherwise
    /// [`StoreError::FingerprintMismatch`]: resuming would mix results of two different pipelines.
    pub fn check_fingerprint(&self, current: &str) -> Result<(), StoreError> {
        if self.fingerprint == current {
            Ok(())
        } else {
            Err(StoreError::FingerprintMismatch {
                run_id: self.run_id,
                stored: self.fingerprint.clone(),
                current: current.to_owned(),
            })
        }
    }

    /// This record with its times truncated to milliseconds: exactly what a store gives back.
    pub fn normalized(mut self) -> Self {
        self.created_at = truncate_millis(self.created_at);
        self.updated_at = truncate_millis(self.updated_at);
        self
    }
}

/// One stage of a run whose outcome was committed: on resume, the executor does not run it again
/// and feeds its [`output`](Self::output) to its dependents instead.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use stageflow::{StageOutput, StageStatus};
/// use stageflow::store::StageRecord;
///
/// let run_id = uuid::Uuid::now_v7();
/// let started = SystemTime::now();
/// let record = StageRecord::new(run_id, "extract", StageStatus::Ok)
///     .with_output(StageOutput::ok().with("rows", 3))
///     .with_times(started, started + Duration::from_millis(12));
/// assert_eq!(record.duration_ms, 12);
/// assert_eq!(record.attempts, 1);
/// assert_eq!(record.output.unwrap().get::<u32>("rows").unwrap(), 3);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The run the stage belongs to.
    pub run_id: Uuid,
    /// The stage's name (unique within its pipeline).
    pub stage: String,
    /// How the stage ended.
    pub status: StageStatus,
    /// What the stage returned, when it returned something (a panicking stage has no output).
    /// Stored as JSON.
    pub output: Option<StageOutput>,
    /// Error text (with its cause chain) when the stage failed.
    pub error: Option<String>,
    /// How many times the stage was executed to get this outcome (1 unless it was retried).
    pub attempts: u32,
    /// When the (last) execution started (millisecond precision).
    pub started_at: SystemTime,
    /// When it finished (millisecond precision).
    pub finished_at: SystemTime,
    /// How long it ran, in milliseconds (measured by the executor on a monotonic clock; not
    /// necessarily `finished_at - started_at`).
    pub duration_ms: u64,
}

impl StageRecord {
    /// A record of `stage` that ended with `status` just now, on the first attempt, with no output,
    /// no error and a zero duration.
    pub fn new(run_id: Uuid, stage: impl Into<String>, status: StageStatus) -> Self {
        let now = now_millis();
        StageRecord {
            run_id,
            stage: stage.into(),
            status,
            output: None,
            error: None,
            attempts: 1,
            started_at: now,
            finished_at: now,
            duration_ms: 0,
        }
    }

    /// Sets the output, and the status to the output's status.
    pub fn with_output(mut self, output: StageOutput) -> Self {
        self.status = output.status();
        self.output = Some(output);
        self
    }

    /// Sets the error text.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }

    /// Sets the attempt count.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    /// Sets the start and finish times, and the duration to their difference (0 if `finished`
    /// is before `started`).
    pub fn with_times(mut self, started: SystemTime, finished: SystemTime) -> Self {
        self.started_at = started;
        self.finished_at = finished;
        self.duration_ms = duration_millis(finished.duration_since(started).unwrap_or_default());
        self
    }

    /// Sets the duration alone.
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration_ms = duration_millis(duration);
        self
    }

    /// The duration as a [`Duration`].
    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.duration_ms)
    }

    /// This record with its times truncated to milliseconds: exactly what a store gives back.
    pub fn normalized(mut self) -> Self {
        self.started_at = truncate_millis(self.started_at);
        self.finished_at = truncate_millis(self.finished_at);
        self
    }
}

/// `time` as signed milliseconds since the unix epoch (negative before it; truncated toward the
/// epoch; saturating far outside ±292 million years).
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use stageflow::store::{from_unix_millis, to_unix_millis};
/// let t = UNIX_EPOCH + Duration::from_micros(1_500_700);
/// assert_eq!(to_unix_millis(t), 1_500);
/// assert_eq!(from_unix_millis(1_500), Some(UNIX_EPOCH + Duration::from_millis(1_500)));
/// ```
pub fn to_unix_millis(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis())
            .map(|ms| -ms)
            .unwrap_or(i64::MIN + 1),
    }
}

/// The time `millis` milliseconds after (or, negative, before) the unix epoch; `None` when the
/// platform's [`SystemTime`] cannot represent it.
pub fn from_unix_millis(millis: i64) -> Option<SystemTime> {
    let magnitude = Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

/// `time` truncated to what the store keeps (whole milliseconds).
pub(crate) fn truncate_millis(time: SystemTime) -> SystemTime {
    from_unix_millis(to_unix_millis(time)).unwrap_or(time)
}

/// Now, at the store's precision.
pub(crate) fn now_millis() -> SystemTime {
    truncate_millis(SystemTime::now())
}

fn duration_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip_is_stable_both_sides_of_the_epoch() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::from_nanos(1_999_999),
            UNIX_EPOCH - Duration::from_nanos(1_999_999),
            SystemTime::now(),
        ] {
            let ms = to_unix_millis(t);
            let back = from_unix_millis(ms).unwrap();
            assert_eq!(to_unix_millis(back), ms);
            assert_eq!(truncate_millis(back), back);
        }
        assert_eq!(to_unix_millis(UNIX_EPOCH - Duration::from_millis(5)), -5);
    }

    #[test]
    fn with_times_never_underflows() {
        let now = SystemTime::now();
        let r = StageRecord::new(Uuid::nil(), "s", StageStatus::Ok)
            .with_times(now, now - Duration::from_secs(1));
        assert_eq!(r.duration_ms, 0);
    }
}
