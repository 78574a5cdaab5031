//! What only the SQLite store has: a file. Migrations and versions, damaged and foreign files,
//! persistence across reopen and across a killed process, concurrent readers (WAL), read-only
//! access, lock contention.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use rusqlite::Connection;
use serde_json::json;
use stageflow::{StageOutput, StageStatus};
use stageflow_store::{
    RunRecord, RunState, RunStore, SqliteOptions, SqliteStore, StageRecord, StoreError,
    Synchronous, SCHEMA_VERSION,
};
use uuid::Uuid;

fn ok_stage(run_id: Uuid, i: u64) -> StageRecord {
    StageRecord::new(run_id, format!("s{i}"), StageStatus::Ok).with_output(
        StageOutput::ok()
            .with("value", i)
            .with("label", format!("stage number {i}")),
    )
}

fn new_run(store: &SqliteStore) -> RunRecord {
    let run = RunRecord::new(Uuid::now_v7(), "chain", "fp-1", json!({"n": 1}));
    store.create_run(&run).unwrap();
    run
}

/// A closed store holding one run of `stages` stages; returns the run id.
fn populated(path: &Path, stages: u64) -> Uuid {
    let store = SqliteStore::open(path).unwrap();
    let run = new_run(&store);
    let records: Vec<_> = (0..stages).map(|i| ok_stage(run.run_id, i)).collect();
    for batch in records.chunks(1000) {
        store.record_stages(run.run_id, batch).unwrap();
    }
    // Closing the last connection checkpoints the WAL into the main file and removes it.
    store.close().unwrap();
    assert!(!wal_path(path).exists());
    run.run_id
}

fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Opens the file and reads everything in it; any error is returned, never a panic.
fn open_and_read_all(path: &Path, options: SqliteOptions) -> Result<usize, StoreError> {
    let store = SqliteStore::open_with(path, options)?;
    let mut stages = 0;
    for run in store.list_runs(usize::MAX)? {
        stages += store.load_stages(run.run_id)?.len();
        store.count_stages(run.run_id)?;
    }
    Ok(stages)
}

fn raw(path: &Path) -> Connection {
    Connection::open(path).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Schema versions

#[test]
fn fresh_store_is_at_latest_version_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/c/store.db"); // parent directories are created
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(store.path(), path);
    assert!(!store.is_read_only());
    let conn = raw(&path);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .unwrap();
    assert_eq!(app, 0x5346_4C57);
    drop(conn);
    drop(store);
    // Reopening an up-to-date store changes nothing.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn empty_file_becomes_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    fs::write(&path, b"").unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn store_from_a_future_version_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    populated(&path, 10);
    raw(&path)
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let before = fs::read(&path).unwrap();

    let err = SqliteStore::open(&path).unwrap_err();
    match &err {
        StoreError::SchemaTooNew {
            path: p,
            found,
            supported,
        } => {
            assert_eq!(p, &path);
            assert_eq!(*found, i64::from(SCHEMA_VERSION) + 1);
            assert_eq!(*supported, SCHEMA_VERSION);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("newer") && message.contains("future.db"),
        "{message}"
    );
    assert_eq!(fs::read(&path).unwrap(), before);
    // Read-only access is refused too: this build cannot know what the new version means.
    assert!(matches!(
        SqliteStore::open_with(&path, SqliteOptions::new().read_only(true)),
        Err(StoreError::SchemaTooNew { .. })
    ));
}

#[test]
fn foreign_database_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other-app.db");
    let conn = raw(&path);
    conn.execute_batch("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO accounts (name) VALUES ('x');")
        .unwrap();
    drop(conn);
    let before = fs::read(&path).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::ForeignDatabase { .. }), "{err:?}");
    assert!(
        err.to_string().contains("not a Stageflow run store"),
        "{err}"
    );
    assert_eq!(fs::read(&path).unwrap(), before);

    // Another application's id, even on an otherwise empty database.
    let path = dir.path().join("tagged.db");
    raw(&path)
        .pragma_update(None, "application_id", 42)
        .unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::ForeignDatabase { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Damaged and wrong files: clear errors, no panic, file untouched

#[test]
fn text_file_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        (
            "notes.txt",
            b"these are my notes, not a database\n".repeat(200),
        ),
        ("short.bin", b"SQLite".to_vec()),
        ("zeros.bin", vec![0u8; 8192]),
        (
            "random.bin",
            (0..10_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        ),
    ] {
        let path = dir.path().join(name);
        fs::write(&path, &bytes).unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        match &err {
            StoreError::NotADatabase { path: p, detail } => {
                assert_eq!(p, &path);
                assert!(detail.contains("file is not a database"), "{detail}");
            }
            other => panic!("{name}: expected NotADatabase, got {other:?}"),
        }
        assert!(err.to_string().contains(name), "{err}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "{name} was modified");
        assert!(!wal_path(&path).exists(), "{name}: a WAL was created");
    }
}

#[test]
fn truncated_database_is_reported_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truncated.db");
    populated(&path, 5_000);
    let len = fs::metadata(&path).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // Checked on open, refused at once; unchecked, the first read of a missing page fails.
    let err = assert_corrupt_and_untouched(&path);
    assert!(err.to_string().contains("truncated.db"), "{err}");
}

