//! Durable runs: checkpoint every finished stage to a [`RunStore`], and resume a run after a
//! crash without running again what was committed.
//!
//! ```
//! use stageflow::durable::{Checkpoint, Durability};
//! use stageflow::store::{MemoryStore, RunState, RunStore};
//! use stageflow::{Pipeline, RunOptions, StageContext, StageOutput, StageSpec};
//! use std::sync::Arc;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let graph = Pipeline::builder("count")
//!     .with_linear_chain(100, |i| {
//!         StageSpec::new(format!("s{i}"), move |ctx: StageContext| async move {
//!             let prev: u64 = if i == 0 { 0 } else { ctx.get_from(&format!("s{}", i - 1), "n")? };
//!             Ok::<_, stageflow::InputError>(StageOutput::ok().with("n", prev + 1))
//!         })
//!     })
//!     .build()?;
//! let store = Arc::new(MemoryStore::new()); // `stageflow_store::SqliteStore` for a file
//! let checkpoint = Checkpoint::new(store.clone()).durability(Durability::group(1000, 50));
//!
//! let done = graph.run_durable((), RunOptions::new(), &checkpoint).await?;
//! let run_id = done.report().identity().run_id;
//! assert_eq!(store.count_stages(run_id)?, 100);
//! assert_eq!(store.get_run(run_id)?.status, RunState::Completed);
//!
//! // Resuming a finished run runs nothing and gives the same results.
//! let again = graph.resume(run_id, RunOptions::new(), &checkpoint).await?;
//! assert_eq!(again.restored(), 100);
//! assert_eq!(again.report().stats().started, 0);
//! assert_eq!(again.report().results().get_data::<u64>("s99", "n")?, 100);
//! # Ok(()) }
//! ```
//!
//! # What is guaranteed
//!
//! - **A stage whose record was committed never runs again on resume.** [`Graph::resume`] loads
//!   the committed records, marks those stages done with their stored outputs (their dependents
//!   see exactly what the original run produced), and runs only the others.
//! - **A stage in flight at the crash runs again**: running, or finished but not yet committed.
//!   Execution is therefore *at-least-once*; recording is *exactly-once* (the store refuses a
//!   second record of a stage, see [`StoreError::DuplicateStage`]). Make stages with outside side
//!   effects idempotent.
//! - **What is committed is consistent**: records are committed in the order the stages finished,
//!   one batch per transaction, so whenever a stage's record is committed, the records of all the
//!   stages it depends on are too. A crash never leaves half a batch.
//! - The run's record ([`RunRecord`]) holds the pipeline fingerprint, the input and the status:
//!   `running` until the run ends, then `completed`, `failed` (with the error) or `cancelled`. A
//!   run still `running` in the store with no process executing it crashed, and can be resumed.
//! - **A changed pipeline is refused**: a resume compares the pipeline's [`Fingerprint`] (names,
//!   kinds and edges of its stages) with the one the run started with, and fails with
//!   [`StoreError::FingerprintMismatch`] unless [`Checkpoint::force_resume`] is set. Nothing in
//!   the store is changed by a refused resume.
//! - A store error before the run starts (file not a database, damaged, run id unknown, ...)
//!   fails the call with [`DurableError::Store`] before any stage runs and without writing
//!   anything. A store error while recording stops the recording (nothing is committed after
//!   it) and is reported with the run's outcome in [`DurableError::Recording`]; what was
//!   committed before stays committed.
//!
//! - **Attempts are counted**: a record's `attempts` is the number of executions that produced
//!   its output: the tries of a [`Retry`](crate::intercept::Retry) interceptor and the re-runs of
//!   a [guard retry](crate::GuardRetry) (see [`StageOutput::attempts`](crate::StageOutput::attempts)).
//! - **A guarded producer is recorded with the output its guard accepted**, right before the
//!   guard, never with a first output the guard then rejected; if the guard rejects it for good,
//!   the producer is not recorded and a resume runs it again.
//! - **A subpipeline is one stage**: its record holds the child's results as output. The child's
//!   own stages are not checkpointed, so a crash in the middle of a child runs the whole child
//!   again on resume.
//!
//! Only stages that finish `ok` or `skip` are recorded. A failed or cancelled stage is not: a
//! resume of a failed run runs the failed stage again (and the run's record holds the error).
//! Stages still running when a run stops, and stages that finish while it is stopping, are not
//! recorded either.
//!
//! # Durability: when records are committed
//!
//! The executor never waits for the store: each finished stage goes through a channel to a
//! dedicated writer thread, which commits them according to the run's [`Durability`]:
//!
//! | choice | a commit (one transaction) | lost on a crash (runs again) | cost |
//! |---|---|---|---|
//! | [`Durability::EveryStage`] | per stage | the stages finished since the last commit (normally the few in flight) | one transaction per stage: the writer's throughput bounds the recording rate |
//! | [`Durability::Group`] | every N stages or T ms, whichever first | at most the last N stages / T ms | one transaction per batch (the default: 1000 stages or 100 ms) |
//! | [`Durability::SegmentBoundaries`] | when a [segment](crate::segment) finishes, and at the end of the run | the current segment | one transaction per segment |
//!
//! The run returns only after the writer committed everything it was sent, and the run's status
//! was updated. How durable a commit itself is (process crash vs. power loss) is the store's
//! business: see `stageflow_store::Synchronous`.
//!
//! [`StoreError::DuplicateStage`]: crate::store::StoreError::DuplicateStage
//! [`StoreError::FingerprintMismatch`]: crate::store::StoreError::FingerprintMismatch

