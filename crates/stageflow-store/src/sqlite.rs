//! [`SqliteStore`]: the durable [`RunStore`], in one SQLite file.
//!
//! # Layout
//!
//! Two tables (schema version 2, see [`SCHEMA_VERSION`]):
//! - `runs`: one row per run; `run_id` as hyphenated text, `input` as JSON text, times as unix
//!   milliseconds, and an integer key `id` that stage rows refer to;
//! - `stages`: one row per recorded stage, `WITHOUT ROWID` and keyed by `(run, seq)` where `seq`
//!   is the per-run commit order. A run's stages are therefore stored contiguously, in commit
//!   order, so loading them for a resume is one sequential range scan. `UNIQUE (run, stage)` makes
//!   a second record of a stage a constraint violation, reported as
//!   [`StoreError::DuplicateStage`]. `output` is the [`StageOutput`](stageflow::StageOutput) as JSON text (readable with
//!   SQLite's JSON functions). The covering index `stages_state (run, seq, stage, status)`
//!   (version 2) is what a resume scans to learn which stages are done: the same order without
//!   the outputs, so loading 900,000 stage states reads a few megabytes, not the whole table.
//!
//! # Migrations
//!
//! The schema version lives in `PRAGMA user_version`, and the file is tagged with
//! `PRAGMA application_id` = `0x5346_4C57` (`"SFLW"`). Opening a store applies the pending
//! migrations of an ordered list, all in one `IMMEDIATE` transaction together with the new
//! version number, so a failed migration leaves the file at its previous version. A file whose
//! version is newer than this build's is refused ([`StoreError::SchemaTooNew`]); a database of
//! another application is refused ([`StoreError::ForeignDatabase`]). Nothing is written before
//! the file has been read successfully, so a damaged or foreign file is never rewritten.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rusqlite::types::ValueRef;
use rusqlite::{
    ffi, params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row, TransactionBehavior,
};
use serde::de::IntoDeserializer;
use serde::Deserialize;
use stageflow::StageStatus;
use uuid::Uuid;

use crate::codec::decode_output;
use stageflow::store::{
    from_unix_millis, to_unix_millis, OnRecorded, RunRecord, RunState, RunStore, StageRecord,
    StoreError,
};

/// `PRAGMA application_id` of a Stageflow store: `"SFLW"`.
const APPLICATION_ID: i64 = 0x5346_4C57;

/// The schema migrations, in order: entry `i` takes the database from version `i` to `i + 1`.
/// Append only; never edit a released entry.
const MIGRATIONS: &[&str] = &[
    // 1: runs and stages.
    r#"
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        run_id      TEXT    NOT NULL UNIQUE,
        pipeline    TEXT    NOT NULL,
        fingerprint TEXT    NOT NULL,
        input       TEXT    NOT NULL,
        status      TEXT    NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        error       TEXT
    );
    CREATE INDEX runs_newest ON runs (created_at DESC, run_id DESC);
    CREATE TABLE stages (
        run         INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
        seq         INTEGER NOT NULL,
        stage       TEXT    NOT NULL,
        status      TEXT    NOT NULL,
        output      TEXT,
        error       TEXT,
        attempts    INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        duration_ms INTEGER NOT NULL,
        PRIMARY KEY (run, seq),
        UNIQUE (run, stage)
    ) WITHOUT ROWID;
    "#,
    // 2: a narrow copy of the stage rows without their outputs, in commit order, so that a resume
    // reads which stages are done without paging through every output (a third of the bytes).
    "CREATE INDEX stages_state ON stages (run, seq, stage, status);",
];

/// The newest store schema version this build knows (and creates).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// `SELECT` of the columns [`SqliteStore::decode_run`] reads, in its order.
macro_rules! select_run {
    () => {
        "SELECT run_id, pipeline, fingerprint, input, status, created_at, updated_at, error \
         FROM runs "
    };
}

/// `SELECT` of the columns [`SqliteStore::decode_stage`] reads, in its order.
macro_rules! select_stage {
    () => {
        "SELECT stage, status, output, error, attempts, started_at, finished_at, duration_ms \
         FROM stages "
    };
}

