//! Durable run records: the [`RunStore`] trait, the [`RunRecord`] / [`StageRecord`] it keeps,
//! [`StoreError`], and [`MemoryStore`].
//!
//! A [`RunStore`] keeps one [`RunRecord`] per run (pipeline, pipeline fingerprint, input, state)
//! and one [`StageRecord`] per finished stage (status, output, error, attempts, times). The
//! [`durable`](crate::durable) module commits each finished stage's record while a run executes
//! and, after a crash, [loads](RunStore::load_stages) the committed records and runs only what is
//! left.
//!
//! The trait and its records live here, in the core crate, so that the engine can checkpoint
//! without depending on a database. Implementations:
//! - [`MemoryStore`] (here): a hash map, for tests and runs that need no durability;
//! - `SqliteStore` (crate `stageflow-store`): a SQLite file in WAL mode, the embedded default
//!   for real use.
//!
//! Both have identical semantics (one conformance suite runs against both).
//!
//! ## The guarantee to the executor
//!
//! **A stage whose record was committed is never run again on resume; a stage that was in flight
//! at the crash (finished or not, but not yet committed) runs again.** Execution is therefore
//! *at-least-once* and recording *exactly-once*: a store refuses a second record of the same
//! stage of a run ([`StoreError::DuplicateStage`]), so a bug or a race that would run a committed
//! stage twice surfaces as an error instead of two diverging records. Stages with side effects
//! outside the pipeline should be idempotent, or check for their own effect, because a crash
//! between the effect and the commit repeats them.
//!
//! [`record_stages`](RunStore::record_stages) commits a whole batch in one transaction, all or
//! nothing. That is the *group commit* primitive: the executor collects finished stages and
//! commits every N stages or every T milliseconds, whichever comes first (see
//! [`Durability`](crate::durable::Durability)). A crash loses at most the uncommitted batch (those
//! stages run again); it never leaves half a batch.
//!
//! ## Threads
//!
//! Every method is synchronous (databases are), and every store is `Send + Sync`: share it as an
//! `Arc<dyn RunStore>` and call it from a dedicated blocking thread (`std::thread` or
//! `tokio::task::spawn_blocking`), never directly on an async worker, since a commit may wait on
//! the disk or on another process's lock. The durable executor does exactly that.

mod error;
mod memory;
mod record;

use std::sync::Arc;

use uuid::Uuid;

use crate::output::StageStatus;
pub use error::StoreError;
pub use memory::MemoryStore;
pub use record::{
    from_unix_millis, to_unix_millis, ParseRunStateError, RunRecord, RunState, StageRecord,
};

/// What [`RunStore::commit_stages`] does with a stage that already has a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRecorded {
    /// Fail with [`StoreError::DuplicateStage`], recording nothing
    /// ([`record_stages`](RunStore::record_stages)).
    Refuse,
    /// Replace the record, keeping its place
    /// ([`record_stages_replace`](RunStore::record_stages_replace)).
    Replace,
}

/// Storage for runs and their committed stage records.
///
/// Implementations are `Send + Sync` and synchronous: the executor shares one as an
/// `Arc<dyn RunStore>` and calls it from a dedicated blocking thread (see the
/// [module documentation](self#threads)). Every operation on a run that is not in the store fails
/// with [`StoreError::RunNotFound`]; batches are all-or-nothing.
///
/// Implemented by [`MemoryStore`] here and by `SqliteStore` in the `stageflow-store` crate, and forwarded through `&T`, `Box<T>` and
/// `Arc<T>`.
///
/// ```
/// use std::sync::Arc;
/// use stageflow::store::{MemoryStore, RunRecord, RunStore};
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
/// # Ok::<(), stageflow::store::StoreError>(())
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
    ///
    /// Provided: [`commit_stages`](Self::commit_stages) with [`OnRecorded::Refuse`].
    fn record_stages(&self, run_id: Uuid, stages: &[StageRecord]) -> Result<(), StoreError> {
        self.commit_stages(run_id, stages, OnRecorded::Refuse)
    }

    /// Like [`record_stages`](Self::record_stages), but a stage that is already recorded has its
    /// record **replaced** (it keeps its place in [`load_stages`](Self::load_stages) order); a
    /// stage given twice in the batch ends with the later record.
    ///
    /// This is the one deliberate way to record a stage again: when a resume runs a stage whose
    /// committed record is a failure (the executor re-runs failed stages rather than skipping
    /// them), the new outcome replaces the failure, with `attempts` set by the caller (typically
    /// the old record's `attempts + 1`). The executor must not use it for stages it did not
    /// decide to re-run, or exactly-once recording is lost.
    ///
    /// Provided: [`commit_stages`](Self::commit_stages) with [`OnRecorded::Replace`].
    fn record_stages_replace(
        &self,
        run_id: Uuid,
        stages: &[StageRecord],
    ) -> Result<(), StoreError> {
        self.commit_stages(run_id, stages, OnRecorded::Replace)
    }

    /// The one primitive behind [`record_stages`](Self::record_stages) and
    /// [`record_stages_replace`](Self::record_stages_replace), which a store implements: commits
    /// `stages` in one transaction, doing `existing` with a stage already recorded. Call those
    /// two rather than this.
    fn commit_stages(
        &self,
        run_id: Uuid,
        stages: &[StageRecord],
        existing: OnRecorded,
    ) -> Result<(), StoreError>;

    /// Every committed stage record of the run, in the order the stages were first recorded.
    fn load_stages(&self, run_id: Uuid) -> Result<Vec<StageRecord>, StoreError>;

    /// Calls `visit` with the name and status of every committed stage record of the run, in
    /// [`load_stages`](Self::load_stages) order, without decoding outputs: what a resume needs to
    /// know which stages are done. The default implementation calls `load_stages`; a store that
    /// can skip the outputs should override it.
    fn for_each_stage_state(
        &self,
        run_id: Uuid,
        visit: &mut dyn FnMut(&str, StageStatus),
    ) -> Result<(), StoreError> {
        for record in self.load_stages(run_id)? {
            visit(&record.stage, record.status);
        }
        Ok(())
    }

    /// The committed records of the stages named in `stages` (in any order; names without a
    /// record are left out): the outputs a resume needs. The default implementation filters
    /// [`load_stages`](Self::load_stages); a store with an index on stage names should override it.
    fn load_stage_records(
        &self,
        run_id: Uuid,
        stages: &[&str],
    ) -> Result<Vec<StageRecord>, StoreError> {
        let wanted: std::collections::HashSet<&str> = stages.iter().copied().collect();
        Ok(self
            .load_stages(run_id)?
            .into_iter()
            .filter(|record| wanted.contains(record.stage.as_str()))
            .collect())
    }

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
            fn commit_stages(
                &self,
                run_id: Uuid,
                stages: &[StageRecord],
                existing: OnRecorded,
            ) -> Result<(), StoreError> {
                (**self).commit_stages(run_id, stages, existing)
            }
            fn load_stages(&self, run_id: Uuid) -> Result<Vec<StageRecord>, StoreError> {
                (**self).load_stages(run_id)
            }
            fn for_each_stage_state(
                &self,
                run_id: Uuid,
                visit: &mut dyn FnMut(&str, StageStatus),
            ) -> Result<(), StoreError> {
                (**self).for_each_stage_state(run_id, visit)
            }
            fn load_stage_records(
                &self,
                run_id: Uuid,
                stages: &[&str],
            ) -> Result<Vec<StageRecord>, StoreError> {
                (**self).load_stage_records(run_id, stages)
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
