//! Concurrency: one graph, many simultaneous runs; the concurrency cap; real parallelism.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{noop, Gauge};
use stageflow::{
    Graph, InputError, Pipeline, RunOptions, Stage, StageContext, StageOutput, StageSpec,
};

/// Sleeps or yields a little, depending on `seed`, to shuffle interleavings between runs.
async fn jitter(seed: u64) {
    match seed % 4 {
        0 => {}
        1 => tokio::task::yield_now().await,
        2 => {
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        }
        _ => tokio::time::sleep(Duration::from_millis(1)).await,
    }
}

/// A stage outputting `v = a.v + add` and the run id it saw, after a jitter seeded
/// `a.v / 1000 + seed`.
fn a_plus(add: u64, seed: u64) -> impl Stage {
    move |ctx: StageContext| async move {
        let a: u64 = ctx.get_from("a", "v")?;
        jitter(a / 1000 + seed).await;
        Ok::<_, InputError>(
            StageOutput::ok()
                .with("v", a + add)
                .with("run", ctx.run_id()),
        )
    }
}

/// `a = 1000 n + 1`, `b = a + 20`, `c = a + 300`, `d = b + c`, each stage also recording the run
/// id it saw.
fn arithmetic_graph() -> Graph {
    Pipeline::builder("arith")
        .stage("a", |ctx: StageContext| async move {
            let n: u64 = ctx.input()?;
            jitter(n).await;
            Ok::<_, InputError>(
                StageOutput::ok()
                    .with("v", 1000 * n + 1)
                    .with("run", ctx.run_id()),
            )
        })
        .stage("b", a_plus(20, 1))
        .after("a")
        .stage("c", a_plus(300, 2))
        .after("a")
        .stage("d", |ctx: StageContext| async move {
            let b: u64 = ctx.get_from("b", "v")?;
            let c: u64 = ctx.get_from("c", "v")?;
            let n: u64 = ctx.input()?;
            jitter(n + 3).await;
            Ok::<_, InputError>(
                StageOutput::ok()
                    .with("v", b + c)
                    .with("n", n)
                    .with("run", ctx.run_id()),
            )
        })
        .after(["b", "c"])
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_of_one_graph_do_not_mix() {
    const RUNS: u64 = 50;
    let graph = arithmetic_graph();
    let handles: Vec<_> = (0..RUNS)
        .map(|n| {
            let graph = graph.clone();
            tokio::spawn(async move { (n, graph.run(n).await.expect("run succeeds")) })
        })
        .collect();
    let mut run_ids = HashSet::new();
    for handle in handles {
        let (n, report) = handle.await.unwrap();
        let r = report.results();
        let a = 1000 * n + 1;
        assert_eq!(r.get_data::<u64>("a", "v").unwrap(), a);
        assert_eq!(r.get_data::<u64>("b", "v").unwrap(), a + 20);
        assert_eq!(r.get_data::<u64>("c", "v").unwrap(), a + 300);
        assert_eq!(r.get_data::<u64>("d", "v").unwrap(), 2 * a + 320);
        assert_eq!(r.get_data::<u64>("d", "n").unwrap(), n);
        let id = report.identity().run_id;
        for stage in ["a", "b", "c", "d"] {
            assert_eq!(
                r.get_data::<uuid_like::Id>(stage, "run").unwrap().0,
                id.to_string()
            );
        }
        assert!(run_ids.insert(id), "duplicate run id {id}");
    }
    assert_eq!(run_ids.len(), RUNS as usize);
}

/// Reads a run id back as a string, without depending on the `uuid` crate.
mod uuid_like {
    #[derive(serde::Deserialize)]
    pub struct Id(pub String);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_with_failures_and_successes() {
    // Odd inputs fail in the middle stage; even ones succeed. Neither affects the other.
    let graph = Pipeline::builder("mixed")
        .stage("a", |ctx: StageContext| async move {
            let n: u64 = ctx.input()?;
            tokio::task::yield_now().await;
            Ok::<_, InputError>(StageOutput::ok().with("n", n))
        })
        .stage("b", |ctx: StageContext| async move {
            let n: u64 = ctx.get_from("a", "n")?;
            jitter(n).await;
            if n % 2 == 1 {
                return Ok(StageOutput::fail(format!("odd {n}")));
            }
            Ok::<_, InputError>(StageOutput::ok().with("n", n * 2))
        })
        .after("a")
        .build()
        .unwrap();
    let handles: Vec<_> = (0..40u64)
        .map(|n| {
            let graph = graph.clone();
            tokio::spawn(async move { (n, graph.run(n).await) })
        })
        .collect();
    for handle in handles {
        let (n, result) = handle.await.unwrap();
        if n % 2 == 1 {
            let failure = result.unwrap_err();
            assert_eq!(failure.to_string(), format!("stage `b` failed: odd {n}"));
            assert_eq!(
                failure.partial_results().get_data::<u64>("a", "n").unwrap(),
                n
            );
        } else {
            let report = result.unwrap();
            assert_eq!(report.results().get_data::<u64>("b", "n").unwrap(), 2 * n);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_cap_is_respected() {
    const CAP: usize = 3;
    let gauge = Arc::new(Gauge::default());
    let ran = Arc::new(AtomicUsize::new(0));
    let (g, r) = (gauge.clone(), ran.clone());
    let graph = Pipeline::builder("capped")
        .stage("root", noop)
        .with_parallel("root", 100, move |i| {
            let (g, r) = (g.clone(), r.clone());
            StageSpec::new(format!("p{i}"), move |_ctx: StageContext| {
                let guard = g.enter();
                r.fetch_add(1, Ordering::SeqCst);
                async move {
                    let _guard = guard;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    StageOutput::ok()
                }
            })
        })
        .build()
        .unwrap();
    let report = graph
        .run_with((), RunOptions::new().max_concurrency(CAP))
        .await
        .unwrap();
    assert!(report.is_completed());
    assert_eq!(ran.load(Ordering::SeqCst), 100);
    let max = gauge.max();
    assert!(max <= CAP, "{max} stages ran at once with a cap of {CAP}");
    assert!(
        max >= 2,
        "the cap should still allow parallelism (max {max})"
    );
    assert_eq!(gauge.current(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_of_one_serializes_and_zero_means_one() {
    for cap in [0, 1] {
        let gauge = Arc::new(Gauge::default());
        let g = gauge.clone();
        let graph = Pipeline::builder("serial")
            .with_parallel((), 20, move |i| {
                let g = g.clone();
                StageSpec::new(format!("p{i}"), move |_ctx: StageContext| {
                    let guard = g.enter();
                    async move {
                        let _guard = guard;
                        tokio::task::yield_now().await;
                        StageOutput::ok()
                    }
                })
            })
            .build()
            .unwrap();
        let opts = RunOptions::new().max_concurrency(cap);
        assert_eq!(opts.concurrency_limit(), Some(1));
        graph.run_with((), opts).await.unwrap();
        assert_eq!(gauge.max(), 1, "cap {cap}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_stages_run_in_parallel() {
    // 20 stages that each sleep 100 ms finish in far less than 2 s.
    let gauge = Arc::new(Gauge::default());
    let g = gauge.clone();
    let graph = Pipeline::builder("parallel")
        .with_fan_out_fan_in(
            StageSpec::new("split", noop),
            20,
            move |i| {
                let g = g.clone();
                StageSpec::new(format!("w{i}"), move |_ctx: StageContext| {
                    let guard = g.enter();
                    async move {
                        let _guard = guard;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        StageOutput::ok()
                    }
                })
            },
            StageSpec::new("join", |ctx: StageContext| async move {
                StageOutput::ok().with("n", ctx.inputs().count())
            }),
        )
        .build()
        .unwrap();
    let start = Instant::now();
    let report = graph.run(()).await.unwrap();
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    assert!(gauge.max() >= 10, "max parallel {}", gauge.max());
    assert_eq!(report.results().get_data::<usize>("join", "n").unwrap(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_are_each_capped_independently() {
    const CAP: usize = 2;
    let gauges: Vec<Arc<Gauge>> = (0..8).map(|_| Arc::new(Gauge::default())).collect();
    let gs = gauges.clone();
    let graph = Pipeline::builder("per_run_cap")
        .with_parallel((), 12, move |i| {
            let gs = gs.clone();
            StageSpec::new(format!("p{i}"), move |ctx: StageContext| {
                let run: usize = ctx.input().unwrap();
                let guard = gs[run].enter();
                async move {
                    let _guard = guard;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    StageOutput::ok()
                }
            })
        })
        .build()
        .unwrap();
    let handles: Vec<_> = (0..gauges.len())
        .map(|run| {
            let graph = graph.clone();
            tokio::spawn(async move {
                graph
                    .run_with(run, RunOptions::new().max_concurrency(CAP))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for h in handles {
        assert!(h.await.unwrap().is_completed());
    }
    for (run, gauge) in gauges.iter().enumerate() {
        assert!(gauge.max() <= CAP, "run {run}: {}", gauge.max());
    }
}

/// Siblings that finish on their first poll may run inline on the driver, but CPU-heavy
/// siblings (no await at all) must still be spread over the workers: once one inline poll takes
/// longer than a spawn would cost, the rest of the batch is spawned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_heavy_siblings_without_awaits_still_run_in_parallel() {
    let active = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let (a, m) = (active.clone(), max_seen.clone());
    let busy = move |_ctx: StageContext| {
        let (active, max_seen) = (a.clone(), m.clone());
        async move {
            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
            max_seen.fetch_max(now, Ordering::SeqCst);
            // Spin (never yield) until another stage runs at the same time, or give up.
            let deadline = Instant::now() + Duration::from_millis(500);
            while max_seen.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
                std::hint::spin_loop();
            }
            active.fetch_sub(1, Ordering::SeqCst);
            StageOutput::ok()
        }
    };
    let graph = Pipeline::builder("cpu")
        .stage("source", noop)
        .with_parallel("source", 6, |i| {
            StageSpec::new(format!("busy_{i}"), busy.clone())
        })
        .build()
        .unwrap();
    let report = graph.run(()).await.unwrap();
    assert!(report.is_completed());
    assert!(
        max_seen.load(Ordering::SeqCst) >= 2,
        "CPU-heavy siblings never overlapped"
    );
}
