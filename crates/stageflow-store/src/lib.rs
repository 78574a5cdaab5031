//! # Stageflow run store
//!
//! Durable runs for [Stageflow](stageflow): a [`RunStore`] keeps one [`RunRecord`] per run (pipeline,
//! pipeline fingerprint, input, state) and one [`StageRecord`] per finished stage (status, output,
//! error, attempts, times). An executor that commits each finished stage's record can, after a
//! crash, [load](RunStore::load_stages) the committed records and run only what is left.
//!
//! Two implementations, with identical semantics (one conformance suite runs against both):
//! - [`SqliteStore`]: a SQLite file (WAL), for real use;
//! - [`MemoryStore`]: a hash map, for tests.
//!
//! ```
//! use stageflow::{StageOutput, StageStatus};
//! use stageflow_store::{RunRecord, RunState, RunStore, SqliteStore, StageRecord};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("runs/stageflow.db"))?;
//!
//! // The executor starts a run...
//! let run = RunRecord::new(uuid::Uuid::now_v7(), "etl", "fp-1", serde_json::json!({"day": 7}));
//! store.create_run(&run)?;
//! // ...commits finished stages in batches (one transaction per batch)...
//! let batch = vec![
//!     StageRecord::new(run.run_id, "extract", StageStatus::Ok)
//!         .with_output(StageOutput::ok().with("rows", 3)),
//!     StageRecord::new(run.run_id, "transform", StageStatus::Ok)
//!         .with_output(StageOutput::ok().with("rows", 6)),
//! ];
//! store.record_stages(run.run_id, &batch)?;
//! drop(store); // ...and the process dies.
//!
//! // On resume: same pipeline? Then skip every committed stage.
//! let store = SqliteStore::open(dir.path().join("runs/stageflow.db"))?;
//! let stored = store.get_run(run.run_id)?;
//! stored.check_fingerprint("fp-1")?;
//! assert_eq!(stored.status, RunState::Running);
//! let done = store.load_stages(run.run_id)?;
//! assert_eq!(done.len(), 2);
//! assert_eq!(done[1].output.as_ref().unwrap().get::<u32>("rows")?, 6);
//! store.update_run_status(run.run_id, RunState::Completed, None)?;
//! # Ok(()) }
//! ```
//!
//! ## The guarantee to the executor
//!
//! **A stage whose record was committed is never run again on resume; a stage that was in flight
//! at the crash (finished or not, but not yet committed) runs again.** Execution is therefore
//! *at-least-once* and recording *exactly-once*: the store refuses a second record of the same
//! stage of a run ([`StoreError::DuplicateStage`], backed by a `UNIQUE(run, stage)` constraint),
//! so a bug or a race that would run a committed stage twice surfaces as an error instead of two
//! diverging records. Stages with side effects outside the pipeline should be idempotent, or
//! check for their own effect, because a crash between the effect and the commit repeats them.
//!
//! [`record_stages`](RunStore::record_stages) commits a whole batch in one transaction, all or
//! nothing. That is the *group commit* primitive: the executor collects finished stages and
//! commits every N stages or every T milliseconds, whichever comes first. A crash loses at most
//! the uncommitted batch (those stages run again); it never leaves half a batch.
//!
//! Deliberately overwriting a record, for a failed stage that a resume runs again, goes through
//! [`record_stages_replace`](RunStore::record_stages_replace) (see there).
//!
//! ## Durability choices ([`SqliteStore`])
//!
//! - **WAL journal, `synchronous = NORMAL`** (the default, [`Synchronous::Normal`]): a commit is
//!   an append to the write-ahead log, without an fsync per transaction. A committed transaction
//!   survives a crash of the process (including `SIGKILL` and panics): the log is in the OS's
//!   page cache and is replayed on the next open. On **power loss or an OS crash**, the last
//!   transactions before the loss may roll back (never corrupt: the database stays consistent at
//!   an earlier commit); their stages run again on resume, which the at-least-once contract
//!   already allows.
//! - **`synchronous = FULL`** ([`Synchronous::Full`], via [`SqliteOptions::synchronous`]): every
//!   commit is fsynced before it returns, so committed stages survive power loss too, at the cost
//!   of one fsync per batch (group commit keeps that cost per batch, not per stage).
//! - Readers never block the writer and see only committed batches (WAL snapshots), so a status
//!   command can read a store while a run writes to it, from another process.
//! - A busy timeout (5 s by default) lets several processes share one file.
//! - The schema is versioned (`PRAGMA user_version`) and migrated in a transaction on open; a file
//!   from a newer version, a file that is not a database, a foreign database, or a damaged one is
//!   refused with a clear error ([`StoreError::SchemaTooNew`], [`StoreError::NotADatabase`],
//!   [`StoreError::ForeignDatabase`], [`StoreError::Corrupt`]) and **never rewritten**.
//!
//! ## Threads
//!
//! Every method is synchronous (SQLite is), and every store is `Send + Sync`: share it as an
//! `Arc<dyn RunStore>` and call it from a dedicated blocking thread (`std::thread` or
//! `tokio::task::spawn_blocking`), never directly on an async worker, since a commit may wait on
//! the disk or on another process's lock.
#![warn(missing_docs)]

mod codec;
pub mod error;
pub mod memory;
pub mod record;
pub mod sqlite;

use std::sync::Arc;

use uuid::Uuid;

pub use error::StoreError;
pub use memory::MemoryStore;
pub use record::{
    from_unix_millis, to_unix_millis, ParseRunStateError, RunRecord, RunState, StageRecord,
};
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous, SCHEMA_VERSION};

