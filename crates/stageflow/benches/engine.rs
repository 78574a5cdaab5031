//! Engine benchmarks: what Stageflow costs per stage, next to the least a DAG runner can cost.
//!
//! Every run benchmark builds its graph once, outside the timing loop, and times one whole run on
//! a multi-threaded tokio runtime with two workers. Throughput is set to the number of stages, so
//! criterion's `elem/s` is stages per second and `time / stages` is the per-stage overhead.
//!
//! Groups (benchmark ids read `group/implementation/size`):
//! - `chain`: `n` stages in a line (`n` = 1,000 and 100,000). Stageflow runs `TrackedStage`s (each
//!   reads its predecessor's `value` with `ctx.get` and returns it plus one) with
//!   `Retention::Sinks`; the final value is checked. Nothing runs in parallel, so this is pure
//!   per-stage overhead: context, output, bookkeeping, and whether a stage costs a task spawn.
//! - `fan_out`: one source, 10,000 parallel no-op stages, one sink. Measures spawning and joining
//!   many ready stages at once, and a sink with 10,000 inputs.
//! - `lattice`: 100 layers x 10 no-op stages, each depending on every stage of the previous layer
//!   (9,900 edges). Measures dependency counting on dense edges with moderate parallelism.
//! - `build`: defining and validating a 100,000-stage chain (`Pipeline::build`: names, dependency
//!   resolution, cycle check), without running it.
//!
//! The floors. `floor` is a hand-written tokio scheduler for the same shapes: `Vec<Vec<usize>>`
//! adjacency, in-degree counters, boxed async closures, spawned when several are ready and awaited
//! inline otherwise, with no names, outputs map, errors, skips or cancellation. `plain_loop` (chain
//! only) awaits the boxed closures one after the other. They are not competitors; they show how
//! much of Stageflow's time is inherent to running async stages on tokio at all, so a regression,
//! or a claim of "flat per-stage overhead", can be read as a ratio to the floor instead of a raw
//! number that changes with the machine.

mod support;

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use stageflow::{Graph, Retention, RunOptions};
use tokio::runtime::Runtime;

use support::{
    chain_deps, chain_graph, chain_name, chain_pipeline, fan_out_deps, fan_out_graph, lattice_deps,
    lattice_graph, on_worker, plain_loop, tasks, Floor,
};

const CHAIN_SIZES: [usize; 2] = [1_000, 100_000];
const FAN_OUT_WIDTH: usize = 10_000;
const LATTICE_LAYERS: usize = 100;
const LATTICE_WIDTH: usize = 10;
const BUILD_SIZE: usize = 100_000;

/// Runs `graph` once with `Retention::Sinks` on a runtime worker; checks that it completed with
/// every stage succeeded, and returns the report for shape-specific checks.
async fn run_stageflow(graph: &Graph) -> stageflow::RunReport {
    let graph = graph.clone();
    let report = on_worker(async move {
        graph
            .run_with((), RunOptions::new().retention(Retention::Sinks))
            .await
    })
    .await
    .expect("no stage fails");
    assert!(report.is_completed());
    assert_eq!(report.stats().succeeded, report.stats().total);
    report
}

/// Times one floor run of `floor` and checks its last node's output.
fn bench_floor(b: &mut criterion::Bencher<'_>, rt: &Runtime, floor: &Arc<Floor>, expected: u64) {
    b.to_async(rt).iter(|| {
        let floor = floor.clone();
        async move {
            let last = on_worker(async move { floor.run().await }).await;
            assert_eq!(last, expected);
        }
    });
}