/// Opening the damaged store at `path` is refused as corrupt when checked on open, reading it
/// all fails as corrupt when not, and neither writes to the file. Returns the first error.
fn assert_corrupt_and_untouched(path: &Path) -> StoreError {
    let before = fs::read(path).unwrap();
    let err = SqliteStore::open_with(path, SqliteOptions::new().check_on_open(true)).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    let unchecked = open_and_read_all(path, SqliteOptions::new()).unwrap_err();
    assert!(
        matches!(unchecked, StoreError::Corrupt { .. }),
        "{unchecked:?}"
    );
    assert_eq!(
        fs::read(path).unwrap(),
        before,
        "a damaged file was rewritten"
    );
    err
}

#[test]
fn overwritten_pages_are_reported_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scribbled.db");
    populated(&path, 5_000);
    let len = fs::metadata(&path).unwrap().len();
    let mut file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(len / 2 - 4096)).unwrap();
    file.write_all(&vec![0xA5; 3 * 4096]).unwrap();
    drop(file);
    assert_corrupt_and_untouched(&path);
}

#[test]
fn destroyed_header_is_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("header.db");
    populated(&path, 100);
    let mut file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all(b"garbage garbage!").unwrap(); // the 16-byte magic string
    drop(file);
    let before = fs::read(&path).unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::NotADatabase { .. })
    ));
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn undecodable_values_are_corrupt_and_name_the_stage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("values.db");
    let run_id = populated(&path, 3);
    let store = SqliteStore::open(&path).unwrap();

    raw(&path)
        .execute(
            "UPDATE stages SET output = '{\"status\": \"ok\", \"da' WHERE stage = 's1'",
            [],
        )
        .unwrap();
    let err = store.load_stages(run_id).unwrap_err();
    match &err {
        StoreError::Corrupt { detail, .. } => {
            assert!(
                detail.contains("`s1`") && detail.contains(&run_id.to_string()),
                "{detail}"
            )
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    raw(&path)
        .execute(
            "UPDATE stages SET output = NULL, status = 'exploded' WHERE stage = 's1'",
            [],
        )
        .unwrap();
    let err = store.load_stages(run_id).unwrap_err();
    assert!(err.to_string().contains("exploded"), "{err}");

    raw(&path)
        .execute(
            "UPDATE stages SET status = 'ok', attempts = -1 WHERE stage = 's1'",
            [],
        )
        .unwrap();
    assert!(matches!(
        store.load_stages(run_id),
        Err(StoreError::Corrupt { .. })
    ));

    raw(&path)
        .execute("UPDATE runs SET status = 'sleeping'", [])
        .unwrap();
    assert!(matches!(
        store.get_run(run_id),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.list_runs(10),
        Err(StoreError::Corrupt { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Persistence

#[test]
fn everything_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("persist.db");
    let store =
        SqliteStore::open_with(&path, SqliteOptions::new().synchronous(Synchronous::Full)).unwrap();
    let run = new_run(&store);
    let records: Vec<_> = (0..2_500).map(|i| ok_stage(run.run_id, i)).collect();
    for batch in records.chunks(700) {
        store.record_stages(run.run_id, batch).unwrap();
    }
    store
        .update_run_status(run.run_id, RunState::Failed, Some("stage `s2500` failed"))
        .unwrap();
    let expected_run = store.get_run(run.run_id).unwrap();
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.get_run(run.run_id).unwrap(), expected_run);
    let loaded = store.load_stages(run.run_id).unwrap();
    let expected: Vec<_> = records.into_iter().map(StageRecord::normalized).collect();
    assert_eq!(loaded, expected);
    store.quick_check().unwrap();
}

/// Set by the parent test: the child records batches into this file, then dies without any
/// cleanup (as under SIGKILL: no destructor, no checkpoint, the WAL left behind).
const CHILD_ENV: &str = "STAGEFLOW_STORE_CRASH_CHILD_DB";

#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return; // only does something when the parent test runs it
    };
    let store = SqliteStore::open(&path).unwrap();
    let run = RunRecord::new(Uuid::from_u128(7), "crash", "fp", json!(null));
    store.create_run(&run).unwrap();
    for batch in 0..10u64 {
        let records: Vec<_> = (batch * 100..(batch + 1) * 100)
            .map(|i| ok_stage(run.run_id, i))
            .collect();
        store.record_stages(run.run_id, &records).unwrap();
    }
    std::process::abort();
}

#[test]
fn committed_batches_survive_a_killed_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child should have died");
    assert!(
        wal_path(&path).exists(),
        "the child should have left its WAL"
    );

    let store = SqliteStore::open_with(&path, SqliteOptions::new().check_on_open(true)).unwrap();
    let run_id = Uuid::from_u128(7);
    let run = store.get_run(run_id).unwrap();
    assert_eq!(run.status, RunState::Running); // what a resume looks for
    let loaded = store.load_stages(run_id).unwrap();
    assert_eq!(loaded.len(), 1_000);
    assert!(loaded
        .iter()
        .enumerate()
        .all(|(i, r)| r.stage == format!("s{i}")));
}

// ---------------------------------------------------------------------------------------------
// Concurrency

#[test]
fn readers_in_other_connections_see_whole_batches_while_a_writer_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    let writer = SqliteStore::open(&path).unwrap();
    let run = new_run(&writer);
    let batches = 200u64;
    let batch = 50u64;
    let done = AtomicBool::new(false);

    thread::scope(|scope| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let reader = SqliteStore::open(&path).unwrap();
                let done = &done;
                scope.spawn(move || {
                    let mut last = 0;
                    let mut reads = 0;
                    while !done.load(Ordering::Acquire) {
                        let count = reader.count_stages(run.run_id).unwrap();
                        let loaded = reader.load_stages(run.run_id).unwrap().len() as u64;
                        // Whole batches only, never going back.
                        assert_eq!(count % batch, 0);
                        assert_eq!(loaded % batch, 0);
                        assert!(count >= last && loaded >= count);
                        last = loaded;
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for b in 0..batches {
            let records: Vec<_> = (b * batch..(b + 1) * batch)
                .map(|i| ok_stage(run.run_id, i))
                .collect();
            writer.record_stages(run.run_id, &records).unwrap();
        }
        done.store(true, Ordering::Release);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
    });
    assert_eq!(writer.count_stages(run.run_id).unwrap(), batches * batch);
}

#[test]
fn stores_opened_at_once_on_a_new_file_all_succeed() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("race-{round}.db"));
        let barrier = std::sync::Barrier::new(4);
        thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        let store = SqliteStore::open(&path).unwrap();
                        new_run(&store);
                    })
                })
                .collect();
            for handle in handles {
                handle.join().unwrap();
            }
        });
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(store.list_runs(10).unwrap().len(), 4);
    }
}

