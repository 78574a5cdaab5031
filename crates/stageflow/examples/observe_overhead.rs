//! Per-stage cost of observability on a linear chain of trivial stages.
//!
//! `cargo run --release -p stageflow --example observe_overhead [-- RUNS [N...]]`
//!
//! Measures, for each chain length N (default 2,000 and 1,000,000), the median wall time per stage
//! over RUNS runs (default 7) of:
//! - `bare`: default options (nothing observed, no subscriber installed);
//! - `all-on`: a JSON Lines sink (lossless: `WhenFull::Block`), tracing spans into a no-op
//!   subscriber (interested in everything, records nothing), and a progress observer; once with
//!   the end-of-run fsync (the default) and once without, to separate the per-stage cost from
//!   the one fsync per run;
//! - `all-on+registry`: the same with `tracing_subscriber::registry()` (which really creates and
//!   stores spans) instead of the no-op subscriber.
//!
//! Outputs are retained for sink stages only (`Retention::Sinks`), so memory stays flat.

use std::time::{Duration, Instant};

use stageflow::observe::{JsonlSink, ProgressObserver, WhenFull};
use stageflow::{Graph, Pipeline, Retention, RunOptions, StageContext, StageOutput, StageSpec};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Interested in everything, does nothing.
struct NoopSubscriber;

impl Subscriber for NoopSubscriber {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn chain(n: usize) -> Graph {
    Pipeline::builder("overhead")
        .with_linear_chain(n, |i| {
            StageSpec::new(format!("stage_{i}"), |_ctx: StageContext| async {
                StageOutput::ok()
            })
        })
        .build()
        .expect("valid chain")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median µs per stage over `runs` runs of `make_options()`.
fn measure(
    rt: &tokio::runtime::Runtime,
    graph: &Graph,
    runs: usize,
    mut make_options: impl FnMut() -> RunOptions,
) -> (f64, u64) {
    let n = graph.len() as f64;
    let mut per_stage = Vec::with_capacity(runs);
    let mut dropped = 0;
    // One warm-up run.
    for i in 0..=runs {
        let options = make_options().retention(Retention::Sinks);
        let t = Instant::now();
        let report = rt
            .block_on(graph.run_with((), options))
            .expect("run succeeds");
        let el = t.elapsed();
        if let Some(obs) = report.observability() {
            dropped += obs.events_dropped;
        }
        if i > 0 {
            per_stage.push(el.as_secs_f64() * 1e6 / n);
        }
    }
    (median(per_stage), dropped)
}

/// Options with everything on. A fresh sink (file truncated) per run, created before the clock
/// starts, so runs do not pile gigabytes into one file; its thread start is not timed, its
/// end-of-run flush (and fsync) is.
fn all_on(path: &std::path::Path, fsync: bool) -> impl FnMut() -> RunOptions + '_ {
    move || {
        let sink = JsonlSink::builder()
            .when_full(WhenFull::Block)
            .fsync(fsync)
            .create(path)
            .expect("create the events file");
        let (progress, _rx) = ProgressObserver::watch();
        RunOptions::new()
            .events(sink)
            .tracing(true)
            .progress(progress.every(Duration::from_millis(100)))
    }
}

/// Only one part on, for the breakdown (`BREAKDOWN=1`).
fn parts(rt: &tokio::runtime::Runtime, g: &Graph, runs: usize, path: &std::path::Path, bare: f64) {
    let row = |name: &str, make: &mut dyn FnMut() -> RunOptions| {
        let (us, _) = measure(rt, g, runs, make);
        println!(
            "n={:>9}   only {name:<26} {us:.3} µs/stage ({:+.3})",
            g.len(),
            us - bare
        );
    };
    row("jsonl events", &mut || {
        let sink = JsonlSink::builder()
            .when_full(WhenFull::Block)
            .fsync(false)
            .create(path)
            .expect("create the events file");
        RunOptions::new().events(sink).tracing(false)
    });
    row("channel sink events", &mut || {
        RunOptions::new()
            .events(stageflow::observe::ChannelSink::unbounded().0)
            .tracing(false)
    });
    row("spans", &mut || RunOptions::new().tracing(true));
    row("progress", &mut || {
        RunOptions::new()
            .progress(ProgressObserver::watch().0)
            .tracing(false)
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map_or(7, |a| a.parse().expect("RUNS"));
    let sizes: Vec<usize> = {
        let v: Vec<usize> = args.map(|a| a.parse().expect("N")).collect();
        if v.is_empty() {
            vec![2_000, 1_000_000]
        } else {
            v
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let path =
        std::env::temp_dir().join(format!("stageflow-overhead-{}.jsonl", std::process::id()));
    let graphs: Vec<Graph> = sizes.iter().map(|&n| chain(n)).collect();
    let runs_for = |n: usize| if n >= 500_000 { runs.min(5) } else { runs };

    let mut bare = Vec::new();
    for g in &graphs {
        let (us, _) = measure(&rt, g, runs_for(g.len()), RunOptions::new);
        println!("n={:>9} bare                     {us:.3} µs/stage", g.len());
        bare.push(us);
    }

    // From here on a subscriber is installed, so the engine creates spans.
    let noop = tracing::Dispatch::new(NoopSubscriber);
    tracing::dispatcher::with_default(&noop, || {
        for (g, &b) in graphs.iter().zip(&bare) {
            let runs = runs_for(g.len());
            if std::env::var_os("BREAKDOWN").is_some() {
                parts(&rt, g, runs, &path, b);
            }
            let (us, dropped) = measure(&rt, g, runs, all_on(&path, true));
            println!(
                "n={:>9} all-on (fsync)           {us:.3} µs/stage  ({:.2}x bare, dropped {dropped})",
                g.len(),
                us / b
            );
            let (us, dropped) = measure(&rt, g, runs, all_on(&path, false));
            println!(
                "n={:>9} all-on (no fsync)        {us:.3} µs/stage  ({:.2}x bare, dropped {dropped})",
                g.len(),
                us / b
            );
        }
    });
    let registry = tracing::Dispatch::new(tracing_subscriber::registry());
    tracing::dispatcher::with_default(&registry, || {
        for (g, &b) in graphs.iter().zip(&bare) {
            let (us, dropped) = measure(&rt, g, runs_for(g.len()), all_on(&path, false));
            println!(
                "n={:>9} all-on+registry (no fsync) {us:.3} µs/stage  ({:.2}x bare, dropped {dropped})",
                g.len(),
                us / b
            );
        }
    });
    let _ = std::fs::remove_file(&path);
}
