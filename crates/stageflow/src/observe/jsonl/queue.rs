//! The bounded queue between the emitters (the executor, stage contexts) and the writer thread,
//! with the wake-up protocol that keeps emitters from waking the writer for every event.

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use tokio::sync::{oneshot, Notify};

use crate::observe::event::Event;
use crate::observe::labels::RunLabels;
use crate::observe::note::StageNote;

/// What [`JsonlSink::try_emit`](crate::observe::EventSink::try_emit) does when the buffer is full.
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

/// What waits in the buffer for the writer. Runs announce themselves (`RunStart`, with what their
/// notes need to be expanded) and leave (`RunEnd`) through the same queue, so the writer always
/// knows a note's run.
pub(super) enum Queued {
    Event(Box<Event>),
    Note(StageNote),
    RunStart(u64, Arc<RunLabels>),
    RunEnd(u64),
}

impl Queued {
    /// Run announcements are bookkeeping: never refused for room, not counted as events.
    pub(super) fn is_event(&self) -> bool {
        matches!(self, Queued::Event(_) | Queued::Note(_))
    }
}

pub(super) struct Inner {
    pub(super) state: Mutex<State>,
    /// The writer waits here.
    pub(super) work: Condvar,
    /// Blocked emitters ([`WhenFull::Block`]) wait here.
    pub(super) room: Condvar,
    /// Async emitters ([`EventSink::emit`]) wait here.
    pub(super) room_async: Notify,
    pub(super) written: AtomicU64,
    pub(super) dropped: AtomicU64,
    /// The key of the next run registered for stage notes.
    pub(super) next_run: AtomicU64,
    pub(super) capacity: usize,
    pub(super) wake_at: usize,
    pub(super) when_full: WhenFull,
    /// Whether a flush (and the end) syncs the file.
    pub(super) fsync: bool,
}

pub(super) struct State {
    pub(super) pending: Vec<Queued>,
    pub(super) flushers: Vec<oneshot::Sender<io::Result<()>>>,
    pub(super) closing: bool,
    pub(super) closed: bool,
    /// When an emitter must wake the writer.
    pub(super) wake: Wake,
    /// Emitters blocked for room.
    pub(super) blocked: usize,
    /// The first write error; later writes are skipped and their events counted as dropped.
    pub(super) error: Option<(io::ErrorKind, String)>,
}

/// `Ok`, or the stored first write error (a fresh `io::Error` each time it is reported).
pub(super) fn stored_result(error: &Option<(io::ErrorKind, String)>) -> io::Result<()> {
    match error {
        None => Ok(()),
        Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// The writer is busy (or already woken): nobody needs waking.
    No,
    /// The writer sleeps until there is any event.
    OnAny,
    /// The writer lingers; wake it early when the buffer reaches `wake_at`.
    AtThreshold,
}

impl Inner {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pushes into the buffer if there is room; `Err(item)` if full, `Ok(false)` if closed.
    pub(super) fn push(&self, item: Queued, block: bool) -> Result<bool, Queued> {
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
        // A run's start does not wake the writer: its first event, right after, does. (Its end
        // does, so that the writer lets go of the run's labels and graph.)
        let wakes = !matches!(item, Queued::RunStart(..));
        st.pending.push(item);
        let wake = wakes
            && match st.wake {
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
