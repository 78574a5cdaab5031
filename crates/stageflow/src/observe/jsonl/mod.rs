//! [`JsonlSink`]: events as JSON Lines, written by a background thread.
//!
//! Four parts: this module (the sink and its builder), `queue` (the bounded queue between
//! emitters and the writer), `writer` (the writer thread and the file), and `note` (the compact
//! form in which the engine hands over stage lifecycle events).

mod queue;
mod writer;

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::event::Event;
use super::labels::RunLabels;
use super::note::{NotePath, NoteSink, StageNote};
use super::sink::EventSink;
pub use queue::WhenFull;
use queue::{stored_result, Inner, Queued, State, Wake};
use writer::{BackgroundSync, Output, Writer, Writing};

/// Writes events as JSON Lines (one [`Event::to_json_line`] object per line) to a file or any
/// writer.
///
/// Events are queued in a bounded in-memory buffer and written by a dedicated thread, one system
/// call per batch, so the executor only pays for a short lock and a push per event. While events
/// flow, the writer wakes itself every `linger` (25 µs by default) and takes what came in; an
/// emitter wakes it only at the start of a burst or when a quarter of the buffer is waiting, so a
/// busy run costs one wake-up, not one per few hundred events. When the buffer is full, events
/// are dropped and counted ([`WhenFull::Drop`], the default) or the emitter waits
/// ([`WhenFull::Block`]).
///
/// [`flush`](EventSink::flush), which the executor awaits at the end of every run, writes out
/// everything accepted so far and fsyncs the file. With [`fsync(false)`](JsonlSinkBuilder::fsync)
/// the flushing task writes the tail itself when the writer thread is idle, rather than wait for
/// that thread to be scheduled; with fsync on, the file is also synced in the background every
/// 16 MiB, so the final fsync only has the tail left. [`close`](Self::close) flushes and stops
/// the writer thread; dropping the last clone stops it too, without waiting.
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
/// flush, truncate the file, 25 µs linger.
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
            linger: Duration::from_micros(25),
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

    /// Longest time an event waits in the buffer before the writer picks it up (default 25 µs,
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
            fsync: self.fsync,
        });
        let writing = Arc::new(Mutex::new(Writing::new(output, wake_at.min(4096))));
        let (done_tx, done_rx) = oneshot::channel();
        let writer = Writer {
            inner: inner.clone(),
            writing: writing.clone(),
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
                writing,
                done: Mutex::new(Some(done_rx)),
            }),
        })
    }
}

/// The user-facing side: when the last clone goes, the writer is told to finish.
struct Handle {
    inner: Arc<Inner>,
    /// The output side, shared with the writer thread (a flush may write the tail itself).
    writing: Arc<Mutex<Writing>>,
    done: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.inner.lock().closing = true;
        self.inner.work.notify_one();
    }
}

/// How long [`flush`](EventSink::flush) yields before it parks to wait for the writer.
const FLUSH_SPIN: Duration = Duration::from_micros(300);

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
impl NoteSink for JsonlSink {
    fn begin_run(&self, labels: Arc<RunLabels>) -> u64 {
        let inner = &self.handle.inner;
        let run = inner.next_run.fetch_add(1, Ordering::Relaxed);
        let _ = inner.push(Queued::RunStart(run, labels), false);
        run
    }

    fn try_emit_note(&self, note: StageNote) -> bool {
        self.offer(Queued::Note(note))
    }

    fn end_run(&self, run: u64) {
        let _ = self.handle.inner.push(Queued::RunEnd(run), false);
    }
}

impl JsonlSink {
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

    fn note_path(&self) -> Option<NotePath> {
        Some(NotePath(Arc::new(self.clone())))
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
        // Without fsync, write the tail here when the writer thread is not busy writing: the
        // run then never waits for that thread to be woken and scheduled. (With fsync, the
        // writer thread syncs: the disk wait stays off the async runtime.)
        if !inner.fsync {
            let writing = match self.handle.writing.try_lock() {
                Ok(writing) => Some(writing),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(mut writing) = writing {
                {
                    let st = inner.lock();
                    if st.closed {
                        return stored_result(&st.error);
                    }
                }
                if writing.take_and_write(inner, false).closing {
                    // `close` is in progress: let the writer thread finish it.
                    inner.work.notify_one();
                }
                drop(writing);
                return stored_result(&inner.lock().error);
            }
        }
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
