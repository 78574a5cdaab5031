//! One suite, every store: each test below is a plain function over `&dyn RunStore`, and the
//! `conformance!` macro at the bottom instantiates all of them for [`MemoryStore`] and for
//! [`SqliteStore`] (on a fresh file). A store that passes here has the semantics the executor
//! relies on.

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use stageflow::{StageOutput, StageStatus};
use stageflow_store::{
    MemoryStore, RunRecord, RunState, RunStore, SqliteStore, StageRecord, StoreError,
};
use uuid::Uuid;

fn new_run(store: &dyn RunStore, pipeline: &str) -> RunRecord {
    let run = RunRecord::new(
        Uuid::now_v7(),
        pipeline,
        "fp-1",
        json!({"pipeline": pipeline}),
    );
    store.create_run(&run).expect("create_run");
    run
}

fn ok_stage(run_id: Uuid, name: &str, value: u64) -> StageRecord {
    StageRecord::new(run_id, name, StageStatus::Ok)
        .with_output(StageOutput::ok().with("value", value))
}

fn names(records: &[StageRecord]) -> Vec<&str> {
    records.iter().map(|r| r.stage.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Runs

fn run_round_trips(store: &dyn RunStore) {
    let mut run = RunRecord::new(
        Uuid::now_v7(),
        "etl",
        "sha256:0123",
        json!({"day": 7, "tables": ["a", "b"], "ratio": 0.1, "tiny": 1e-300, "nested": {"x": null}}),
    );
    // Sub-millisecond parts are dropped by every store.
    run.created_at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
    run.updated_at = run.created_at + Duration::from_micros(1500);
    run.error = Some("previous attempt: disk full".into());
    store.create_run(&run).unwrap();
    let back = store.get_run(run.run_id).unwrap();
    assert_eq!(back, run.clone().normalized());
    assert_eq!(
        back.created_at,
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
    );
    assert!(back.check_fingerprint("sha256:0123").is_ok());
    assert!(matches!(
        back.check_fingerprint("sha256:9999"),
        Err(StoreError::FingerprintMismatch { stored, current, .. }) if stored == "sha256:0123" && current == "sha256:9999"
    ));
}

fn missing_run_is_run_not_found_everywhere(store: &dyn RunStore) {
    let _other = new_run(store, "other");
    let missing = Uuid::now_v7();
    let is_not_found =
        |r: Result<(), StoreError>| matches!(r, Err(StoreError::RunNotFound(id)) if id == missing);
    assert!(is_not_found(store.get_run(missing).map(drop)));
    assert!(is_not_found(store.update_run_status(
        missing,
        RunState::Failed,
        Some("x")
    )));
    assert!(is_not_found(
        store.record_stages(missing, &[ok_stage(missing, "a", 1)])
    ));
    assert!(is_not_found(store.record_stages(missing, &[])));
    assert!(is_not_found(
        store.record_stages_replace(missing, &[ok_stage(missing, "a", 1)])
    ));
    assert!(is_not_found(store.load_stages(missing).map(drop)));
    assert!(is_not_found(store.count_stages(missing).map(drop)));
    assert!(is_not_found(store.delete_run(missing)));
    let message = store.get_run(missing).unwrap_err().to_string();
    assert!(message.contains(&missing.to_string()), "{message}");
}

fn create_twice_is_run_exists(store: &dyn RunStore) {
    let run = new_run(store, "p");
    let mut again = run.clone();
    again.pipeline = "changed".into();
    assert!(matches!(store.create_run(&again), Err(StoreError::RunExists(id)) if id == run.run_id));
    assert_eq!(store.get_run(run.run_id).unwrap().pipeline, "p");
}

fn list_runs_newest_first_with_limit(store: &dyn RunStore) {
    assert!(store.list_runs(10).unwrap().is_empty());
    let base = SystemTime::now();
    let mut ids = Vec::new();
    for i in 0..5u64 {
        let mut run = RunRecord::new(Uuid::now_v7(), format!("p{i}"), "fp", json!(i));
        run.created_at = base + Duration::from_secs(i);
        store.create_run(&run).unwrap();
        ids.push(run.run_id);
    }
    // Two runs in the same millisecond: the larger run id comes first.
    let mut tie_a = RunRecord::new(Uuid::from_u128(1), "tie", "fp", json!(null));
    tie_a.created_at = base + Duration::from_secs(100);
    let mut tie_b = RunRecord::new(Uuid::from_u128(2), "tie", "fp", json!(null));
    tie_b.created_at = tie_a.created_at;
    store.create_run(&tie_a).unwrap();
    store.create_run(&tie_b).unwrap();

    let listed: Vec<Uuid> = store
        .list_runs(100)
        .unwrap()
        .iter()
        .map(|r| r.run_id)
        .collect();
    let mut expected = vec![tie_b.run_id, tie_a.run_id];
    expected.extend(ids.iter().rev());
    assert_eq!(listed, expected);
    let top: Vec<Uuid> = store
        .list_runs(3)
        .unwrap()
        .iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(top, expected[..3]);
    assert!(store.list_runs(0).unwrap().is_empty());
}

fn update_run_status_sets_state_error_and_time(store: &dyn RunStore) {
    let mut run = RunRecord::new(Uuid::now_v7(), "p", "fp", json!(null));
    run.updated_at = UNIX_EPOCH + Duration::from_secs(1);
    store.create_run(&run).unwrap();

    store
        .update_run_status(
            run.run_id,
            RunState::Failed,
            Some("stage `b` failed: disk full"),
        )
        .unwrap();
    let failed = store.get_run(run.run_id).unwrap();
    assert_eq!(failed.status, RunState::Failed);
    assert_eq!(failed.error.as_deref(), Some("stage `b` failed: disk full"));
    assert!(failed.updated_at > run.updated_at);
    assert_eq!(failed.created_at, run.clone().normalized().created_at);

    // A resume sets it back to running, clearing the error; then it completes.
    store
        .update_run_status(run.run_id, RunState::Running, None)
        .unwrap();
    assert_eq!(store.get_run(run.run_id).unwrap().error, None);
    for state in RunState::ALL {
        store.update_run_status(run.run_id, state, None).unwrap();
        assert_eq!(store.get_run(run.run_id).unwrap().status, state);
    }
}

fn delete_run_removes_run_and_stages_only(store: &dyn RunStore) {
    let keep = new_run(store, "keep");
    let gone = new_run(store, "gone");
    store
        .record_stages(keep.run_id, &[ok_stage(keep.run_id, "a", 1)])
        .unwrap();
    let batch: Vec<_> = (0..50)
        .map(|i| ok_stage(gone.run_id, &format!("s{i}"), i))
        .collect();
    store.record_stages(gone.run_id, &batch).unwrap();

    store.delete_run(gone.run_id).unwrap();
    assert!(matches!(
        store.get_run(gone.run_id),
        Err(StoreError::RunNotFound(_))
    ));
    assert!(matches!(
        store.load_stages(gone.run_id),
        Err(StoreError::RunNotFound(_))
    ));
    assert!(matches!(
        store.delete_run(gone.run_id),
        Err(StoreError::RunNotFound(_))
    ));
    assert_eq!(store.count_stages(keep.run_id).unwrap(), 1);
    assert_eq!(store.list_runs(10).unwrap().len(), 1);

    // The id can be used again, and starts with no stages.
    store.create_run(&gone).unwrap();
    assert_eq!(store.count_stages(gone.run_id).unwrap(), 0);
    store
        .record_stages(gone.run_id, &[ok_stage(gone.run_id, "s0", 0)])
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Stages

fn stages_round_trip_in_commit_order(store: &dyn RunStore) {
    let run = new_run(store, "p");
    let id = run.run_id;
    let t0 = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_999_999_999);
    let records = [
        StageRecord::new(id, "extract", StageStatus::Ok)
            .with_output(
                StageOutput::ok()
                    .with("rows", 3u64)
                    .with("ratio", 0.1f64)
                    .with("max", f64::MAX)
                    .with("min_pos", f64::MIN_POSITIVE)
                    .with("neg", -7i64)
                    .with("big", u64::MAX)
                    .with("table", "users")
                    .with("nested", json!({"a": [1, 2, {"b": null}], "ü": "✓"})),
            )
            .with_times(t0, t0 + Duration::from_millis(42)),
        StageRecord::new(id, "zeta needs a skip", StageStatus::Skip)
            .with_output(StageOutput::skip("nothing changed")),
        StageRecord::new(id, "ünïcode/stage name with \"quotes\"", StageStatus::Ok)
            .with_output(StageOutput::ok()),
        StageRecord::new(id, "panicked", StageStatus::Fail)
            .with_error("panicked: index out of bounds")
            .with_attempts(3)
            .with_duration(Duration::from_millis(7)),
        StageRecord::new(id, "flaky", StageStatus::Retry)
            .with_output(StageOutput::retry("timeout"))
            .with_error("timeout (retryable)"),
        StageRecord::new(id, "stop", StageStatus::Cancel)
            .with_output(StageOutput::cancel("enough")),
        StageRecord::new(id, "before epoch", StageStatus::Ok).with_times(
            UNIX_EPOCH - Duration::from_micros(2_500),
            UNIX_EPOCH + Duration::from_millis(3),
        ),
        StageRecord::new(id, "u32 max", StageStatus::Ok)
            .with_attempts(u32::MAX)
            .with_duration(Duration::from_millis(i64::MAX as u64)),
    ];
    store.record_stages(id, &records[..3]).unwrap();
    store.record_stages(id, &records[3..]).unwrap();

    let loaded = store.load_stages(id).unwrap();
    let expected: Vec<StageRecord> = records
        .iter()
        .cloned()
        .map(StageRecord::normalized)
        .collect();
    assert_eq!(loaded, expected);
    assert_eq!(store.count_stages(id).unwrap(), records.len() as u64);
    // Bit-exact floats.
    let out = loaded[0].output.as_ref().unwrap();
    assert_eq!(out.get::<f64>("ratio").unwrap().to_bits(), 0.1f64.to_bits());
    assert_eq!(out.get::<f64>("max").unwrap(), f64::MAX);
    assert_eq!(out.get::<u64>("big").unwrap(), u64::MAX);
    assert_eq!(loaded[0].duration_ms, 42);
    assert_eq!(loaded[6].started_at, UNIX_EPOCH - Duration::from_millis(2));
}

fn empty_batch_and_empty_run(store: &dyn RunStore) {
    let run = new_run(store, "p");
    store.record_stages(run.run_id, &[]).unwrap();
    store.record_stages_replace(run.run_id, &[]).unwrap();
    assert!(store.load_stages(run.run_id).unwrap().is_empty());
    assert_eq!(store.count_stages(run.run_id).unwrap(), 0);
}

fn duplicate_across_batches_is_refused_and_batch_is_atomic(store: &dyn RunStore) {
    let run = new_run(store, "p");
    let id = run.run_id;
    store
        .record_stages(id, &[ok_stage(id, "a", 1), ok_stage(id, "b", 2)])
        .unwrap();

    let batch = [
        ok_stage(id, "c", 3),
        ok_stage(id, "b", 99),
        ok_stage(id, "d", 4),
    ];
    match store.record_stages(id, &batch) {
        Err(StoreError::DuplicateStage { run_id, stage }) => {
            assert_eq!(run_id, id);
            assert_eq!(stage, "b");
        }
        other => panic!("expected DuplicateStage, got {other:?}"),
    }
    // Nothing of the failed batch: not `c` before the duplicate, not `d` after it, and `b` keeps
    // its first record.
    let loaded = store.load_stages(id).unwrap();
    assert_eq!(names(&loaded), ["a", "b"]);
    assert_eq!(
        loaded[1]
            .output
            .as_ref()
            .unwrap()
            .get::<u64>("value")
            .unwrap(),
        2
    );
    // The store is still usable after the rolled-back batch.
    store.record_stages(id, &[ok_stage(id, "c", 3)]).unwrap();
    assert_eq!(store.count_stages(id).unwrap(), 3);
}

fn duplicate_within_a_batch_is_refused(store: &dyn RunStore) {
    let run = new_run(store, "p");
    let id = run.run_id;
    let batch = [
        ok_stage(id, "x", 1),
        ok_stage(id, "y", 2),
        ok_stage(id, "x", 3),
    ];
    assert!(matches!(
        store.record_stages(id, &batch),
        Err(StoreError::DuplicateStage { stage, .. }) if stage == "x"
    ));
    assert_eq!(store.count_stages(id).unwrap(), 0);
}

fn same_stage_name_in_two_runs_is_fine(store: &dyn RunStore) {
    let a = new_run(store, "p");
    let b = new_run(store, "p");
    store
        .record_stages(a.run_id, &[ok_stage(a.run_id, "s", 1)])
        .unwrap();
    store
        .record_stages(b.run_id, &[ok_stage(b.run_id, "s", 2)])
        .unwrap();
    let value = |id| {
        store.load_stages(id).unwrap()[0]
            .output
            .clone()
            .unwrap()
            .get::<u64>("value")
            .unwrap()
    };
    assert_eq!(value(a.run_id), 1);
    assert_eq!(value(b.run_id), 2);
}

fn record_for_another_run_is_refused(store: &dyn RunStore) {
    let a = new_run(store, "p");
    let b = new_run(store, "p");
    let batch = [ok_stage(a.run_id, "ok", 1), ok_stage(b.run_id, "wrong", 2)];
    match store.record_stages(a.run_id, &batch) {
        Err(StoreError::RunMismatch {
            run_id,
            stage,
            record_run_id,
        }) => {
            assert_eq!(
                (run_id, stage.as_str(), record_run_id),
                (a.run_id, "wrong", b.run_id)
            );
        }
        other => panic!("expected RunMismatch, got {other:?}"),
    }
    assert!(matches!(
        store.record_stages_replace(a.run_id, &batch),
        Err(StoreError::RunMismatch { .. })
    ));
    assert_eq!(store.count_stages(a.run_id).unwrap(), 0);
    assert_eq!(store.count_stages(b.run_id).unwrap(), 0);
}

fn replace_overwrites_in_place_and_appends_new(store: &dyn RunStore) {
    let run = new_run(store, "p");
    let id = run.run_id;
    let failed = StageRecord::new(id, "b", StageStatus::Fail).with_error("disk full");
    store
        .record_stages(id, &[ok_stage(id, "a", 1), failed, ok_stage(id, "c", 3)])
        .unwrap();

    // The resume re-ran `b` (second attempt) and ran `d`.
    let retried = ok_stage(id, "b", 2).with_attempts(2);
    store
        .record_stages_replace(id, &[retried.clone(), ok_stage(id, "d", 4)])
        .unwrap();
    let loaded = store.load_stages(id).unwrap();
    assert_eq!(names(&loaded), ["a", "b", "c", "d"]);
    assert_eq!(loaded[1], retried.normalized());
    assert_eq!(loaded[1].error, None);
    assert_eq!(store.count_stages(id).unwrap(), 4);

    // Plain recording still refuses the replaced stage.
    assert!(matches!(
        store.record_stages(id, &[ok_stage(id, "b", 5)]),
        Err(StoreError::DuplicateStage { .. })
    ));
    // Twice in one replace batch: the later record wins.
    store
        .record_stages_replace(id, &[ok_stage(id, "e", 1), ok_stage(id, "e", 2)])
        .unwrap();
    let loaded = store.load_stages(id).unwrap();
    assert_eq!(names(&loaded), ["a", "b", "c", "d", "e"]);
    assert_eq!(
        loaded[4]
            .output
            .as_ref()
            .unwrap()
            .get::<u64>("value")
            .unwrap(),
        2
    );
}

fn recording_bumps_updated_at(store: &dyn RunStore) {
    let mut run = RunRecord::new(Uuid::now_v7(), "p", "fp", json!(null));
    run.updated_at = UNIX_EPOCH + Duration::from_secs(1);
    store.create_run(&run).unwrap();
    store
        .record_stages(run.run_id, &[ok_stage(run.run_id, "a", 1)])
        .unwrap();
    let after = store.get_run(run.run_id).unwrap();
    assert!(after.updated_at > run.updated_at);
    assert_eq!(after.status, RunState::Running);
}

fn large_batch_keeps_order(store: &dyn RunStore) {
    let run = new_run(store, "chain");
    let id = run.run_id;
    for chunk in 0..5u64 {
        let batch: Vec<_> = (chunk * 2_000..(chunk + 1) * 2_000)
            .map(|i| ok_stage(id, &format!("s{i}"), i))
            .collect();
        store.record_stages(id, &batch).unwrap();
    }
    let loaded = store.load_stages(id).unwrap();
    assert_eq!(loaded.len(), 10_000);
    for (i, record) in loaded.iter().enumerate() {
        assert_eq!(record.stage, format!("s{i}"));
    }
    assert_eq!(store.count_stages(id).unwrap(), 10_000);
}

/// Many threads record disjoint stages concurrently; two threads race for the same stages:
/// every stage ends up recorded exactly once, and each race has exactly one winner.
fn concurrent_recording_is_exactly_once(store: &dyn RunStore) {
    thread::scope(|scope| {
        let run = new_run(store, "p");
        let id = run.run_id;
        let threads = 4;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = Arc::clone(&barrier);
                scope.spawn(move || {
                    barrier.wait();
                    let mut won = 0;
                    for batch in 0..25 {
                        // Own stages: always succeed.
                        let own: Vec<_> = (0..10)
                            .map(|i| ok_stage(id, &format!("t{t}-{batch}-{i}"), i))
                            .collect();
                        store.record_stages(id, &own).unwrap();
                        // Contested stage: every thread tries, one wins.
                        match store
                            .record_stages(id, &[ok_stage(id, &format!("race-{batch}"), t as u64)])
                        {
                            Ok(()) => won += 1,
                            Err(StoreError::DuplicateStage { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    won
                })
            })
            .collect();
        let wins: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(wins, 25);
        let loaded = store.load_stages(id).unwrap();
        assert_eq!(loaded.len(), threads * 25 * 10 + 25);
        let unique: HashSet<&str> = loaded.iter().map(|r| r.stage.as_str()).collect();
        assert_eq!(unique.len(), loaded.len());
    });
}

fn usable_as_shared_trait_object(store: &dyn RunStore) {
    let shared: Arc<&dyn RunStore> = Arc::new(store);
    let run = new_run(*shared, "p");
    let boxed: Box<&dyn RunStore> = Box::new(store);
    boxed
        .record_stages(run.run_id, &[ok_stage(run.run_id, "a", 1)])
        .unwrap();
    assert_eq!(shared.count_stages(run.run_id).unwrap(), 1);
}

// ---------------------------------------------------------------------------------------------

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[test]
                fn $test() {
                    super::$test(&MemoryStore::new());
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[test]
                fn $test() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = SqliteStore::open(dir.path().join("store.db")).unwrap();
                    super::$test(&store);
                    store.quick_check().unwrap();
                    store.close().unwrap();
                }
            )*
        }
    };
}

conformance!(
    run_round_trips,
    missing_run_is_run_not_found_everywhere,
    create_twice_is_run_exists,
    list_runs_newest_first_with_limit,
    update_run_status_sets_state_error_and_time,
    delete_run_removes_run_and_stages_only,
    stages_round_trip_in_commit_order,
    empty_batch_and_empty_run,
    duplicate_across_batches_is_refused_and_batch_is_atomic,
    duplicate_within_a_batch_is_refused,
    same_stage_name_in_two_runs_is_fine,
    record_for_another_run_is_refused,
    replace_overwrites_in_place_and_appends_new,
    recording_bumps_updated_at,
    large_batch_keeps_order,
    concurrent_recording_is_exactly_once,
    usable_as_shared_trait_object,
);