/// Storage for runs and their committed stage records.
///
/// Implementations are `Send + Sync` and synchronous: the executor shares one as an
/// `Arc<dyn RunStore>` and calls it from a dedicated blocking thread (see the
/// [crate documentation](crate#threads)). Every operation on a run that is not in the store fails
/// with [`StoreError::RunNotFound`]; batches are all-or-nothing.
///
/// Implemented by [`SqliteStore`] and [`MemoryStore`], and forwarded through `&T`, `Box<T>` and
/// `Arc<T>`.
///
/// ```
/// use std::sync::Arc;
/// use stageflow_store::{MemoryStore, RunRecord, RunStore};
///
/// let store: Arc<dyn RunStore> = Arc::new(MemoryStore::new());
/// let writer = {
///     let store = Arc::clone(&store);
///     std::thread::spawn(move || {
///         let run = RunRecord::new(uuid::Uuid::now_v7(), "p", "fp", serde_json::Value::Null);
///         store.create_run(&run).map(|()| run.run_id)
///     })
/// };
/// let run_id = writer.join().unwrap()?;
/// assert_eq!(store.list_runs(10)?[0].run_id, run_id);
/// # Ok::<(), stageflow_store::StoreError>(())
/// ```
pub trait RunStore: Send + Sync {
    /// Stores a new run. Fails with [`StoreError::RunExists`] if its id is already stored.
    ///
    /// The record is stored as given (times truncated to milliseconds), normally as built by
    /// [`RunRecord::new`]: state [`Running`](RunState::Running).
    fn create_run(&self, run: &RunRecord) -> Result<(), StoreError>;

    /// The run `run_id`, or [`StoreError::RunNotFound`].
    fn get_run(&self, run_id: Uuid) -> Result<RunRecord, StoreError>;

    /// Up to `limit` runs, newest first (by `created_at`, then by run id, descending).
    fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError>;

    /// Sets the run's state and error (`None` clears it), and its `updated_at` to now. Any
    /// transition is allowed: resuming a failed run sets it back to
    /// [`Running`](RunState::Running).
    fn update_run_status(
        &self,
        run_id: Uuid,
        status: RunState,
        error: Option<&str>,
    ) -> Result<(), StoreError>;

    /// Commits `stages` for run `run_id` in **one transaction**: either every record is stored or
    /// none is. This is the group-commit primitive (batch N stages or T milliseconds per call).
    /// Also sets the run's `updated_at` to now.
    ///
    /// Fails, recording nothing, with:
    /// - [`StoreError::RunNotFound`] if the run is not stored;
    /// - [`StoreError::RunMismatch`] if a record's `run_id` is not `run_id`;
    /// - [`StoreError::DuplicateStage`] if a stage is already recorded for this run or appears
    ///   twice in the batch (this is what makes recording exactly-once).
    ///
    /// With several offending records, the error names the first in batch order.
    fn record_stages(&self, run_id: Uuid, stages: &[StageRecord]) -> Result<(), StoreError>;

    /// Like [`record_stages`](Self::record_stages), but a stage that is already recorded has its
    /// record **replaced** (it keeps its place in [`load_stages`](Self::load_stages) order); a
    /// stage given twice in the batch ends with the later record.
    ///
    /// This is the one deliberate way to record a stage again: when a resume runs a stage whose
    /// committed record is a failure (the executor re-runs failed stages rather than skipping
    /// them), the new outcome replaces the failure, with `attempts` set by the caller (typically
    /// the old record's `attempts + 1`). The executor must not use it for stages it did not
    /// decide to re-run, or exactly-once recording is lost.
    fn record_stages_replace(&self, run_id: Uuid, stages: &[StageRecord])
        -> Result<(), StoreError>;

    /// Every committed stage record of the run, in the order the stages were first recorded.
    fn load_stages(&self, run_id: Uuid) -> Result<Vec<StageRecord>, StoreError>;

    /// How many stages of the run are recorded.
    fn count_stages(&self, run_id: Uuid) -> Result<u64, StoreError>;

    /// Deletes the run and all its stage records.
    fn delete_run(&self, run_id: Uuid) -> Result<(), StoreError>;
}

macro_rules! forward_run_store {
    ($($ty:ty),*) => {$(
        impl<T: RunStore + ?Sized> RunStore for $ty {
            fn create_run(&self, run: &RunRecord) -> Result<(), StoreError> {
                (**self).create_run(run)
            }
            fn get_run(&self, run_id: Uuid) -> Result<RunRecord, StoreError> {
                (**self).get_run(run_id)
            }
            fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
                (**self).list_runs(limit)
            }
            fn update_run_status(
                &self,
                run_id: Uuid,
                status: RunState,
                error: Option<&str>,
            ) -> Result<(), StoreError> {
                (**self).update_run_status(run_id, status, error)
            }
            fn record_stages(&self, run_id: Uuid, stages: &[StageRecord]) -> Result<(), StoreError> {
                (**self).record_stages(run_id, stages)
            }
            fn record_stages_replace(
                &self,
                run_id: Uuid,
                stages: &[StageRecord],
            ) -> Result<(), StoreError> {
                (**self).record_stages_replace(run_id, stages)
            }
            fn load_stages(&self, run_id: Uuid) -> Result<Vec<StageRecord>, StoreError> {
                (**self).load_stages(run_id)
            }
            fn count_stages(&self, run_id: Uuid) -> Result<u64, StoreError> {
                (**self).count_stages(run_id)
            }
            fn delete_run(&self, run_id: Uuid) -> Result<(), StoreError> {
                (**self).delete_run(run_id)
            }
        }
    )*};
}

forward_run_store!(&T, Box<T>, Arc<T>);
