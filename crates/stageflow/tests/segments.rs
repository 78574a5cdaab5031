//! Segmentation: plans, barriers between segments, events, retention.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stageflow::observe::MemorySink;
use stageflow::segment::{SegmentError, SegmentPlan, SegmentRunError};
use stageflow::{Graph, Pipeline, Retention, RunOptions, StageContext, StageOutput, StageSpec};

/// Two independent chains `a0..a{n}` (slow) and `b0..b{n}` (fast), joined by `end`.
fn two_chains(n: usize, log: Arc<Mutex<Vec<String>>>) -> Graph {
    let mut p = Pipeline::builder("two");
    for chain in ["a", "b"] {
        for i in 0..n {
            let log = log.clone();
            let deps: Vec<String> = if i == 0 {
                vec![]
            } else {
                vec![format!("{chain}{}", i - 1)]
            };
            p = p.add(
                StageSpec::new(format!("{chain}{i}"), move |ctx: StageContext| {
                    let log = log.clone();
                    async move {
                        if ctx.stage_name().starts_with('a') {
                            tokio::time::sleep(Duration::from_millis(3)).await;
                        }
                        log.lock().unwrap().push(ctx.stage_name().to_owned());
                        StageOutput::ok().with("v", 1)
                    }
                })
                .after(deps),
            );
        }
    }
    p.stage("end", |_ctx: StageContext| async { StageOutput::ok() })
        .after([format!("a{}", n - 1), format!("b{}", n - 1)])
        .build()
        .unwrap()
}

#[test]
fn plans_by_depth_list_stages_and_cross_edges_and_round_trip() {
    let graph = two_chains(4, Arc::default());
    let plan = SegmentPlan::by_depth(&graph, 2);
    assert_eq!(plan.len(), 3);
    assert_eq!(plan.segments[0].stages, ["a0", "a1", "b0", "b1"]);
    assert_eq!(plan.segments[1].stages, ["a2", "a3", "b2", "b3"]);
    assert_eq!(plan.segments[2].stages, ["end"]);
    let crossing: Vec<(&str, &str)> = plan
        .cross_edges
        .iter()
        .map(|e| (e.from.as_str(), e.to.as_str()))
        .collect();
    assert_eq!(
        crossing,
        [("a1", "a2"), ("b1", "b2"), ("a3", "end"), ("b3", "end")]
    );
    assert!(plan
        .cross_edges
        .iter()
        .all(|e| e.from_segment < e.to_segment));
    let json = serde_json::to_value(&plan).unwrap();
    let back: SegmentPlan = serde_json::from_value(json).unwrap();
    assert_eq!(back, plan);
    back.check(&graph).unwrap();

    // Depth is the longest path: `end` is at depth 4 even though b-chain is as long.
    let every1 = SegmentPlan::by_depth(&graph, 1);
    assert_eq!(every1.len(), 5);
}

#[test]
fn plans_that_do_not_fit_are_refused_with_clear_errors() {
    let graph = two_chains(3, Arc::default());
    let other = two_chains(4, Arc::default());
    let plan = SegmentPlan::by_depth(&other, 2);
    assert!(matches!(
        plan.check(&graph),
        Err(SegmentError::OtherPipeline { .. })
    ));

    let mut backward = SegmentPlan::by_depth(&graph, 2);
    // Swap a1 (segment 0) and a2 (segment 1): a2 would run before its dependency a1.
    backward.segments[0].stages.retain(|s| s != "a1");
    backward.segments[1].stages.retain(|s| s != "a2");
    backward.segments[0].stages.push("a2".into());
    backward.segments[1].stages.push("a1".into());
    let err = backward.check(&graph).unwrap_err();
    assert!(matches!(err, SegmentError::Backward { .. }), "{err}");

    let mut missing = SegmentPlan::by_depth(&graph, 2);
    missing.segments[0].stages.pop();
    assert!(matches!(
        missing.check(&graph),
        Err(SegmentError::Coverage { count: 0, .. })
    ));

    let err = SegmentPlan::at_boundaries(&graph, ["nope"]).unwrap_err();
    assert_eq!(err, SegmentError::UnknownStage("nope".into()));
    assert!(err.to_string().contains("`nope`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_starts_only_after_the_previous_one_finished() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let graph = two_chains(4, log.clone());
    let plan = SegmentPlan::by_depth(&graph, 2);
    let sink = MemorySink::new();
    let report = graph
        .run_segmented((), RunOptions::new().events(sink.clone()), &plan)
        .await
        .unwrap();
    assert!(report.is_completed());
    let order = log.lock().unwrap().clone();
    let position = |s: &str| order.iter().position(|x| x == s).unwrap();
    // Without the barrier, the fast b2 would run long before the slow a1 finished.
    for first in &plan.segments[0].stages {
        for second in &plan.segments[1].stages {
            assert!(
                position(first) < position(second),
                "{first} before {second}: {order:?}"
            );
        }
    }
    let types = sink.event_types();
    for k in 0..3 {
        assert!(
            types.contains(&format!("segment.{k}.completed")),
            "{types:?}"
        );
    }
    let completed: Vec<_> = sink
        .events()
        .into_iter()
        .filter(|e| e.event_type() == "segment.1.completed")
        .collect();
    assert_eq!(completed[0].data["stages"], 4);
    assert_eq!(completed[0].data["stages_done"], 8);
    assert_eq!(completed[0].data["segments"], 3);
}

#[tokio::test]
async fn explicit_boundaries_and_retention_of_sinks_only() {
    let graph = two_chains(4, Arc::default());
    let plan = SegmentPlan::at_boundaries(&graph, ["a2", "b3"]).unwrap();
    // a2 starts segment 1 (with a3); b3 starts segment 1 too; end follows both.
    assert_eq!(plan.segments[0].stages, ["a0", "a1", "b0", "b1", "b2"]);
    assert_eq!(plan.segments[1].stages, ["a2", "a3", "b3", "end"]);
    let report = graph
        .run_segmented((), RunOptions::new().retention(Retention::Sinks), &plan)
        .await
        .unwrap();
    assert_eq!(report.results().names().collect::<Vec<_>>(), ["end"]);
    assert_eq!(report.stats().succeeded, 9);

    let other = two_chains(2, Arc::default());
    let err = other
        .run_segmented((), RunOptions::new(), &plan)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SegmentRunError::Plan(SegmentError::OtherPipeline { .. })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_failure_in_a_segment_stops_the_run() {
    let graph = Pipeline::builder("f")
        .stage("a", |_c: StageContext| async { StageOutput::ok() })
        .stage("b", |_c: StageContext| async { StageOutput::fail("boom") })
        .after("a")
        .stage("c", |_c: StageContext| async { StageOutput::ok() })
        .after("b")
        .build()
        .unwrap();
    let plan = SegmentPlan::by_depth(&graph, 1);
    let err = graph
        .run_segmented((), RunOptions::new(), &plan)
        .await
        .unwrap_err();
    let SegmentRunError::Failed(failure) = err else {
        panic!("{err}")
    };
    assert_eq!(failure.stage(), "b");
    assert!(!failure.partial_results().contains("c"));
}
