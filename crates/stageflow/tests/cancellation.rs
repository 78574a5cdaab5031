//! Cancellation: latency, grace period, cleanup order, partial results, in wide and deep
//! pipelines.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stageflow::{
    CancellationToken, Graph, Pipeline, RunOptions, RunReport, RunStatus, StageContext, StageError,
    StageOutput, StageSpec,
};

type Log = Arc<Mutex<Vec<String>>>;

/// A stage that logs its start, registers a cleanup that logs `cleanup <name>`, then sleeps
/// `d` (or until cancelled, when `until_cancel`).
fn working(
    log: &Log,
    d: Duration,
) -> impl Fn(StageContext) -> futures_util::future::BoxFuture<'static, StageOutput> + Send + Sync + Clone
{
    let log = log.clone();
    move |ctx: StageContext| {
        let log = log.clone();
        Box::pin(async move {
            let name = ctx.stage_name().to_owned();
            log.lock().unwrap().push(format!("start {name}"));
            let cleanup_log = log.clone();
            let cleanup_name = name.clone();
            ctx.on_cleanup(format!("release {name}"), move || async move {
                cleanup_log
                    .lock()
                    .unwrap()
                    .push(format!("cleanup {cleanup_name}"));
            });
            tokio::time::sleep(d).await;
            StageOutput::ok()
        })
    }
}

/// Runs `graph`, cancelling it through its token `after` into the run.
async fn run_cancelled_after(graph: &Graph, after: Duration) -> RunReport {
    let token = CancellationToken::new();
    let canceller = {
        let token = token.clone();
        async move {
            tokio::time::sleep(after).await;
            token.cancel();
        }
    };
    let (report, ()) = tokio::join!(
        graph.run_with((), RunOptions::new().cancel_token(token)),
        canceller
    );
    report.unwrap()
}

fn entries(log: &Log, prefix: &str) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|e| e.strip_prefix(prefix).map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_cancel_is_observed_within_10ms() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let graph = Pipeline::builder("p")
        .stage("long", move |ctx: StageContext| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(None); // started
                ctx.cancelled().await;
                let _ = tx.send(Some(std::time::Instant::now()));
                StageOutput::ok()
            }
        })
        .build()
        .unwrap();
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let token = CancellationToken::new();
        let run = tokio::spawn({
            let graph = graph.clone();
            let token = token.clone();
            async move {
                // A grace period, so the stage is not dropped before it reports what it saw.
                let options = RunOptions::new()
                    .cancel_token(token)
                    .cancel_grace(Duration::from_millis(100));
                graph.run_with((), options).await
            }
        });
        assert_eq!(rx.recv().await, Some(None));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let cancelled_at = std::time::Instant::now();
        token.cancel();
        let seen = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the stage saw the cancel")
            .unwrap()
            .unwrap();
        worst = worst.max(seen - cancelled_at);
        let report = run.await.unwrap().unwrap();
        assert!(matches!(
            report.status(),
            RunStatus::Cancelled { stage: None, .. }
        ));
    }
    println!("worst external-cancel latency over 20 runs: {worst:?}");
    assert!(worst < Duration::from_millis(10), "{worst:?}");
}

#[tokio::test(start_paused = true)]
async fn cancel_a_wide_pipeline() {
    let log: Log = Arc::default();
    let graph = Pipeline::builder("wide")
        .with_fan_out_fan_in(
            StageSpec::new("source", working(&log, Duration::from_millis(10))),
            20,
            |i| {
                StageSpec::new(
                    format!("w{i:02}"),
                    working(&log, Duration::from_secs(i as u64 + 1)),
                )
            },
            StageSpec::new("sink", working(&log, Duration::ZERO)),
        )
        .build()
        .unwrap();
    // w00 (1 s) and w01 (2 s) finish; the others are running at 2.5 s.
    let report = run_cancelled_after(&graph, Duration::from_millis(2510)).await;
    assert!(matches!(
        report.status(),
        RunStatus::Cancelled { stage: None, .. }
    ));
    let started = entries(&log, "start ");
    assert_eq!(started.len(), 21, "source and 20 workers; never the sink");
    assert!(!started.contains(&"sink".to_owned()));
    let done: Vec<&str> = report.results().names().collect();
    assert_eq!(done, ["source", "w00", "w01"]);
    assert_eq!(report.stats().cancelled, 18);
    // Cleanups: all of them, last registered first.
    let mut expected = started.clone();
    expected.reverse();
    assert_eq!(entries(&log, "cleanup "), expected);
    assert!(report.cleanup_errors().is_empty());
}

