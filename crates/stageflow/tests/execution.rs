//! Run semantics: data flow, skips and their propagation, conditions and routing, cancellation,
//! retention, input accessors and their errors, identity, kinds.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{noop, result_names, DropCounter};
use serde_json::json;
use stageflow::{
    async_trait, CancellationToken, InputError, Pipeline, Retention, RunIdentity, RunOptions,
    RunStatus, Stage, StageContext, StageError, StageKind, StageOutput, StageResult, StageSpec,
    StageStatus,
};

/// A stage that counts its executions and outputs `value`.
fn counted(counter: &Arc<AtomicUsize>, value: i64) -> impl Stage {
    let counter = counter.clone();
    move |_ctx: StageContext| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move { StageOutput::ok().with("value", value) }
    }
}

#[tokio::test]
async fn data_flows_along_edges_and_stats_add_up() {
    let graph = Pipeline::builder("diamond")
        .stage("top", |ctx: StageContext| async move {
            let n: i64 = ctx.input()?;
            Ok::<_, InputError>(StageOutput::ok().with("n", n))
        })
        .stage("left", |ctx: StageContext| async move {
            let n: i64 = ctx.get_from("top", "n")?;
            Ok::<_, InputError>(StageOutput::ok().with("l", n * 2))
        })
        .after("top")
        .stage("right", |ctx: StageContext| async move {
            let n: i64 = ctx.get_from("top", "n")?;
            Ok::<_, InputError>(StageOutput::ok().with("r", n + 1))
        })
        .after("top")
        .stage("bottom", |ctx: StageContext| async move {
            // `get` finds a key in whichever single dependency has it.
            let l: i64 = ctx.get("l")?;
            let r: i64 = ctx.get("r")?;
            Ok::<_, InputError>(StageOutput::ok().with("sum", l + r))
        })
        .after(["left", "right"])
        .build()
        .unwrap();
    let report = graph.run(json!(10)).await.unwrap();
    assert!(report.is_completed());
    assert_eq!(report.status(), &RunStatus::Completed);
    assert_eq!(
        report.results().get_data::<i64>("bottom", "sum").unwrap(),
        31
    );
    assert_eq!(
        result_names(report.results()),
        ["top", "left", "right", "bottom"]
    );
    let stats = *report.stats();
    assert_eq!(
        (stats.total, stats.started, stats.succeeded, stats.skipped),
        (4, 4, 4, 0)
    );
    assert_eq!((stats.failed, stats.cancelled, stats.finished()), (0, 0, 4));
    let json = report.results().to_json();
    assert_eq!(json["bottom"]["data"]["sum"], json!(31));
    assert_eq!(json["bottom"]["status"], json!("ok"));
}

#[tokio::test]
async fn stages_may_return_unit_or_result_unit() {
    let graph = Pipeline::builder("unit")
        .stage("a", |_ctx: StageContext| async {})
        .stage("b", |_ctx: StageContext| async { Ok::<(), StageError>(()) })
        .after("a")
        .build()
        .unwrap();
    let report = graph.run(()).await.unwrap();
    assert!(report.results().get("a").unwrap().is_ok());
    assert!(report.results().get("b").unwrap().data().is_empty());
}

#[tokio::test]
async fn skip_keeps_its_reason_and_dependents_still_run() {
    let after = Arc::new(AtomicUsize::new(0));
    let graph = Pipeline::builder("skip")
        .stage("root", noop)
        .stage("lazy", |_ctx: StageContext| async {
            StageOutput::skip("nothing changed")
        })
        .after("root")
        .stage("other", noop)
        .after("root")
        .stage("merge", counted(&after, 1))
        .after(["lazy", "other"])
        .build()
        .unwrap();
    let report = graph.run(()).await.unwrap();
    let lazy = report.results().get("lazy").unwrap();
    assert_eq!(lazy.status(), StageStatus::Skip);
    assert_eq!(lazy.message(), Some("nothing changed"));
    assert!(report.results().get("merge").unwrap().is_ok());
    assert_eq!(after.load(Ordering::SeqCst), 1);
    assert_eq!(report.stats().skipped, 1);
    assert_eq!(report.stats().succeeded, 3);
}

