//! Checkpointed runs and resume, against the in-memory store (the SQLite store has its own tests
//! in `stageflow-store`, including the crash test).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use stageflow::durable::{Checkpoint, Durability, DurableError};
use stageflow::segment::SegmentPlan;
use stageflow::store::{
    MemoryStore, OnRecorded, RunRecord, RunState, RunStore, StageRecord, StoreError,
};
use stageflow::{
    Graph, Pipeline, Retention, RunIdentity, RunOptions, StageContext, StageOutput, StageSpec,
};

/// A diamond-ish DAG: `n` layers of 3 stages; stage (l, w) depends on (l-1, w) and
/// (l-1, (w+1)%3); value = sum of inputs + l*3 + w. Counts executions per stage.
fn layered(
    layers: usize,
    runs: Arc<Mutex<Vec<String>>>,
    fail_at: Option<(String, Arc<AtomicBool>)>,
) -> Graph {
    let mut p = Pipeline::builder("layered");
    for l in 0..layers {
        for w in 0..3usize {
            let runs = runs.clone();
            let fail_at = fail_at.clone();
            let deps: Vec<String> = if l == 0 {
                vec![]
            } else {
                vec![
                    format!("s{}_{w}", l - 1),
                    format!("s{}_{}", l - 1, (w + 1) % 3),
                ]
            };
            p = p.add(
                StageSpec::new(format!("s{l}_{w}"), move |ctx: StageContext| {
                    let runs = runs.clone();
                    let fail_at = fail_at.clone();
                    async move {
                        runs.lock().unwrap().push(ctx.stage_name().to_owned());
                        if let Some((name, armed)) = &fail_at {
                            if name == ctx.stage_name() && armed.swap(false, Ordering::SeqCst) {
                                return Ok(StageOutput::fail("injected failure"));
                            }
                        }
                        let mut sum = (l * 3 + w) as u64;
                        for (_, out) in ctx.inputs() {
                            sum += out.get::<u64>("value")?;
                        }
                        Ok::<_, stageflow::StageError>(StageOutput::ok().with("value", sum))
                    }
                })
                .after(deps),
            );
        }
    }
    p.build().unwrap()
}