macro_rules! insert_stage {
    () => {
        "INSERT INTO stages \
         (run, seq, stage, status, output, error, attempts, started_at, finished_at, duration_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    };
}

const INSERT_STAGE: &str = insert_stage!();

const UPSERT_STAGE: &str = concat!(
    insert_stage!(),
    " ON CONFLICT (run, stage) DO UPDATE SET status = excluded.status, \
     output = excluded.output, error = excluded.error, attempts = excluded.attempts, \
     started_at = excluded.started_at, finished_at = excluded.finished_at, \
     duration_ms = excluded.duration_ms"
);

/// How hard SQLite works to make a commit durable (`PRAGMA synchronous`, in WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// No fsync per commit: a committed transaction survives a process crash (even `SIGKILL`), but
    /// the last transactions may roll back on power loss or an OS crash. The database is never
    /// corrupted either way. The default.
    #[default]
    Normal,
    /// An fsync per commit: committed transactions survive power loss too.
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// How to open a [`SqliteStore`].
///
/// ```
/// use std::time::Duration;
/// use stageflow_store::{SqliteOptions, Synchronous};
/// let options = SqliteOptions::new()
///     .synchronous(Synchronous::Full)
///     .busy_timeout(Duration::from_secs(30))
///     .check_on_open(true);
/// assert_eq!(options.synchronous_mode(), Synchronous::Full);
/// ```
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    synchronous: Synchronous,
    busy_timeout: Duration,
    check_on_open: bool,
    read_only: bool,
    cache_kib: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(5),
            check_on_open: false,
            read_only: false,
            cache_kib: 16 * 1024,
        }
    }
}

impl SqliteOptions {
    /// The defaults: [`Synchronous::Normal`], a 5 s busy timeout, no check on open, read-write,
    /// a 16 MiB page cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Durability of each commit (see [`Synchronous`]).
    pub fn synchronous(mut self, mode: Synchronous) -> Self {
        self.synchronous = mode;
        self
    }

    /// The durability mode set.
    pub fn synchronous_mode(&self) -> Synchronous {
        self.synchronous
    }

    /// How long an operation waits for another connection's lock before failing with
    /// [`StoreError::Busy`].
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Runs `PRAGMA quick_check` on open (reads the whole file: about a second per few hundred MB),
    /// failing with [`StoreError::Corrupt`] on damage. Without it, damage is reported by the
    /// first operation that reads a damaged page.
    pub fn check_on_open(mut self, check: bool) -> Self {
        self.check_on_open = check;
        self
    }

    /// Opens the file read-only: no directory or file is created, no migration runs (a store that
    /// needs one is refused), and every write fails with [`StoreError::ReadOnly`].
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Size of the connection's page cache, in KiB (at least 64).
    pub fn cache_kib(mut self, kib: u32) -> Self {
        self.cache_kib = kib.max(64);
        self
    }
}

/// The durable [`RunStore`]: one SQLite file in WAL mode (see the [crate documentation](crate) for
/// the durability guarantees and the [module documentation](self) for the layout).
///
/// One connection, behind a mutex: calls from several threads are serialized. Other processes
/// (or other `SqliteStore`s) may open the same file; readers never block the writer.
///
/// ```
/// use stageflow::StageStatus;
/// use stageflow_store::{RunRecord, RunStore, SqliteStore, StageRecord, StoreError};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = SqliteStore::open(dir.path().join("store.db"))?;
/// let run = RunRecord::new(uuid::Uuid::now_v7(), "p", "fp", serde_json::Value::Null);
/// store.create_run(&run)?;
/// let batch: Vec<_> = (0..100)
///     .map(|i| StageRecord::new(run.run_id, format!("s{i}"), StageStatus::Ok))
///     .collect();
/// store.record_stages(run.run_id, &batch)?;            // one transaction
/// assert_eq!(store.count_stages(run.run_id)?, 100);
/// assert!(matches!(store.get_run(uuid::Uuid::nil()), Err(StoreError::RunNotFound(_))));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    read_only: bool,
}

