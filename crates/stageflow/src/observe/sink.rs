//! Where events go: the [`EventSink`] trait and the small built-in sinks. The JSON Lines file
//! sink is [`JsonlSink`](super::JsonlSink).
//!
//! The executor calls [`EventSink::try_emit`] from its hot path: it must not block (beyond a
//! short lock) and may refuse an event, which the run counts as dropped and reports. At the end
//! of a run the executor awaits [`EventSink::flush`], so a run never returns before its events
//! are where the sink puts them.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use super::event::{Event, EventKind};
use super::note::NotePath;

/// A destination for [`Event`]s.
///
/// Implement [`try_emit`](Self::try_emit) (non-blocking); override [`emit`](Self::emit) when the
/// sink can wait for room, [`flush`](Self::flush) when it buffers.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use stageflow::observe::{Event, EventSink};
///
/// /// Counts failures, ignores everything else.
/// #[derive(Default)]
/// struct FailureCounter(AtomicUsize);
///
/// impl EventSink for FailureCounter {
///     fn try_emit(&self, event: Event) -> bool {
///         if event.kind.is_problem() {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///         true
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Offers `event` without waiting. Returns `false` if the sink refused it (buffer full,
    /// receiver gone); the caller counts it as dropped.
    fn try_emit(&self, event: Event) -> bool;

    /// Delivers `event`, waiting for room if the sink is bounded. Returns `false` if the event
    /// could not be delivered at all. The default calls [`try_emit`](Self::try_emit).
    async fn emit(&self, event: Event) -> bool {
        self.try_emit(event)
    }

    /// Waits until every event accepted so far is written out (and, for files, synced to disk).
    /// The executor awaits it at the end of every run. The default does nothing.
    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Events refused over the sink's lifetime (all runs), if it counts them.
    fn dropped(&self) -> u64 {
        0
    }

    /// `true` for a sink that discards everything; the executor then builds no events at all.
    fn is_noop(&self) -> bool {
        false
    }

    /// For the engine: `Some` for a sink that takes per-stage lifecycle events in a compact form
    /// and expands them itself (the built-in [`JsonlSink`](super::JsonlSink): the file is the
    /// same, the executor does less per stage). Other sinks keep the default; a wrapper around
    /// one sink forwards it.
    #[doc(hidden)]
    fn note_path(&self) -> Option<NotePath> {
        None
    }
}

#[async_trait::async_trait]
impl<S: EventSink + ?Sized> EventSink for Arc<S> {
    fn try_emit(&self, event: Event) -> bool {
        (**self).try_emit(event)
    }
    async fn emit(&self, event: Event) -> bool {
        (**self).emit(event).await
    }
    async fn flush(&self) -> io::Result<()> {
        (**self).flush().await
    }
    fn dropped(&self) -> u64 {
        (**self).dropped()
    }
    fn is_noop(&self) -> bool {
        (**self).is_noop()
    }
    fn note_path(&self) -> Option<NotePath> {
        (**self).note_path()
    }
}

/// Discards every event. Configuring it is the same as configuring no sink: the executor sees
/// [`is_noop`](EventSink::is_noop) and builds no events.
///
/// ```
/// use stageflow::observe::NoopSink;
/// let opts = stageflow::RunOptions::new().events(NoopSink);
/// # let _ = opts;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopSink;

impl EventSink for NoopSink {
    fn try_emit(&self, _event: Event) -> bool {
        true
    }
    fn is_noop(&self) -> bool {
        true
    }
}

/// Logs every event as a `tracing` event (target `stageflow::events`): `INFO` normally, `WARN`
/// for failures and stalls. Fields: `event_type`, `run_id`, `pipeline`, `stage`, `status`,
/// `duration_ms`, `error`, `data`.
///
/// ```
/// use stageflow::observe::TracingSink;
/// let opts = stageflow::RunOptions::new().events(TracingSink::new());
/// # let _ = opts;
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingSink {
    _private: (),
}

impl TracingSink {
    /// A tracing sink.
    pub fn new() -> Self {
        Self::default()
    }
}

