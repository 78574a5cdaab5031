//! [`JsonlSink`]: events as JSON Lines, written by a background thread.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::event::{Encoder, Event, EventKind, EventParts};
use super::runtime::RunLabels;
use super::sink::EventSink;

/// What [`JsonlSink::try_emit`](EventSink::try_emit) does when the buffer is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse the event; the run counts it as dropped and reports it (the default: a slow disk
    /// never slows the pipeline).
    #[default]
    Drop,
    /// Wait (blocking the calling thread) until the writer makes room: nothing is ever dropped,
    /// and the pipeline runs at the writer's pace when the writer is the bottleneck. The writer
    /// is a dedicated OS thread, so this cannot deadlock the runtime.
    Block,
}

/// Writes events as JSON Lines (one [`Event::to_json_line`] object per line) to a file or any
/// writer.
///
/// Events are queued in a bounded in-memory buffer and written by a dedicated thread through a
/// large buffered writer, so the executor only pays for a short lock and a push per event. While
/// events flow, the writer wakes itself every `linger` (100 µs by default) and takes what came in;
/// an emitter wakes it only at the start of a burst or when a quarter of the buffer is waiting, so
/// a busy run costs one wake-up, not one per few hundred events. When the buffer is full, events
/// are dropped and counted ([`WhenFull::Drop`], the default) or the emitter waits
/// ([`WhenFull::Block`]). [`flush`](EventSink::flush), which the executor awaits at the end of
/// every run, writes out everything accepted so far and fsyncs the file (unless
/// [`fsync(false)`](JsonlSinkBuilder::fsync)); with fsync on, the file is also synced in the
/// background every 16 MiB, so the final fsync only has the tail left. [`close`](Self::close)
/// flushes and stops the writer thread; dropping the last clone stops it too, without waiting.
///
/// Clones share one file and writer.
///
/// ```
/// use stageflow::{observe::JsonlSink, Pipeline, RunOptions, StageContext, StageOutput};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
/// let path = std::env::temp_dir().join(format!("stageflow-doc-{}.jsonl", std::process::id()));
/// let graph = Pipeline::builder("p")
///     .stage("a", |_ctx: StageContext| async { StageOutput::ok() })
///     .build()
///     .unwrap();
/// let sink = JsonlSink::create(&path)?;
/// graph.run_with((), RunOptions::new().events(sink.clone())).await.unwrap();
/// // The run flushed the file before returning.
/// let text = std::fs::read_to_string(&path)?;
/// assert_eq!(text.lines().count(), 5);
/// let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
/// assert_eq!(last["type"], "pipeline.completed");
/// sink.close().await?;
/// # std::fs::remove_file(&path)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct JsonlSink {
    handle: Arc<Handle>,
}

/// Configures a [`JsonlSink`]. Defaults: 65,536 buffered events, [`WhenFull::Drop`], fsync on
/// flush, truncate the file, 100 µs linger.
#[derive(Clone, Debug)]
pub struct JsonlSinkBuilder {
    capacity: usize,
    when_full: WhenFull,
    fsync: bool,
    append: bool,
    linger: Duration,
}

impl Default for JsonlSinkBuilder {
    fn default() -> Self {
        JsonlSinkBuilder {
            capacity: 65_536,
            when_full: WhenFull::Drop,
            fsync: true,
            append: false,
            linger: Duration::from_micros(100),
        }
    }
}

impl JsonlSinkBuilder {
    /// At most `events` events wait in memory for the writer (at least 16).
    pub fn capacity(mut self, events: usize) -> Self {
        self.capacity = events.max(16);
        self
    }

    /// What to do when the buffer is full.
    pub fn when_full(mut self, policy: WhenFull) -> Self {
        self.when_full = policy;
        self
    }

    /// Whether [`flush`](EventSink::flush) also syncs the file to disk (default `true`).
    pub fn fsync(mut self, on: bool) -> Self {
        self.fsync = on;
        self
    }

    /// Append to an existing file instead of truncating it.
    pub fn append(mut self, on: bool) -> Self {
        self.append = on;
        self
    }

