//! Depth: very long chains build, validate and run without recursion (so without overflowing
//! the stack), in linear time.

mod common;

use std::time::Instant;

use common::{chain_name, counting_chain, noop};
use stageflow::{
    DataError, ErrorCode, Pipeline, Retention, RunOptions, StageContext, StageOutput, StageSpec,
};

/// Like [`counting_chain`], with a stage that captures nothing: it reads its single input, if any.
fn light_chain(n: usize) -> Pipeline {
    Pipeline::builder("light").with_linear_chain(n, |i| {
        StageSpec::new(chain_name(i), |ctx: StageContext| async move {
            let v: u64 = match ctx.inputs().next() {
                Some((_, out)) => out.get("value")?,
                None => 0,
            };
            Ok::<_, DataError>(StageOutput::ok().with("value", v + 1))
        })
    })
}

async fn run_chain(pipeline: Pipeline, n: usize, retention: Retention) {
    let t = Instant::now();
    let graph = pipeline.build().expect("a chain is valid");
    let built = t.elapsed();
    assert_eq!(graph.len(), n);
    let t = Instant::now();
    let report = graph
        .run_with((), RunOptions::new().retention(retention))
        .await
        .expect("no stage fails");
    let ran = t.elapsed();
    eprintln!("chain of {n}: build {built:?}, run {ran:?}");
    assert!(report.is_completed());
    assert_eq!(report.stats().succeeded, n);
    assert_eq!(
        report
            .results()
            .get_data::<u64>(&chain_name(n - 1), "value")
            .unwrap(),
        n as u64
    );
    if retention == Retention::Sinks {
        assert_eq!(report.results().len(), 1);
    } else {
        assert_eq!(report.results().len(), n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_of_100k_stages() {
    run_chain(counting_chain(100_000), 100_000, Retention::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_of_1m_stages() {
    run_chain(light_chain(1_000_000), 1_000_000, Retention::Sinks).await;
}

/// A chain whose every stage is added before the stage it depends on.
fn reverse_chain(n: usize) -> Pipeline {
    Pipeline::builder("reverse").add_all((0..n).rev().map(|i| {
        let spec = StageSpec::new(chain_name(i), noop);
        if i == 0 {
            spec
        } else {
            spec.after(chain_name(i - 1))
        }
    }))
}

#[test]
fn reverse_order_chain_of_200k_builds() {
    const N: usize = 200_000;
    let graph = reverse_chain(N)
        .build()
        .expect("definition order does not matter");
    assert_eq!(graph.len(), N);
    assert_eq!(graph.roots().collect::<Vec<_>>(), [chain_name(0)]);
    assert_eq!(graph.sinks().collect::<Vec<_>>(), [chain_name(N - 1)]);
    let order = graph.topological_order();
    assert_eq!(order.len(), N);
    for (i, name) in order.iter().enumerate() {
        assert_eq!(*name, chain_name(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_order_chain_runs() {
    const N: usize = 20_000;
    let report = reverse_chain(N).build().unwrap().run(()).await.unwrap();
    assert_eq!(report.stats().succeeded, N);
}

#[test]
fn cycle_through_200k_stages_is_found_without_recursion() {
    const N: usize = 200_000;
    // s_0 depends on s_{N-1}: the whole reversed chain is one cycle.
    let p = Pipeline::builder("ring").add_all((0..N).rev().map(|i| {
        let dep = chain_name(if i == 0 { N - 1 } else { i - 1 });
        StageSpec::new(chain_name(i), noop).after(dep)
    }));
    let e = p.build().unwrap_err();
    assert_eq!(e.errors.len(), 1);
    let err = e.first();
    assert_eq!(err.code, ErrorCode::Cycle);
    assert_eq!(err.cycle.len(), N + 1);
    assert_eq!(err.cycle.first(), err.cycle.last());
}

#[test]
fn wide_and_deep_build_is_linear() {
    // 200 layers of 50 stages, each stage depending on the whole previous layer.
    const LAYERS: usize = 200;
    const WIDTH: usize = 50;
    let name = |l: usize, w: usize| format!("l{l}_{w}");
    let mut p = Pipeline::builder("layers");
    for l in 0..LAYERS {
        for w in 0..WIDTH {
            let deps: Vec<String> = if l == 0 {
                Vec::new()
            } else {
                (0..WIDTH).map(|v| name(l - 1, v)).collect()
            };
            p = p.add(StageSpec::new(name(l, w), noop).after(deps));
        }
    }
    let graph = p.build().unwrap();
    assert_eq!(graph.len(), LAYERS * WIDTH);
    assert_eq!(
        graph.dependencies_of(&name(LAYERS - 1, 0)).unwrap().len(),
        WIDTH
    );
}
