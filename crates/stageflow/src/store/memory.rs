//! [`MemoryStore`]: a [`RunStore`] in a hash map, for tests and for runs that need no durability.

use std::collections::{HashMap, HashSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use uuid::Uuid;

use super::error::StoreError;
use super::record::{now_millis, RunRecord, RunState, StageRecord};
use super::{OnRecorded, RunStore};

/// A [`RunStore`] held in memory, with exactly the semantics of
/// `stageflow_store::SqliteStore`: the same errors
/// ([`RunNotFound`](StoreError::RunNotFound), [`DuplicateStage`](StoreError::DuplicateStage), ...),
/// all-or-nothing batches, millisecond times, and stages loaded in the order they were first
/// recorded. Nothing survives the process.
///
/// ```
/// use stageflow::StageStatus;
/// use stageflow::store::{MemoryStore, RunRecord, RunStore, StageRecord, StoreError};
///
/// let store = MemoryStore::new();
/// let run = RunRecord::new(uuid::Uuid::now_v7(), "etl", "fp1", serde_json::Value::Null);
/// store.create_run(&run)?;
/// store.record_stages(run.run_id, &[StageRecord::new(run.run_id, "a", StageStatus::Ok)])?;
/// let again = store.record_stages(run.run_id, &[StageRecord::new(run.run_id, "a", StageStatus::Ok)]);
/// assert!(matches!(again, Err(StoreError::DuplicateStage { .. })));
/// assert_eq!(store.count_stages(run.run_id)?, 1);
/// # Ok::<(), StoreError>(())
/// ```
#[derive(Debug, Default)]
pub struct MemoryStore {
    runs: RwLock<HashMap<Uuid, MemoryRun>>,
}

#[derive(Debug)]
struct MemoryRun {
    record: RunRecord,
    /// In the order first recorded.
    stages: Vec<StageRecord>,
    /// Stage name → position in `stages`.
    positions: HashMap<String, usize>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<Uuid, MemoryRun>> {
        // A panic while holding the lock cannot leave a half-applied batch (batches are validated
        // before anything is changed), so a poisoned lock still guards consistent data.
        self.runs
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Uuid, MemoryRun>> {
        self.runs
            .write()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl RunStore for MemoryStore {
    fn create_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let mut runs = self.write();
        if runs.contains_key(&run.run_id) {
            return Err(StoreError::RunExists(run.run_id));
        }
        runs.insert(
            run.run_id,
            MemoryRun {
                record: run.clone().normalized(),
                stages: Vec::new(),
                positions: HashMap::new(),
            },
        );
        Ok(())
    }

    fn get_run(&self, run_id: Uuid) -> Result<RunRecord, StoreError> {
        self.read()
            .get(&run_id)
            .map(|run| run.record.clone())
            .ok_or(StoreError::RunNotFound(run_id))
    }

    fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let runs = self.read();
        let mut all: Vec<&RunRecord> = runs.values().map(|run| &run.record).collect();
        // Newest first; ties by run id, descending (the byte order of a UUID is the order of its
        // lowercase hyphenated text, which is what SQLite compares).
        all.sort_unstable_by_key(|run| std::cmp::Reverse((run.created_at, run.run_id)));
        Ok(all.into_iter().take(limit).cloned().collect())
    }

    fn update_run_status(
        &self,
        run_id: Uuid,
        status: RunState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut runs = self.write();
        let run = runs
            .get_mut(&run_id)
            .ok_or(StoreError::RunNotFound(run_id))?;
        run.record.status = status;
        run.record.error = error.map(str::to_owned);
        run.record.updated_at = now_millis();
        Ok(())
    }

    fn commit_stages(
        &self,
        run_id: Uuid,
        stages: &[StageRecord],
        existing: OnRecorded,
    ) -> Result<(), StoreError> {
        let replace = existing == OnRecorded::Replace;
        let mut runs = self.write();
        let run = runs
            .get_mut(&run_id)
            .ok_or(StoreError::RunNotFound(run_id))?;
        // Validate the whole batch first: a batch is recorded entirely or not at all.
        let mut in_batch = HashSet::with_capacity(stages.len());
        for record in stages {
            if record.run_id != run_id {
                return Err(StoreError::RunMismatch {
                    run_id,
                    stage: record.stage.clone(),
                    record_run_id: record.run_id,
                });
            }
            if !replace
                && (run.positions.contains_key(&record.stage)
                    || !in_batch.insert(record.stage.as_str()))
            {
                return Err(StoreError::DuplicateStage {
                    run_id,
                    stage: record.stage.clone(),
                });
            }
        }
        run.stages.reserve(stages.len());
        for record in stages {
            let record = record.clone().normalized();
            match run.positions.get(&record.stage) {
                Some(&at) => run.stages[at] = record,
                None => {
                    run.positions.insert(record.stage.clone(), run.stages.len());
                    run.stages.push(record);
                }
            }
        }
        run.record.updated_at = now_millis();
        Ok(())
    }

    fn load_stages(&self, run_id: Uuid) -> Result<Vec<StageRecord>, StoreError> {
        self.read()
            .get(&run_id)
            .map(|run| run.stages.clone())
            .ok_or(StoreError::RunNotFound(run_id))
    }

    fn count_stages(&self, run_id: Uuid) -> Result<u64, StoreError> {
        self.read()
            .get(&run_id)
            .map(|run| run.stages.len() as u64)
            .ok_or(StoreError::RunNotFound(run_id))
    }

    fn delete_run(&self, run_id: Uuid) -> Result<(), StoreError> {
        self.write()
            .remove(&run_id)
            .map(|_| ())
            .ok_or(StoreError::RunNotFound(run_id))
    }
}
