//! Observability benchmarks: what lifecycle events, spans and progress add per stage.
//!
//! One group, `observe`, on the engine benchmarks' `chain` (2,000 and 20,000 `TrackedStage`s,
//! `Retention::Sinks`), each run timed whole on the same two-worker runtime, driven from the
//! benchmark thread so that the tracing dispatcher set for it sees the run:
//! - `bare`: no subscriber, no sink, no progress (what `chain/stageflow` measures);
//! - `all_on`: a [`JsonlSink`] (lossless, `WhenFull::Block`) writing to a file, stage spans to a
//!   subscriber interested in everything that records nothing, and a progress observer. One sink
//!   serves 200 runs, as in a service; creating it (file truncated, writer thread started) is not
//!   timed, each run's end-of-run flush is. Without the end-of-run fsync;
//! - `all_on_fsync`: the same with the fsync the sink does by default, a fixed cost of the disk
//!   per run.
//!
//! The target reads `all_on / bare` at 2,000 stages (at most 3), and that it stays flat
//! at 20,000. `cargo run --release -p stageflow --example observe_overhead` gives the same ratios
//! up to 1,000,000 stages.

#[path = "../examples/support/mod.rs"]
mod overhead;
mod support;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stageflow::observe::JsonlSink;
use stageflow::{Retention, RunOptions};

use overhead::{all_on, events_sink, NoopSubscriber};
use support::{chain_graph, runtime};

const SIZES: [usize; 2] = [2_000, 20_000];

/// Runs that share one sink before the benchmark replaces it (truncating the file, outside the
/// timing): a service keeps its sink, so its buffers and thread are warm; 200 runs of 20,000
/// stages write under 2 GB.
const RUNS_PER_SINK: u64 = 200;

fn observe(c: &mut Criterion) {
    let rt = runtime();
    let dir = std::env::temp_dir().join(format!("stageflow-bench-observe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let path = dir.join("events.jsonl");
    let noop = tracing::Dispatch::new(NoopSubscriber);
    let mut group = c.benchmark_group("observe");
    for n in SIZES {
        let graph = chain_graph(n);
        group.throughput(Throughput::Elements(n as u64));
        // `events`: `None` for bare runs, else whether the sink fsyncs.
        let mut bench = |id: &str, dispatch: &tracing::Dispatch, events: Option<bool>| {
            group.bench_function(format!("{id}/{n}"), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    let mut current: Option<JsonlSink> = None;
                    for i in 0..iters {
                        let options = match events {
                            None => RunOptions::new(),
                            Some(fsync) => {
                                if i % RUNS_PER_SINK == 0 {
                                    current = Some(events_sink(&path, fsync));
                                }
                                all_on(current.as_ref().expect("a sink"))
                            }
                        }
                        .retention(Retention::Sinks);
                        let started = Instant::now();
                        let report = tracing::dispatcher::with_default(dispatch, || {
                            rt.block_on(graph.run_with((), options))
                                .expect("no stage fails")
                        });
                        timed += started.elapsed();
                        assert_eq!(report.stats().succeeded, n);
                    }
                    timed
                });
            });
        };
        bench("bare", &tracing::Dispatch::none(), None);
        bench("all_on", &noop, Some(false));
        bench("all_on_fsync", &noop, Some(true));
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = observe
}
criterion_main!(benches);
