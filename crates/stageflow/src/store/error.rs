//! [`StoreError`]: everything a store operation can fail with.
//!
//! Errors name what they are about (the run, the stage, the database file) and keep their cause:
//! SQLite and I/O errors are kept as [`source`](std::error::Error::source)s, and the variants a
//! caller may act on ([`RunNotFound`](StoreError::RunNotFound),
//! [`DuplicateStage`](StoreError::DuplicateStage), [`Corrupt`](StoreError::Corrupt), ...) are
//! distinct so that no caller has to match on message text.

use std::io;
use std::path::PathBuf;

use uuid::Uuid;

use crate::error::BoxError;

/// An error from a [`RunStore`](crate::store::RunStore), or from opening a store file
/// (`stageflow_store::SqliteStore`).
///
/// ```
/// use stageflow::store::{MemoryStore, RunStore, StoreError};
/// let store = MemoryStore::new();
/// let missing = uuid::Uuid::nil();
/// match store.get_run(missing) {
///     Err(StoreError::RunNotFound(id)) => assert_eq!(id, missing),
///     other => panic!("unexpected: {other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No run with this id is in the store.
    #[error("run {0} not found in the store")]
    RunNotFound(Uuid),

    /// [`create_run`](crate::store::RunStore::create_run) with an id that is already in the store.
    #[error("run {0} already exists in the store")]
    RunExists(Uuid),

    /// The stage is already recorded for this run (or appears twice in one batch). Each stage is
    /// recorded exactly once; the batch that contained it was not recorded at all.
    #[error(
        "stage `{stage}` of run {run_id} is already recorded; a stage is recorded once \
         (record_stages_replace overwrites a record on purpose), and nothing of this batch was recorded"
    )]
    DuplicateStage {
        /// The run.
        run_id: Uuid,
        /// The stage recorded twice.
        stage: String,
    },

    /// A stage record whose `run_id` is not the run it is being recorded for.
    #[error(
        "stage record `{stage}` belongs to run {record_run_id} but was given for run {run_id}; \
         nothing of this batch was recorded"
    )]
    RunMismatch {
        /// The run the batch was recorded for.
        run_id: Uuid,
        /// The stage of the offending record.
        stage: String,
        /// The run id in the offending record.
        record_run_id: Uuid,
    },

    /// The pipeline changed since the run started: resuming would mix two pipelines' results.
    #[error(
        "run {run_id} was started with pipeline fingerprint `{stored}`, but the pipeline now has \
         fingerprint `{current}`: the pipeline changed, so the run cannot be resumed"
    )]
    FingerprintMismatch {
        /// The run.
        run_id: Uuid,
        /// The fingerprint recorded when the run started.
        stored: String,
        /// The fingerprint of the pipeline now.
        current: String,
    },

    /// The file is not a SQLite database (or its header is destroyed, or it is encrypted).
    /// The file was left untouched.
    #[error("{}: file is not a database ({detail}); the file was left untouched", path.display())]
    NotADatabase {
        /// The file.
        path: PathBuf,
        /// SQLite's message.
        detail: String,
    },

    /// The file is a SQLite database, but not a Stageflow run store (it has tables of its own and
    /// no Stageflow schema version). The file was left untouched.
    #[error("{}: not a Stageflow run store: {detail}; the file was left untouched", path.display())]
    ForeignDatabase {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        detail: String,
    },

    /// The database is damaged (truncated, overwritten, or holding values that do not decode).
    /// Nothing was rewritten; restore it from a backup or move it aside.
    #[error("{}: database is corrupt: {detail} (nothing was rewritten)", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is damaged, with SQLite's message or the decoding error.
        detail: String,
    },

    /// The database was written by a newer Stageflow, with a schema this build does not know.
    #[error(
        "{}: store schema version {found} is newer than the newest this build knows ({supported}); \
         open it with a newer Stageflow",
        path.display()
    )]
    SchemaTooNew {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: i64,
        /// The newest version this build knows.
        supported: u32,
    },

    /// A write to a database that is read-only: a read-only file or location, or a store opened
    /// with `SqliteOptions::read_only` (in `stageflow-store`).
    #[error("{}: read-only: {detail}", path.display())]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// What was attempted and SQLite's message.
        detail: String,
    },

    /// Another connection held the write lock for longer than the busy timeout.
    #[error("{}: database is busy (locked by another writer beyond the busy timeout) during {op}: {source}", path.display())]
    Busy {
        /// The file.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// The database's error (a `rusqlite::Error` from `SqliteStore`).
        #[source]
        source: BoxError,
    },

    /// A file-system operation failed (creating the parent directories, ...).
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The path concerned.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// Bringing the schema up to date failed; the migration's transaction was rolled back and the
    /// database is at its previous version.
    #[error("{}: migration to store schema version {version} failed: {source}", path.display())]
    Migration {
        /// The file.
        path: PathBuf,
        /// The version that could not be reached.
        version: u32,
        /// The database's error (a `rusqlite::Error` from `SqliteStore`).
        #[source]
        source: BoxError,
    },

    /// Any other SQLite error, with the operation it happened in.
    #[error("{}: {op}: {source}", path.display())]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// The database's error (a `rusqlite::Error` from `SqliteStore`).
        #[source]
        source: BoxError,
    },

    /// A value could not be turned into JSON for storage.
    #[error("cannot serialize {what} as JSON: {source}")]
    Serialize {
        /// What was being serialized.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}