    /// Longest time an event waits in the buffer before the writer picks it up (default 100 µs,
    /// at least 10 µs). The writer only polls this often while events come in; an idle sink
    /// sleeps.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger.max(Duration::from_micros(10));
        self
    }

    /// Opens (creates) `path` and starts the writer thread.
    pub fn create(self, path: impl AsRef<Path>) -> io::Result<JsonlSink> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(self.append)
            .truncate(!self.append)
            .open(path)?;
        let syncer = if self.fsync {
            Some(BackgroundSync::start(file.try_clone()?)?)
        } else {
            None
        };
        self.start(Output::File {
            file,
            syncer,
            unsynced: 0,
        })
    }

    /// Writes to `writer` instead of a file (fsync does not apply).
    pub fn to_writer(self, writer: impl Write + Send + 'static) -> io::Result<JsonlSink> {
        self.start(Output::Writer(Box::new(writer)))
    }

    fn start(self, output: Output) -> io::Result<JsonlSink> {
        // While events flow, the writer wakes itself every `linger`; emitters wake it only when a
        // quarter of the buffer is waiting. Waking a sleeping thread costs the emitter a system
        // call (and, on a virtual machine, an interrupt to another CPU: tens of microseconds),
        // which waking every few hundred events made the largest cost of a short run.
        let wake_at = (self.capacity / 4).max(1);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                pending: Vec::with_capacity(wake_at.min(4096)),
                flushers: Vec::new(),
                closing: false,
                closed: false,
                wake: Wake::No,
                blocked: 0,
                error: None,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            room_async: Notify::new(),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            next_run: AtomicU64::new(0),
            capacity: self.capacity,
            // Small enough that the writer encodes while the run goes on (rather than all at
            // the final flush), large enough that wake-ups are rare.
            wake_at,
            when_full: self.when_full,
        });
        let (done_tx, done_rx) = oneshot::channel();
        let writer = Writer {
            inner: inner.clone(),
            output,
            fsync: self.fsync,
            linger: self.linger,
        };
        std::thread::Builder::new()
            .name("stageflow-jsonl".into())
            .spawn(move || {
                writer.run();
                let _ = done_tx.send(());
            })?;
        Ok(JsonlSink {
            handle: Arc::new(Handle {
                inner,
                done: Mutex::new(Some(done_rx)),
            }),
        })
    }
}

/// A stage's lifecycle event in compact form: the engine's fast path into a [`JsonlSink`]. The
/// executor hands over a few numbers (no strings, no allocation, a quarter of an [`Event`]'s
/// size); the writer thread encodes them, with the run's labels, into the very line of the
/// [`Event`] the engine builds for other sinks ([`event_in`](Self::event_in)), so the file is the
/// same either way (a unit test checks it byte for byte).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StageNote {
    /// The run, as registered with [`JsonlSink::begin_run`].
    pub(crate) run: u64,
    pub(crate) idx: u32,
    pub(crate) kind: NoteKind,
    pub(crate) status: &'static str,
    /// On the run's clock.
    pub(crate) at_ns: u64,
    pub(crate) duration: Option<Duration>,
    pub(crate) allocated_bytes: Option<u64>,
}

/// The lifecycle events a [`StageNote`] can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoteKind {
    Started,
    Completed,
    Skipped,
    Cancelled,
    Failed,
}

impl NoteKind {
    fn event_kind(self) -> &'static EventKind {
        match self {
            NoteKind::Started => &EventKind::StageStarted,
            NoteKind::Completed => &EventKind::StageCompleted,
            NoteKind::Skipped => &EventKind::StageSkipped,
            NoteKind::Cancelled => &EventKind::StageCancelled,
            NoteKind::Failed => &EventKind::StageFailed,
        }
    }
}

impl StageNote {
    /// The event this note stands for, in run `labels`: what other sinks get.
    #[inline(always)]
    pub(crate) fn event_in(self, labels: &RunLabels) -> Event {
        let mut event = labels.stage_event(self.kind.event_kind().clone(), self.idx, self.at_ns);
        event.status = Some(Cow::Borrowed(self.status));
        event.duration = self.duration;
        event.allocated_bytes = self.allocated_bytes;
        event
    }

    /// The same event's fields, borrowed from the note and `labels` without building it: what
    /// the writer encodes. (A test checks that both give the same line.)
    fn parts<'a>(self, labels: &'a RunLabels) -> EventParts<'a> {
        static NO_DATA: serde_json::Value = serde_json::Value::Null;
        EventParts {
            kind: self.kind.event_kind(),
            run_id: labels.run_id,
            parent_run_id: labels.parent_run_id,
            root_run_id: labels.root_run_id,
            pipeline: &labels.pipeline,
            stage: Some(labels.graph.name(self.idx)),
            stage_kind: Some(labels.graph.kind(self.idx)),
            timestamp: labels.timestamp(self.at_ns),
            duration: self.duration,
            status: Some(self.status),
            error: None,
            allocated_bytes: self.allocated_bytes,
            data: &NO_DATA,
        }
    }
}

