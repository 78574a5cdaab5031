//! Observability: lifecycle events, event sinks, tracing spans, progress, memory, a stall
//! watchdog, an end-of-run summary and wide events.
//!
//! Everything is opt-in per run through [`RunOptions`](crate::RunOptions), and a run that
//! observes nothing pays nothing: the executor then holds no observer, builds no event, creates no
//! span, and its per-stage path has one extra, always-not-taken branch at stage start and one at
//! stage end.
//!
//! | want | configure | you get |
//! |---|---|---|
//! | lifecycle events | [`RunOptions::events`](crate::RunOptions::events) with a sink ([`JsonlSink`], [`MemorySink`], [`ChannelSink`], [`TracingSink`], [`FanOut`], your own [`EventSink`]) | `pipeline.*` and `stage.<name>.*` [`Event`]s, plus the custom events and artifacts stages attach to their outputs |
//! | tracing spans | nothing (a subscriber interested in target `stageflow` at `INFO` is enough); [`RunOptions::tracing(false)`](crate::RunOptions::tracing) turns them off | a `stageflow.run` span with one `stageflow.stage` child per stage, fields `run_id`, `pipeline`, `stage`, `kind`, `status`; with the `otel` cargo feature, OpenTelemetry export through `observe::otel` |
//! | progress | [`RunOptions::progress`](crate::RunOptions::progress) with a [`ProgressObserver`] | throttled [`Progress`] via callback or `watch` channel |
//! | memory | [`RunOptions::memory(true)`](crate::RunOptions::memory) (+ [`memory::set_allocation_counter`]) | RSS start/peak/end, bytes allocated per stage |
//! | stall detection | [`RunOptions::watchdog`](crate::RunOptions::watchdog) | `pipeline.stalled` event, `tracing::warn!`, [`ObservabilityReport::stalls`] |
//! | run summary | [`RunOptions::summary`](crate::RunOptions::summary) | slowest stages, percentiles, critical path ([`RunSummary`]) |
//! | wide events | [`RunOptions::wide_events`](crate::RunOptions::wide_events) | one `stage.wide` record per stage, one `pipeline.wide` per run |
//!
//! What was observed comes back in [`RunReport::observability`](crate::RunReport::observability)
//! (and the same on [`RunFailure`](crate::RunFailure)): events emitted and dropped, stalls, memory,
//! summary and final progress.
//!
//! **Back-pressure.** The executor only ever calls the non-blocking [`EventSink::try_emit`]; an
//! event the sink refuses is counted as dropped, reported in
//! [`ObservabilityReport::events_dropped`], and logged with `tracing::warn!` at the end of the
//! run, so a slow sink never stalls a pipeline silently. A sink that must not lose anything says
//! so itself (e.g. [`JsonlSink`] with [`WhenFull::Block`]). At the end of every run the executor
//! awaits [`EventSink::flush`], so the run returns only once its events are written.
//!
//! **Cost.** Into a [`JsonlSink`], a stage's `started` and `completed` events cost the executor
//! one clock read and two pushes of a few numbers: the sink's writer thread turns them into the
//! same lines the [`Event`]s would give (other sinks get [`Event`]s). Measured on a 2-core
//! machine (`cargo run --release -p stageflow --example observe_overhead`), JSONL events, spans
//! to a no-op subscriber and progress together keep a chain of no-op stages under three times its
//! bare time per stage, from 2,000 to 1,000,000 stages; the fsync that ends each run is a fixed
//! cost of the disk (about half a millisecond on that machine) on top.
//!
//! ```
//! use std::time::Duration;
//! use stageflow::observe::{MemorySink, ProgressObserver, SummaryOptions, Watchdog};
//! use stageflow::{Pipeline, RunOptions, StageContext, StageOutput, StageSpec};
//!
//! # #[tokio::main] async fn main() {
//! let graph = Pipeline::builder("etl")
//!     .with_linear_chain(50, |i| {
//!         StageSpec::new(format!("s{i}"), |_ctx: StageContext| async { StageOutput::ok() })
//!     })
//!     .build()
//!     .unwrap();
//! let events = MemorySink::new();
//! let (progress, progress_rx) = ProgressObserver::watch();
//! let report = graph
//!     .run_with(
//!         (),
//!         RunOptions::new()
//!             .events(events.clone())
//!             .progress(progress)
//!             .watchdog(Watchdog::new(Duration::from_secs(60)))
//!             .summary(SummaryOptions::new().top(3)),
//!     )
//!     .await
//!     .unwrap();
//! let obs = report.observability().unwrap();
//! assert_eq!(obs.events_dropped, 0);
//! assert_eq!(obs.summary.as_ref().unwrap().critical_path.len, 50);
//! assert_eq!(progress_rx.borrow().completed, 50);
//! assert_eq!(events.len(), 2 + 2 * 50 + 1);
//! # }
//! ```

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

