//! The executor-facing side of observability: what runs per stage and per run when something is
//! observed. Nothing here exists for a run that observes nothing: the executor then holds `None`
//! and pays one predictable branch per stage start and one per stage end.

use std::borrow::Cow;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Span;

use super::node::Outcome;
use super::report::{RunFailure, RunReport, RunStats, RunStatus};
use crate::context::{RunIdentity, RunTimer};
use crate::graph::GraphInner;
use crate::observe::emitter::{ObsShared, FINISHED, NOT_STARTED, RUNNING};
use crate::observe::event::{Event, EventKind, Name, Rfc3339};
use crate::observe::note::{NoteKind, NoteSink, StageNote};

use crate::observe::labels::RunLabels;
use crate::observe::memory::{self, MemoryReport};
use crate::observe::progress::{Progress, ProgressObserver};
use crate::observe::sampler::{sample, Sampler, SamplerState};
use crate::observe::summary::{self, SummaryOptions, UNTIMED};
use crate::observe::watchdog::Watchdog;
use crate::observe::{ObservabilityReport, ObserveConfig, WideEvents};
use crate::output::StageStatus;
use crate::stage::StageResult;

/// Per-run observer, owned by the executor.
pub(crate) struct Observer {
    /// The graph being run (its conditions decide when a start may reuse a clock reading).
    graph: Arc<GraphInner>,
    /// Holds the sink (`shared.sink`), if any.
    shared: Arc<ObsShared>,
    /// Whether a report is attached to the result (something was configured).
    report: bool,
    run_span: Option<Span>,
    stage_spans: bool,
    /// Per stage: nanoseconds since the run started + 1 (0: not started). Empty unless needed.
    starts: Vec<u64>,
    /// Per stage: duration in nanoseconds, or `UNTIMED`. Empty unless a summary is wanted.
    durations: Vec<u64>,
    summary: Option<SummaryOptions>,
    wide: WideEvents,
    progress: Option<ProgressObserver>,
    watchdog: Option<Watchdog>,
    memory: bool,
    rss_start: Option<u64>,
    sampler: Option<Sampler>,
    started: u64,
    ended: u64,
    emitted: u64,
    dropped: u64,
    alloc_total: u64,
    /// When the last stage finished (run clock), until the next start takes it.
    handoff: Option<u64>,
    /// The fast path for stage events, when the sink is a [`JsonlSink`].
    fast: Option<FastSink>,
}

/// A run registered with a sink for compact stage events ([`StageNote`]).
struct FastSink {
    sink: Arc<dyn NoteSink>,
    run: u64,
}

impl Drop for FastSink {
    fn drop(&mut self) {
        self.sink.end_run(self.run);
    }
}