mod config;
mod fingerprint;
mod recorder;

pub use config::Durability;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

pub use fingerprint::Fingerprint;

use crate::graph::{Graph, GraphInner};
use crate::output::{StageOutput, StageStatus};
use crate::run::ext::{Extensions, RunHook};
use crate::run::{Retention, RunFailure, RunOptions, RunReport, RunStatus};
use crate::segment::{SegmentError, SegmentGate, SegmentPlan};
use crate::store::{RunRecord, RunState, RunStore, StoreError};
use recorder::{Recorder, WriterOutcome};

/// Where and how a durable run is checkpointed: the store, the [`Durability`], and optionally a
/// [`SegmentPlan`] to run segment by segment. Cheap to clone; reuse it for every run and resume.
///
/// ```
/// use stageflow::durable::{Checkpoint, Durability};
/// use stageflow::store::MemoryStore;
/// let checkpoint = Checkpoint::new(MemoryStore::new())
///     .durability(Durability::EveryStage)
///     .force_resume(false);
/// assert_eq!(checkpoint.durability_mode(), Durability::EveryStage);
/// ```
#[derive(Clone)]
pub struct Checkpoint {
    store: Arc<dyn RunStore>,
    durability: Durability,
    force: bool,
    segments: Option<Arc<SegmentPlan>>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("durability", &self.durability)
            .field("force_resume", &self.force)
            .field("segments", &self.segments.as_ref().map(|p| p.len()))
            .finish_non_exhaustive()
    }
}

impl Checkpoint {
    /// Checkpoints to `store` (any [`RunStore`]: a `SqliteStore`, a [`MemoryStore`], an `Arc` of
    /// one, an `Arc<dyn RunStore>`), with the default [`Durability`].
    ///
    /// [`MemoryStore`]: crate::store::MemoryStore
    pub fn new(store: impl RunStore + 'static) -> Self {
        Checkpoint {
            store: Arc::new(store),
            durability: Durability::default(),
            force: false,
            segments: None,
        }
    }

    /// When records are committed.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The durability set.
    pub fn durability_mode(&self) -> Durability {
        self.durability
    }