pub(crate) mod emitter;
pub mod event;
pub(crate) mod jsonl;
pub(crate) mod labels;
pub mod memory;
pub(crate) mod note;
#[cfg(feature = "otel")]
pub mod otel;
pub mod progress;
pub(crate) mod sampler;
pub mod sink;
pub mod summary;
pub mod watchdog;

pub use crate::output::{Artifact, CustomEvent};
pub use event::{Event, EventKind, Name, Rfc3339};
pub use jsonl::{JsonlSink, JsonlSinkBuilder, WhenFull};
pub use memory::MemoryReport;
#[doc(hidden)]
pub use note::NotePath;
pub use progress::{Progress, ProgressObserver};
pub use sink::{ChannelSink, EventSink, FanOut, Filtered, MemorySink, NoopSink, TracingSink};
pub use summary::{CriticalPath, Percentiles, RunSummary, StageTiming, SummaryOptions};
pub use watchdog::{Stall, Watchdog};

/// Which wide events to emit (through the run's sink; without a sink there is nowhere to put
/// them).
///
/// A wide event is one flat record per unit of work, for log pipelines that prefer one row per
/// stage or run over a stream of lifecycle events: `stage.wide` (status, duration, start and end
/// time, error, output data keys, allocated bytes) and `pipeline.wide` (status, duration, stage
/// counts, memory, summary when enabled, events emitted and dropped).
///
/// ```
/// use stageflow::{observe::WideEvents, RunOptions};
/// let opts = RunOptions::new().wide_events(WideEvents::all());
/// # let _ = opts;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WideEvents {
    /// Emit `stage.wide` per stage.
    pub stage: bool,
    /// Emit `pipeline.wide` per run.
    pub pipeline: bool,
}

impl WideEvents {
    /// Neither.
    pub const fn none() -> Self {
        WideEvents {
            stage: false,
            pipeline: false,
        }
    }

    /// Both.
    pub const fn all() -> Self {
        WideEvents {
            stage: true,
            pipeline: true,
        }
    }

    /// Only `pipeline.wide`.
    pub const fn pipeline_only() -> Self {
        WideEvents {
            stage: false,
            pipeline: true,
        }
    }
}

/// The observability part of [`RunOptions`](crate::RunOptions). Boxed there, so runs that observe
/// nothing carry one null pointer.
#[derive(Clone, Default)]
pub(crate) struct ObserveConfig {
    pub(crate) sink: Option<Arc<dyn EventSink>>,
    /// `None`: spans when a subscriber is interested; `Some(false)`: never.
    pub(crate) tracing: Option<bool>,
    pub(crate) progress: Option<ProgressObserver>,
    pub(crate) watchdog: Option<Watchdog>,
    pub(crate) memory: bool,
    pub(crate) summary: Option<SummaryOptions>,
    pub(crate) wide: WideEvents,
}

impl fmt::Debug for ObserveConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe")
            .field("sink", &self.sink.as_ref().map(|_| "dyn EventSink"))
            .field("tracing", &self.tracing)
            .field("progress", &self.progress)
            .field("watchdog", &self.watchdog)
            .field("memory", &self.memory)
            .field("summary", &self.summary)
            .field("wide", &self.wide)
            .finish()
    }
}

/// What a run observed about itself; see
/// [`RunReport::observability`](crate::RunReport::observability).
///
/// ```
/// use stageflow::{observe::MemorySink, Pipeline, RunOptions, StageContext, StageOutput};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let graph = Pipeline::builder("p")
///     .stage("a", |_ctx: StageContext| async { StageOutput::ok() })
///     .build()
///     .unwrap();
/// let report = graph
///     .run_with((), RunOptions::new().events(MemorySink::new()).memory(true))
///     .await
///     .unwrap();
/// let obs = report.observability().unwrap();
/// assert_eq!((obs.events_emitted, obs.events_dropped), (5, 0));
/// if cfg!(target_os = "linux") {
///     assert!(obs.memory.unwrap().rss_peak.unwrap() > 0);
/// }
/// # }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ObservabilityReport {
    /// Events of this run the sink accepted.
    pub events_emitted: u64,
    /// Events of this run the sink refused (buffer full, receiver gone). Also logged with
    /// `tracing::warn!` when non-zero.
    pub events_dropped: u64,
    /// The error returned by the sink's end-of-run flush, if any.
    pub sink_error: Option<String>,
    /// Stalls the watchdog reported.
    pub stalls: Vec<Stall>,
    /// Memory figures (with [`RunOptions::memory`](crate::RunOptions::memory)).
    pub memory: Option<MemoryReport>,
    /// The end-of-run summary (with [`RunOptions::summary`](crate::RunOptions::summary)).
    pub summary: Option<RunSummary>,
    /// The final progress report (with [`RunOptions::progress`](crate::RunOptions::progress)).
    #[serde(skip)]
    pub progress: Option<Progress>,
}
