//! The writer thread: takes batches from the queue, encodes them and writes them to the file
//! (or writer), syncing it in the background and when asked.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::queue::{stored_result, Inner, Queued, Wake};
use crate::observe::event::Encoder;
use crate::observe::labels::RunLabels;

pub(super) enum Output {
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
pub(super) struct BackgroundSync {
    /// Capacity 1: a request while one is pending is merged into it.
    requests: std::sync::mpsc::SyncSender<()>,
}

impl BackgroundSync {
    pub(super) fn start(file: File) -> io::Result<BackgroundSync> {
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

pub(super) struct Writer {
    pub(super) inner: Arc<Inner>,
    pub(super) writing: Arc<std::sync::Mutex<Writing>>,
    pub(super) linger: Duration,
}

/// The writing side: the output, the encoder, and the batch being written. It lives behind a
/// mutex in the sink, so that besides the writer thread a flush without fsync can write the tail
/// itself: a short run then never waits for the writer thread to be scheduled (on a busy or
/// virtual machine, that can take longer than the run).
pub(super) struct Writing {
    output: Output,
    encoder: Encoder,
    buf: Vec<u8>,
    runs: Runs,
    batch: Vec<Queued>,
}

impl Writing {
    pub(super) fn new(output: Output, batch_capacity: usize) -> Writing {
        Writing {
            output,
            encoder: Encoder::default(),
            buf: Vec::with_capacity(1 << 18),
            runs: Runs::default(),
            batch: Vec::with_capacity(batch_capacity),
        }
    }

    /// Takes everything waiting in the queue, writes it out, and answers the flush requests made
    /// before it. Syncs the output if `sync_on_request` and a flush or the close asked for it.
    /// Callers hold this `Writing`, so batches reach the output in queue order.
    pub(super) fn take_and_write(&mut self, inner: &Inner, sync_on_request: bool) -> Taken {
        let (flushers, closing, failed) = {
            // `wake` is left as it is: the writer thread, if it sleeps, still needs waking.
            let mut st = inner.lock();
            std::mem::swap(&mut st.pending, &mut self.batch);
            if st.blocked > 0 {
                inner.room.notify_all();
            }
            let failed = st.error.is_some();
            (std::mem::take(&mut st.flushers), st.closing, failed)
        };
        inner.room_async.notify_waiters();
        let took = !self.batch.is_empty();
        let sync = sync_on_request && (!flushers.is_empty() || closing);
        self.write_batch(inner, failed, sync);
        if !flushers.is_empty() {
            let error = inner.lock().error.clone();
            for f in flushers {
                let _ = f.send(stored_result(&error));
            }
        }
        Taken { took, closing }
    }

    /// Encodes and writes `self.batch`, then syncs if `sync`; counts its events as written, or
    /// as dropped when this write or an earlier one (`failed`) failed.
    fn write_batch(&mut self, inner: &Inner, failed: bool, sync: bool) {
        let Writing {
            output,
            encoder,
            buf,
            runs,
            batch,
        } = self;
        let n = batch.iter().filter(|item| item.is_event()).count() as u64;
        if failed {
            inner.dropped.fetch_add(n, Ordering::Relaxed);
            for item in batch.drain(..) {
                runs.track(item);
            }
            return;
        }
        let mut result = Ok(());
        for item in batch.drain(..) {
            match &item {
                Queued::Event(event) => encoder.encode(event, buf),
                Queued::Note(note) => match runs.labels(note.run) {
                    Some(labels) => encoder.encode_parts(&note.parts(labels), buf),
                    // Unreachable: a run announces itself before its first note.
                    None => continue,
                },
                Queued::RunStart(..) | Queued::RunEnd(_) => {
                    runs.track(item);
                    continue;
                }
            }
            buf.push(b'\n');
            if buf.len() >= 1 << 18 {
                result = result.and_then(|()| output.write_all(buf));
                buf.clear();
            }
        }
        if !buf.is_empty() {
            result = result.and_then(|()| output.write_all(buf));
            buf.clear();
        }
        // Every batch reaches the file (or the writer's destination) right away.
        result = result.and_then(|()| output.flush(sync));
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
}

/// What [`Writing::take_and_write`] found.
pub(super) struct Taken {
    /// Something was waiting.
    pub(super) took: bool,
    /// The sink is closing.
    pub(super) closing: bool,
}

impl Writer {
    pub(super) fn run(self) {
        let inner = self.inner.clone();
        // Whether events came in during the last `linger`: then the writer keeps waking itself
        // (events that arrived while it wrote are taken at once, others after at most `linger`)
        // and emitters never have to wake it. After a quiet `linger` it sleeps until an emitter
        // wakes it: one wake-up per burst of events, not one per few hundred.
        let mut active = false;
        let mut wrote = false;
        loop {
            {
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
            }
            let taken = self
                .writing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take_and_write(&inner, inner.fsync);
            wrote = taken.took;
            if taken.closing {
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

/// The runs whose stage notes may still come, with what encoding them needs.
#[derive(Default)]
struct Runs {
    all: HashMap<u64, Arc<RunLabels>>,
    /// The run of the last note: notes come in long series of one run, looked up once.
    last: Option<(u64, Arc<RunLabels>)>,
}

impl Runs {
    /// Applies a run announcement; ignores events.
    fn track(&mut self, item: Queued) {
        match item {
            Queued::RunStart(run, labels) => {
                self.all.insert(run, labels);
            }
            Queued::RunEnd(run) => {
                self.all.remove(&run);
                // Do not keep an ended run's graph alive until the next run's notes.
                if self.last.as_ref().is_some_and(|(last, _)| *last == run) {
                    self.last = None;
                }
            }
            Queued::Event(_) | Queued::Note(_) => {}
        }
    }

    fn labels(&mut self, run: u64) -> Option<&RunLabels> {
        if self.last.as_ref().is_none_or(|(last, _)| *last != run) {
            self.last = self.all.get(&run).map(|labels| (run, labels.clone()));
        }
        self.last.as_ref().map(|(_, labels)| &**labels)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::observe::Name;
    use crate::{Pipeline, StageContext, StageOutput};

    #[test]
    fn an_ended_run_is_forgotten_even_if_its_notes_were_the_last() {
        let graph = Pipeline::builder("p")
            .stage("a", |_c: StageContext| async { StageOutput::ok() })
            .build()
            .unwrap();
        let labels = Arc::new(RunLabels {
            run_id: uuid::Uuid::now_v7(),
            parent_run_id: None,
            root_run_id: None,
            pipeline: Name::from("p"),
            topo: graph.inner.topo.clone(),
            start_wall: SystemTime::now(),
        });
        let mut runs = Runs::default();
        runs.track(Queued::RunStart(3, labels.clone()));
        assert!(runs.labels(4).is_none());
        assert_eq!(runs.labels(3).unwrap().run_id, labels.run_id);
        runs.track(Queued::RunEnd(3));
        assert!(runs.labels(3).is_none());
        assert_eq!(
            Arc::strong_count(&labels),
            1,
            "nothing holds the run any more"
        );
    }
}
