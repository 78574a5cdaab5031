//! Failure policies: fail-fast (default) and continue-on-failure.

use std::time::Duration;

use stageflow::run::UPSTREAM_FAILED;
use stageflow::{
    FailureCause, FailurePolicy, Pipeline, RunOptions, StageContext, StageError, StageOutput,
    UpstreamSkip,
};

fn ok(_ctx: StageContext) -> std::future::Ready<StageOutput> {
    std::future::ready(StageOutput::ok())
}

/// ```text
/// root -> bad -> after_bad -> deeper ----\
///      \                                  merge
///       -> good -> after_good -----------/
///      \
///       -> also_bad (error)
/// ```
fn branching() -> stageflow::Graph {
    Pipeline::builder("branches")
        .stage("root", ok)
        .stage("bad", |_ctx: StageContext| async {
            StageOutput::fail("bad data")
        })
        .after("root")
        .stage("after_bad", ok)
        .after("bad")
        .stage("deeper", ok)
        .after("after_bad")
        .stage("good", |_ctx: StageContext| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            StageOutput::ok().with("v", 1)
        })
        .after("root")
        .stage("after_good", ok)
        .after("good")
        .stage("merge", ok)
        .after(["deeper", "after_good"])
        .stage("also_bad", |_ctx: StageContext| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err::<StageOutput, _>(StageError::msg("timeout talking to db").retryable())
        })
        .after("root")
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn continue_on_failure_finishes_independent_branches_and_skips_downstream() {
    let failure = branching()
        .run_with(
            (),
            RunOptions::new().failure_policy(FailurePolicy::Continue),
        )
        .await
        .unwrap_err();
    assert_eq!(failure.stage(), "bad");
    assert_eq!(
        failure.to_string(),
        "stage `bad` failed: bad data (and 1 more failed stages)"
    );
    let failed: Vec<(&str, &FailureCause)> = failure
        .failures()
        .iter()
        .map(|f| (f.stage.as_str(), &f.cause))
        .collect();
    assert_eq!(
        failed,
        [
            (
                "bad",
                &FailureCause::Error {
                    message: "bad data".into(),
                    retryable: false
                }
            ),
            (
                "also_bad",
                &FailureCause::Error {
                    message: "timeout talking to db".into(),
                    retryable: true
                }
            ),
        ]
    );
    let skip = |stage: &str, failed: &str| UpstreamSkip {
        stage: stage.into(),
        failed: failed.into(),
    };
    assert_eq!(
        failure.skipped_upstream(),
        [
            skip("after_bad", "bad"),
            skip("deeper", "bad"),
            skip("merge", "bad")
        ]
    );
    let results = failure.partial_results();
    assert!(results.get("good").unwrap().is_ok());
    assert!(results.get("after_good").unwrap().is_ok());
    for stage in ["after_bad", "deeper", "merge"] {
        let out = results.get(stage).unwrap();
        assert!(out.is_skipped());
        assert_eq!(out.message(), Some(UPSTREAM_FAILED));
    }
    assert_eq!(results.get("bad").unwrap().message(), Some("bad data"));
    let stats = failure.stats();
    assert_eq!((stats.failed, stats.skipped, stats.succeeded), (2, 3, 3));
}

#[tokio::test(start_paused = true)]
async fn fail_fast_is_the_default() {
    let failure = branching().run(()).await.unwrap_err();
    // `bad` fails first (at once); everything else stops.
    assert_eq!(failure.stage(), "bad");
    assert_eq!(failure.failures().len(), 1);
    assert!(failure.skipped_upstream().is_empty());
    assert!(!failure.partial_results().contains("after_good"));
}

#[tokio::test(start_paused = true)]
async fn continue_without_failures_completes() {
    let graph = Pipeline::builder("p")
        .stage("a", ok)
        .stage("b", ok)
        .after("a")
        .build()
        .unwrap();
    let report = graph
        .run_with(
            (),
            RunOptions::new().failure_policy(FailurePolicy::Continue),
        )
        .await
        .unwrap();
    assert!(report.is_completed());
}