impl EventSink for TracingSink {
    fn try_emit(&self, event: Event) -> bool {
        let event_type = event.event_type();
        let stage = event.stage.as_deref().unwrap_or("");
        let status = event.status.as_deref().unwrap_or("");
        let duration_ms = event.duration.map(|d| d.as_secs_f64() * 1e3);
        let error = event.error.as_deref();
        let data = (!event.data.is_null()).then(|| tracing::field::display(&event.data));
        // `tracing` needs the level at compile time: one call site per level, same fields.
        macro_rules! log {
            ($level:expr) => {
                tracing::event!(
                    target: "stageflow::events",
                    $level,
                    event_type = &*event_type,
                    run_id = %event.run_id,
                    pipeline = &*event.pipeline,
                    stage,
                    status,
                    duration_ms,
                    error,
                    data,
                    "{event_type}"
                )
            };
        }
        if event.kind.is_problem() {
            log!(tracing::Level::WARN);
        } else {
            log!(tracing::Level::INFO);
        }
        true
    }
}

/// Keeps every event in memory, for tests and small UIs. Clones share the same buffer, so keep a
/// clone and pass another to [`RunOptions::events`](crate::RunOptions::events).
///
/// Unbounded: it never drops, and it grows with the run. For long runs use a
/// [`ChannelSink`] or a [`JsonlSink`](super::JsonlSink).
///
/// ```
/// use stageflow::{observe::MemorySink, Pipeline, RunOptions, StageContext, StageOutput};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let graph = Pipeline::builder("p")
///     .stage("a", |_ctx: StageContext| async { StageOutput::ok() })
///     .build()
///     .unwrap();
/// let sink = MemorySink::new();
/// graph.run_with((), RunOptions::new().events(sink.clone())).await.unwrap();
/// assert_eq!(
///     sink.event_types(),
///     ["pipeline.created", "pipeline.started", "stage.a.started", "stage.a.completed", "pipeline.completed"]
/// );
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MemorySink {
    events: Arc<Mutex<Vec<Event>>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the events so far.
    pub fn events(&self) -> Vec<Event> {
        self.lock().clone()
    }

    /// The type strings of the events so far, in order.
    pub fn event_types(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|e| e.event_type().into_owned())
            .collect()
    }

    /// Takes the events out, leaving the sink empty.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.lock())
    }

    /// Number of events held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// `true` when no event is held.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EventSink for MemorySink {
    fn try_emit(&self, event: Event) -> bool {
        self.lock().push(event);
        true
    }
}

/// Sends events into a tokio channel, for a UI or any async consumer.
///
/// [`bounded`](Self::bounded) drops (and counts) events when the receiver falls behind;
/// [`unbounded`](Self::unbounded) never drops but grows without limit.
///
/// ```
/// use stageflow::{observe::ChannelSink, Pipeline, RunOptions, StageContext, StageOutput};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let graph = Pipeline::builder("p")
///     .stage("a", |_ctx: StageContext| async { StageOutput::ok() })
///     .build()
///     .unwrap();
/// let (sink, mut rx) = ChannelSink::bounded(1024);
/// graph.run_with((), RunOptions::new().events(sink)).await.unwrap();
/// let first = rx.recv().await.unwrap();
/// assert_eq!(first.event_type(), "pipeline.created");
/// # }
/// ```
#[derive(Clone)]
pub struct ChannelSink {
    tx: ChannelTx,
    dropped: Arc<AtomicU64>,
}

#[derive(Clone)]
enum ChannelTx {
    Bounded(mpsc::Sender<Event>),
    Unbounded(mpsc::UnboundedSender<Event>),
}

impl ChannelSink {
    /// A sink holding at most `capacity` undelivered events (at least 1).
    pub fn bounded(capacity: usize) -> (Self, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (ChannelSink::from_tx(ChannelTx::Bounded(tx)), rx)
    }

    /// A sink that never drops (memory grows if the receiver is slow).
    pub fn unbounded() -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ChannelSink::from_tx(ChannelTx::Unbounded(tx)), rx)
    }

    fn from_tx(tx: ChannelTx) -> Self {
        ChannelSink {
            tx,
            dropped: Arc::default(),
        }
    }
}

