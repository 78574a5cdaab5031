//! Subpipelines: child runs, their identity and events, depth limit, cancel cascade, and deep
//! nesting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stageflow::observe::MemorySink;
use stageflow::subpipeline::Subpipeline;
use stageflow::{
    CancellationToken, FailureCause, Graph, Pipeline, RunIdentity, RunOptions, RunStatus,
    StageContext, StageOutput,
};

fn leaf(seen: Arc<Mutex<Vec<RunIdentity>>>) -> Graph {
    Pipeline::builder("leaf")
        .stage("a", move |ctx: StageContext| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(ctx.identity().clone());
                let n: i64 = ctx.input()?;
                Ok::<_, stageflow::InputError>(StageOutput::ok().with("n", n + 1))
            }
        })
        .stage("b", |ctx: StageContext| async move {
            let n: i64 = ctx.get_from("a", "n")?;
            Ok::<_, stageflow::InputError>(StageOutput::ok().with("n", n * 10).with("tag", "b"))
        })
        .after("a")
        .stage("c", |_ctx: StageContext| async {
            StageOutput::ok().with("n", 0)
        })
        .build()
        .unwrap()
}

/// `levels` nested pipelines: level k runs level k-1 as stage `sub`, then `out` = its depth + 1.
/// Returned outermost first (drop order: outer before inner, so no drop recursion).
fn nested(levels: usize, max_depth: u32) -> Vec<Graph> {
    let mut graphs: Vec<Graph> = Vec::with_capacity(levels + 1);
    graphs.push(
        Pipeline::builder("level0")
            .stage("out", |_ctx: StageContext| async {
                StageOutput::ok().with("depth", 0u64)
            })
            .build()
            .unwrap(),
    );
    for k in 1..=levels {
        let inner = graphs[k - 1].clone();
        graphs.push(
            Pipeline::builder(format!("level{k}"))
                .stage("sub", Subpipeline::new(inner).max_depth(max_depth))
                .stage("out", |ctx: StageContext| async move {
                    let inner: serde_json::Value = ctx.get_from("sub", "out")?;
                    let depth = inner["depth"].as_u64().unwrap_or(0);
                    Ok::<_, stageflow::InputError>(StageOutput::ok().with("depth", depth + 1))
                })
                .after("sub")
                .build()
                .unwrap(),
        );
    }
    graphs.reverse();
    graphs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_child_results_sinks_become_the_stage_output_and_identities_are_linked() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let child = leaf(seen.clone());
    let parent = Pipeline::builder("parent")
        .stage("sub", Subpipeline::new(child.clone()))
        .stage(
            "sub2",
            Subpipeline::new(child).input(|_ctx| Ok(serde_json::json!(100))),
        )
        .build()
        .unwrap();
    let identity = RunIdentity::new()
        .with_request_id("req-1")
        .with_user_id("u");
    let report = parent
        .run_with(4, RunOptions::new().identity(identity.clone()))
        .await
        .unwrap();
    let sub = report.results().get("sub").unwrap();
    let mut keys: Vec<&str> = sub.data().keys().collect();
    keys.sort();
    assert_eq!(keys, ["b", "c"], "the child's sinks, by stage name");
    assert_eq!(
        sub.get::<serde_json::Value>("b").unwrap(),
        serde_json::json!({"n": 50, "tag": "b"})
    );
    assert_eq!(
        report
            .results()
            .get("sub2")
            .unwrap()
            .get::<serde_json::Value>("b")
            .unwrap()["n"],
        1010
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for child in seen.iter() {
        assert_ne!(child.run_id, identity.run_id);
        assert_eq!(child.parent_run_id, Some(identity.run_id));
        assert_eq!(child.root_run_id, Some(identity.run_id));
        assert_eq!(child.depth, 1);
        assert_eq!(child.request_id.as_deref(), Some("req-1"));
        assert_eq!(child.user_id.as_deref(), Some("u"));
    }
    assert_ne!(seen[0].run_id, seen[1].run_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_events_go_to_the_parent_sink_and_carry_the_parent_and_root_ids() {
    let graphs = nested(3, 10);
    let sink = MemorySink::new();
    let identity = RunIdentity::new();
    let report = graphs[0]
        .run_with(
            (),
            RunOptions::new()
                .identity(identity.clone())
                .events(sink.clone()),
        )
        .await
        .unwrap();
    assert_eq!(report.results().get_data::<u64>("out", "depth").unwrap(), 3);
    let events = sink.events();
    let runs: std::collections::HashSet<_> = events.iter().map(|e| e.run_id).collect();
    assert_eq!(runs.len(), 4, "the root run and three child runs");
    for event in &events {
        if event.run_id == identity.run_id {
            assert_eq!(event.parent_run_id, None);
        } else {
            assert_eq!(event.root_run_id, Some(identity.run_id), "{event:?}");
            assert!(event.parent_run_id.is_some());
            let line = event.to_json_line();
            assert!(line.contains("\"root_run_id\""), "{line}");
            let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
            let serialized = serde_json::to_value(event).unwrap();
            for key in ["run_id", "parent_run_id", "root_run_id", "type"] {
                assert_eq!(parsed[key], serialized[key]);
            }
            assert_eq!(parsed["root_run_id"], identity.run_id.to_string());
        }
    }
    assert!(sink
        .event_types()
        .iter()
        .any(|t| t == "subpipeline.completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nesting_deeper_than_the_limit_fails_with_a_clear_error() {
    let graphs = nested(5, 3);
    let failure = graphs[0].run(()).await.unwrap_err();
    let FailureCause::Error { message, .. } = failure.cause() else {
        panic!("{failure}")
    };
    assert!(message.contains("nesting depth 4"), "{message}");
    assert!(message.contains("maximum of 3"), "{message}");
    // Within the limit, it runs.
    let graphs = nested(3, 3);
    assert!(graphs[0].run(()).await.unwrap().is_completed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_parent_cancels_every_descendant() {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = Arc::new(Mutex::new(Some(started_tx)));
    let inner_token: Arc<Mutex<Option<CancellationToken>>> = Arc::new(Mutex::new(None));
    let inner_token_in = inner_token.clone();
    let innermost = Pipeline::builder("inner")
        .stage("wait", move |ctx: StageContext| {
            let started_tx = started_tx.clone();
            let inner_token = inner_token_in.clone();
            async move {
                *inner_token.lock().unwrap() = Some(ctx.cancellation_token());
                assert_eq!(ctx.identity().depth, 2);
                if let Some(tx) = started_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                ctx.cancelled().await;
                StageOutput::ok()
            }
        })
        .build()
        .unwrap();
    let middle = Pipeline::builder("middle")
        .stage("sub", Subpipeline::new(innermost))
        .build()
        .unwrap();
    let outer = Pipeline::builder("outer")
        .stage("sub", Subpipeline::new(middle))
        .build()
        .unwrap();
    let token = CancellationToken::new();
    let run = tokio::spawn({
        let token = token.clone();
        async move {
            outer
                .run_with((), RunOptions::new().cancel_token(token))
                .await
        }
    });
    tokio::time::timeout(Duration::from_secs(10), started_rx)
        .await
        .unwrap()
        .unwrap();
    let grandchild = inner_token.lock().unwrap().clone().unwrap();
    assert!(!grandchild.is_cancelled());
    token.cancel();
    assert!(
        grandchild.is_cancelled(),
        "the grandchild's token is a descendant of the caller's"
    );
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(report.status(), RunStatus::Cancelled { .. }),
        "{:?}",
        report.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_levels_of_nesting_run_without_overflowing_the_stack() {
    let graphs = nested(10_000, 10_000);
    let report = graphs[0].run(()).await.unwrap();
    assert_eq!(
        report.results().get_data::<u64>("out", "depth").unwrap(),
        10_000
    );
    drop(report);
    drop(graphs);
}