/// What waits in the buffer for the writer. Runs announce themselves (`RunStart`, with what their
/// notes need to be expanded) and leave (`RunEnd`) through the same queue, so the writer always
/// knows a note's run.
enum Queued {
    Event(Box<Event>),
    Note(StageNote),
    RunStart(u64, Arc<RunLabels>),
    RunEnd(u64),
}

impl Queued {
    /// Run announcements are bookkeeping: never refused for room, not counted as events.
    fn is_event(&self) -> bool {
        matches!(self, Queued::Event(_) | Queued::Note(_))
    }
}

/// The user-facing side: when the last clone goes, the writer is told to finish.
struct Handle {
    inner: Arc<Inner>,
    done: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.lock().closing = true;
        self.inner.work.notify_one();
    }
}

struct Inner {
    state: Mutex<State>,
    /// The writer waits here.
    work: Condvar,
    /// Blocked emitters ([`WhenFull::Block`]) wait here.
    room: Condvar,
    /// Async emitters ([`EventSink::emit`]) wait here.
    room_async: Notify,
    written: AtomicU64,
    dropped: AtomicU64,
    /// The key of the next run registered for stage notes.
    next_run: AtomicU64,
    capacity: usize,
    wake_at: usize,
    when_full: WhenFull,
}

struct State {
    pending: Vec<Queued>,
    flushers: Vec<oneshot::Sender<io::Result<()>>>,
    closing: bool,
    closed: bool,
    /// When an emitter must wake the writer.
    wake: Wake,
    /// Emitters blocked for room.
    blocked: usize,
    /// The first write error; later writes are skipped and their events counted as dropped.
    error: Option<(io::ErrorKind, String)>,
}

/// Applies a run announcement to the writer's table of runs; ignores events.
fn track_runs(runs: &mut HashMap<u64, Arc<RunLabels>>, item: Queued) {
    match item {
        Queued::RunStart(run, labels) => {
            runs.insert(run, labels);
        }
        Queued::RunEnd(run) => {
            runs.remove(&run);
        }
        Queued::Event(_) | Queued::Note(_) => {}
    }
}

/// `Ok`, or the stored first write error (a fresh `io::Error` each time it is reported).
fn stored_result(error: &Option<(io::ErrorKind, String)>) -> io::Result<()> {
    match error {
        None => Ok(()),
        Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// The writer is busy (or already woken): nobody needs waking.
    No,
    /// The writer sleeps until there is any event.
    OnAny,
    /// The writer lingers; wake it early when the buffer reaches `wake_at`.
    AtThreshold,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pushes into the buffer if there is room; `Err(item)` if full, `Ok(false)` if closed.
    fn push(&self, item: Queued, block: bool) -> Result<bool, Queued> {
        let mut st = self.lock();
        loop {
            if st.closed || st.closing {
                return Ok(false);
            }
            if st.pending.len() < self.capacity || !item.is_event() {
                break;
            }
            if !block {
                return Err(item);
            }
            if st.wake != Wake::No {
                st.wake = Wake::No;
                self.work.notify_one();
            }
            st.blocked += 1;
            st = self.room.wait(st).unwrap_or_else(PoisonError::into_inner);
            st.blocked -= 1;
        }
        st.pending.push(item);
        let wake = match st.wake {
            Wake::No => false,
            Wake::OnAny => true,
            Wake::AtThreshold => st.pending.len() >= self.wake_at,
        };
        if wake {
            st.wake = Wake::No;
            drop(st);
            self.work.notify_one();
        }
        Ok(true)
    }
}

enum Output {
    /// Written unbuffered: the writer hands it whole batches (one system call each), and what it
    /// wrote is in the file at once, for `tail -f` and for readers of a long run's events.
    File {
        file: File,
        /// With fsync on: syncs in the background while the run goes on.
        syncer: Option<BackgroundSync>,
        /// Bytes written since the last background sync was requested.
        unsynced: u64,
    },
    Writer(Box<dyn Write + Send>),
}

/// Events the writer takes at once after a batch, rather than lingering for more: taking fewer
/// would have it fight the emitters for the lock every few events.
const EAGER_BATCH: usize = 512;

/// How long [`flush`](EventSink::flush) yields before it parks to wait for the writer.
const FLUSH_SPIN: Duration = Duration::from_micros(300);

/// Bytes written between two background syncs.
const SYNC_EVERY: u64 = 16 << 20;

impl Output {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Output::File {
                file,
                syncer,
                unsynced,
            } => {
                file.write_all(bytes)?;
                *unsynced += bytes.len() as u64;
                if let Some(syncer) = syncer.as_ref().filter(|_| *unsynced >= SYNC_EVERY) {
                    *unsynced = 0;
                    syncer.request();
                }
                Ok(())
            }
            Output::Writer(w) => w.write_all(bytes),
        }
    }

    fn flush(&mut self, fsync: bool) -> io::Result<()> {
        match self {
            Output::File { file, unsynced, .. } => {
                if fsync {
                    file.sync_data()?;
                    *unsynced = 0;
                }
                Ok(())
            }
            Output::Writer(w) => w.flush(),
        }
    }
}

