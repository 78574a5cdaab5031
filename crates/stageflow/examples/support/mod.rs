//! What the overhead examples and the `observe` benchmark share: the chain of no-op stages they
//! time, the median they report, a tracing subscriber that wants every span and records nothing,
//! and the "everything on" observability setup.

// Each includer uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use stageflow::observe::{JsonlSink, ProgressObserver, WhenFull};
use stageflow::{RunOptions, StageContext, StageOutput, StageSpec};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Stage `i` of a chain of stages that do nothing.
pub fn noop_stage(i: usize) -> StageSpec {
    StageSpec::new(format!("stage_{i}"), |_ctx: StageContext| async {
        StageOutput::ok()
    })
}

/// The median of `v` (not empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Interested in everything, does nothing: the cost of creating and entering spans.
pub struct NoopSubscriber;

impl Subscriber for NoopSubscriber {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// A lossless JSON Lines sink writing to `path` (truncated).
pub fn events_sink(path: &Path, fsync: bool) -> JsonlSink {
    JsonlSink::builder()
        .when_full(WhenFull::Block)
        .fsync(fsync)
        .create(path)
        .expect("create the events file")
}

/// Everything on: events into `sink`, spans (when a subscriber wants them), progress.
pub fn all_on(sink: &JsonlSink) -> RunOptions {
    let (progress, _rx) = ProgressObserver::watch();
    RunOptions::new()
        .events(sink.clone())
        .progress(progress.every(Duration::from_millis(100)))
}