#[tokio::test]
async fn skip_propagates_only_when_every_input_was_skipped() {
    let ran = Arc::new(AtomicUsize::new(0));
    let merge_ran = Arc::new(AtomicUsize::new(0));
    let graph = Pipeline::builder("propagate")
        .stage("root", noop)
        .stage("skipper", |_ctx: StageContext| async {
            StageOutput::skip("not today")
        })
        .after("root")
        .stage("skipper2", |_ctx: StageContext| async {
            StageOutput::skip("nor today")
        })
        .after("root")
        // All inputs skipped: skipped without running, transitively.
        .stage("downstream", counted(&ran, 1))
        .after(["skipper", "skipper2"])
        .stage("further", counted(&ran, 2))
        .after("downstream")
        // One input ran: runs.
        .stage("merge", counted(&merge_ran, 3))
        .after(["further", "root"])
        .build()
        .unwrap();
    let report = graph.run(()).await.unwrap();
    assert!(report.is_completed());
    for name in ["downstream", "further"] {
        let out = report.results().get(name).unwrap();
        assert!(out.is_skipped(), "{name}");
        assert_eq!(out.message(), Some("all upstream stages skipped"), "{name}");
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0, "skipped stages must not run");
    assert!(report.results().get("merge").unwrap().is_ok());
    assert_eq!(merge_ran.load(Ordering::SeqCst), 1);
    assert_eq!(report.stats().skipped, 4);
    assert_eq!(report.stats().started, 6);
}

#[tokio::test]
async fn roots_are_never_upstream_skipped() {
    let graph = Pipeline::builder("root")
        .stage("alone", |_ctx: StageContext| async {
            StageOutput::ok().with("x", 1)
        })
        .build()
        .unwrap();
    let report = graph.run(()).await.unwrap();
    assert!(report.results().get("alone").unwrap().is_ok());
}