/// A thread that syncs the events file to disk every [`SYNC_EVERY`] bytes while the run goes on,
/// on its own handle to the file, so the writer never waits for the disk and the fsync at the
/// end of the run only has the tail left to write: a 1,000,000-stage run writes about 440 MB of
/// events, which would otherwise all reach the disk in that one final fsync. Errors are left to
/// the final fsync (on the writer's handle), which reports them.
struct BackgroundSync {
    /// Capacity 1: a request while one is pending is merged into it.
    requests: std::sync::mpsc::SyncSender<()>,
}

impl BackgroundSync {
    fn start(file: File) -> io::Result<BackgroundSync> {
        let (requests, rx) = std::sync::mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("stageflow-jsonl-sync".into())
            .spawn(move || {
                // Ends when the writer (the sender) is gone.
                while rx.recv().is_ok() {
                    let _ = file.sync_data();
                }
            })?;
        Ok(BackgroundSync { requests })
    }

    fn request(&self) {
        let _ = self.requests.try_send(());
    }
}

struct Writer {
    inner: Arc<Inner>,
    output: Output,
    fsync: bool,
    linger: Duration,
}

impl Writer {
    fn run(mut self) {
        let inner = self.inner.clone();
        let mut batch: Vec<Queued> = Vec::with_capacity(inner.wake_at.min(4096));
        // The runs whose stage notes may still come, with what expanding them needs.
        let mut runs: HashMap<u64, Arc<RunLabels>> = HashMap::new();
        let mut last: Option<(u64, Arc<RunLabels>)> = None;
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 18);
        let mut encoder = Encoder::default();
        // Whether events came in during the last `linger`: then the writer keeps waking itself
        // (events that arrived while it wrote are taken at once, others after at most `linger`)
        // and emitters never have to wake it. After a quiet `linger` it sleeps until an emitter
        // wakes it: one wake-up per burst of events, not one per few hundred.
        let mut active = false;
        let mut wrote = false;
        loop {
            let (flushers, closing, failed) = {
                let mut st = inner.lock();
                loop {
                    if st.closing || !st.flushers.is_empty() || st.pending.len() >= inner.wake_at {
                        break;
                    }
                    if wrote && st.pending.len() >= EAGER_BATCH {
                        break; // enough came in while the last batch was written
                    }
                    if !active && st.pending.is_empty() {
                        st.wake = Wake::OnAny;
                        st = inner.work.wait(st).unwrap_or_else(PoisonError::into_inner);
                        active = true;
                        continue;
                    }
                    st.wake = Wake::AtThreshold;
                    let (guard, timeout) = inner
                        .work
                        .wait_timeout(st, self.linger)
                        .unwrap_or_else(PoisonError::into_inner);
                    st = guard;
                    if timeout.timed_out() {
                        active = !st.pending.is_empty();
                        if active {
                            break;
                        }
                    }
                }
                st.wake = Wake::No;
                std::mem::swap(&mut st.pending, &mut batch);
                if st.blocked > 0 {
                    inner.room.notify_all();
                }
                let failed = st.error.is_some();
                (std::mem::take(&mut st.flushers), st.closing, failed)
            };
            inner.room_async.notify_waiters();

            let n = batch.iter().filter(|item| item.is_event()).count() as u64;
            wrote = !batch.is_empty();
            if failed {
                inner.dropped.fetch_add(n, Ordering::Relaxed);
                for item in batch.drain(..) {
                    track_runs(&mut runs, item);
                }
            } else {
                let mut result = Ok(());
                for item in batch.drain(..) {
                    match &item {
                        Queued::Event(event) => encoder.encode(event, &mut buf),
                        Queued::Note(note) => {
                            // Notes come in long runs of the same run: look it up once.
                            if last.as_ref().is_none_or(|(run, _)| *run != note.run) {
                                last = runs.get(&note.run).map(|l| (note.run, l.clone()));
                            }
                            match &last {
                                Some((_, labels)) => {
                                    encoder.encode_parts(&note.parts(labels), &mut buf)
                                }
                                // Unreachable: a run announces itself before its first note.
                                None => continue,
                            }
                        }
                        Queued::RunStart(..) | Queued::RunEnd(_) => {
                            track_runs(&mut runs, item);
                            continue;
                        }
                    }
                    buf.push(b'\n');
                    if buf.len() >= 1 << 18 {
                        result = result.and_then(|()| self.output.write_all(&buf));
                        buf.clear();
                    }
                }
                if !buf.is_empty() {
                    result = result.and_then(|()| self.output.write_all(&buf));
                    buf.clear();
                }
                // Every batch reaches the file (or the writer's destination) right away; a flush
                // request or the end also syncs.
                let sync = self.fsync && (!flushers.is_empty() || closing);
                result = result.and_then(|()| self.output.flush(sync));
                match result {
                    Ok(()) => {
                        inner.written.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        inner.dropped.fetch_add(n, Ordering::Relaxed);
                        inner.lock().error = Some((e.kind(), e.to_string()));
                    }
                }
            }
            if !flushers.is_empty() {
                let error = inner.lock().error.clone();
                for f in flushers {
                    let _ = f.send(stored_result(&error));
                }
            }
            if closing {
                let mut st = inner.lock();
                st.closed = true;
                // Anything pushed after the last swap was refused (`closing` was set).
                for f in st.flushers.drain(..) {
                    let _ = f.send(Ok(()));
                }
                if st.blocked > 0 {
                    inner.room.notify_all();
                }
                drop(st);
                inner.room_async.notify_waiters();
                return;
            }
        }
    }
}