impl SqliteStore {
    /// Opens (or creates) the store at `path` with the default [`SqliteOptions`], creating the
    /// parent directories and applying pending migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (or creates) the store at `path` with `options`.
    ///
    /// Fails, without writing anything to the file, with [`StoreError::NotADatabase`],
    /// [`StoreError::ForeignDatabase`], [`StoreError::Corrupt`], [`StoreError::SchemaTooNew`],
    /// [`StoreError::ReadOnly`] (a read-only file opened read-write), or [`StoreError::Io`] (the
    /// parent directories cannot be created).
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        Self::open_with_migrations(path.as_ref(), &options, MIGRATIONS)
    }

    fn open_with_migrations(
        path: &Path,
        options: &SqliteOptions,
        migrations: &[&str],
    ) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let err = |op: &'static str| {
            let path = path.clone();
            move |e: rusqlite::Error| classify(&path, op, e)
        };
        if !options.read_only {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                    path: parent.to_path_buf(),
                    op: "creating the store's directory",
                    source,
                })?;
            }
        }
        let flags = if options.read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let mut conn = Connection::open_with_flags(&path, flags).map_err(err(
            "opening the database file (it may be missing, a directory, or in a directory without write permission)",
        ))?;
        conn.busy_timeout(options.busy_timeout)
            .map_err(err("setting the busy timeout"))?;

        // Read before writing anything: a file that is not a (readable) database fails here.
        // One read transaction, so that a store being created by another process right now is
        // seen either before or after its first migration, never halfway.
        let header = {
            let tx = conn
                .transaction()
                .map_err(err("beginning a read transaction"))?;
            let header = read_header(&tx).map_err(err("reading the database header"))?;
            tx.commit().map_err(err("ending a read transaction"))?;
            header
        };
        let version = header.version;
        check_identity(&path, &header, migrations.len())?;
        if options.check_on_open {
            quick_check(&conn, &path)?;
        }

        if options.read_only {
            if version < migrations.len() as i64 {
                return Err(StoreError::ReadOnly {
                    path,
                    detail: format!(
                        "the store is at schema version {version} and needs migrating to {}; \
                         open it read-write once",
                        migrations.len()
                    ),
                });
            }
        } else {
            if conn
                .is_readonly(rusqlite::MAIN_DB)
                .map_err(err("checking write access"))?
            {
                return Err(StoreError::ReadOnly {
                    path,
                    detail: "the database file (or its directory) is not writable; \
                             open it with SqliteOptions::read_only(true) to read it"
                        .to_owned(),
                });
            }
            // Where WAL is impossible (some network file systems), SQLite keeps a rollback
            // journal: commits stay atomic and crash-safe, but readers then wait for writers.
            // Switching to WAL takes an exclusive lock, and SQLite reports a concurrent
            // opener's lock as SQLITE_BUSY at once instead of waiting for the busy timeout; so
            // wait here, within the same timeout, for the other opener to finish.
            let deadline = std::time::Instant::now() + options.busy_timeout;
            loop {
                match conn.query_row("PRAGMA journal_mode = WAL", [], |row| {
                    row.get::<_, String>(0)
                }) {
                    Ok(_mode) => break,
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::DatabaseBusy
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => return Err(err("switching to WAL journal mode")(e)),
                }
            }
            conn.pragma_update(None, "synchronous", options.synchronous.pragma())
                .map_err(err("setting the synchronous mode"))?;
            if version < migrations.len() as i64 {
                migrate(&mut conn, &path, migrations)?;
            }
        }
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err("enabling foreign keys"))?;
        conn.pragma_update(None, "cache_size", -i64::from(options.cache_kib))
            .map_err(err("setting the page cache size"))?;
        conn.set_prepared_statement_cache_capacity(32);

        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path,
            read_only: options.read_only,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `true` when opened with [`SqliteOptions::read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The schema version of the file (after open: [`SCHEMA_VERSION`]).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let conn = self.lock();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| self.err("reading the schema version", e))?;
        Ok(u32::try_from(version).unwrap_or(0))
    }

    /// Runs `PRAGMA quick_check`: `Ok` if the file's structure is sound, otherwise
    /// [`StoreError::Corrupt`] with SQLite's findings. Reads the whole file.
    pub fn quick_check(&self) -> Result<(), StoreError> {
        quick_check(&self.lock(), &self.path)
    }

    /// Closes the connection, reporting an error that dropping would ignore. Closing the last
    /// connection to the file checkpoints the write-ahead log into the database.
    pub fn close(self) -> Result<(), StoreError> {
        let conn = self
            .conn
            .into_inner()
            .unwrap_or_else(|poison| poison.into_inner());
        conn.close()
            .map_err(|(_conn, e)| classify(&self.path, "closing the database", e))
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while the lock was held cannot leave a transaction open: rusqlite's
        // `Transaction` rolls back on drop, so the connection is still consistent.
        self.conn
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn err(&self, op: &'static str, e: rusqlite::Error) -> StoreError {
        classify(&self.path, op, e)
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    /// Calls `f` with the integer key of run `run_id` ([`StoreError::RunNotFound`] if it is not
    /// stored), inside one transaction so that the lookup and `f` see the same snapshot.
    ///
    /// Without `commit`, a read transaction, rolled back at the end. With `commit` (the operation
    /// named if the commit fails), an `IMMEDIATE` write transaction, committed when `f` succeeds.
    fn in_run<T>(
        &self,
        run_id: Uuid,
        commit: Option<&'static str>,
        f: impl FnOnce(&Connection, i64) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let tx = match commit {
            None => conn
                .transaction()
                .map_err(|e| self.err("beginning a read transaction", e))?,
            Some(_) => conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| self.err("beginning a write transaction", e))?,
        };
        let run = run_key(&tx, run_id)
            .map_err(|e| self.err("looking up the run", e))?
            .ok_or(StoreError::RunNotFound(run_id))?;
        let value = f(&tx, run)?;
        if let Some(op) = commit {
            tx.commit().map_err(|e| self.err(op, e))?;
        }
        Ok(value)
    }

    /// Runs query `sql` (prepared once per connection) with `params` and calls `each` on every
    /// row. `prepare_op` and `op` name the preparation and the query in errors.
    fn each_row<P: rusqlite::Params>(
        &self,
        conn: &Connection,
        sql: &str,
        prepare_op: &'static str,
        params: P,
        op: &'static str,
        mut each: impl FnMut(&Row<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = conn
            .prepare_cached(sql)
            .map_err(|e| self.err(prepare_op, e))?;
        let mut rows = stmt.query(params).map_err(|e| self.err(op, e))?;
        while let Some(row) = rows.next().map_err(|e| self.err(op, e))? {
            each(row)?;
        }
        Ok(())
    }

    fn decode_run(&self, row: &Row<'_>) -> Result<RunRecord, StoreError> {
        let get_err = |e| self.err("reading a run", e);
        let id_text = text(row, 0).map_err(get_err)?;
        let run_id = Uuid::parse_str(id_text)
            .map_err(|e| self.corrupt(format!("run id `{id_text}` is not a UUID: {e}")))?;
        let bad =
            |what: &str, detail: String| self.corrupt(format!("run {run_id}: {what}: {detail}"));
        let input = serde_json::from_str(text(row, 3).map_err(get_err)?)
            .map_err(|e| bad("input is not valid JSON", e.to_string()))?;
        let status_text = text(row, 4).map_err(get_err)?;
        let status = status_text
            .parse::<RunState>()
            .map_err(|e| bad("bad status", e.to_string()))?;
        Ok(RunRecord {
            run_id,
            pipeline: row.get(1).map_err(get_err)?,
            fingerprint: row.get(2).map_err(get_err)?,
            input,
            status,
            created_at: from_unix_millis(row.get(5).map_err(get_err)?)
                .ok_or_else(|| bad("created_at", "out of range".into()))?,
            updated_at: from_unix_millis(row.get(6).map_err(get_err)?)
                .ok_or_else(|| bad("updated_at", "out of range".into()))?,
            error: row.get(7).map_err(get_err)?,
        })
    }

    /// The stored status `text` of `stage`, or [`StoreError::Corrupt`].
    fn stage_status(
        &self,
        run_id: Uuid,
        stage: &str,
        text: &str,
    ) -> Result<StageStatus, StoreError> {
        StageStatus::deserialize(text.into_deserializer()).map_err(|_: serde::de::value::Error| {
            self.corrupt(format!(
                "stage `{stage}` of run {run_id}: bad status: `{text}`"
            ))
        })
    }

    fn decode_stage(&self, run_id: Uuid, row: &Row<'_>) -> Result<StageRecord, StoreError> {
        let get_err = |e| self.err("reading a stage record", e);
        let stage: String = row.get(0).map_err(get_err)?;
        let bad = |what: &str, detail: String| {
            self.corrupt(format!("stage `{stage}` of run {run_id}: {what}: {detail}"))
        };
        let status = self.stage_status(run_id, &stage, text(row, 1).map_err(get_err)?)?;
        let output = match row.get_ref(2).map_err(get_err)? {
            ValueRef::Null => None,
            ValueRef::Text(json) | ValueRef::Blob(json) => Some(
                decode_output(json)
                    .map_err(|e| bad("output is not a valid stage output", e.to_string()))?,
            ),
            other => {
                return Err(bad(
                    "output",
                    format!("expected JSON text, found {:?}", other.data_type()),
                ))
            }
        };
        let attempts: i64 = row.get(4).map_err(get_err)?;
        let duration_ms: i64 = row.get(7).map_err(get_err)?;
        Ok(StageRecord {
            run_id,
            status,
            output,
            error: row.get(3).map_err(get_err)?,
            attempts: u32::try_from(attempts)
                .map_err(|_| bad("attempts out of range", attempts.to_string()))?,
            started_at: from_unix_millis(row.get(5).map_err(get_err)?)
                .ok_or_else(|| bad("started_at", "out of range".into()))?,
            finished_at: from_unix_millis(row.get(6).map_err(get_err)?)
                .ok_or_else(|| bad("finished_at", "out of range".into()))?,
            duration_ms: u64::try_from(duration_ms)
                .map_err(|_| bad("duration_ms out of range", duration_ms.to_string()))?,
            stage,
        })
    }
}

impl RunStore for SqliteStore {
    fn create_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        let input = serde_json::to_string(&run.input).map_err(|source| StoreError::Serialize {
            what: format!("the input of run {}", run.run_id),
            source,
        })?;
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO runs (run_id, pipeline, fingerprint, input, status, created_at, \
                 updated_at, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(|e| self.err("preparing the run insert", e))?;
        match stmt.execute(params![
            run.run_id.hyphenated().to_string(),
            run.pipeline,
            run.fingerprint,
            input,
            run.status.as_str(),
            to_unix_millis(run.created_at),
            to_unix_millis(run.updated_at),
            run.error,
        ]) {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_UNIQUE) => {
                Err(StoreError::RunExists(run.run_id))
            }
            Err(e) => Err(self.err("inserting a run", e)),
        }
    }

    fn get_run(&self, run_id: Uuid) -> Result<RunRecord, StoreError> {
        // At most one row: `run_id` is UNIQUE.
        let mut found = None;
        self.each_row(
            &self.lock(),
            concat!(select_run!(), "WHERE run_id = ?1"),
            "preparing the run query",
            [run_id.hyphenated().to_string()],
            "reading a run",
            |row| {
                found = Some(self.decode_run(row)?);
                Ok(())
            },
        )?;
        found.ok_or(StoreError::RunNotFound(run_id))
    }

    fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        let mut runs = Vec::new();
        self.each_row(
            &self.lock(),
            concat!(
                select_run!(),
                "ORDER BY created_at DESC, run_id DESC LIMIT ?1"
            ),
            "preparing the run listing",
            [i64::try_from(limit).unwrap_or(i64::MAX)],
            "listing runs",
            |row| {
                runs.push(self.decode_run(row)?);
                Ok(())
            },
        )?;
        Ok(runs)
    }

    fn update_run_status(
        &self,
        run_id: Uuid,
        status: RunState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let conn = self.lock();
        let changed = conn
            .prepare_cached(
                "UPDATE runs SET status = ?1, error = ?2, updated_at = ?3 WHERE run_id = ?4",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    status.as_str(),
                    error,
                    to_unix_millis(SystemTime::now()),
                    run_id.hyphenated().to_string(),
                ])
            })
            .map_err(|e| self.err("updating a run's status", e))?;
        if changed == 0 {
            return Err(StoreError::RunNotFound(run_id));
        }
        Ok(())
    }

    fn commit_stages(
        &self,
        run_id: Uuid,
        stages: &[StageRecord],
        existing: OnRecorded,
    ) -> Result<(), StoreError> {
        self.in_run(run_id, Some("committing stage records"), |tx, run| {
            let first_seq: i64 = tx
                .prepare_cached("SELECT coalesce(max(seq) + 1, 0) FROM stages WHERE run = ?1")
                .and_then(|mut stmt| stmt.query_row([run], |row| row.get(0)))
                .map_err(|e| self.err("reading the next stage sequence number", e))?;
            let mut insert = tx
                .prepare_cached(match existing {
                    OnRecorded::Refuse => INSERT_STAGE,
                    OnRecorded::Replace => UPSERT_STAGE,
                })
                .map_err(|e| self.err("preparing the stage insert", e))?;
            for (seq, record) in (first_seq..).zip(stages) {
                if record.run_id != run_id {
                    return Err(StoreError::RunMismatch {
                        run_id,
                        stage: record.stage.clone(),
                        record_run_id: record.run_id,
                    });
                }
                let output = match &record.output {
                    Some(output) => Some(serde_json::to_string(output).map_err(|source| {
                        StoreError::Serialize {
                            what: format!("the output of stage `{}` of run {run_id}", record.stage),
                            source,
                        }
                    })?),
                    None => None,
                };
                let inserted = insert.execute(params![
                    run,
                    seq,
                    record.stage,
                    record.status.as_str(),
                    output,
                    record.error,
                    i64::from(record.attempts),
                    to_unix_millis(record.started_at),
                    to_unix_millis(record.finished_at),
                    i64::try_from(record.duration_ms).unwrap_or(i64::MAX),
                ]);
                match inserted {
                    Ok(_) => {}
                    Err(e) if is_constraint(&e, ffi::SQLITE_CONSTRAINT_UNIQUE) => {
                        return Err(StoreError::DuplicateStage {
                            run_id,
                            stage: record.stage.clone(),
                        })
                    }
                    Err(e) => return Err(self.err("inserting a stage record", e)),
                }
            }
            tx.prepare_cached("UPDATE runs SET updated_at = ?1 WHERE id = ?2")
                .and_then(|mut stmt| stmt.execute(params![to_unix_millis(SystemTime::now()), run]))
                .map_err(|e| self.err("updating the run's time", e))?;
            Ok(())
        })
    }

    fn load_stages(&self, run_id: Uuid) -> Result<Vec<StageRecord>, StoreError> {
        self.in_run(run_id, None, |tx, run| {
            let mut stages = Vec::new();
            self.each_row(
                tx,
                concat!(select_stage!(), "WHERE run = ?1 ORDER BY seq"),
                "preparing the stage query",
                [run],
                "loading stage records",
                |row| {
                    stages.push(self.decode_stage(run_id, row)?);
                    Ok(())
                },
            )?;
            Ok(stages)
        })
    }

    fn for_each_stage_state(
        &self,
        run_id: Uuid,
        visit: &mut dyn FnMut(&str, StageStatus),
    ) -> Result<(), StoreError> {
        self.in_run(run_id, None, |tx, run| {
            self.each_row(
                tx,
                "SELECT stage, status FROM stages INDEXED BY stages_state WHERE run = ?1 ORDER BY seq",
                "preparing the stage query",
                [run],
                "loading stage states",
                |row| {
                    let get_err = |e| self.err("reading a stage state", e);
                    let stage = text(row, 0).map_err(get_err)?;
                    let status =
                        self.stage_status(run_id, stage, text(row, 1).map_err(get_err)?)?;
                    visit(stage, status);
                    Ok(())
                },
            )
        })
    }

    fn load_stage_records(
        &self,
        run_id: Uuid,
        stages: &[&str],
    ) -> Result<Vec<StageRecord>, StoreError> {
        self.in_run(run_id, None, |tx, run| {
            let mut records = Vec::with_capacity(stages.len());
            // One indexed lookup per stage (the UNIQUE (run, stage) index): at most one row each.
            for stage in stages {
                self.each_row(
                    tx,
                    concat!(select_stage!(), "WHERE run = ?1 AND stage = ?2"),
                    "preparing the stage query",
                    params![run, stage],
                    "loading a stage record",
                    |row| {
                        records.push(self.decode_stage(run_id, row)?);
                        Ok(())
                    },
                )?;
            }
            Ok(records)
        })
    }

    fn count_stages(&self, run_id: Uuid) -> Result<u64, StoreError> {
        let count: i64 = self.in_run(run_id, None, |tx, run| {
            tx.prepare_cached("SELECT count(*) FROM stages WHERE run = ?1")
                .and_then(|mut stmt| stmt.query_row([run], |row| row.get(0)))
                .map_err(|e| self.err("counting stage records", e))
        })?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    fn delete_run(&self, run_id: Uuid) -> Result<(), StoreError> {
        self.in_run(run_id, Some("committing a delete"), |tx, run| {
            // Stages first, explicitly: correct even on a connection without foreign keys.
            tx.prepare_cached("DELETE FROM stages WHERE run = ?1")
                .and_then(|mut stmt| stmt.execute([run]))
                .map_err(|e| self.err("deleting stage records", e))?;
            tx.prepare_cached("DELETE FROM runs WHERE id = ?1")
                .and_then(|mut stmt| stmt.execute([run]))
                .map_err(|e| self.err("deleting a run", e))?;
            Ok(())
        })
    }
}

/// The integer key of run `run_id`, if stored.
fn run_key(conn: &Connection, run_id: Uuid) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT id FROM runs WHERE run_id = ?1")?
        .query_row([run_id.hyphenated().to_string()], |row| row.get(0))
        .optional()
}

/// Column `idx` as text, without copying.
fn text<'r>(row: &'r Row<'_>, idx: usize) -> rusqlite::Result<&'r str> {
    row.get_ref(idx)?.as_str().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn is_constraint(e: &rusqlite::Error, extended: i32) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(err, _) if err.extended_code == extended)
}

/// Turns a SQLite error into the [`StoreError`] that says what it means for the store.
fn classify(path: &Path, op: &'static str, e: rusqlite::Error) -> StoreError {
    let path = path.to_path_buf();
    let detail = |e: &rusqlite::Error| match e {
        rusqlite::Error::SqliteFailure(err, _) => {
            format!("{op}: {e} (SQLite code {})", err.extended_code)
        }
        _ => format!("{op}: {e}"),
    };
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => StoreError::NotADatabase {
            path,
            detail: detail(&e),
        },
        Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path,
            detail: detail(&e),
        },
        Some(ErrorCode::ReadOnly) => {
            let why = match &e {
                rusqlite::Error::SqliteFailure(err, _)
                    if err.extended_code == ffi::SQLITE_READONLY_DIRECTORY =>
                {
                    "the directory is not writable, and a store in WAL mode needs to create its \
                     -wal and -shm files next to the database (even to read it)"
                }
                _ => "the database file, its directory or this store is read-only",
            };
            StoreError::ReadOnly {
                path,
                detail: format!("{}; {why}", detail(&e)),
            }
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy {
            path,
            op,
            source: Box::new(e),
        },
        _ => match e {
            // A stored value of the wrong type or out of range: damage, not a bug of the caller.
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..) => StoreError::Corrupt {
                path,
                detail: detail(&e),
            },
            source => StoreError::Sqlite {
                path,
                op,
                source: Box::new(source),
            },
        },
    }
}

/// What the first page of the file says about it.
struct Header {
    /// `PRAGMA user_version`: the store schema version.
    version: i64,
    /// `PRAGMA application_id`.
    application_id: i64,
    /// Tables and indexes in the file.
    objects: i64,
}

fn read_header(conn: &Connection) -> rusqlite::Result<Header> {
    Ok(Header {
        version: conn.pragma_query_value(None, "user_version", |row| row.get(0))?,
        application_id: conn.pragma_query_value(None, "application_id", |row| row.get(0))?,
        objects: conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'",
            [],
            |row| row.get(0),
        )?,
    })
}

/// Refuses files that are not this store: another application's database, a negative or too
/// new schema version.
fn check_identity(path: &Path, header: &Header, known: usize) -> Result<(), StoreError> {
    let foreign = |detail: String| StoreError::ForeignDatabase {
        path: path.to_path_buf(),
        detail,
    };
    let Header {
        version,
        application_id,
        objects,
    } = *header;
    if version == 0 {
        if application_id != 0 && application_id != APPLICATION_ID {
            return Err(foreign(format!("application id {application_id:#x}")));
        }
        if objects > 0 {
            return Err(foreign(format!(
                "it has {objects} tables or indexes but no Stageflow schema version"
            )));
        }
        return Ok(());
    }
    if application_id != APPLICATION_ID {
        return Err(foreign(format!(
            "application id {application_id:#x} with user version {version}"
        )));
    }
    if version < 0 {
        return Err(foreign(format!("negative schema version {version}")));
    }
    if version > known as i64 {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found: version,
            supported: known as u32,
        });
    }
    Ok(())
}

fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let err = |e| classify(path, "checking the database (quick_check)", e);
    let mut stmt = conn.prepare("PRAGMA quick_check(10)").map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;
    let mut findings = Vec::new();
    while let Some(row) = rows.next().map_err(err)? {
        let line: String = row.get(0).map_err(err)?;
        if line != "ok" {
            findings.push(line);
        }
    }
    if findings.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("quick_check: {}", findings.join("; ")),
        })
    }
}

/// Applies the pending migrations and the new version number in one `IMMEDIATE` transaction.
fn migrate(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<(), StoreError> {
    let err = |op| move |e| classify(path, op, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err("beginning the migration transaction"))?;
    // Another process may have migrated between our first read and taking the write lock.
    let current: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(err("reading the schema version"))?;
    if current > migrations.len() as i64 {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found: current,
            supported: migrations.len() as u32,
        });
    }
    for (index, sql) in migrations.iter().enumerate().skip(current.max(0) as usize) {
        let version = index as u32 + 1;
        let failed = |source: rusqlite::Error| StoreError::Migration {
            path: path.to_path_buf(),
            version,
            source: Box::new(source),
        };
        tx.execute_batch(sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(failed)?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(err("tagging the file as a Stageflow store"))?;
    tx.commit().map_err(err("committing the migration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL);";

    #[test]
    fn a_version_1_store_migrates_and_its_runs_keep_their_stages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let options = SqliteOptions::new();
        let run_id = Uuid::now_v7();
        let v1 = SqliteStore::open_with_migrations(&path, &options, &MIGRATIONS[..1]).unwrap();
        v1.create_run(&RunRecord::new(
            run_id,
            "p",
            "sfp1:0",
            serde_json::Value::Null,
        ))
        .unwrap();
        let records: Vec<StageRecord> = ["a", "b", "c"]
            .iter()
            .zip([StageStatus::Ok, StageStatus::Skip, StageStatus::Fail])
            .map(|(name, status)| StageRecord::new(run_id, *name, status))
            .collect();
        v1.record_stages(run_id, &records).unwrap();
        drop(v1);

        let current = SqliteStore::open(&path).unwrap();
        assert_eq!(current.schema_version().unwrap(), SCHEMA_VERSION);
        let mut states = Vec::new();
        current
            .for_each_stage_state(run_id, &mut |name, status| {
                states.push((name.to_owned(), status))
            })
            .unwrap();
        assert_eq!(
            states,
            [
                ("a".to_owned(), StageStatus::Ok),
                ("b".to_owned(), StageStatus::Skip),
                ("c".to_owned(), StageStatus::Fail)
            ]
        );
    }

    #[test]
    fn pending_migrations_apply_in_order_and_a_failing_one_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let options = SqliteOptions::new();
        let v1 = SqliteStore::open_with_migrations(&path, &options, &MIGRATIONS[..1]).unwrap();
        assert_eq!(v1.schema_version().unwrap(), 1);
        drop(v1);

        // Version 2 applies on top of 1; the store keeps working.
        let v2 = SqliteStore::open_with_migrations(&path, &options, &[MIGRATIONS[0], V2]).unwrap();
        assert_eq!(v2.schema_version().unwrap(), 2);
        v2.lock()
            .execute("INSERT INTO notes (text) VALUES ('x')", [])
            .unwrap();
        drop(v2);

        // A failing version 3 (its second statement fails) leaves the file at version 2, with
        // none of version 3's changes.
        let bad = "CREATE TABLE half (x); CREATE TABLE notes (y);";
        let err = SqliteStore::open_with_migrations(&path, &options, &[MIGRATIONS[0], V2, bad])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Migration { version: 3, .. }),
            "{err}"
        );
        let again =
            SqliteStore::open_with_migrations(&path, &options, &[MIGRATIONS[0], V2]).unwrap();
        assert_eq!(again.schema_version().unwrap(), 2);
        let half: i64 = again
            .lock()
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'half'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(half, 0);

        // And a build that knows only version 1 refuses the version-2 file.
        let err = SqliteStore::open_with_migrations(&path, &options, &MIGRATIONS[..1]).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::SchemaTooNew {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );
    }
}