#[test]
fn a_held_write_lock_is_busy_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let store = SqliteStore::open_with(
        &path,
        SqliteOptions::new().busy_timeout(Duration::from_millis(50)),
    )
    .unwrap();
    let run = new_run(&store);
    let other = raw(&path);
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = store
        .record_stages(run.run_id, &[ok_stage(run.run_id, 0)])
        .unwrap_err();
    assert!(matches!(err, StoreError::Busy { .. }), "{err:?}");
    // Reads still work while another connection writes (WAL).
    assert_eq!(store.count_stages(run.run_id).unwrap(), 0);
    other.execute_batch("COMMIT").unwrap();
    store
        .record_stages(run.run_id, &[ok_stage(run.run_id, 0)])
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Read-only access and unwritable locations

#[test]
fn read_only_store_reads_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.db");
    let run_id = populated(&path, 20);
    let store = SqliteStore::open_with(&path, SqliteOptions::new().read_only(true)).unwrap();
    assert!(store.is_read_only());
    assert_eq!(store.load_stages(run_id).unwrap().len(), 20);
    let err = store
        .record_stages(run_id, &[ok_stage(run_id, 99)])
        .unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
    assert!(matches!(
        store.update_run_status(run_id, RunState::Completed, None),
        Err(StoreError::ReadOnly { .. })
    ));
    assert!(matches!(
        store.create_run(&RunRecord::new(Uuid::now_v7(), "p", "f", json!(null))),
        Err(StoreError::ReadOnly { .. })
    ));
    assert_eq!(store.count_stages(run_id).unwrap(), 20);

    // Read-only never creates: a missing file is an error, and so is one that needs migrating.
    let missing = dir.path().join("missing/none.db");
    assert!(SqliteStore::open_with(&missing, SqliteOptions::new().read_only(true)).is_err());
    assert!(!missing.parent().unwrap().exists());
    let empty = dir.path().join("empty.db");
    fs::write(&empty, b"").unwrap();
    assert!(matches!(
        SqliteStore::open_with(&empty, SqliteOptions::new().read_only(true)),
        Err(StoreError::ReadOnly { .. })
    ));
}

