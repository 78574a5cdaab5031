//! The observability state one run shares between the executor, its stages (custom events) and
//! the sampler task (progress, stall watchdog, memory): the sink, the event labels, per-stage
//! states and the counts the executor publishes.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::event::{Event, EventKind};
use super::labels::RunLabels;
use super::progress::Progress;
use super::sink::EventSink;

/// A stage that has not started (per-stage state in [`ObsShared::states`]).
pub(crate) const NOT_STARTED: u8 = 0;
/// A stage that is running.
pub(crate) const RUNNING: u8 = 1;
/// A stage that finished.
pub(crate) const FINISHED: u8 = 2;

/// The executor's counts, as published for progress (each only grows).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) started: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) skipped: u64,
}

/// Run-level observability state shared with the sampler task and with stage contexts.
pub(crate) struct ObsShared {
    pub(crate) labels: Arc<RunLabels>,
    pub(crate) sink: Option<Arc<dyn EventSink>>,
    /// Per stage: [`NOT_STARTED`], [`RUNNING`] or [`FINISHED`].
    pub(crate) states: Box<[AtomicU8]>,
    /// Per stage: bytes allocated while polled (empty unless allocations are counted).
    pub(crate) alloc_slots: Box<[AtomicU64]>,
    pub(crate) alloc_counter: Option<fn() -> u64>,
    /// The run's counts as last published by the executor, for progress.
    pub(crate) started: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) skipped: AtomicU64,
    /// Stages invoked / finished after being invoked, kept per stage by the observer when the
    /// watchdog is on.
    pub(crate) ran_started: AtomicU64,
    pub(crate) ran_ended: AtomicU64,
    /// Events emitted / dropped outside the executor (sampler, stage contexts).
    pub(crate) extra_emitted: AtomicU64,
    pub(crate) extra_dropped: AtomicU64,
    pub(crate) start: Instant,
}

impl ObsShared {
    /// Publishes the executor's counts (relaxed stores; each count only grows).
    pub(crate) fn publish(&self, counts: Counts) {
        self.started.store(counts.started, Ordering::Relaxed);
        self.succeeded.store(counts.succeeded, Ordering::Relaxed);
        self.failed.store(counts.failed, Ordering::Relaxed);
        self.skipped.store(counts.skipped, Ordering::Relaxed);
    }

    /// Nanoseconds from the run's start to now: the run's clock, which every event is stamped on.
    pub(crate) fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Emits from outside the executor (a stage context, the sampler). Returns whether the sink
    /// took it; `false` without a sink.
    pub(crate) fn emit_external(&self, event: Event) -> bool {
        let Some(sink) = &self.sink else { return false };
        let ok = sink.try_emit(event);
        let counter = if ok {
            &self.extra_emitted
        } else {
            &self.extra_dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
        ok
    }

    /// An event of this run, stamped now on the run's clock.
    pub(crate) fn event(&self, kind: EventKind) -> Event {
        self.labels.event_at(kind, self.now_ns())
    }

    pub(crate) fn progress(&self, total: u64, elapsed: Duration, done: bool) -> Progress {
        Progress::compute(
            total,
            self.started.load(Ordering::Relaxed),
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.skipped.load(Ordering::Relaxed),
            elapsed,
            done,
        )
    }

    pub(crate) fn running_stages(&self, max: usize) -> (usize, Vec<String>) {
        let mut count = 0;
        let mut names = Vec::new();
        for (i, s) in self.states.iter().enumerate() {
            if s.load(Ordering::Relaxed) == RUNNING {
                count += 1;
                if names.len() < max {
                    names.push(self.labels.topo.name(i as u32).to_owned());
                }
            }
        }
        (count, names)
    }
}