    /// With `true`, [`Graph::resume`] continues a run even if the pipeline's fingerprint changed:
    /// stages are matched by name, records of stages that no longer exist are ignored, and new
    /// stages run. Outputs of committed stages are used as they are, even if what produced them
    /// changed. Off by default.
    pub fn force_resume(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Runs segment by segment following `plan` (see [`crate::segment`]); with
    /// [`Durability::SegmentBoundaries`], commits once per segment.
    pub fn segments(mut self, plan: SegmentPlan) -> Self {
        self.segments = Some(Arc::new(plan));
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.store
    }
}

/// A durable run that completed or was cancelled gracefully: the [`RunReport`], plus what the
/// checkpoint did.
#[derive(Debug)]
pub struct DurableReport {
    report: RunReport,
    restored: usize,
    load_time: Duration,
    committed: u64,
    batches: u64,
}

impl DurableReport {
    /// The run's report (results, status, counts). Restored stages count as succeeded or skipped
    /// in its [`stats`](RunReport::stats), but not as started.
    pub fn report(&self) -> &RunReport {
        &self.report
    }

    /// Takes the report out.
    pub fn into_report(self) -> RunReport {
        self.report
    }

    /// Stages restored from the store (0 for a new run).
    pub fn restored(&self) -> usize {
        self.restored
    }

    /// Time spent loading the run and its committed stages from the store (zero for a new run).
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Stage records this execution committed.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Transactions this execution committed stage records in.
    pub fn batches(&self) -> u64 {
        self.batches
    }
}

/// Why a durable run or a resume did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The store refused before the run started: nothing ran and nothing was written. Includes a
    /// run id that is not in the store ([`StoreError::RunNotFound`]), a changed pipeline
    /// ([`StoreError::FingerprintMismatch`]), a damaged file or one that is not a store.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// A stage failed. The stages committed before stay committed and the run is recorded as
    /// `failed`; a resume runs the failed stage and what follows it again.
    #[error("{0}")]
    Failed(Box<RunFailure>),

    /// Recording failed during the run (or the final status update did). Stages committed before
    /// the error stay committed; nothing was committed after it. The run's own outcome is in
    /// `outcome`.
    #[error("checkpointing run {run_id} failed: {source} (stages committed before stay committed; a resume runs the rest)")]
    Recording {
        /// The run.
        run_id: Uuid,
        /// The store's error.
        #[source]
        source: StoreError,
        /// How the run itself ended.
        outcome: Box<Result<RunReport, RunFailure>>,
    },

    /// The checkpoint's [`SegmentPlan`] does not fit the pipeline.
    #[error(transparent)]
    Segments(#[from] SegmentError),
}

impl Graph {
    /// Runs the pipeline with `input`, recording every finished stage in the checkpoint's store
    /// (see the [module docs](crate::durable) for what is guaranteed). The run id is the one in
    /// `options` ([`RunOptions::identity`]) or a fresh one; resume it with [`Graph::resume`].
    ///
    /// The run's record is created before the first stage starts (a run id already in the store
    /// is refused with [`StoreError::RunExists`]), and its status is set when the run ends.
    pub async fn run_durable(
        &self,
        input: impl Into<Value>,
        options: RunOptions,
        checkpoint: &Checkpoint,
    ) -> Result<DurableReport, DurableError> {
        let input = input.into();
        let identity = options.identity.clone().unwrap_or_default();
        let gate = self.segment_gate(checkpoint)?;
        let graph = self.clone();
        let store = checkpoint.store.clone();
        let record_input = input.clone();
        let run_id = identity.run_id;
        blocking(move || {
            let record = RunRecord::new(
                run_id,
                graph.name(),
                graph.fingerprint().to_string(),
                record_input,
            );
            store.create_run(&record)
        })
        .await?;
        self.execute(
            input,
            options.identity(identity),
            checkpoint,
            (Vec::new(), gate),
            Duration::ZERO,
        )
        .await
    }