impl JsonlSink {
    /// A sink writing to `path` (created or truncated) with default settings.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        JsonlSinkBuilder::default().create(path)
    }

    /// A builder for non-default settings.
    ///
    /// ```
    /// use stageflow::observe::{JsonlSink, WhenFull};
    /// # fn main() -> std::io::Result<()> {
    /// let sink = JsonlSink::builder()
    ///     .capacity(1 << 20)
    ///     .when_full(WhenFull::Block)
    ///     .to_writer(std::io::sink())?;
    /// # let _ = sink; Ok(()) }
    /// ```
    pub fn builder() -> JsonlSinkBuilder {
        JsonlSinkBuilder::default()
    }

    /// Events written out so far (all runs).
    pub fn written(&self) -> u64 {
        self.handle.inner.written.load(Ordering::Relaxed)
    }

    /// Flushes, syncs and stops the writer thread, then waits for it. Events offered afterwards
    /// are refused. Returns the first write error, if any.
    pub async fn close(&self) -> io::Result<()> {
        let inner = &self.handle.inner;
        let rx = {
            let mut st = inner.lock();
            st.closing = true;
            self.handle
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        };
        inner.work.notify_one();
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        stored_result(&inner.lock().error)
    }
}

/// The engine's fast path (see [`StageNote`]).
impl JsonlSink {
    /// Registers a run whose stage events come as notes; returns its key for them.
    pub(crate) fn begin_run(&self, labels: Arc<RunLabels>) -> u64 {
        let inner = &self.handle.inner;
        let run = inner.next_run.fetch_add(1, Ordering::Relaxed);
        let _ = inner.push(Queued::RunStart(run, labels), false);
        run
    }

    /// Offers a stage event in compact form, like [`try_emit`](EventSink::try_emit).
    pub(crate) fn try_emit_note(&self, note: StageNote) -> bool {
        self.offer(Queued::Note(note))
    }

    /// The run will send no more notes.
    pub(crate) fn end_run(&self, run: u64) {
        let _ = self.handle.inner.push(Queued::RunEnd(run), false);
    }