fn sink_values(graph: &Graph, results: &stageflow::Results) -> Vec<u64> {
    graph
        .sinks()
        .map(|s| results.get_data::<u64>(s, "value").unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_run_records_every_stage_and_its_status() {
    for durability in [
        Durability::EveryStage,
        Durability::group(7, 5),
        Durability::SegmentBoundaries,
    ] {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let graph = layered(20, runs.clone(), None);
        let store = Arc::new(MemoryStore::new());
        let cp = Checkpoint::new(store.clone()).durability(durability);
        let done = graph.run_durable(7, RunOptions::new(), &cp).await.unwrap();
        let run_id = done.report().identity().run_id;
        assert_eq!(done.committed(), 60);
        assert_eq!(store.count_stages(run_id).unwrap(), 60);
        let run = store.get_run(run_id).unwrap();
        assert_eq!(run.status, RunState::Completed);
        assert_eq!(run.input, serde_json::json!(7));
        assert_eq!(run.fingerprint, graph.fingerprint().to_string());
        match durability {
            Durability::EveryStage => assert_eq!(done.batches(), 60),
            Durability::SegmentBoundaries => assert_eq!(done.batches(), 1),
            _ => assert!(done.batches() >= 9),
        }
        // Records hold the outputs.
        let records = store.load_stages(run_id).unwrap();
        let last = records.iter().find(|r| r.stage == "s19_0").unwrap();
        assert_eq!(
            last.output.as_ref().unwrap().get::<u64>("value").unwrap(),
            done.report()
                .results()
                .get_data::<u64>("s19_0", "value")
                .unwrap()
        );
    }
}

/// Leaves the store as a crash after the first `committed` stages (in a topological order) would.
fn crashed_run(
    graph: &Graph,
    reference: &stageflow::Results,
    committed: usize,
) -> (Arc<MemoryStore>, uuid::Uuid) {
    let store = Arc::new(MemoryStore::new());
    let run_id = uuid::Uuid::now_v7();
    store
        .create_run(&RunRecord::new(
            run_id,
            graph.name(),
            graph.fingerprint().to_string(),
            serde_json::json!(7),
        ))
        .unwrap();
    let batch: Vec<StageRecord> = graph
        .topological_order()
        .into_iter()
        .take(committed)
        .map(|name| {
            StageRecord::new(run_id, name, stageflow::StageStatus::Ok)
                .with_output(reference.get(name).unwrap().clone())
        })
        .collect();
    store.record_stages(run_id, &batch).unwrap();
    (store, run_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_runs_only_what_was_not_committed_and_gives_the_same_results() {
    let runs = Arc::new(Mutex::new(Vec::new()));
    let graph = layered(30, runs.clone(), None);
    let reference = graph.run(7).await.unwrap();
    for retention in [Retention::All, Retention::Sinks] {
        let (store, run_id) = crashed_run(&graph, reference.results(), 50);
        runs.lock().unwrap().clear();
        let cp = Checkpoint::new(store.clone());
        let done = graph
            .resume(run_id, RunOptions::new().retention(retention), &cp)
            .await
            .unwrap();
        assert_eq!(done.restored(), 50);
        assert_eq!(done.report().identity().run_id, run_id);
        assert_eq!(done.report().stats().started, 40);
        assert_eq!(done.report().stats().succeeded, 90);
        let ran = runs.lock().unwrap().clone();
        assert_eq!(ran.len(), 40, "only the uncommitted stages ran");
        let committed: Vec<&str> = graph.topological_order().into_iter().take(50).collect();
        assert!(ran.iter().all(|s| !committed.contains(&s.as_str())));
        assert_eq!(
            sink_values(&graph, done.report().results()),
            sink_values(&graph, reference.results())
        );
        if retention == Retention::All {
            assert_eq!(done.report().results().len(), 90);
            assert_eq!(
                done.report()
                    .results()
                    .get_data::<u64>("s0_0", "value")
                    .unwrap(),
                reference
                    .results()
                    .get_data::<u64>("s0_0", "value")
                    .unwrap()
            );
        } else {
            assert_eq!(done.report().results().len(), 3);
        }
        assert_eq!(store.count_stages(run_id).unwrap(), 90);
        assert_eq!(store.get_run(run_id).unwrap().status, RunState::Completed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_recorded_and_resume_reruns_from_the_failure() {
    let runs = Arc::new(Mutex::new(Vec::new()));
    let armed = Arc::new(AtomicBool::new(true));
    let graph = layered(10, runs.clone(), Some(("s5_1".to_owned(), armed.clone())));
    let store = Arc::new(MemoryStore::new());
    let cp = Checkpoint::new(store.clone()).durability(Durability::EveryStage);
    let run_id = uuid::Uuid::now_v7();
    let identity = RunIdentity {
        run_id,
        ..RunIdentity::new()
    };
    let err = graph
        .run_durable(
            7,
            RunOptions::new().identity(identity).max_concurrency(1),
            &cp,
        )
        .await
        .unwrap_err();
    let DurableError::Failed(failure) = err else {
        panic!("{err}")
    };
    assert_eq!(failure.stage(), "s5_1");
    let run = store.get_run(run_id).unwrap();
    assert_eq!(run.status, RunState::Failed);
    assert!(run.error.unwrap().contains("injected failure"));
    let committed: Vec<String> = store
        .load_stages(run_id)
        .unwrap()
        .into_iter()
        .map(|r| r.stage)
        .collect();
    assert!(!committed.contains(&"s5_1".to_owned()));

    runs.lock().unwrap().clear();
    let done = graph.resume(run_id, RunOptions::new(), &cp).await.unwrap();
    let ran = runs.lock().unwrap().clone();
    assert!(ran.contains(&"s5_1".to_owned()));
    assert!(
        ran.iter().all(|s| !committed.contains(s)),
        "no committed stage ran again"
    );
    assert_eq!(store.count_stages(run_id).unwrap(), 30);
    assert_eq!(store.get_run(run_id).unwrap().status, RunState::Completed);
    let plain = layered(10, Arc::new(Mutex::new(Vec::new())), None)
        .run(7)
        .await
        .unwrap();
    assert_eq!(
        sink_values(&graph, done.report().results()),
        sink_values(&graph, plain.results())
    );
}

#[tokio::test]
async fn a_changed_pipeline_is_refused_unless_forced_and_the_store_is_untouched() {
    let graph = layered(5, Arc::new(Mutex::new(Vec::new())), None);
    let reference = graph.run(7).await.unwrap();
    let (store, run_id) = crashed_run(&graph, reference.results(), 6);
    let changed = layered(6, Arc::new(Mutex::new(Vec::new())), None);
    let cp = Checkpoint::new(store.clone());
    let err = changed
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
    assert!(err.to_string().contains("pipeline changed"), "{err}");
    assert_eq!(store.count_stages(run_id).unwrap(), 6);
    assert_eq!(store.get_run(run_id).unwrap().status, RunState::Running);

    let forced = changed
        .resume(run_id, RunOptions::new(), &cp.clone().force_resume(true))
        .await
        .unwrap();
    assert_eq!(forced.restored(), 6);
    assert_eq!(store.count_stages(run_id).unwrap(), 18);
}

#[tokio::test]
async fn unknown_run_ids_and_duplicate_run_ids_are_clear_errors() {
    let graph = layered(2, Arc::new(Mutex::new(Vec::new())), None);
    let store = Arc::new(MemoryStore::new());
    let cp = Checkpoint::new(store.clone());
    let missing = uuid::Uuid::now_v7();
    let err = graph
        .resume(missing, RunOptions::new(), &cp)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DurableError::Store(StoreError::RunNotFound(id)) if id == missing),
        "{err}"
    );
    assert!(err.to_string().contains("not found"));

    let done = graph.run_durable((), RunOptions::new(), &cp).await.unwrap();
    let identity = done.report().identity().clone();
    let err = graph
        .run_durable((), RunOptions::new().identity(identity), &cp)
        .await
        .unwrap_err();
    assert!(
        matches!(err, DurableError::Store(StoreError::RunExists(_))),
        "{err}"
    );
}

/// A store whose batches fail after a number of records.
struct Flaky {
    inner: MemoryStore,
    budget: AtomicUsize,
}

impl RunStore for Flaky {
    fn create_run(&self, run: &RunRecord) -> Result<(), StoreError> {
        self.inner.create_run(run)
    }
    fn get_run(&self, run_id: uuid::Uuid) -> Result<RunRecord, StoreError> {
        self.inner.get_run(run_id)
    }
    fn list_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        self.inner.list_runs(limit)
    }
    fn update_run_status(
        &self,
        run_id: uuid::Uuid,
        status: RunState,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.inner.update_run_status(run_id, status, error)
    }
    fn commit_stages(
        &self,
        run_id: uuid::Uuid,
        stages: &[StageRecord],
        existing: OnRecorded,
    ) -> Result<(), StoreError> {
        let left = self.budget.load(Ordering::SeqCst);
        if stages.len() > left {
            return Err(StoreError::Io {
                path: "flaky".into(),
                op: "writing",
                source: std::io::Error::other("disk full"),
            });
        }
        self.budget.fetch_sub(stages.len(), Ordering::SeqCst);
        self.inner.commit_stages(run_id, stages, existing)
    }
    fn load_stages(&self, run_id: uuid::Uuid) -> Result<Vec<StageRecord>, StoreError> {
        self.inner.load_stages(run_id)
    }
    fn count_stages(&self, run_id: uuid::Uuid) -> Result<u64, StoreError> {
        self.inner.count_stages(run_id)
    }
    fn delete_run(&self, run_id: uuid::Uuid) -> Result<(), StoreError> {
        self.inner.delete_run(run_id)
    }
}

#[tokio::test]
async fn a_store_error_while_recording_is_reported_with_the_outcome_and_keeps_what_was_committed() {
    let graph = layered(10, Arc::new(Mutex::new(Vec::new())), None);
    let store = Arc::new(Flaky {
        inner: MemoryStore::new(),
        budget: AtomicUsize::new(12),
    });
    let cp = Checkpoint::new(store.clone()).durability(Durability::EveryStage);
    let err = graph
        .run_durable((), RunOptions::new(), &cp)
        .await
        .unwrap_err();
    let DurableError::Recording {
        run_id, outcome, ..
    } = err
    else {
        panic!("{err}")
    };
    assert!(outcome.is_ok(), "the run itself completed");
    assert_eq!(store.count_stages(run_id).unwrap(), 12);
    // With room again, a resume finishes the run.
    store.budget.store(usize::MAX, Ordering::SeqCst);
    let done = graph.resume(run_id, RunOptions::new(), &cp).await.unwrap();
    assert_eq!(done.restored(), 12);
    assert_eq!(store.count_stages(run_id).unwrap(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_boundary_durability_commits_once_per_segment() {
    let graph = layered(12, Arc::new(Mutex::new(Vec::new())), None);
    let plan = SegmentPlan::by_depth(&graph, 4);
    assert_eq!(plan.len(), 3);
    let store = Arc::new(MemoryStore::new());
    let cp = Checkpoint::new(store.clone())
        .durability(Durability::SegmentBoundaries)
        .segments(plan);
    let done = graph.run_durable((), RunOptions::new(), &cp).await.unwrap();
    assert_eq!(done.batches(), 3);
    assert_eq!(done.committed(), 36);

    // Resume of a segmented run after a crash inside segment 1.
    let reference = graph.run(()).await.unwrap();
    let (store, run_id) = crashed_run(&graph, reference.results(), 14);
    let runs_graph = graph.clone();
    let cp = Checkpoint::new(store.clone())
        .durability(Durability::SegmentBoundaries)
        .segments(SegmentPlan::by_depth(&runs_graph, 4));
    let done = runs_graph
        .resume(run_id, RunOptions::new(), &cp)
        .await
        .unwrap();
    assert_eq!(done.restored(), 14);
    assert_eq!(done.report().stats().started, 22);
    assert_eq!(store.count_stages(run_id).unwrap(), 36);
    assert_eq!(
        sink_values(&graph, done.report().results()),
        sink_values(&graph, reference.results())
    );
}

#[tokio::test]
async fn resuming_a_completed_run_runs_nothing() {
    let runs = Arc::new(Mutex::new(Vec::new()));
    let graph = layered(4, runs.clone(), None);
    let store = Arc::new(MemoryStore::new());
    let cp = Checkpoint::new(store.clone());
    let done = graph.run_durable((), RunOptions::new(), &cp).await.unwrap();
    let run_id = done.report().identity().run_id;
    runs.lock().unwrap().clear();
    let again = graph.resume(run_id, RunOptions::new(), &cp).await.unwrap();
    assert!(runs.lock().unwrap().is_empty());
    assert!(again.report().is_completed());
    assert_eq!(
        sink_values(&graph, again.report().results()),
        sink_values(&graph, done.report().results())
    );
}

/// `draft` outputs its run count (1, 2, ...); `check` (its guard) passes from 2 on; `flaky` fails
/// twice under a 3-attempt retry; `publish` reads `draft`.
fn retried_pipeline() -> Graph {
    use stageflow::intercept::Jitter;
    use stageflow::{GuardRetry, RetryPolicy, StageKind};
    let draft_runs = Arc::new(AtomicUsize::new(0));
    let flaky_runs = Arc::new(AtomicUsize::new(0));
    Pipeline::builder("retried")
        .stage("draft", move |_ctx: StageContext| {
            let n = draft_runs.fetch_add(1, Ordering::SeqCst) + 1;
            async move { StageOutput::ok().with("value", n) }
        })
        .stage("check", |ctx: StageContext| async move {
            let v: usize = ctx.get_from("draft", "value")?;
            Ok::<_, stageflow::StageError>(if v >= 2 {
                StageOutput::ok()
            } else {
                StageOutput::fail(format!("value {v} too low"))
            })
        })
        .after("draft")
        .kind(StageKind::Guard)
        .guard_retry(GuardRetry::attempts(5))
        .stage("flaky", move |_ctx: StageContext| {
            let n = flaky_runs.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n < 3 {
                    StageOutput::retry("not yet")
                } else {
                    StageOutput::ok()
                }
            }
        })
        .retry(
            RetryPolicy::attempts(3)
                .initial_delay(std::time::Duration::from_millis(1))
                .jitter(Jitter::None),
        )
        .stage("publish", |ctx: StageContext| async move {
            let v: usize = ctx.get_from("draft", "value")?;
            Ok::<_, stageflow::StageError>(StageOutput::ok().with("published", v))
        })
        .after(["draft", "check", "flaky"])
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_recorded_as_attempts_and_a_guarded_producer_with_the_accepted_output() {
    let graph = retried_pipeline();
    let store = Arc::new(MemoryStore::new());
    let done = graph
        .run_durable((), RunOptions::new(), &Checkpoint::new(store.clone()))
        .await
        .unwrap();
    let results = done.report().results();
    assert_eq!(results.get("flaky").unwrap().attempts(), 3);
    assert_eq!(
        results.get_data::<usize>("publish", "published").unwrap(),
        2
    );

    let run_id = done.report().identity().run_id;
    let records = store.load_stages(run_id).unwrap();
    let record = |name: &str| records.iter().find(|r| r.stage == name).unwrap();
    let attempts: Vec<(&str, u32)> = ["draft", "check", "flaky", "publish"]
        .into_iter()
        .map(|name| (name, record(name).attempts))
        .collect();
    assert_eq!(
        attempts,
        [("draft", 2), ("check", 2), ("flaky", 3), ("publish", 1)]
    );
    // The producer's record holds the output its guard accepted, not its first one, so a
    // resume from it gives what the uninterrupted run gave.
    let draft = record("draft").output.as_ref().unwrap();
    assert_eq!(draft.get::<usize>("value").unwrap(), 2);
    // Recorded in an order a resume can trust: the producer before its guard.
    let position = |name: &str| records.iter().position(|r| r.stage == name).unwrap();
    assert!(position("draft") < position("check"));

    // Equality and serialization ignore attempts: a restored output equals the live one.
    let restored: StageOutput =
        serde_json::from_str(&serde_json::to_string(results.get("flaky").unwrap()).unwrap())
            .unwrap();
    assert_eq!(&restored, results.get("flaky").unwrap());
    assert_eq!(restored.attempts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_that_rejects_for_good_leaves_its_producer_unrecorded() {
    use stageflow::{GuardRetry, StageKind};
    let graph = Pipeline::builder("rejected")
        .stage("draft", |_ctx: StageContext| async {
            StageOutput::ok().with("value", 1)
        })
        .stage("check", |_ctx: StageContext| async {
            StageOutput::fail("never good enough")
        })
        .after("draft")
        .kind(StageKind::Guard)
        .guard_retry(GuardRetry::attempts(3).stop_on_stagnation(false))
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::new());
    let err = graph
        .run_durable((), RunOptions::new(), &Checkpoint::new(store.clone()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("never good enough"), "{err}");
    let run_id = store.list_runs(10).unwrap()[0].run_id;
    // A resume re-runs the producer: its guard never accepted an output of it.
    assert!(store.load_stages(run_id).unwrap().is_empty());
}