#[tokio::test(start_paused = true)]
async fn cancel_a_deep_pipeline() {
    let log: Log = Arc::default();
    let graph = Pipeline::builder("deep")
        .with_linear_chain(50, |i| {
            StageSpec::new(
                format!("s{i:02}"),
                working(&log, Duration::from_millis(100)),
            )
        })
        .build()
        .unwrap();
    let report = run_cancelled_after(&graph, Duration::from_millis(550)).await;
    let started = entries(&log, "start ");
    assert_eq!(started, ["s00", "s01", "s02", "s03", "s04", "s05"]);
    let done: Vec<&str> = report.results().names().collect();
    assert_eq!(done, ["s00", "s01", "s02", "s03", "s04"]);
    assert_eq!(report.stats().cancelled, 1);
    assert_eq!(
        entries(&log, "cleanup "),
        ["s05", "s04", "s03", "s02", "s01", "s00"]
    );
}

/// A stage that, once cancelled, needs `wrap_up` to finish.
fn graceful(
    wrap_up: Duration,
) -> impl Fn(StageContext) -> futures_util::future::BoxFuture<'static, StageOutput> + Send + Sync {
    move |ctx: StageContext| {
        Box::pin(async move {
            ctx.cancelled().await;
            tokio::time::sleep(wrap_up).await;
            StageOutput::ok().with("flushed", true)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn grace_period_keeps_outputs_of_stages_that_finish_in_time() {
    let graph = Pipeline::builder("p")
        .stage("quick", graceful(Duration::from_millis(50)))
        .stage("slow", graceful(Duration::from_millis(500)))
        .build()
        .unwrap();
    let run = |grace: Duration| {
        let graph = graph.clone();
        async move {
            let token = CancellationToken::new();
            let t = token.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                t.cancel();
            });
            let start = tokio::time::Instant::now();
            let report = graph
                .run_with(
                    (),
                    RunOptions::new().cancel_token(token).cancel_grace(grace),
                )
                .await
                .unwrap();
            (report, start.elapsed())
        }
    };
    let (report, elapsed) = run(Duration::from_millis(100)).await;
    assert_eq!(report.results().names().collect::<Vec<_>>(), ["quick"]);
    assert_eq!(report.stats().cancelled, 1);
    assert_eq!(elapsed, Duration::from_millis(1100));
    // No grace (the default): dropped at once.
    let (report, elapsed) = run(Duration::ZERO).await;
    assert!(report.results().is_empty());
    assert_eq!(report.stats().cancelled, 2);
    assert_eq!(elapsed, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn cleanup_errors_are_reported_never_swallowed() {
    let graph = Pipeline::builder("p")
        .stage("a", |ctx: StageContext| async move {
            ctx.on_cleanup("ok", || async {});
            ctx.on_cleanup("fails", || async {
                Err::<(), _>(StageError::msg("disk gone"))
            });
            ctx.on_cleanup("hangs", || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
            ctx.on_cleanup("panics", || async {
                if true {
                    panic!("cleanup bug");
                }
            });
            StageOutput::fail("stage failed")
        })
        .build()
        .unwrap();
    let failure = graph
        .run_with(
            (),
            RunOptions::new().cleanup_timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    let errors: Vec<String> = failure
        .cleanup_errors()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "cleanup `panics` of stage `a` failed: panicked: cleanup bug",
            "cleanup `hangs` of stage `a` failed: timed out after 200ms",
            "cleanup `fails` of stage `a` failed: disk gone",
        ]
    );
}