    /// `try_emit` of an event or a note: buffered, or dropped and counted.
    fn offer(&self, item: Queued) -> bool {
        let inner = &self.handle.inner;
        match inner.push(item, inner.when_full == WhenFull::Block) {
            Ok(true) => true,
            Ok(false) | Err(_) => {
                inner.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

impl fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonlSink")
            .field("written", &self.written())
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl EventSink for JsonlSink {
    fn try_emit(&self, event: Event) -> bool {
        self.offer(Queued::Event(Box::new(event)))
    }

    fn as_jsonl(&self) -> Option<&JsonlSink> {
        Some(self)
    }

    async fn emit(&self, event: Event) -> bool {
        let inner = &self.handle.inner;
        let mut item = Queued::Event(Box::new(event));
        loop {
            let notified = inner.room_async.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match inner.push(item, false) {
                Ok(true) => return true,
                Ok(false) => {
                    inner.dropped.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                Err(back) => {
                    item = back;
                    // Make sure the writer is draining, then wait for it.
                    {
                        let mut st = inner.lock();
                        if st.wake != Wake::No {
                            st.wake = Wake::No;
                            inner.work.notify_one();
                        }
                    }
                    notified.await;
                }
            }
        }
    }

    async fn flush(&self) -> io::Result<()> {
        let inner = &self.handle.inner;
        let rx = {
            let mut st = inner.lock();
            if st.closed {
                return stored_result(&st.error);
            }
            let (tx, rx) = oneshot::channel();
            st.flushers.push(tx);
            st.wake = Wake::No;
            rx
        };
        inner.work.notify_one();
        // The writer usually answers within a few hundred microseconds (the tail of a run's
        // events, without fsync): yield to the runtime meanwhile instead of parking at once, so
        // the answer does not also pay for waking this thread.
        let mut rx = rx;
        let spin_until = std::time::Instant::now() + FLUSH_SPIN;
        while std::time::Instant::now() < spin_until {
            match rx.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Empty) => tokio::task::yield_now().await,
                Err(oneshot::error::TryRecvError::Closed) => break,
            }
        }
        rx.await.unwrap_or_else(|_| {
            Err(io::Error::other(
                "the JSON Lines writer thread stopped before flushing",
            ))
        })
    }

    fn dropped(&self) -> u64 {
        self.handle.inner.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use uuid::Uuid;

    use super::*;
    use crate::{Pipeline, StageContext, StageOutput};

    /// The fast path writes exactly the line the engine's event for the same note encodes to.
    #[test]
    fn a_note_encodes_to_the_same_line_as_its_event() {
        let graph = Pipeline::builder("pipe \"quoted\"")
            .stage("plain", |_c: StageContext| async { StageOutput::ok() })
            .stage("we\"ird\\name", |_c: StageContext| async {
                StageOutput::ok()
            })
            .build()
            .unwrap();
        for (parent, root) in [(None, None), (Some(Uuid::now_v7()), Some(Uuid::now_v7()))] {
            let labels = RunLabels {
                run_id: Uuid::now_v7(),
                parent_run_id: parent,
                root_run_id: root,
                pipeline: crate::observe::Name::from(graph.name()),
                graph: graph.inner.clone(),
                start_wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
            };
            let kinds = [
                (NoteKind::Started, "running"),
                (NoteKind::Completed, "ok"),
                (NoteKind::Skipped, "skip"),
                (NoteKind::Cancelled, "aborted"),
                (NoteKind::Failed, "error"),
            ];
            for idx in 0..2 {
                for (kind, status) in kinds {
                    for (duration, allocated) in [
                        (None, None),
                        (Some(Duration::from_nanos(1_234_567)), Some(4096)),
                    ] {
                        let note = StageNote {
                            run: 7,
                            idx,
                            kind,
                            status,
                            at_ns: 999_999_999_123,
                            duration,
                            allocated_bytes: allocated,
                        };
                        let (mut fast, mut full) = (Vec::new(), Vec::new());
                        let mut encoder = Encoder::default();
                        encoder.encode_parts(&note.parts(&labels), &mut fast);
                        encoder.encode(&note.event_in(&labels), &mut full);
                        assert_eq!(
                            String::from_utf8(fast).unwrap(),
                            String::from_utf8(full).unwrap()
                        );
                    }
                }
            }
        }
    }
}