#[tokio::test]
async fn conditions_see_inputs_and_skip_with_reason() {
    let ran = Arc::new(AtomicUsize::new(0));
    let graph = Pipeline::builder("cond")
        .stage("check", |ctx: StageContext| async move {
            let changed: bool = ctx.input()?;
            Ok::<_, InputError>(StageOutput::ok().with("changed", changed))
        })
        .stage("rebuild", counted(&ran, 1))
        .after("check")
        .when(|inputs| inputs.get_from::<bool>("check", "changed"))
        .stage("publish", counted(&ran, 2))
        .after("rebuild")
        .stage("always", counted(&ran, 3))
        .after("check")
        .when(|inputs| inputs.input::<bool>().map(|_| true))
        .build()
        .unwrap();

    let report = graph.run(false).await.unwrap();
    let rebuild = report.results().get("rebuild").unwrap();
    assert!(rebuild.is_skipped());
    assert_eq!(rebuild.message(), Some("condition not met"));
    assert_eq!(
        report.results().get("publish").unwrap().message(),
        Some("all upstream stages skipped")
    );
    assert!(report.results().get("always").unwrap().is_ok());
    assert_eq!(ran.load(Ordering::SeqCst), 1);

    let report = graph.run(true).await.unwrap();
    for name in ["rebuild", "publish", "always"] {
        assert!(report.results().get(name).unwrap().is_ok(), "{name}");
    }
    assert_eq!(ran.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn conditional_branch_routes_to_the_chosen_branch() {
    let fast = Arc::new(AtomicUsize::new(0));
    let slow = Arc::new(AtomicUsize::new(0));
    let graph = Pipeline::builder("routing")
        .with_conditional_branch(
            StageSpec::new("router", |ctx: StageContext| async move {
                let route: String = ctx.input()?;
                Ok::<_, InputError>(StageOutput::ok().with(stageflow::ROUTE_KEY, route))
            })
            .kind(StageKind::Route),
            [
                ("fast", StageSpec::new("fast_path", counted(&fast, 1))),
                ("slow", StageSpec::new("slow_path", counted(&slow, 2))),
            ],
            StageSpec::new("merge", |ctx: StageContext| async move {
                let taken: Vec<String> = ctx
                    .inputs()
                    .filter(|(_, out)| out.is_ok())
                    .map(|(name, _)| name.to_owned())
                    .collect();
                StageOutput::ok().with("taken", taken)
            }),
        )
        .build()
        .unwrap();
    assert_eq!(graph.kind_of("router"), Some(StageKind::Route));
    assert_eq!(
        graph.dependencies_of("merge").unwrap(),
        ["fast_path", "slow_path"]
    );

    let report = graph.run("fast").await.unwrap();
    let r = report.results();
    assert!(r.get("fast_path").unwrap().is_ok());
    assert_eq!(
        r.get("slow_path").unwrap().message(),
        Some("condition not met")
    );
    assert_eq!(
        r.get_data::<Vec<String>>("merge", "taken").unwrap(),
        ["fast_path"]
    );

    let report = graph.run("slow").await.unwrap();
    let r = report.results();
    assert!(r.get("fast_path").unwrap().is_skipped());
    assert_eq!(
        r.get_data::<Vec<String>>("merge", "taken").unwrap(),
        ["slow_path"]
    );
    assert_eq!(
        (fast.load(Ordering::SeqCst), slow.load(Ordering::SeqCst)),
        (1, 1)
    );

    // No branch chosen: every branch is skipped, so the merge is skipped too.
    let report = graph.run("nowhere").await.unwrap();
    let merge = report.results().get("merge").unwrap();
    assert!(merge.is_skipped());
    assert_eq!(merge.message(), Some("all upstream stages skipped"));
    assert_eq!(
        (fast.load(Ordering::SeqCst), slow.load(Ordering::SeqCst)),
        (1, 1)
    );
}

#[tokio::test]
async fn conditional_branch_keeps_the_branch_s_own_condition() {
    // A branch that has a condition of its own runs only if the router picks it *and* its own
    // condition holds; the router's choice must not silently replace that condition.
    let ran = Arc::new(AtomicUsize::new(0));
    let graph = Pipeline::builder("routing_cond")
        .with_conditional_branch(
            StageSpec::new("router", |_ctx: StageContext| async {
                StageOutput::ok().with("route", "a")
            }),
            [(
                "a",
                StageSpec::new("branch_a", counted(&ran, 1)).when(|_inputs| false),
            )],
            StageSpec::new("merge", noop),
        )
        .build()
        .unwrap();
    let report = graph.run(()).await.unwrap();
    let branch = report.results().get("branch_a").unwrap();
    assert!(branch.is_skipped(), "{branch:?}");
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "the branch's own condition was false"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_output_stops_gracefully_with_partial_results() {
    let later = Arc::new(AtomicUsize::new(0));
    let graph = Pipeline::builder("cancel")
        .stage("a", |_ctx: StageContext| async {
            StageOutput::ok().with("x", 1)
        })
        .stage("b", |_ctx: StageContext| async {
            StageOutput::cancel("quota reached")
        })
        .after("a")
        .stage("c", counted(&later, 1))
        .after("b")
        .stage("d", counted(&later, 2))
        .after("c")
        .build()
        .unwrap();
    let report = graph.run(()).await.expect("cancel is not a failure");
    assert_eq!(
        report.status(),
        &RunStatus::Cancelled {
            stage: Some("b".to_owned()),
            reason: "quota reached".to_owned()
        }
    );
    assert!(!report.is_completed());
    assert_eq!(result_names(report.results()), ["a", "b"]);
    let b = report.results().get("b").unwrap();
    assert_eq!(b.status(), StageStatus::Cancel);
    assert_eq!(b.message(), Some("quota reached"));
    assert_eq!(
        later.load(Ordering::SeqCst),
        0,
        "nothing starts after a cancel"
    );
    assert_eq!(report.stats().started, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_output_stops_parallel_siblings_and_starts_nothing_new() {
    let started_after = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let cancelled_seen = Arc::new(AtomicUsize::new(0));
    let mut p = Pipeline::builder("cancel_wide").stage("root", noop).stage(
        "stopper",
        |_ctx: StageContext| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            StageOutput::cancel("stop")
        },
    );
    p = p.after("root");
    for i in 0..8 {
        let dropped = dropped.clone();
        let seen = cancelled_seen.clone();
        p = p
            .stage(format!("slow_{i}"), move |ctx: StageContext| {
                let guard = DropCounter(dropped.clone());
                let seen = seen.clone();
                async move {
                    let _guard = guard;
                    tokio::select! {
                        () = ctx.cancelled() => { seen.fetch_add(1, Ordering::SeqCst); }
                        () = tokio::time::sleep(Duration::from_secs(30)) => {}
                    }
                    StageOutput::ok()
                }
            })
            .after("root")
            .stage(format!("next_{i}"), counted(&started_after, 0))
            .after(format!("slow_{i}"));
    }
    let graph = p.build().unwrap();
    let t = std::time::Instant::now();
    let report = graph.run(()).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(
        report.status(),
        &RunStatus::Cancelled {
            stage: Some("stopper".into()),
            reason: "stop".into()
        }
    );
    // Every slow stage is gone by the time the run returns: it either saw the cancellation and
    // returned (then its output may be kept) or it was dropped.
    assert_eq!(dropped.load(Ordering::SeqCst), 8);
    assert_eq!(started_after.load(Ordering::SeqCst), 0);
    assert!(report.results().contains("stopper"));
    assert!(report.results().contains("root"));
    for name in report.results().names() {
        assert!(!name.starts_with("next_"), "{name} should not have run");
    }
}

#[tokio::test(start_paused = true)]
async fn external_cancellation_while_stages_sleep() {
    let token = CancellationToken::new();
    let dropped = Arc::new(AtomicUsize::new(0));
    let observed = Arc::new(AtomicUsize::new(0));
    let later = Arc::new(AtomicUsize::new(0));
    let mut p = Pipeline::builder("external").stage("root", |_ctx: StageContext| async {
        StageOutput::ok().with("x", 1)
    });
    for i in 0..4 {
        let dropped = dropped.clone();
        let observed = observed.clone();
        p = p
            .stage(format!("sleeper_{i}"), move |ctx: StageContext| {
                let guard = DropCounter(dropped.clone());
                let observed = observed.clone();
                async move {
                    let _guard = guard;
                    tokio::select! {
                        () = ctx.cancelled() => {
                            observed.fetch_add(1, Ordering::SeqCst);
                            return StageOutput::skip("cancelled");
                        }
                        () = tokio::time::sleep(Duration::from_secs(3600)) => {}
                    }
                    StageOutput::ok()
                }
            })
            .after("root");
    }
    let sleepers: Vec<String> = (0..4).map(|i| format!("sleeper_{i}")).collect();
    let graph = p
        .stage("after_all", counted(&later, 1))
        .after(sleepers)
        .build()
        .unwrap();

    let canceller = {
        let token = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            token.cancel();
        })
    };
    let start = tokio::time::Instant::now();
    let report = graph
        .run_with((), RunOptions::new().cancel_token(token.clone()))
        .await
        .expect("external cancel is not a failure");
    canceller.await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        report.status(),
        &RunStatus::Cancelled {
            stage: None,
            reason: "cancelled by caller".to_owned()
        }
    );
    assert!(report.results().contains("root"));
    assert!(!report.results().contains("after_all"));
    assert_eq!(later.load(Ordering::SeqCst), 0);
    assert_eq!(dropped.load(Ordering::SeqCst), 4, "every sleeper is gone");
    assert!(observed.load(Ordering::SeqCst) <= 4);
    // Only outputs that sleepers actually produced may be kept.
    let kept = report
        .results()
        .names()
        .filter(|n| n.starts_with("sleeper_"))
        .count();
    assert!(kept <= observed.load(Ordering::SeqCst));
    assert_eq!(
        report.stats().cancelled + kept,
        4,
        "stats: {:?}",
        report.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_cancellation_real_time() {
    let token = CancellationToken::new();
    let graph = Pipeline::builder("real")
        .stage("first", noop)
        .stage("sleepy", |_ctx: StageContext| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StageOutput::ok()
        })
        .after("first")
        .stage("never", |_ctx: StageContext| async {
            if true {
                panic!("must not start");
            }
            StageOutput::ok()
        })
        .after("sleepy")
        .build()
        .unwrap();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        t.cancel();
    });
    let start = std::time::Instant::now();
    let report = graph
        .run_with((), RunOptions::new().cancel_token(token))
        .await
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(
        report.status(),
        RunStatus::Cancelled { stage: None, .. }
    ));
    assert_eq!(result_names(report.results()), ["first"]);
    assert_eq!(report.stats().cancelled, 1);
}