/// The status string of a finished stage.
fn outcome_status(outcome: &Outcome<'_>) -> &'static str {
    match outcome {
        Outcome::Output(out) => out.status().as_str(),
        Outcome::Error(e) if e.is_retryable() => "retry",
        Outcome::Error(_) => "error",
        Outcome::Panic(_) => "panic",
        Outcome::Condition(_) => "condition_error",
    }
}

impl Observer {
    /// Builds the observer for one run, or `None` when nothing is observed (no configuration, and
    /// no tracing subscriber interested in the run span).
    pub(crate) fn new(
        config: Option<&ObserveConfig>,
        graph: &Arc<GraphInner>,
        identity: &RunIdentity,
        timer: RunTimer,
    ) -> Option<Box<Observer>> {
        let tracing_on = config.and_then(|c| c.tracing).unwrap_or(true);
        let run_span = if tracing_on {
            let span = tracing::info_span!(
                target: "stageflow",
                "stageflow.run",
                run_id = %identity.run_id,
                pipeline = graph.pipeline_name(),
                stages = graph.len() as u64,
                status = tracing::field::Empty,
            );
            (!span.is_disabled()).then_some(span)
        } else {
            None
        };
        let fallback;
        let (config, report) = match config {
            Some(c) => (c, true),
            None if run_span.is_some() => {
                fallback = ObserveConfig::default();
                (&fallback, false)
            }
            None => return None,
        };
        let sink = config.sink.clone().filter(|s| !s.is_noop());
        let nothing = sink.is_none()
            && run_span.is_none()
            && config.progress.is_none()
            && config.watchdog.is_none()
            && !config.memory
            && config.summary.is_none();
        if nothing {
            return None;
        }
        let n = graph.len();
        let memory = config.memory;
        let alloc_counter = if memory {
            memory::allocation_counter()
        } else {
            None
        };
        let has_sink = sink.is_some();
        let labels = Arc::new(RunLabels {
            run_id: identity.run_id,
            parent_run_id: identity.parent_run_id,
            root_run_id: identity.root_run_id,
            pipeline: Name::from(graph.pipeline_name()),
            topo: graph.topo.clone(),
            start_wall: timer.started_at(),
        });
        let shared = Arc::new(ObsShared {
            labels,
            sink,
            states: (0..n).map(|_| AtomicU8::new(NOT_STARTED)).collect(),
            alloc_slots: if alloc_counter.is_some() {
                (0..n).map(|_| AtomicU64::new(0)).collect()
            } else {
                Box::default()
            },
            alloc_counter,
            started: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            ran_started: AtomicU64::new(0),
            ran_ended: AtomicU64::new(0),
            extra_emitted: AtomicU64::new(0),
            extra_dropped: AtomicU64::new(0),
            start: timer.started(),
        });
        let fast = shared
            .sink
            .as_deref()
            .and_then(|sink| sink.note_path())
            .map(|path| FastSink {
                run: path.0.begin_run(shared.labels.clone()),
                sink: path.0,
            });
        let wide = if has_sink {
            config.wide
        } else {
            WideEvents::none()
        };
        let need_starts = has_sink || config.summary.is_some();
        let stage_spans =
            run_span.is_some() && tracing::span_enabled!(target: "stageflow", tracing::Level::INFO);
        let mut obs = Box::new(Observer {
            report,
            run_span,
            stage_spans,
            starts: if need_starts { vec![0; n] } else { Vec::new() },
            durations: if config.summary.is_some() {
                vec![UNTIMED; n]
            } else {
                Vec::new()
            },
            summary: config.summary,
            wide,
            progress: config.progress.clone(),
            watchdog: config.watchdog,
            memory,
            rss_start: if memory { memory::current_rss() } else { None },
            sampler: None,
            started: 0,
            ended: 0,
            emitted: 0,
            dropped: 0,
            alloc_total: 0,
            handoff: None,
            fast,
            shared,
            graph: graph.clone(),
        });
        obs.emit_run(EventKind::PipelineCreated, |e| {
            e.data = json!({ "stages": n });
        });
        Some(obs)
    }

    pub(crate) fn shared(&self) -> Arc<ObsShared> {
        self.shared.clone()
    }

    /// Whether anything is done per stage (events, spans, durations, watchdog, allocation
    /// counting). If not, the executor keeps the observer off its per-stage path.
    pub(crate) fn per_stage(&self) -> bool {
        self.shared.sink.is_some()
            || self.stage_spans
            || !self.starts.is_empty()
            || self.watchdog.is_some()
            || self.shared.alloc_counter.is_some()
    }

    /// Whether the executor should publish its counts (for progress and the watchdog).
    pub(crate) fn publishes_counts(&self) -> bool {
        self.progress.is_some() || self.watchdog.is_some()
    }

    pub(crate) fn run_span(&self) -> Option<Span> {
        self.run_span.clone()
    }

    /// Emits `pipeline.started` and starts the sampler task if progress, the watchdog or memory
    /// sampling is on.
    pub(crate) fn run_started(&mut self) {
        self.emit_run(EventKind::PipelineStarted, |_| {});
        let intervals = [
            self.progress.as_ref().map(|p| p.every),
            self.watchdog.map(|w| w.interval()),
            self.memory.then(|| Duration::from_millis(100)),
        ];
        let Some(interval) = intervals.into_iter().flatten().min() else {
            return;
        };
        let stop = CancellationToken::new();
        let state = Arc::new(Mutex::new(SamplerState::default()));
        let task = sample(
            self.shared.clone(),
            interval,
            self.progress.clone(),
            self.watchdog,
            self.memory,
            stop.clone(),
            state.clone(),
        );
        drop(tokio::spawn(task));
        self.sampler = Some(Sampler { stop, state });
    }

    fn emit(&mut self, event: Event) {
        if let Some(sink) = &self.shared.sink {
            let accepted = sink.try_emit(event);
            self.count(accepted);
        }
    }

    /// Counts an event the sink accepted or refused.
    #[inline(always)]
    fn count(&mut self, accepted: bool) {
        if accepted {
            self.emitted += 1;
        } else {
            self.dropped += 1;
        }
    }

    /// Emits a stage event: as a note into a JSON Lines sink (its writer builds the event), as
    /// an event into any other.
    #[inline(always)]
    fn emit_note(&mut self, note: StageNote) {
        match &self.fast {
            Some(fast) => {
                let accepted = fast.sink.try_emit_note(note);
                self.count(accepted);
            }
            None => self.emit(note.event_in(&self.shared.labels)),
        }
    }

    /// A note for stage `idx`'s event `kind` at `at_ns` (no duration or allocation yet).
    #[inline(always)]
    fn note(&self, idx: u32, kind: NoteKind, status: &'static str, at_ns: u64) -> StageNote {
        StageNote {
            run: self.fast.as_ref().map_or(0, |f| f.run),
            idx,
            kind,
            status,
            at_ns,
            duration: None,
            allocated_bytes: None,
        }
    }

    fn emit_run(&mut self, kind: EventKind, fill: impl FnOnce(&mut Event)) {
        if self.shared.sink.is_some() {
            let mut event = self.shared.event(kind);
            fill(&mut event);
            self.emit(event);
        }
    }

    #[inline(always)]
    fn stage_event(&self, kind: EventKind, idx: u32, at_ns: u64) -> Event {
        self.shared.labels.stage_event(kind, idx, at_ns)
    }

    /// How long stage `idx` has run at `now_ns` (`None` if its start was not recorded).
    fn ran_for(&self, idx: u32, now_ns: u64) -> Option<Duration> {
        let started = self.starts[idx as usize];
        (started != 0).then(|| Duration::from_nanos(now_ns.saturating_sub(started - 1)))
    }

    /// The run's clock for a stage start: the reading its releasing stage finished at when the
    /// executor starts it in the same step (no user code ran in between: see
    /// [`time_passed`](Self::time_passed)), so a chain reads the clock once per stage, not twice.
    fn start_ns(&mut self, idx: u32) -> u64 {
        match self.handoff.take() {
            Some(ns) if self.graph.nodes[idx as usize].condition.is_none() => ns,
            _ => self.shared.now_ns(),
        }
    }

    /// The executor let time pass (it yielded) since the last stage finished: the next start
    /// reads the clock.
    pub(crate) fn time_passed(&mut self) {
        self.handoff = None;
    }

    fn stage_span(&self, idx: u32) -> Span {
        match &self.run_span {
            Some(run) if self.stage_spans => tracing::info_span!(
                target: "stageflow",
                parent: run,
                "stageflow.stage",
                run_id = %self.shared.labels.run_id,
                pipeline = &*self.shared.labels.pipeline,
                stage = self.shared.labels.topo.name(idx),
                kind = self.shared.labels.topo.kind(idx).as_str(),
                status = tracing::field::Empty,
            ),
            _ => Span::none(),
        }
    }

    /// A stage is invoked: record it, emit `started`, and create its future (via `make`) inside
    /// its span, wrapped so every poll runs in the span (and is measured for allocations).
    // Out of line and cold: keeps the executor's unobserved path as tight as before.
    #[cold]
    #[inline(never)]
    pub(crate) fn start_stage(
        &mut self,
        idx: u32,
        make: impl FnOnce() -> BoxFuture<'static, StageResult>,
    ) -> std::thread::Result<BoxFuture<'static, StageResult>> {
        self.shared.states[idx as usize].store(RUNNING, Ordering::Relaxed);
        self.started += 1;
        self.shared
            .ran_started
            .store(self.started, Ordering::Relaxed);
        if !self.starts.is_empty() {
            let now = self.start_ns(idx);
            self.starts[idx as usize] = now + 1;
            if self.shared.sink.is_some() {
                let note = self.note(idx, NoteKind::Started, "running", now);
                self.emit_note(note);
            }
        }
        let counted = self.shared.alloc_counter.is_some();
        if !self.stage_spans && !counted {
            return catch_unwind(AssertUnwindSafe(make));
        }
        let span = self.stage_span(idx);
        let fut = {
            let _entered = span.enter();
            catch_unwind(AssertUnwindSafe(make))?
        };
        if span.is_disabled() && !counted {
            return Ok(fut);
        }
        Ok(Box::pin(Observed {
            inner: fut,
            span,
            alloc: counted.then(|| (self.shared.clone(), idx, 0)),
            done: false,
        }))
    }

    /// A stage finished (or was decided without running).
    #[cold]
    #[inline(never)]
    pub(crate) fn stage_done(&mut self, idx: u32, outcome: Outcome<'_>) {
        let i = idx as usize;
        let ran = self.shared.states[i].load(Ordering::Relaxed) == RUNNING;
        self.shared.states[i].store(FINISHED, Ordering::Relaxed);
        if ran {
            self.ended += 1;
            self.shared.ran_ended.store(self.ended, Ordering::Relaxed);
        }
        if !ran && self.stage_spans {
            // Never invoked (skipped, or its condition failed): a span that opens and closes.
            let span = self.stage_span(idx);
            span.record("status", outcome_status(&outcome));
        }
        if self.starts.is_empty() {
            return;
        }
        let now = self.shared.now_ns();
        self.handoff = Some(now);
        let duration = self.ran_for(idx, now);
        if !self.durations.is_empty() {
            self.durations[i] = duration.map_or(0, |d| d.as_nanos() as u64);
        }
        let allocated = if self.shared.alloc_slots.is_empty() || !ran {
            None
        } else {
            let bytes = self.shared.alloc_slots[i].load(Ordering::Relaxed);
            self.alloc_total += bytes;
            Some(bytes)
        };
        if self.shared.sink.is_none() {
            return;
        }
        if let Outcome::Output(out) = &outcome {
            for custom in out.events() {
                let mut event = self.stage_event(
                    EventKind::Custom(custom.event_type.clone().into()),
                    idx,
                    now,
                );
                event.data = custom.data.clone();
                self.emit(event);
            }
            for artifact in out.artifacts() {
                let mut event = self.stage_event(EventKind::StageArtifact, idx, now);
                event.data = json!({ "type": artifact.kind, "payload": artifact.payload });
                self.emit(event);
            }
        }
        let (kind, error) = match &outcome {
            Outcome::Output(out) => (
                match out.status() {
                    StageStatus::Ok => NoteKind::Completed,
                    StageStatus::Skip => NoteKind::Skipped,
                    StageStatus::Cancel => NoteKind::Cancelled,
                    StageStatus::Fail | StageStatus::Retry => NoteKind::Failed,
                },
                out.message().map(str::to_owned),
            ),
            Outcome::Error(e) => (NoteKind::Failed, Some(e.to_string())),
            Outcome::Panic(m) | Outcome::Condition(m) => (NoteKind::Failed, Some((*m).to_owned())),
        };
        let note = StageNote {
            duration,
            allocated_bytes: allocated,
            ..self.note(idx, kind, outcome_status(&outcome), now)
        };
        if error.is_none() && !self.wide.stage {
            return self.emit_note(note);
        }
        let mut event = note.event_in(&self.shared.labels);
        if self.wide.stage {
            let mut wide = event.clone();
            wide.kind = EventKind::StageWide;
            let data_keys: Vec<&str> = match &outcome {
                Outcome::Output(out) => out.data().keys().collect(),
                _ => Vec::new(),
            };
            wide.data = json!({
                "started_at": duration.map(|d| Rfc3339(event.timestamp - d).to_string()),
                "ended_at": Rfc3339(event.timestamp).to_string(),
                "data_keys": data_keys,
            });
            wide.error.clone_from(&error);
            event.error = error;
            self.emit(event);
            self.emit(wide);
        } else {
            event.error = error;
            self.emit(event);
        }
    }

    /// Stops the sampler and publishes the final progress. Holds the sampler's lock meanwhile, so
    /// no sampled report can follow the final one. (A plain function: the guard must not live in
    /// the async `finish`, whose future has to stay `Send`.)
    fn stop_sampler(
        &mut self,
        stats: &RunStats,
        duration: Duration,
    ) -> (SamplerState, Option<Progress>) {
        self.shared.publish(stats.counts());
        let sampler = self.sampler.take();
        let mut guard = sampler
            .as_ref()
            .map(|s| s.state.lock().unwrap_or_else(PoisonError::into_inner));
        let sampled = match guard.as_deref_mut() {
            Some(state) => {
                state.finished = true;
                SamplerState {
                    finished: true,
                    stalls: std::mem::take(&mut state.stalls),
                    rss_peak: state.rss_peak,
                }
            }
            None => SamplerState::default(),
        };
        let total = self.shared.labels.topo.len() as u64;
        let final_progress = self.progress.as_ref().map(|observer| {
            let progress = self.shared.progress(total, duration, true);
            observer.publish(&progress);
            progress
        });
        drop(guard);
        if let Some(sampler) = sampler {
            sampler.stop.cancel();
        }
        (sampled, final_progress)
    }

    /// The run is over: stop the sampler, report stages that were still running, publish the
    /// final progress, build the report, emit the terminal events, flush the sink, and attach the
    /// report to the result.
    pub(crate) async fn finish(mut self: Box<Self>, result: &mut Result<RunReport, RunFailure>) {
        let (stats, duration, status_str): (RunStats, Duration, &'static str) = match &*result {
            Ok(r) => (
                *r.stats(),
                r.duration(),
                if r.is_completed() {
                    "completed"
                } else {
                    "cancelled"
                },
            ),
            Err(f) => (*f.stats(), f.duration(), "failed"),
        };

        // Stages still marked running were aborted when the run stopped.
        if status_str != "completed" && self.shared.sink.is_some() {
            let now = self.shared.now_ns();
            for idx in 0..self.shared.states.len() as u32 {
                if self.shared.states[idx as usize].load(Ordering::Relaxed) != RUNNING {
                    continue;
                }
                let mut event = self.stage_event(EventKind::StageCancelled, idx, now);
                event.duration = self.ran_for(idx, now);
                event.status = Some(Cow::Borrowed("aborted"));
                event.error = Some("the run stopped while the stage was running".to_owned());
                self.emit(event);
            }
        }

        let (sampled, final_progress) = self.stop_sampler(&stats, duration);

        let memory = self.memory.then(|| {
            let rss_end = memory::current_rss();
            let rss_peak = [self.rss_start, sampled.rss_peak, rss_end]
                .into_iter()
                .flatten()
                .max();
            MemoryReport {
                rss_start: self.rss_start,
                rss_end,
                rss_peak,
                allocated_bytes: self.shared.alloc_counter.map(|_| self.alloc_total),
            }
        });

        let summary = self
            .summary
            .map(|opts| summary::summarize(&self.shared.labels.topo, &self.durations, opts));

        // Terminal events.
        let (kind, error) = match &*result {
            Ok(r) => match r.status() {
                RunStatus::Completed => (EventKind::PipelineCompleted, None),
                RunStatus::Cancelled { stage, reason } => (
                    EventKind::PipelineCancelled,
                    Some(match stage {
                        Some(s) => format!("stage `{s}` cancelled the run: {reason}"),
                        None => reason.clone(),
                    }),
                ),
            },
            Err(f) => (EventKind::PipelineFailed, Some(f.to_string())),
        };
        if self.shared.sink.is_some() {
            let counts = json!({
                "total": stats.total,
                "started": stats.started,
                "succeeded": stats.succeeded,
                "skipped": stats.skipped,
                "failed": stats.failed,
                "cancelled": stats.cancelled,
            });
            let failed_stage = result.as_ref().err().map(|f| f.stage().to_owned());
            let mut data = json!({ "stage_counts": counts });
            if let Some(stage) = &failed_stage {
                data["failed_stage"] = json!(stage);
            }
            if let Some(m) = &memory {
                data["memory"] = json!(m);
            }
            let mut wide_data = data.clone();
            self.emit_run(kind, |e| {
                e.duration = Some(duration);
                e.status = Some(Cow::Borrowed(status_str));
                e.error.clone_from(&error);
                e.data = data;
            });
            if self.wide.pipeline {
                if let Some(s) = &summary {
                    wide_data["summary"] = json!(s);
                }
                wide_data["started_at"] = json!(Rfc3339(self.shared.labels.start_wall).to_string());
                // Events of this run so far, plus this one.
                wide_data["events_emitted"] = json!(self.emitted + 1);
                wide_data["events_dropped"] = json!(self.dropped);
                self.emit_run(EventKind::PipelineWide, |e| {
                    e.duration = Some(duration);
                    e.status = Some(Cow::Borrowed(status_str));
                    e.error = error;
                    e.data = wide_data;
                });
            }
        }

        let mut sink_error = None;
        if let Some(sink) = &self.shared.sink {
            if let Err(e) = sink.flush().await {
                tracing::warn!(target: "stageflow", run_id = %self.shared.labels.run_id, error = %e, "stageflow: flushing the event sink failed");
                sink_error = Some(e.to_string());
            }
        }
        let emitted = self.emitted + self.shared.extra_emitted.load(Ordering::Relaxed);
        let dropped = self.dropped + self.shared.extra_dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                target: "stageflow",
                run_id = %self.shared.labels.run_id,
                pipeline = &*self.shared.labels.pipeline,
                dropped,
                emitted,
                "stageflow: the event sink dropped {dropped} events of this run (it could not keep up)"
            );
        }
        if let Some(span) = &self.run_span {
            span.record("status", status_str);
        }
        if !self.report {
            return;
        }
        let report = Box::new(ObservabilityReport {
            events_emitted: emitted,
            events_dropped: dropped,
            sink_error,
            stalls: sampled.stalls,
            memory,
            summary,
            progress: final_progress,
        });
        match result {
            Ok(r) => r.observability = Some(report),
            Err(f) => f.observability = Some(report),
        }
    }
}

