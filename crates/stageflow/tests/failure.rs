//! Failures: every way a stage can fail, fail-fast in chains and wide graphs, partial results,
//! panics (in stages and conditions), and that the executor survives them.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{chain_name, noop, result_names, DropCounter};
use stageflow::{
    async_trait, FailureCause, Graph, InputError, Pipeline, RunOptions, Stage, StageContext,
    StageError, StageOutput, StageResult, StageSpec,
};

const CHAIN: usize = 10_000;

/// A `CHAIN`-long chain in which stage `fail_at` fails with `boom {fail_at}`; every executed
/// stage increments `ran`.
fn failing_chain(fail_at: usize, ran: &Arc<AtomicUsize>) -> Graph {
    Pipeline::builder("failing")
        .with_linear_chain(CHAIN, |i| {
            let ran = ran.clone();
            StageSpec::new(chain_name(i), move |_ctx: StageContext| {
                ran.fetch_add(1, Ordering::SeqCst);
                async move {
                    if i == fail_at {
                        Err(StageError::msg(format!("boom {i}")))
                    } else {
                        Ok(StageOutput::ok().with("i", i))
                    }
                }
            })
        })
        .build()
        .unwrap()
}

async fn check_chain_failure(fail_at: usize) {
    let ran = Arc::new(AtomicUsize::new(0));
    let graph = failing_chain(fail_at, &ran);
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(failure.stage(), chain_name(fail_at));
    assert_eq!(
        failure.to_string(),
        format!("stage `s_{fail_at}` failed: boom {fail_at}")
    );
    assert_eq!(
        failure.cause(),
        &FailureCause::Error {
            message: format!("boom {fail_at}"),
            retryable: false
        }
    );
    let partial = failure.partial_results();
    assert_eq!(partial.len(), fail_at);
    assert_eq!(
        result_names(partial),
        (0..fail_at).map(chain_name).collect::<Vec<_>>()
    );
    assert!(!partial.contains(&chain_name(fail_at)));
    assert_eq!(
        ran.load(Ordering::SeqCst),
        fail_at + 1,
        "no later stage ran"
    );
    let stats = failure.stats();
    assert_eq!(
        (stats.total, stats.started, stats.succeeded, stats.failed),
        (CHAIN, fail_at + 1, fail_at, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_failure_at_first_stage() {
    check_chain_failure(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_failure_at_middle_stage() {
    check_chain_failure(CHAIN / 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_failure_at_last_stage() {
    check_chain_failure(CHAIN - 1).await;
}

/// Runs `a -> bad -> c` where `bad` is `stage`, and returns the failure.
async fn fail_with(stage: impl Stage) -> stageflow::RunFailure {
    let after = Arc::new(AtomicBool::new(false));
    let seen = after.clone();
    let graph = Pipeline::builder("one")
        .stage("a", |_ctx: StageContext| async {
            StageOutput::ok().with("x", 1)
        })
        .stage("bad", stage)
        .after("a")
        .stage("c", move |_ctx: StageContext| {
            seen.store(true, Ordering::SeqCst);
            async { StageOutput::ok() }
        })
        .after("bad")
        .build()
        .unwrap();
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(failure.stage(), "bad");
    assert_eq!(result_names(failure.partial_results()), ["a"]);
    assert!(!after.load(Ordering::SeqCst));
    assert_eq!(failure.stats().failed, 1);
    failure
}

#[tokio::test]
async fn error_returned_as_err() {
    let failure = fail_with(|_ctx: StageContext| async {
        Err::<StageOutput, _>(StageError::msg("disk full"))
    })
    .await;
    assert_eq!(failure.to_string(), "stage `bad` failed: disk full");
    assert_eq!(
        failure.cause(),
        &FailureCause::Error {
            message: "disk full".into(),
            retryable: false
        }
    );
}

/// A minimal error with a source, to check that the cause chain is reported.
#[derive(Debug)]
struct ReadingConfig {
    inner: std::io::Error,
}

impl std::fmt::Display for ReadingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reading config")
    }
}

impl std::error::Error for ReadingConfig {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.inner)
    }
}

#[tokio::test]
async fn error_with_source_chain_via_question_mark() {
    let failure = fail_with(|_ctx: StageContext| async {
        let r: Result<(), ReadingConfig> = Err(ReadingConfig {
            inner: std::io::Error::other("file not found"),
        });
        r?;
        Ok::<_, StageError>(StageOutput::ok())
    })
    .await;
    assert_eq!(
        failure.to_string(),
        "stage `bad` failed: reading config: file not found"
    );
}

#[tokio::test]
async fn error_returned_as_fail_output() {
    let failure = fail_with(|_ctx: StageContext| async { StageOutput::fail("bad input") }).await;
    assert_eq!(failure.to_string(), "stage `bad` failed: bad input");
    assert_eq!(
        failure.cause(),
        &FailureCause::Error {
            message: "bad input".into(),
            retryable: false
        }
    );
}

#[tokio::test]
async fn error_returned_as_retry_output_is_retryable() {
    let failure = fail_with(|_ctx: StageContext| async { StageOutput::retry("503") }).await;
    assert_eq!(
        failure.cause(),
        &FailureCause::Error {
            message: "503".into(),
            retryable: true
        }
    );
    assert_eq!(
        failure.to_string(),
        "stage `bad` failed: 503 (retryable; no retry policy configured)"
    );
}

#[tokio::test]
async fn retryable_stage_error_is_retryable() {
    let failure = fail_with(|_ctx: StageContext| async {
        Err::<StageOutput, _>(StageError::msg("timeout").retryable())
    })
    .await;
    assert!(matches!(
        failure.cause(),
        FailureCause::Error {
            retryable: true,
            ..
        }
    ));
    assert!(failure.to_string().contains("retryable"));
}

#[tokio::test]
async fn unserializable_output_fails_the_stage() {
    let failure = fail_with(|_ctx: StageContext| async {
        let mut bad = std::collections::HashMap::new();
        bad.insert(vec![1u8], 1);
        StageOutput::ok().with("bad_key", bad)
    })
    .await;
    assert!(failure.to_string().contains("`bad_key`"), "{failure}");
}

struct Panicky;

#[async_trait]
impl Stage for Panicky {
    async fn execute(&self, ctx: StageContext) -> StageResult {
        let explode: bool = ctx.input()?;
        if explode {
            panic!("kaboom {}", 42);
        }
        Ok(StageOutput::ok().with("fine", true))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_caught_and_the_graph_runs_again() {
    let graph = Pipeline::builder("panics")
        .stage("a", noop)
        .stage("p", Panicky)
        .after("a")
        .stage("c", noop)
        .after("p")
        .build()
        .unwrap();
    let failure = graph.run(true).await.unwrap_err();
    assert_eq!(failure.stage(), "p");
    assert_eq!(
        failure.cause(),
        &FailureCause::Panic {
            message: "kaboom 42".into()
        }
    );
    assert_eq!(failure.to_string(), "stage `p` failed: panicked: kaboom 42");
    assert_eq!(result_names(failure.partial_results()), ["a"]);

    // The executor (and the runtime) survive; the same graph runs fine.
    let report = graph.run(false).await.unwrap();
    assert!(report.is_completed());
    assert!(report.results().get_data::<bool>("p", "fine").unwrap());
    // And panics again, the same way.
    let again = graph.run(true).await.unwrap_err();
    assert_eq!(again.cause(), failure.cause());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_after_an_await_in_a_spawned_stage() {
    let graph = Pipeline::builder("late_panic")
        .stage("root", noop)
        .stage("sibling", |_ctx: StageContext| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            StageOutput::ok()
        })
        .after("root")
        .stage("p", |_ctx: StageContext| async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if true {
                panic!("late");
            }
            StageOutput::ok()
        })
        .after("root")
        .build()
        .unwrap();
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(
        failure.cause(),
        &FailureCause::Panic {
            message: "late".into()
        }
    );
}

#[tokio::test]
async fn panic_while_creating_the_future() {
    // A closure stage that panics before returning its future.
    let failure =
        fail_with(|_ctx: StageContext| -> std::future::Ready<StageOutput> { panic!("eager") })
            .await;
    assert_eq!(
        failure.cause(),
        &FailureCause::Panic {
            message: "eager".into()
        }
    );
}

#[tokio::test]
async fn non_string_panic_payload() {
    let failure = fail_with(|_ctx: StageContext| async {
        if true {
            std::panic::panic_any(7u32);
        }
        StageOutput::ok()
    })
    .await;
    assert!(matches!(failure.cause(), FailureCause::Panic { .. }));
}

#[tokio::test]
async fn panic_inside_a_condition() {
    let ran = Arc::new(AtomicBool::new(false));
    let seen = ran.clone();
    let graph = Pipeline::builder("cond_panic")
        .stage("a", noop)
        .stage("guarded", move |_ctx: StageContext| {
            seen.store(true, Ordering::SeqCst);
            async { StageOutput::ok() }
        })
        .after("a")
        .when(|_inputs| -> bool { panic!("bad predicate") })
        .build()
        .unwrap();
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(failure.stage(), "guarded");
    match failure.cause() {
        FailureCause::Panic { message } => {
            assert!(message.contains("bad predicate"), "{message}");
            assert!(message.contains("condition"), "{message}");
        }
        other => panic!("expected a panic, got {other:?}"),
    }
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(result_names(failure.partial_results()), ["a"]);
    // Survives: run again, same outcome.
    assert!(graph.run(()).await.is_err());
}

#[tokio::test]
async fn failing_condition_fails_the_stage() {
    let ran = Arc::new(AtomicBool::new(false));
    let seen = ran.clone();
    let graph = Pipeline::builder("cond_err")
        .stage("a", |_ctx: StageContext| async {
            StageOutput::ok().with("flag", "yes")
        })
        .stage("guarded", move |_ctx: StageContext| {
            seen.store(true, Ordering::SeqCst);
            async { StageOutput::ok() }
        })
        .after("a")
        .when(|inputs| inputs.get_from::<bool>("a", "flag"))
        .stage("after", noop)
        .after("guarded")
        .build()
        .unwrap();
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(failure.stage(), "guarded");
    match failure.cause() {
        FailureCause::Condition { message } => {
            assert!(
                message.contains("`flag`") && message.contains("bool"),
                "{message}"
            );
        }
        other => panic!("expected a condition failure, got {other:?}"),
    }
    assert!(failure
        .to_string()
        .starts_with("stage `guarded` failed: condition failed: "));
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(result_names(failure.partial_results()), ["a"]);
}

#[tokio::test]
async fn condition_may_return_its_own_error() {
    let graph = Pipeline::builder("cond_own")
        .stage("a", noop)
        .stage("b", noop)
        .after("a")
        .when(|_inputs| Err::<bool, _>(StageError::msg("not allowed")))
        .build()
        .unwrap();
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(
        failure.cause(),
        &FailureCause::Condition {
            message: "not allowed".into()
        }
    );
    assert_eq!(
        failure.to_string(),
        "stage `b` failed: condition failed: not allowed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_in_a_wide_graph() {
    const SLEEPERS: usize = 40;
    let failed = Arc::new(AtomicBool::new(false));
    let started_after_failure = Arc::new(AtomicUsize::new(0));
    let finished_sleeping = Arc::new(AtomicUsize::new(0));
    let observed = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));

    // Every stage body first checks whether the failure already happened.
    let guard_start = {
        let failed = failed.clone();
        let late = started_after_failure.clone();
        move || {
            if failed.load(Ordering::SeqCst) {
                late.fetch_add(1, Ordering::SeqCst);
            }
        }
    };

    let mut p = Pipeline::builder("wide").stage("root", noop);
    for i in 0..SLEEPERS {
        let (g, fin, obs, drp) = (
            guard_start.clone(),
            finished_sleeping.clone(),
            observed.clone(),
            dropped.clone(),
        );
        p = p
            .stage(format!("sleeper_{i}"), move |ctx: StageContext| {
                g();
                let (fin, obs, guard) = (fin.clone(), obs.clone(), DropCounter(drp.clone()));
                async move {
                    let _guard = guard;
                    tokio::select! {
                        () = ctx.cancelled() => {
                            obs.fetch_add(1, Ordering::SeqCst);
                        }
                        () = tokio::time::sleep(Duration::from_secs(30)) => {
                            fin.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    StageOutput::ok()
                }
            })
            .after("root");
        let g = guard_start.clone();
        p = p
            .stage(format!("after_{i}"), move |_ctx: StageContext| {
                g();
                async { StageOutput::ok() }
            })
            .after(format!("sleeper_{i}"));
    }
    let f = failed.clone();
    let g = guard_start.clone();
    p = p
        .stage("failer", move |_ctx: StageContext| {
            g();
            let f = f.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                f.store(true, Ordering::SeqCst);
                StageOutput::fail("exploded")
            }
        })
        .after("root");
    let graph = p.build().unwrap();

    let start = Instant::now();
    let failure = graph.run(()).await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(failure.to_string(), "stage `failer` failed: exploded");
    assert_eq!(finished_sleeping.load(Ordering::SeqCst), 0);
    // Every sleeper is gone (dropped) before the run returns; some may have seen the signal.
    assert_eq!(dropped.load(Ordering::SeqCst), SLEEPERS);
    assert!(observed.load(Ordering::SeqCst) <= SLEEPERS);
    assert_eq!(started_after_failure.load(Ordering::SeqCst), 0);
    // A sleeper that saw the cancellation and returned before its abort landed may keep its
    // output; every other sleeper was cancelled. Nothing downstream of a sleeper ran.
    let partial = failure.partial_results();
    assert!(partial.contains("root"));
    assert!(!partial.contains("failer"));
    let kept = partial
        .names()
        .filter(|n| n.starts_with("sleeper_"))
        .count();
    assert!(kept <= observed.load(Ordering::SeqCst));
    assert_eq!(partial.len(), 1 + kept, "{:?}", result_names(partial));
    assert_eq!(failure.stats().cancelled + kept, SLEEPERS);
    // Nothing of the run is still running: give stragglers a chance, then recheck.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(started_after_failure.load(Ordering::SeqCst), 0);
    assert_eq!(finished_sleeping.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_with_a_concurrency_cap_starts_no_queued_stage() {
    let late = Arc::new(AtomicUsize::new(0));
    let started_count = Arc::new(AtomicUsize::new(0));
    let (l, s) = (late.clone(), started_count.clone());
    let graph = Pipeline::builder("capped")
        .stage("root", noop)
        .with_parallel("root", 100, move |i| {
            let (l, s) = (l.clone(), s.clone());
            StageSpec::new(format!("p{i}"), move |ctx: StageContext| {
                s.fetch_add(1, Ordering::SeqCst);
                // The run's token fires as soon as the run stops: starting after it is a bug.
                if ctx.is_cancelled() {
                    l.fetch_add(1, Ordering::SeqCst);
                }
                async move {
                    if i == 10 {
                        return StageOutput::fail("p10 broke");
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    StageOutput::ok()
                }
            })
        })
        .build()
        .unwrap();
    let failure = graph
        .run_with((), RunOptions::new().max_concurrency(3))
        .await
        .unwrap_err();
    assert_eq!(failure.stage(), "p10");
    assert_eq!(late.load(Ordering::SeqCst), 0);
    // p10 is the 11th stage to start and fails at once; with 3 slots of 2 ms stages, the queue
    // is nowhere near drained when the failure lands.
    let started = started_count.load(Ordering::SeqCst);
    assert!(
        started < 50,
        "started {started} of 100 stages after an early failure"
    );
    assert_eq!(failure.stats().started, started + 1, "root counts too");
    assert!(!failure.partial_results().contains("p10"));
    // Nothing of the run is left: the count does not move afterwards.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(started_count.load(Ordering::SeqCst), started);
}

#[tokio::test]
async fn input_error_in_stage_is_reported() {
    let failure = fail_with(|ctx: StageContext| async move {
        let x: i64 = ctx.get_from("a", "missing")?;
        Ok::<_, InputError>(StageOutput::ok().with("x", x))
    })
    .await;
    let text = failure.to_string();
    assert!(
        text.starts_with("stage `bad` failed: stage `bad` reading `a`: no key `missing`"),
        "{text}"
    );
}
