//! # Stageflow run store
//!
//! The embedded, durable [`RunStore`] for [Stageflow](stageflow): [`SqliteStore`], one SQLite file
//! in WAL mode with versioned schema migrations.
//!
//! The store trait and its records ([`RunStore`], [`RunRecord`], [`StageRecord`], [`RunState`],
//! [`StoreError`]) and the in-memory [`MemoryStore`] are defined in the core crate
//! ([`stageflow::store`]) so that the engine can checkpoint runs without depending on SQLite;
//! they are re-exported here. Attach a store to a run with [`stageflow::durable`]:
//!
//! ```
//! use std::sync::Arc;
//! use stageflow::durable::{Checkpoint, Durability};
//! use stageflow::{Pipeline, RunOptions, StageContext, StageOutput};
//! use stageflow_store::SqliteStore;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = Arc::new(SqliteStore::open(dir.path().join("runs.db"))?);
//! let graph = Pipeline::builder("etl")
//!     .stage("extract", |_ctx: StageContext| async { StageOutput::ok().with("rows", 3) })
//!     .build()?;
//! let checkpoint = Checkpoint::new(store).durability(Durability::group(1000, 50));
//! let done = graph.run_durable((), RunOptions::new(), &checkpoint).await?;
//! assert_eq!(done.report().results().get_data::<u32>("extract", "rows")?, 3);
//! # Ok(()) }
//! ```
//!
//! The store's API, used directly:
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
//! See [`stageflow::store`] and [`stageflow::durable`]: a stage whose record was committed is
//! never run again on resume; a stage in flight at the crash runs again (at-least-once execution,
//! exactly-once recording, backed here by a `UNIQUE(run, stage)` constraint). A batch is one
//! transaction: a crash never leaves half a batch.
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
pub mod sqlite;

pub use sqlite::{SqliteOptions, SqliteStore, Synchronous, SCHEMA_VERSION};
pub use stageflow::store::{
    from_unix_millis, to_unix_millis, MemoryStore, ParseRunStateError, RunRecord, RunState,
    RunStore, StageRecord, StoreError,
};