fn chain(c: &mut Criterion) {
    let rt = support::runtime();
    let mut group = c.benchmark_group("chain");
    for n in CHAIN_SIZES {
        group.throughput(Throughput::Elements(n as u64));
        if n >= 100_000 {
            group
                .sampling_mode(SamplingMode::Flat)
                .sample_size(20)
                .measurement_time(Duration::from_secs(5));
        } else {
            group
                .sampling_mode(SamplingMode::Auto)
                .sample_size(30)
                .measurement_time(Duration::from_secs(3));
        }

        let graph = chain_graph(n);
        let last = chain_name(n - 1);
        group.bench_function(format!("stageflow/{n}"), |b| {
            b.to_async(&rt).iter(|| async {
                let report = run_stageflow(&graph).await;
                let value: u64 = report
                    .results()
                    .get_data(&last, "value")
                    .expect("the sink's value is retained");
                assert_eq!(value, n as u64);
            });
        });
        drop(graph);

        let floor = Arc::new(Floor::new(&chain_deps(n)));
        group.bench_function(format!("floor/{n}"), |b| {
            bench_floor(b, &rt, &floor, n as u64);
        });
        drop(floor);

        let closures = Arc::new(tasks(n));
        group.bench_function(format!("plain_loop/{n}"), |b| {
            b.to_async(&rt).iter(|| {
                let closures = closures.clone();
                async move {
                    let value = on_worker(async move { plain_loop(&closures).await }).await;
                    assert_eq!(value, n as u64);
                }
            });
        });
    }
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let rt = support::runtime();
    let mut group = c.benchmark_group("fan_out");
    let stages = FAN_OUT_WIDTH + 2;
    group
        .throughput(Throughput::Elements(stages as u64))
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));

    let graph = fan_out_graph(FAN_OUT_WIDTH);
    group.bench_function(format!("stageflow/{FAN_OUT_WIDTH}"), |b| {
        b.to_async(&rt).iter(|| async {
            let report = run_stageflow(&graph).await;
            assert_eq!(report.results().len(), 1, "only the sink is retained");
        });
    });

    let floor = Arc::new(Floor::new(&fan_out_deps(FAN_OUT_WIDTH)));
    group.bench_function(format!("floor/{FAN_OUT_WIDTH}"), |b| {
        bench_floor(b, &rt, &floor, 3);
    });
    group.finish();
}

fn lattice(c: &mut Criterion) {
    let rt = support::runtime();
    let mut group = c.benchmark_group("lattice");
    let stages = LATTICE_LAYERS * LATTICE_WIDTH;
    let id = format!("{LATTICE_LAYERS}x{LATTICE_WIDTH}");
    group
        .throughput(Throughput::Elements(stages as u64))
        .sample_size(30)
        .measurement_time(Duration::from_secs(3));

    let graph = lattice_graph(LATTICE_LAYERS, LATTICE_WIDTH);
    group.bench_function(format!("stageflow/{id}"), |b| {
        b.to_async(&rt).iter(|| async {
            let report = run_stageflow(&graph).await;
            assert_eq!(
                report.results().len(),
                LATTICE_WIDTH,
                "the last layer is retained"
            );
        });
    });

    let floor = Arc::new(Floor::new(&lattice_deps(LATTICE_LAYERS, LATTICE_WIDTH)));
    group.bench_function(format!("floor/{id}"), |b| {
        bench_floor(b, &rt, &floor, LATTICE_LAYERS as u64);
    });
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("build");
    group
        .throughput(Throughput::Elements(BUILD_SIZE as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));

    // `Pipeline::build` alone: the definition is made in the (untimed) setup.
    group.bench_function(format!("validate/{BUILD_SIZE}"), |b| {
        b.iter_batched(
            || chain_pipeline(BUILD_SIZE),
            |pipeline| pipeline.build().expect("valid chain"),
            BatchSize::PerIteration,
        );
    });
    // Defining the 100,000 specs (names, shared stages, dependencies) and then building.
    group.bench_function(format!("define_and_validate/{BUILD_SIZE}"), |b| {
        b.iter_with_large_drop(|| chain_graph(BUILD_SIZE));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = chain, fan_out, lattice, build
}
criterion_main!(benches);
