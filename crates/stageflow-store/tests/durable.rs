//! Durable runs on the SQLite store: what goes wrong on resume gives a clear error and loses
//! nothing already committed.

use std::sync::Arc;

use stageflow::durable::{Checkpoint, Durability, DurableError};
use stageflow::store::{RunState, RunStore, StoreError};
use stageflow::{Graph, Pipeline, RunOptions, StageContext, StageOutput, StageSpec};
use stageflow_store::SqliteStore;

fn chain(n: usize, name: &str) -> Graph {
    Pipeline::builder(name)
        .with_linear_chain(n, |i| {
            StageSpec::new(format!("s{i}"), move |ctx: StageContext| async move {
                let prev: u64 = if i == 0 {
                    0
                } else {
                    ctx.get_from(&format!("s{}", i - 1), "n")?
                };
                Ok::<_, stageflow::InputError>(
                    StageOutput::ok()
                        .with("n", prev + 1)
                        .with("pad", "x".repeat(200)),
                )
            })
        })
        .build()
        .unwrap()
}

async fn committed_run(path: &std::path::Path) -> uuid::Uuid {
    let store = SqliteStore::open(path).unwrap();
    let cp = Checkpoint::new(store).durability(Durability::group(100, 10));
    let done = chain(500, "c")
        .run_durable((), RunOptions::new(), &cp)
        .await
        .unwrap();
    done.report().identity().run_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_run_on_sqlite_resumes_and_refuses_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let run_id = committed_run(&path).await;
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    assert_eq!(store.count_stages(run_id).unwrap(), 500);
    assert_eq!(store.get_run(run_id).unwrap().status, RunState::Completed);

    // A changed pipeline is refused, and nothing changes in the store.
    let cp = Checkpoint::new(store.clone());
    let err = chain(501, "c")
        .resume(run_id, RunOptions::new(), &cp)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            DurableError::Store(StoreError::FingerprintMismatch { .. })
        ),
        "{err}"
    );
    assert_eq!(store.count_stages(run_id).unwrap(), 500);
    assert_eq!(store.get_run(run_id).unwrap().status, RunState::Completed);

    // An unknown run id.
    let err = chain(500, "c")
        .resume(uuid::Uuid::nil(), RunOptions::new(), &cp)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DurableError::Store(StoreError::RunNotFound(_))),
        "{err}"
    );

    // The same pipeline resumes (nothing left to run) with the stored results.
    let done = chain(500, "c")
        .resume(run_id, RunOptions::new(), &cp)
        .await
        .unwrap();
    assert_eq!(done.restored(), 500);
    assert_eq!(
        done.report()
            .results()
            .get_data::<u64>("s499", "n")
            .unwrap(),
        500
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let text = "these are not the pages you are looking for\n".repeat(200);
    std::fs::write(&path, &text).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotADatabase { .. }), "{err}");
    assert!(err.to_string().contains("not a database"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_corrupt_database_gives_a_clear_error_and_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let run_id = committed_run(&path).await;
    // Close cleanly (checkpoints the WAL into the file), then keep a pristine copy.
    SqliteStore::open(&path).unwrap().close().unwrap();
    let pristine = std::fs::read(&path).unwrap();
    assert!(
        pristine.len() > 16 * 4096,
        "several pages: {}",
        pristine.len()
    );

    for damage in ["truncate", "scribble"] {
        let mut bytes = pristine.clone();
        match damage {
            "truncate" => bytes.truncate(bytes.len() / 2),
            _ => {
                let start = bytes.len() / 2;
                for b in &mut bytes[start..start + 8192] {
                    *b = 0xA5;
                }
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let outcome = async {
            let store = SqliteStore::open(&path)?;
            let cp = Checkpoint::new(store);
            chain(500, "c")
                .resume(run_id, RunOptions::new(), &cp)
                .await
                .map_err(|e| match e {
                    DurableError::Store(e) => e,
                    other => panic!("{other}"),
                })
        }
        .await;
        let err = outcome.expect_err("damage is detected");
        assert!(
            matches!(
                err,
                StoreError::Corrupt { .. } | StoreError::NotADatabase { .. }
            ),
            "{damage}: {err}"
        );
        assert!(
            err.to_string().contains("nothing was rewritten")
                || err.to_string().contains("left untouched"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{damage}: the file was not rewritten"
        );
    }
    // The pristine copy still holds everything.
    std::fs::write(&path, &pristine).unwrap();
    let _ = std::fs::remove_file(path.with_extension("db-wal"));
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.count_stages(run_id).unwrap(), 500);
}