    /// Resumes run `run_id` from the checkpoint's store: loads the run and its committed stages,
    /// checks that the pipeline did not change (unless [`Checkpoint::force_resume`]), runs only the
    /// stages that were not committed (with the run's stored input), records them, and sets the
    /// run's status when it ends. The result is the same as that of an uninterrupted run.
    ///
    /// The run keeps its id; the other ids of `options`' identity (if any) are used as given.
    /// Resuming a run that completed runs nothing. Do not resume a run that another process is
    /// still executing: the store would refuse the duplicate records of the stages both run.
    ///
    /// With [`Retention::Sinks`], only the outputs that the remaining
    /// stages need (and the sinks') are loaded and decoded, so the time to resume a long run that
    /// crashed near its end is dominated by the work left, not by reloading.
    pub async fn resume(
        &self,
        run_id: Uuid,
        options: RunOptions,
        checkpoint: &Checkpoint,
    ) -> Result<DurableReport, DurableError> {
        let gate = self.segment_gate(checkpoint)?;
        let graph = self.clone();
        let store = checkpoint.store.clone();
        let force = checkpoint.force;
        let keep_all = options.retention == Retention::All;
        let loaded =
            blocking(move || load_committed(&graph, &*store, run_id, force, keep_all)).await?;
        let mut identity = options.identity.clone().unwrap_or_default();
        identity.run_id = run_id;
        self.execute(
            loaded.input,
            options.identity(identity),
            checkpoint,
            (loaded.restored, gate),
            loaded.load_time,
        )
        .await
    }

    fn segment_gate(&self, checkpoint: &Checkpoint) -> Result<Option<SegmentGate>, SegmentError> {
        checkpoint
            .segments
            .as_deref()
            .map(|plan| SegmentGate::new(self, plan))
            .transpose()
    }