impl fmt::Debug for ChannelSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSink")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl EventSink for ChannelSink {
    fn try_emit(&self, event: Event) -> bool {
        let ok = match &self.tx {
            ChannelTx::Bounded(tx) => tx.try_send(event).is_ok(),
            ChannelTx::Unbounded(tx) => tx.send(event).is_ok(),
        };
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    async fn emit(&self, event: Event) -> bool {
        let ok = match &self.tx {
            ChannelTx::Bounded(tx) => tx.send(event).await.is_ok(),
            ChannelTx::Unbounded(tx) => tx.send(event).is_ok(),
        };
        if !ok {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Sends every event to several sinks. An event counts as delivered only if every sink took it.
///
/// ```
/// use stageflow::observe::{FanOut, MemorySink, TracingSink};
/// let memory = MemorySink::new();
/// let sink = FanOut::new().with(memory.clone()).with(TracingSink::new());
/// assert_eq!(sink.len(), 2);
/// ```
#[derive(Clone, Default)]
pub struct FanOut {
    sinks: Vec<Arc<dyn EventSink>>,
}

impl FanOut {
    /// No sinks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a sink.
    pub fn with(mut self, sink: impl EventSink) -> Self {
        self.sinks.push(Arc::new(sink));
        self
    }

    /// Adds a shared sink.
    pub fn with_shared(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.sinks.push(sink);
        self
    }

    /// Number of sinks.
    pub fn len(&self) -> usize {
        self.sinks.len()
    }

    /// `true` when there are no sinks.
    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }
}

impl fmt::Debug for FanOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanOut")
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

#[async_trait::async_trait]
impl EventSink for FanOut {
    fn try_emit(&self, event: Event) -> bool {
        let Some((last, rest)) = self.sinks.split_last() else {
            return true;
        };
        let mut ok = true;
        for sink in rest {
            ok &= sink.try_emit(event.clone());
        }
        ok & last.try_emit(event)
    }

    async fn emit(&self, event: Event) -> bool {
        let Some((last, rest)) = self.sinks.split_last() else {
            return true;
        };
        let mut ok = true;
        for sink in rest {
            ok &= sink.emit(event.clone()).await;
        }
        ok & last.emit(event).await
    }

    async fn flush(&self) -> io::Result<()> {
        let mut first_err = None;
        for sink in &self.sinks {
            if let Err(e) = sink.flush().await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn dropped(&self) -> u64 {
        self.sinks.iter().map(|s| s.dropped()).sum()
    }

    fn is_noop(&self) -> bool {
        self.sinks.iter().all(|s| s.is_noop())
    }
}

/// Keeps only the events whose kind passes `filter` (e.g. drop the per-stage events of a huge
/// run and keep the `pipeline.*` ones).
///
/// ```
/// use stageflow::observe::{Filtered, MemorySink};
/// let sink = Filtered::new(MemorySink::new(), |e| e.stage.is_none());
/// # let _ = sink;
/// ```
pub struct Filtered<S> {
    inner: S,
    filter: Box<dyn Fn(&Event) -> bool + Send + Sync>,
}

impl<S: EventSink> Filtered<S> {
    /// Wraps `inner`, forwarding the events for which `filter` returns `true`.
    pub fn new(inner: S, filter: impl Fn(&Event) -> bool + Send + Sync + 'static) -> Self {
        Filtered {
            inner,
            filter: Box::new(filter),
        }
    }
}

impl<S> fmt::Debug for Filtered<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filtered").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<S: EventSink> EventSink for Filtered<S> {
    fn try_emit(&self, event: Event) -> bool {
        !(self.filter)(&event) || self.inner.try_emit(event)
    }
    async fn emit(&self, event: Event) -> bool {
        !(self.filter)(&event) || self.inner.emit(event).await
    }
    async fn flush(&self) -> io::Result<()> {
        self.inner.flush().await
    }
    fn dropped(&self) -> u64 {
        self.inner.dropped()
    }
    fn is_noop(&self) -> bool {
        self.inner.is_noop()
    }
}

/// `true` for the stage-scoped lifecycle kinds; handy in a [`Filtered`] predicate.
pub fn is_stage_lifecycle(kind: &EventKind) -> bool {
    kind.stage_suffix().is_some()
}
