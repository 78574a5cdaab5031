//! The checkpoint recorder: the executor hands each finished stage to a channel; a dedicated
//! thread turns them into [`StageRecord`]s and commits them in batches, so the executor never
//! waits on the store.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use uuid::Uuid;

use super::config::Durability;
use crate::context::RunShared;
use crate::graph::GraphInner;
use crate::output::StageOutput;
use crate::run::ext::{RunHook, Schedule};
use crate::store::{RunStore, StageRecord, StoreError};

/// What the executor sends the writer thread.
pub(crate) enum Msg {
    /// A stage finished (ok or skip); times in nanoseconds since the run's start.
    Stage {
        idx: u32,
        output: Arc<StageOutput>,
        started_ns: u64,
        finished_ns: u64,
    },
    /// A segment finished: commit everything received so far.
    Boundary,
}

/// The executor's end of the recorder.
pub(crate) struct Recorder {
    tx: Sender<Msg>,
    /// Start time of each stage, in nanoseconds since `base` (only stages that started).
    starts: Vec<u64>,
    base: Instant,
}

/// What the writer thread did.
pub(crate) struct WriterOutcome {
    /// Stage records committed by this execution.
    pub(crate) committed: u64,
    /// Transactions committed.
    pub(crate) batches: u64,
    /// The first store error; nothing was committed after it.
    pub(crate) error: Option<StoreError>,
}

impl Recorder {
    /// Starts the writer thread for run `run_id` of `graph`; stage times count from now.
    pub(crate) fn start(
        graph: Arc<GraphInner>,
        store: Arc<dyn RunStore>,
        run_id: Uuid,
        durability: Durability,
    ) -> (Recorder, JoinHandle<WriterOutcome>) {
        let (base, base_wall) = (Instant::now(), SystemTime::now());
        let (tx, rx) = mpsc::channel();
        let n = graph.len();
        let writer = Writer {
            graph,
            store,
            run_id,
            base_wall,
        };
        let handle = std::thread::Builder::new()
            .name("stageflow-checkpoint".to_owned())
            .spawn(move || writer.run(rx, durability))
            .expect("spawning the checkpoint writer thread");
        let recorder = Recorder {
            tx,
            starts: vec![0; n],
            base,
        };
        (recorder, handle)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn send(&mut self, idx: u32, output: Arc<StageOutput>) {
        let finished_ns = self.now_ns();
        let started_ns = self.starts[idx as usize].min(finished_ns);
        // A closed channel means the writer stopped on a store error, which the run reports.
        let _ = self.tx.send(Msg::Stage {
            idx,
            output,
            started_ns,
            finished_ns,
        });
    }
}

/// The recorder in the run loop: every stage that finishes `ok` or `skip` goes to the writer.
impl RunHook for Recorder {
    fn started(&mut self, idx: u32) {
        self.starts[idx as usize] = self.now_ns();
    }

    fn finished(
        &mut self,
        idx: u32,
        output: &Arc<StageOutput>,
        record: bool,
        _schedule: Schedule<'_>,
        _shared: &RunShared,
    ) -> u32 {
        if record {
            self.send(idx, output.clone());
        }
        0
    }

    fn record(&mut self, idx: u32, output: Arc<StageOutput>) {
        self.send(idx, output);
    }

    fn boundary(&mut self) {
        let _ = self.tx.send(Msg::Boundary);
    }
}

struct Writer {
    graph: Arc<GraphInner>,
    store: Arc<dyn RunStore>,
    run_id: Uuid,
    base_wall: SystemTime,
}

impl Writer {
    fn run(self, rx: Receiver<Msg>, durability: Durability) -> WriterOutcome {
        let (max_stages, max_delay) = match durability {
            Durability::EveryStage => (1, Duration::ZERO),
            Durability::Group {
                max_stages,
                max_delay,
            } => (max_stages.max(1), max_delay),
            // Only boundaries (and the end of the run) commit.
            Durability::SegmentBoundaries => (usize::MAX, Duration::MAX),
        };
        let mut outcome = WriterOutcome {
            committed: 0,
            batches: 0,
            error: None,
        };
        let mut batch: Vec<StageRecord> = Vec::new();
        let mut open = true;
        while open {
            // Wait for the first record of the next batch.
            let mut flush = match rx.recv() {
                Ok(msg) => self.push(&mut batch, msg),
                Err(_) => break,
            };
            let deadline = Instant::now().checked_add(max_delay);
            while !flush && batch.len() < max_stages {
                let msg = match deadline {
                    Some(deadline) => {
                        let wait = deadline.saturating_duration_since(Instant::now());
                        match rx.recv_timeout(wait) {
                            Ok(msg) => msg,
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => {
                                open = false;
                                break;
                            }
                        }
                    }
                    None => match rx.recv() {
                        Ok(msg) => msg,
                        Err(_) => {
                            open = false;
                            break;
                        }
                    },
                };
                flush = self.push(&mut batch, msg);
            }
            if batch.is_empty() {
                continue;
            }
            match self.store.record_stages(self.run_id, &batch) {
                Ok(()) => {
                    outcome.committed += batch.len() as u64;
                    outcome.batches += 1;
                    batch.clear();
                }
                Err(error) => {
                    // Stop recording: later records would commit stages whose dependencies'
                    // records are missing. Dropping the receiver makes the executor's sends no-ops.
                    outcome.error = Some(error);
                    break;
                }
            }
        }
        outcome
    }

    /// Adds a message to the batch; `true` when the batch must be committed now.
    fn push(&self, batch: &mut Vec<StageRecord>, msg: Msg) -> bool {
        match msg {
            Msg::Stage {
                idx,
                output,
                started_ns,
                finished_ns,
            } => {
                let at = |ns: u64| self.base_wall + Duration::from_nanos(ns);
                let output = Arc::unwrap_or_clone(output);
                batch.push(StageRecord {
                    run_id: self.run_id,
                    stage: self.graph.name(idx).to_owned(),
                    status: output.status(),
                    attempts: output.attempts(),
                    output: Some(output),
                    error: None,
                    started_at: at(started_ns),
                    finished_at: at(finished_ns),
                    duration_ms: (finished_ns - started_ns) / 1_000_000,
                });
                false
            }
            Msg::Boundary => true,
        }
    }
}
