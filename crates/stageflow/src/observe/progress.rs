//! Run progress: counts, throughput and ETA, sampled and throttled.
//!
//! Nothing happens per stage: the executor publishes the counts it keeps anyway (a few relaxed
//! stores) every few hundred inline stages and whenever it waits for a stage task, and a sampler
//! task reads them every [`ProgressObserver::every`] (100 ms by default) and publishes a
//! [`Progress`]. The last report, with [`Progress::done`] set, is published when the run ends,
//! before [`Graph::run_with`](crate::Graph::run_with) returns. So a 10,000,000-stage chain runs
//! as fast with a progress observer as without, and counts never go backwards (each only grows,
//! and no sampled report can follow the final one).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// A snapshot of a run's progress.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Progress {
    /// Stages in the graph.
    pub total: u64,
    /// Stages that finished in any way (succeeded + skipped + failed). Reaches `total` when the
    /// run completes. Mid-run reports may lag the executor by a few hundred stages.
    pub completed: u64,
    /// Stages that finished `ok`.
    pub succeeded: u64,
    /// Stages that failed.
    pub failed: u64,
    /// Stages that were skipped.
    pub skipped: u64,
    /// Stages started and not finished yet.
    pub running: u64,
    /// Time since the run started.
    pub elapsed: Duration,
    /// Stages finished per second, over the whole run so far.
    pub throughput: f64,
    /// Estimated time to finish the remaining stages at the current throughput.
    pub eta: Option<Duration>,
    /// `true` on the final report of the run.
    pub done: bool,
}

impl Progress {
    /// `completed / total`, in `0.0..=1.0`.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.completed as f64 / self.total as f64
        }
    }

    pub(crate) fn compute(
        total: u64,
        started: u64,
        succeeded: u64,
        failed: u64,
        skipped: u64,
        elapsed: Duration,
        done: bool,
    ) -> Self {
        let completed = succeeded + failed + skipped;
        let secs = elapsed.as_secs_f64();
        let throughput = if secs > 0.0 {
            completed as f64 / secs
        } else {
            0.0
        };
        let remaining = total.saturating_sub(completed);
        let eta = if remaining == 0 {
            Some(Duration::ZERO)
        } else if throughput > 0.0 {
            Duration::try_from_secs_f64(remaining as f64 / throughput).ok()
        } else {
            None
        };
        Progress {
            total,
            completed,
            succeeded,
            failed,
            skipped,
            running: started.saturating_sub(completed),
            elapsed,
            throughput,
            eta,
            done,
        }
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} ({:.1}%), {} running, {} failed, {} skipped, {:.0}/s",
            self.completed,
            self.total,
            self.fraction() * 100.0,
            self.running,
            self.failed,
            self.skipped,
            self.throughput
        )?;
        if let Some(eta) = self.eta.filter(|_| !self.done) {
            write!(f, ", eta {:.1}s", eta.as_secs_f64())?;
        }
        Ok(())
    }
}

type Callback = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Receives a run's [`Progress`]: through a callback, a [`watch`] channel, or both.
///
/// Pass it to [`RunOptions::progress`](crate::RunOptions::progress). The callback runs on a
/// sampler task, at most once per interval plus once at the end; keep it short.
///
/// ```
/// use stageflow::{observe::ProgressObserver, Pipeline, RunOptions, StageContext, StageOutput};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let graph = Pipeline::builder("p")
///     .with_linear_chain(100, |i| {
///         stageflow::StageSpec::new(format!("s{i}"), |_ctx: StageContext| async { StageOutput::ok() })
///     })
///     .build()
///     .unwrap();
/// let (observer, rx) = ProgressObserver::watch();
/// graph.run_with((), RunOptions::new().progress(observer)).await.unwrap();
/// let last = *rx.borrow();
/// assert!(last.done);
/// assert_eq!(last.completed, 100);
/// # }
/// ```
#[derive(Clone)]
pub struct ProgressObserver {
    pub(crate) every: Duration,
    pub(crate) callback: Option<Callback>,
    pub(crate) watch: Option<watch::Sender<Progress>>,
}

impl ProgressObserver {
    /// An observer that calls `callback` with each report.
    pub fn callback(callback: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        ProgressObserver {
            every: Duration::from_millis(100),
            callback: Some(Arc::new(callback)),
            watch: None,
        }
    }

    /// An observer publishing into a [`watch`] channel; the receiver always holds the latest
    /// report (use `changed().await` to follow it, or wrap it in a stream).
    pub fn watch() -> (Self, watch::Receiver<Progress>) {
        let (tx, rx) = watch::channel(Progress::default());
        (
            ProgressObserver {
                every: Duration::from_millis(100),
                callback: None,
                watch: Some(tx),
            },
            rx,
        )
    }

    /// Also calls `callback` with each report.
    pub fn with_callback(mut self, callback: impl Fn(&Progress) + Send + Sync + 'static) -> Self {
        self.callback = Some(Arc::new(callback));
        self
    }

    /// Publish at most once per `interval` (default 100 ms; at least 1 ms).
    pub fn every(mut self, interval: Duration) -> Self {
        self.every = interval.max(Duration::from_millis(1));
        self
    }

    pub(crate) fn publish(&self, progress: &Progress) {
        if let Some(tx) = &self.watch {
            tx.send_replace(*progress);
        }
        if let Some(cb) = &self.callback {
            cb(progress);
        }
    }
}

impl fmt::Debug for ProgressObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgressObserver")
            .field("every", &self.every)
            .field("callback", &self.callback.is_some())
            .field("watch", &self.watch.is_some())
            .finish()
    }
}
