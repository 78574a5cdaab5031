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
//!   the one fsync per run (a fixed cost of the disk, about half a millisecond here);
//! - `all-on+registry`: the same with `tracing_subscriber::registry()` (which really creates and
//!   stores spans) instead of the no-op subscriber.
//!
//! Outputs are retained for sink stages only (`Retention::Sinks`), so memory stays flat.

use std::time::Instant;

mod support;

use stageflow::observe::ProgressObserver;
use stageflow::{Graph, Pipeline, Retention, RunOptions};
use support::{all_on, events_sink, median, noop_stage, NoopSubscriber};

fn chain(n: usize) -> Graph {
    Pipeline::builder("overhead")
        .with_linear_chain(n, noop_stage)
        .build()
        .expect("valid chain")
}

/// One configuration to time: a tracing dispatcher (none, the no-op subscriber or a registry)
/// and the run options.
struct Config<'a> {
    name: &'static str,
    dispatch: tracing::Dispatch,
    options: Box<dyn FnMut() -> RunOptions + 'a>,
    per_stage: Vec<f64>,
    dropped: u64,
}

fn config<'a>(
    name: &'static str,
    dispatch: tracing::Dispatch,
    options: Box<dyn FnMut() -> RunOptions + 'a>,
) -> Config<'a> {
    Config {
        name,
        dispatch,
        options,
        per_stage: Vec::new(),
        dropped: 0,
    }
}

/// Runs every configuration `runs` times (plus one warm-up), interleaved (a round runs each once,
/// starting from a different one each round), so that the machine's drift hits all alike; keeps
/// each run's µs per stage.
fn measure_interleaved(
    rt: &tokio::runtime::Runtime,
    graph: &Graph,
    runs: usize,
    configs: &mut [Config<'_>],
) {
    let n = graph.len() as f64;
    for round in 0..=runs {
        for k in 0..configs.len() {
            let c = &mut configs[(round + k) % configs.len()];
            let options = (c.options)().retention(Retention::Sinks);
            let t = Instant::now();
            let report = tracing::dispatcher::with_default(&c.dispatch, || {
                rt.block_on(graph.run_with((), options))
                    .expect("run succeeds")
            });
            let el = t.elapsed();
            if let Some(obs) = report.observability() {
                c.dropped += obs.events_dropped;
            }
            if round > 0 {
                c.per_stage.push(el.as_secs_f64() * 1e6 / n);
            }
        }
    }
}

/// Median µs per stage over `runs` runs of `make_options()` (for the breakdown).
fn measure(
    rt: &tokio::runtime::Runtime,
    graph: &Graph,
    runs: usize,
    make_options: impl FnMut() -> RunOptions,
) -> f64 {
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    let mut configs = [config("", dispatch, Box::new(make_options))];
    measure_interleaved(rt, graph, runs, &mut configs);
    let [c] = configs;
    median(c.per_stage)
}

/// Options with everything on. The JSONL sink is created before the clock starts (its thread
/// start is not timed; its end-of-run flush, and fsync, is). For chains under 100,000 stages one
/// sink serves every run, as in a service that keeps its sink (its buffers are warm and the file
/// grows by a few MB); longer chains get a fresh sink (file truncated) per run, so runs do not
/// pile gigabytes into one file.
fn all_on_runs(path: std::path::PathBuf, fsync: bool, n: usize) -> impl FnMut() -> RunOptions {
    let shared = (n < 100_000).then(|| events_sink(&path, fsync));
    move || {
        let sink = shared.clone().unwrap_or_else(|| events_sink(&path, fsync));
        all_on(&sink).tracing(true)
    }
}

/// Only one part on, for the breakdown (`BREAKDOWN=1`).
fn parts(rt: &tokio::runtime::Runtime, g: &Graph, runs: usize, path: &std::path::Path, bare: f64) {
    let row = |name: &str, make: &mut dyn FnMut() -> RunOptions| {
        let us = measure(rt, g, runs, make);
        println!(
            "n={:>9}   only {name:<26} {us:.3} µs/stage ({:+.3})",
            g.len(),
            us - bare
        );
    };
    row("jsonl events", &mut || {
        RunOptions::new()
            .events(events_sink(path, false))
            .tracing(false)
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
    // One events file per configuration: sinks kept across runs must not share a file.
    let file = |name: &str| {
        std::env::temp_dir().join(format!(
            "stageflow-overhead-{}-{name}.jsonl",
            std::process::id()
        ))
    };
    let path = file("parts");
    let graphs: Vec<Graph> = sizes.iter().map(|&n| chain(n)).collect();
    let runs_for = |n: usize| if n >= 500_000 { runs.min(5) } else { runs };

    for g in &graphs {
        let n = g.len();
        let runs = runs_for(n);
        let noop = tracing::Dispatch::new(NoopSubscriber);
        if std::env::var_os("BREAKDOWN").is_some() {
            let bare = measure(&rt, g, runs, RunOptions::new);
            tracing::dispatcher::with_default(&noop, || parts(&rt, g, runs, &path, bare));
        }
        // `bare` has no subscriber installed; the others the no-op subscriber (so the engine
        // creates spans), or a real `tracing_subscriber::registry()`.
        let mut configs = [
            config("bare", tracing::Dispatch::none(), Box::new(RunOptions::new)),
            config(
                "all-on (no fsync)",
                noop.clone(),
                Box::new(all_on_runs(file("nofsync"), false, n)),
            ),
            config(
                "all-on (fsync)",
                noop.clone(),
                Box::new(all_on_runs(file("fsync"), true, n)),
            ),
            config(
                "all-on+registry (no fsync)",
                tracing::Dispatch::new(tracing_subscriber::registry()),
                Box::new(all_on_runs(file("registry"), false, n)),
            ),
        ];
        measure_interleaved(&rt, g, runs, &mut configs);
        let bare = median(configs[0].per_stage.clone());
        for c in &configs {
            let us = median(c.per_stage.clone());
            println!(
                "n={n:>9} {:<27} {us:.3} µs/stage  ({:.2}x bare, dropped {})",
                c.name,
                us / bare,
                c.dropped
            );
        }
        let fsync = median(configs[2].per_stage.clone()) - median(configs[1].per_stage.clone());
        println!(
            "n={n:>9} the end-of-run fsync costs {:.2} ms a run",
            fsync * n as f64 / 1000.0
        );
    }
    for name in ["parts", "nofsync", "fsync", "registry"] {
        let _ = std::fs::remove_file(file(name));
    }
}