#[tokio::test]
async fn token_cancelled_before_the_run_starts_runs_nothing() {
    let ran = Arc::new(AtomicUsize::new(0));
    let graph = Pipeline::builder("pre")
        .stage("a", counted(&ran, 1))
        .build()
        .unwrap();
    let token = CancellationToken::new();
    token.cancel();
    let report = graph
        .run_with((), RunOptions::new().cancel_token(token))
        .await
        .unwrap();
    assert!(matches!(
        report.status(),
        RunStatus::Cancelled { stage: None, .. }
    ));
    assert!(report.results().is_empty());
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn cancelling_a_run_does_not_cancel_the_callers_token() {
    let token = CancellationToken::new();
    let graph = Pipeline::builder("child")
        .stage("stop", |_ctx: StageContext| async {
            StageOutput::cancel("done")
        })
        .build()
        .unwrap();
    let report = graph
        .run_with((), RunOptions::new().cancel_token(token.clone()))
        .await
        .unwrap();
    assert!(matches!(report.status(), RunStatus::Cancelled { .. }));
    assert!(!token.is_cancelled(), "the run must use a child token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_sinks_keeps_only_sink_outputs() {
    let build = || {
        Pipeline::builder("retain")
            .stage("a", |_ctx: StageContext| async {
                StageOutput::ok().with("v", 1)
            })
            .stage("b", |ctx: StageContext| async move {
                let v: i64 = ctx.get_from("a", "v")?;
                Ok::<_, InputError>(StageOutput::ok().with("v", v + 1))
            })
            .after("a")
            .stage("c", |ctx: StageContext| async move {
                let v: i64 = ctx.get_from("a", "v")?;
                Ok::<_, InputError>(StageOutput::ok().with("v", v + 2))
            })
            .after("a")
            .stage("d", |ctx: StageContext| async move {
                let b: i64 = ctx.get_from("b", "v")?;
                let c: i64 = ctx.get_from("c", "v")?;
                Ok::<_, InputError>(StageOutput::ok().with("v", b + c))
            })
            .after(["b", "c"])
            .stage("side", |ctx: StageContext| async move {
                let v: i64 = ctx.get_from("a", "v")?;
                Ok::<_, InputError>(StageOutput::ok().with("v", v * 100))
            })
            .after("a")
            .build()
            .unwrap()
    };
    let graph = build();
    assert_eq!(graph.sinks().collect::<Vec<_>>(), ["d", "side"]);
    let report = graph
        .run_with((), RunOptions::new().retention(Retention::Sinks))
        .await
        .unwrap();
    assert_eq!(result_names(report.results()), ["d", "side"]);
    assert_eq!(report.results().get_data::<i64>("d", "v").unwrap(), 5);
    assert_eq!(report.results().get_data::<i64>("side", "v").unwrap(), 100);
    assert_eq!(report.stats().succeeded, 5);

    let report = graph
        .run_with((), RunOptions::new().retention(Retention::All))
        .await
        .unwrap();
    assert_eq!(result_names(report.results()), ["a", "b", "c", "d", "side"]);
    assert_eq!(report.results().len(), 5);
}

#[tokio::test]
async fn get_is_ambiguous_when_two_dependencies_have_the_key() {
    let graph = Pipeline::builder("ambiguous")
        .stage("a", |_ctx: StageContext| async {
            StageOutput::ok().with("x", 1).with("only_a", "A")
        })
        .stage("b", |_ctx: StageContext| async {
            StageOutput::ok().with("x", 2)
        })
        .stage("m", |ctx: StageContext| async move {
            let only: String = ctx.get("only_a")?;
            assert_eq!(only, "A");
            match ctx.get::<i64>("nowhere") {
                Err(InputError::NotFound { stage, key }) => {
                    assert_eq!((stage.as_str(), key.as_str()), ("m", "nowhere"));
                }
                other => panic!("expected NotFound, got {other:?}"),
            }
            match ctx.get::<i64>("x") {
                Err(InputError::Ambiguous {
                    stage,
                    key,
                    sources,
                }) => {
                    assert_eq!((stage.as_str(), key.as_str()), ("m", "x"));
                    assert_eq!(sources, ["a", "b"]);
                }
                other => panic!("expected Ambiguous, got {other:?}"),
            }
            // get_from disambiguates.
            let x: i64 = ctx.get_from("b", "x")?;
            let err = ctx.get::<i64>("x").unwrap_err();
            Ok::<_, InputError>(StageOutput::ok().with("x", x).with("err", err.to_string()))
        })
        .after(["b", "a"])
        .build()
        .unwrap();
    let report = graph.run(()).await.unwrap();
    assert_eq!(report.results().get_data::<i64>("m", "x").unwrap(), 2);
    assert_eq!(
        report.results().get_data::<String>("m", "err").unwrap(),
        "stage `m`: key `x` is present in several dependencies (a, b); use get_from to pick one"
    );
}

#[tokio::test]
async fn typed_accessor_errors_name_key_and_type() {
    let graph = Pipeline::builder("typed")
        .stage("src", |_ctx: StageContext| async {
            StageOutput::ok().with("text", "hello").with("n", 7)
        })
        .stage("reader", |ctx: StageContext| async move {
            let wrong = ctx.get_from::<u32>("src", "text").unwrap_err();
            assert!(matches!(wrong, InputError::Data { .. }), "{wrong:?}");
            let missing = ctx.get_from::<u32>("src", "absent").unwrap_err();
            let undeclared = ctx.get_from::<u32>("other", "n").unwrap_err();
            assert!(matches!(undeclared, InputError::Undeclared { .. }));
            let unknown = ctx.get_from::<u32>("ghost", "n").unwrap_err();
            let input = ctx.input::<u64>().unwrap_err();
            let ok: u8 = ctx.get_from("src", "n")?;
            Ok::<_, InputError>(
                StageOutput::ok()
                    .with("wrong", wrong.to_string())
                    .with("missing", missing.to_string())
                    .with("undeclared", undeclared.to_string())
                    .with("unknown", unknown.to_string())
                    .with("input", input.to_string())
                    .with("ok", ok),
            )
        })
        .after("src")
        .stage("other", noop)
        .build()
        .unwrap();
    let report = graph.run("not a number").await.unwrap();
    let r = report.results();
    let text = |key: &str| r.get_data::<String>("reader", key).unwrap();

    let wrong = text("wrong");
    assert!(
        wrong.starts_with("stage `reader` reading `src`: key `text` does not hold a u32"),
        "{wrong}"
    );
    let missing = text("missing");
    assert!(
        missing.contains("no key `absent` in output data (available: text, n)"),
        "{missing}"
    );
    assert_eq!(
        text("undeclared"),
        "stage `reader` read the output of `other`, which is not one of its dependencies (declared: src)"
    );
    assert!(text("unknown").contains("`ghost`"));
    let input = text("input");
    assert!(
        input.starts_with("stage `reader`: the run input is not a u64"),
        "{input}"
    );
    assert_eq!(r.get_data::<u8>("reader", "ok").unwrap(), 7);

    // The same errors from the results side.
    let e = r.get_data::<u32>("src", "text").unwrap_err().to_string();
    assert!(e.contains("`text`") && e.contains("u32"), "{e}");
    let e = r.get_data::<u32>("src", "nope").unwrap_err().to_string();
    assert!(e.contains("no key `nope`"), "{e}");
    let e = r.require("no_such_stage").unwrap_err().to_string();
    assert!(e.contains("`no_such_stage`") && e.contains("src"), "{e}");
}

#[tokio::test]
async fn accessor_error_returned_with_question_mark_fails_the_stage() {
    let graph = Pipeline::builder("q")
        .stage("src", |_ctx: StageContext| async {
            StageOutput::ok().with("n", "x")
        })
        .stage("reader", |ctx: StageContext| async move {
            let n: i64 = ctx.get_from("src", "n")?;
            Ok::<_, InputError>(StageOutput::ok().with("n", n))
        })
        .after("src")
        .build()
        .unwrap();
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(failure.stage(), "reader");
    let text = failure.to_string();
    assert!(
        text.starts_with(
            "stage `reader` failed: stage `reader` reading `src`: key `n` does not hold a i64"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn run_identity_and_metadata_are_visible_to_stages() {
    let graph = Pipeline::builder("ident")
        .stage("who", |ctx: StageContext| async move {
            let id = ctx.identity().clone();
            assert_eq!(ctx.run_id(), id.run_id);
            StageOutput::ok()
                .with("identity", id)
                .with("stage", ctx.stage_name())
                .with("pipeline", ctx.pipeline_name())
                .with("deps", ctx.dependencies().collect::<Vec<_>>())
                .with(
                    "elapsed_ok",
                    ctx.timer().started_at() <= std::time::SystemTime::now(),
                )
        })
        .build()
        .unwrap();
    let identity = RunIdentity::new()
        .with_request_id("req-1")
        .with_session_id("sess-2")
        .with_user_id("user-3")
        .with_org_id("org-4");
    let report = graph
        .run_with((), RunOptions::new().identity(identity.clone()))
        .await
        .unwrap();
    assert_eq!(report.identity(), &identity);
    let r = report.results();
    assert_eq!(
        r.get_data::<RunIdentity>("who", "identity").unwrap(),
        identity
    );
    assert_eq!(r.get_data::<String>("who", "stage").unwrap(), "who");
    assert_eq!(r.get_data::<String>("who", "pipeline").unwrap(), "ident");
    assert!(r.get_data::<Vec<String>>("who", "deps").unwrap().is_empty());
    assert!(r.get_data::<bool>("who", "elapsed_ok").unwrap());

    // Without an identity, every run gets a fresh run id and no correlation ids.
    let a = graph.run(()).await.unwrap();
    let b = graph.run(()).await.unwrap();
    assert_ne!(a.identity().run_id, b.identity().run_id);
    assert_ne!(a.identity().run_id, identity.run_id);
    let seen: RunIdentity = a.results().get_data("who", "identity").unwrap();
    assert_eq!(&seen, a.identity());
    assert_eq!(seen.request_id, None);
}

#[tokio::test]
async fn run_input_is_visible_to_every_stage() {
    #[derive(serde::Deserialize, serde::Serialize, PartialEq, Debug)]
    struct Order {
        id: u32,
        items: Vec<String>,
    }
    let graph = Pipeline::builder("input")
        .stage("a", |ctx: StageContext| async move {
            let order: Order = ctx.input()?;
            Ok::<_, InputError>(StageOutput::ok().with("count", order.items.len()))
        })
        .stage("b", |ctx: StageContext| async move {
            let raw = ctx.input_value().clone();
            let n: usize = ctx.get_from("a", "count")?;
            Ok::<_, InputError>(StageOutput::ok().with("id", raw["id"].clone()).with("n", n))
        })
        .after("a")
        .build()
        .unwrap();
    let input = json!({"id": 9, "items": ["x", "y", "z"]});
    let report = graph.run(input).await.unwrap();
    assert_eq!(report.results().get_data::<u32>("b", "id").unwrap(), 9);
    assert_eq!(report.results().get_data::<usize>("b", "n").unwrap(), 3);
}

struct Enricher;

#[async_trait]
impl Stage for Enricher {
    async fn execute(&self, ctx: StageContext) -> StageResult {
        Ok(StageOutput::ok().with("kind", ctx.kind()))
    }
    fn kind(&self) -> StageKind {
        StageKind::Enrich
    }
}

#[tokio::test]
async fn stage_kind_from_trait_and_from_builder() {
    let graph = Pipeline::builder("kinds")
        .stage("from_trait", Enricher)
        .stage("overridden", Enricher)
        .kind(StageKind::Guard)
        .stage("closure_default", |ctx: StageContext| async move {
            StageOutput::ok().with("kind", ctx.kind())
        })
        .stage("closure_set", |ctx: StageContext| async move {
            StageOutput::ok().with("kind", ctx.kind())
        })
        .kind(StageKind::Agent)
        .add(StageSpec::new("spec_set", Enricher).kind(StageKind::Transform))
        .build()
        .unwrap();
    let expected = [
        ("from_trait", StageKind::Enrich),
        ("overridden", StageKind::Guard),
        ("closure_default", StageKind::Work),
        ("closure_set", StageKind::Agent),
        ("spec_set", StageKind::Transform),
    ];
    let report = graph.run(()).await.unwrap();
    for (name, kind) in expected {
        assert_eq!(graph.kind_of(name), Some(kind), "{name}");
        assert_eq!(
            report
                .results()
                .get_data::<StageKind>(name, "kind")
                .unwrap(),
            kind,
            "{name}"
        );
    }
    assert_eq!(
        StageSpec::new("x", Enricher).effective_kind(),
        StageKind::Enrich
    );
    for kind in StageKind::ALL {
        assert_eq!(kind.to_string().parse::<StageKind>().unwrap(), kind);
        assert_eq!(
            kind.as_str().to_uppercase().parse::<StageKind>().unwrap(),
            kind
        );
    }
    assert!("teleport".parse::<StageKind>().is_err());
}