    /// Runs with a recorder attached, waits for the writer, and records the run's status.
    async fn execute(
        &self,
        input: Value,
        options: RunOptions,
        checkpoint: &Checkpoint,
        (restored, gate): (Vec<(u32, Arc<StageOutput>)>, Option<SegmentGate>),
        load_time: Duration,
    ) -> Result<DurableReport, DurableError> {
        let run_id = options
            .identity
            .as_ref()
            .map(|i| i.run_id)
            .unwrap_or_default();
        let (recorder, writer) = Recorder::start(
            self.inner.clone(),
            checkpoint.store.clone(),
            run_id,
            checkpoint.durability,
        );
        let restored_count = restored.len();
        let mut hooks: Vec<Box<dyn RunHook>> = vec![Box::new(recorder)];
        if let Some(gate) = gate {
            hooks.push(Box::new(gate));
        }
        let ext = Extensions { restored, hooks };
        let result = self.run_extended(input, options, ext).await;
        // The run is over and its recorder dropped with it: the writer commits what is left and
        // ends.
        let outcome: WriterOutcome = blocking(move || match writer.join() {
            Ok(outcome) => outcome,
            Err(panic) => std::panic::resume_unwind(panic),
        })
        .await;
        let (state, error) = match &result {
            Ok(report) => match report.status() {
                RunStatus::Completed => (RunState::Completed, None),
                RunStatus::Cancelled { reason, .. } => (RunState::Cancelled, Some(reason.clone())),
            },
            Err(failure) => (RunState::Failed, Some(failure.to_string())),
        };
        let recording_error = match outcome.error {
            Some(error) => Some(error),
            None => {
                let store = checkpoint.store.clone();
                blocking(move || store.update_run_status(run_id, state, error.as_deref()))
                    .await
                    .err()
            }
        };
        if let Some(source) = recording_error {
            return Err(DurableError::Recording {
                run_id,
                source,
                outcome: Box::new(result),
            });
        }
        match result {
            Ok(report) => Ok(DurableReport {
                report,
                restored: restored_count,
                load_time,
                committed: outcome.committed,
                batches: outcome.batches,
            }),
            Err(failure) => Err(DurableError::Failed(Box::new(failure))),
        }
    }
}

/// What a resume starts from.
struct Loaded {
    input: Value,
    restored: Vec<(u32, Arc<StageOutput>)>,
    load_time: Duration,
}

/// Loads run `run_id` and the outputs the resumed run needs: all of them with `keep_all`,
/// otherwise only those of committed stages that a stage left to run depends on, and sinks'.
fn load_committed(
    graph: &Graph,
    store: &dyn RunStore,
    run_id: Uuid,
    force: bool,
    keep_all: bool,
) -> Result<Loaded, StoreError> {
    let started = Instant::now();
    let record = store.get_run(run_id)?;
    if !force {
        record.check_fingerprint(&graph.fingerprint().to_string())?;
    }
    let g = &*graph.inner;
    let restorable = |status: StageStatus| matches!(status, StageStatus::Ok | StageStatus::Skip);
    let mut restored = Vec::new();
    let mut resolve = CommitOrderResolver::default();
    if keep_all {
        for stage in store.load_stages(run_id)? {
            if let (Some(idx), Some(output)) = (resolve.index_of(g, &stage.stage), stage.output) {
                if restorable(output.status()) {
                    restored.push((idx, Arc::new(output)));
                }
            }
        }
    } else {
        let mut done = vec![None; g.len()];
        store.for_each_stage_state(run_id, &mut |name, status| {
            if let Some(idx) = resolve.index_of(g, name) {
                if restorable(status) {
                    done[idx as usize] = Some(status);
                }
            }
        })?;
        // Outputs needed: sinks', and those of done stages with a dependent left to run.
        let needed: Vec<&str> = (0..g.len() as u32)
            .filter(|&i| done[i as usize].is_some())
            .filter(|&i| {
                let dependents = g.dependents(i);
                dependents.is_empty() || dependents.iter().any(|&j| done[j as usize].is_none())
            })
            .map(|i| g.name(i))
            .collect();
        for stage in store.load_stage_records(run_id, &needed)? {
            if let (Some(idx), Some(output)) = (g.index_of(&stage.stage), stage.output) {
                // Taken out of `done`: restored with its real output, not a stand-in below.
                if restorable(output.status()) && done[idx as usize].take().is_some() {
                    restored.push((idx, Arc::new(output)));
                }
            }
        }
        // The others are done but nobody will read their outputs: stand-ins with their status.
        let ok = Arc::new(StageOutput::ok());
        let skip = Arc::new(StageOutput::skip("restored from a checkpoint"));
        for (i, status) in done.iter().enumerate() {
            match status {
                Some(StageStatus::Skip) => restored.push((i as u32, skip.clone())),
                Some(_) => restored.push((i as u32, ok.clone())),
                None => {}
            }
        }
    }
    if record.status != RunState::Running {
        store.update_run_status(run_id, RunState::Running, None)?;
    }
    Ok(Loaded {
        input: record.input,
        restored,
        load_time: started.elapsed(),
    })
}

/// Finds the index of each stage a store lists, in commit order. Commit order mostly follows
/// definition order (ready stages start in index order), so the stage after the previous one is
/// tried first: a string compare on memory just read, where a hash probe into a table of a million
/// stages is a cache miss (~250 ns, most of a resume's loading time before this). Falls back to
/// the hash lookup, so any order is still resolved correctly.
#[derive(Default)]
struct CommitOrderResolver {
    next: u32,
}

impl CommitOrderResolver {
    fn index_of(&mut self, g: &GraphInner, name: &str) -> Option<u32> {
        let guess = self.next;
        let idx = if (guess as usize) < g.len() && g.name(guess) == name {
            Some(guess)
        } else {
            g.index_of(name)
        };
        if let Some(idx) = idx {
            self.next = idx + 1;
        }
        idx
    }
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => value,
        Err(err) => match err.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(err) => panic!("a checkpoint task was cancelled: {err}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Pipeline, StageContext, StageSpec};

    #[test]
    fn the_commit_order_resolver_finds_every_stage_in_any_order() {
        let graph = Pipeline::builder("p")
            .with_parallel((), 5, |i| {
                StageSpec::new(format!("s{i}"), |_c: StageContext| async {
                    StageOutput::ok()
                })
            })
            .build()
            .unwrap();
        let g = &*graph.inner;
        let mut resolve = CommitOrderResolver::default();
        // In definition order (the guess hits), then out of order (the hash lookup), then a name
        // the pipeline does not have.
        let order = ["s0", "s1", "s2", "s4", "s3", "s0", "gone", "s4"];
        let found: Vec<Option<u32>> = order.iter().map(|n| resolve.index_of(g, n)).collect();
        assert_eq!(
            found,
            [
                Some(0),
                Some(1),
                Some(2),
                Some(4),
                Some(3),
                Some(0),
                None,
                Some(4)
            ]
        );
    }
}
