//! The stall watchdog: notices when no stage has finished for a while.
//!
//! A deep pipeline that stops moving looks exactly like a slow one from outside. With
//! [`RunOptions::watchdog`](crate::RunOptions::watchdog), the run's sampler task checks every
//! `check_every` whether any stage finished since the last check; once no stage has finished for
//! `stall_after` while stages are running, it reports a stall: a `pipeline.stalled` event (when a
//! sink is configured), a `tracing::warn!`, and an entry in
//! [`ObservabilityReport::stalls`](super::ObservabilityReport::stalls). Each stall is reported
//! once; when stages finish again the watchdog re-arms.
//!
//! The watchdog runs on its own tokio task, so it sees stalls of stages that await (the common
//! case) on any runtime, and of stages that block their thread on a multi-threaded runtime.

use std::time::Duration;

use serde::Serialize;

/// Watchdog settings.
///
/// ```
/// use std::time::Duration;
/// use stageflow::{observe::Watchdog, RunOptions};
/// let opts = RunOptions::new().watchdog(Watchdog::new(Duration::from_secs(30)));
/// # let _ = opts;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watchdog {
    pub(crate) stall_after: Duration,
    pub(crate) check_every: Option<Duration>,
    pub(crate) max_names: usize,
}

impl Watchdog {
    /// Report a stall when no stage has finished for `stall_after`.
    pub fn new(stall_after: Duration) -> Self {
        Watchdog {
            stall_after: stall_after.max(Duration::from_millis(1)),
            check_every: None,
            max_names: 20,
        }
    }

    /// How often to check (default: a quarter of `stall_after`, at most the progress interval
    /// when both are on).
    pub fn check_every(mut self, interval: Duration) -> Self {
        self.check_every = Some(interval.max(Duration::from_millis(1)));
        self
    }

    /// Name at most `n` running stages in a stall report (default 20).
    pub fn max_names(mut self, n: usize) -> Self {
        self.max_names = n;
        self
    }

    /// The stall threshold.
    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }

    pub(crate) fn interval(&self) -> Duration {
        self.check_every
            .unwrap_or(self.stall_after / 4)
            .max(Duration::from_millis(1))
    }
}

/// One detected stall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stall {
    /// When it was detected, relative to the start of the run.
    pub at: Duration,
    /// How long no stage had finished when it was detected.
    pub idle_for: Duration,
    /// How many stages were running.
    pub running: usize,
    /// Names of (up to [`Watchdog::max_names`]) running stages, in definition order.
    pub stages: Vec<String>,
}