#[test]
fn unwritable_locations_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // A parent "directory" that is a file.
    let file = dir.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let err = SqliteStore::open(file.join("sub/store.db")).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("plain-file"), "{err}");
    // A directory where the file should be.
    let err = SqliteStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Sqlite { .. }), "{err:?}");

    // Permission bits (meaningless for root, who may write anyway: then this part is skipped).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path, mode| fs::set_permissions(path, fs::Permissions::from_mode(mode));

        // A read-only file in a writable directory: refused read-write, readable read-only.
        let path = dir.path().join("ro-file.db");
        let run_id = populated(&path, 5);
        mode(&path, 0o444).unwrap();
        if fs::OpenOptions::new().append(true).open(&path).is_err() {
            let err = SqliteStore::open(&path).unwrap_err();
            assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
            assert!(err.to_string().contains("read_only(true)"), "{err}");
            let store =
                SqliteStore::open_with(&path, SqliteOptions::new().read_only(true)).unwrap();
            assert_eq!(store.count_stages(run_id).unwrap(), 5);
        }

        // A read-only directory: no new store, and an existing one cannot even be read, since
        // WAL mode needs its -shm file.
        let locked = dir.path().join("locked");
        let path = locked.join("store.db");
        populated(&path, 5);
        mode(&locked, 0o555).unwrap();
        if fs::File::create(locked.join("probe")).is_err() {
            let err = SqliteStore::open(&path).unwrap_err();
            assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
            assert!(
                err.to_string().contains("directory is not writable"),
                "{err}"
            );
            let err =
                SqliteStore::open_with(&path, SqliteOptions::new().read_only(true)).unwrap_err();
            assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
            let err = SqliteStore::open(locked.join("new.db")).unwrap_err();
            assert!(matches!(err, StoreError::Sqlite { .. }), "{err:?}");
        }
        mode(&locked, 0o755).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Storage details the executor and tools rely on

#[test]
fn outputs_are_json_text_and_deletes_leave_no_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("json.db");
    let run_id = populated(&path, 10);
    let conn = raw(&path);
    let value: i64 = conn
        .query_row(
            "SELECT json_extract(output, '$.data.value') FROM stages WHERE stage = 's7'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(value, 7);

    let store = SqliteStore::open(&path).unwrap();
    store.delete_run(run_id).unwrap();
    let left: i64 = conn
        .query_row("SELECT count(*) FROM stages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn twenty_thousand_stages_load_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    let run_id = populated(&path, 20_000);
    let store = SqliteStore::open(&path).unwrap();
    let loaded = store.load_stages(run_id).unwrap();
    assert_eq!(loaded.len(), 20_000);
    assert!(loaded
        .iter()
        .enumerate()
        .all(|(i, r)| r.stage == format!("s{i}")
            && r.output.as_ref().unwrap().get::<u64>("value").unwrap() == i as u64));
}