/// A stage future polled inside its span, optionally measuring allocations per poll.
struct Observed {
    inner: BoxFuture<'static, StageResult>,
    span: Span,
    /// (shared state, stage index, bytes so far)
    alloc: Option<(Arc<ObsShared>, u32, u64)>,
    done: bool,
}

/// Records `panic` on the span if a poll unwinds.
struct PanicGuard<'a> {
    span: &'a Span,
    done: &'a mut bool,
    armed: bool,
}

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            *self.done = true;
            self.span.record("status", "panic");
        }
    }
}

impl Future for Observed {
    type Output = StageResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<StageResult> {
        let Observed {
            inner,
            span,
            alloc,
            done,
        } = self.get_mut();
        let _entered = span.enter();
        let before = alloc
            .as_ref()
            .and_then(|(shared, ..)| shared.alloc_counter.map(|f| f()));
        let mut guard = PanicGuard {
            span,
            done,
            armed: true,
        };
        let poll = inner.as_mut().poll(cx);
        guard.armed = false;
        if let (Some(before), Some((shared, _, total))) = (before, alloc.as_mut()) {
            let after = shared.alloc_counter.map_or(before, |f| f());
            *total += after.saturating_sub(before);
        }
        if let Poll::Ready(result) = &poll {
            *guard.done = true;
            span.record(
                "status",
                match result {
                    Ok(out) => out.status().as_str(),
                    Err(e) if e.is_retryable() => "retry",
                    Err(_) => "error",
                },
            );
            if let Some((shared, idx, total)) = alloc {
                shared.alloc_slots[*idx as usize].store(*total, Ordering::Relaxed);
            }
        }
        poll
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if !self.done && !self.span.is_disabled() {
            self.span.record("status", "cancelled");
        }
    }
}
