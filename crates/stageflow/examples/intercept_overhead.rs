//! Per-stage cost of a pipeline-wide interceptor stack on a linear chain of trivial stages.
//!
//! `cargo run --release -p stageflow --example intercept_overhead [-- RUNS [N]]`
//!
//! Measures the median wall time per stage over RUNS runs (default 101) of an N-stage chain
//! (default 2,000):
//! - `bare`: no interceptors (the stages are stored unwrapped);
//! - `stacked`: timeout + retry + circuit breaker on every stage (`Pipeline::intercept`);
//! - `stacked+limits`: the same plus a per-stage concurrency limit and rate limit.
//!
//! Runs alternate between the variants so that drift (frequency scaling, other load) hits all
//! of them alike.

mod support;

use std::time::{Duration, Instant};

use stageflow::intercept::{
    CircuitBreaker, ConcurrencyLimit, RateLimit, Retry, RetryPolicy, Timeout,
};
use stageflow::{Graph, Pipeline, Retention, RunOptions};
use support::{median, noop_stage};

fn chain(n: usize, stack: usize) -> Graph {
    let mut p = Pipeline::builder("overhead");
    if stack >= 1 {
        p = p
            .intercept(Timeout::new(Duration::from_secs(30)))
            .intercept(Retry::new(RetryPolicy::attempts(3)))
            .intercept(CircuitBreaker::new(5, Duration::from_secs(30)));
    }
    if stack >= 2 {
        p = p
            .intercept(ConcurrencyLimit::per_stage(8))
            .intercept(RateLimit::per_stage(1_000_000, Duration::from_secs(1)).burst(1_000));
    }
    p.with_linear_chain(n, noop_stage)
        .build()
        .expect("valid chain")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(101);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let variants = [
        ("bare", chain(n, 0)),
        ("stacked", chain(n, 1)),
        ("stacked+limits", chain(n, 2)),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); variants.len()];
    for i in 0..=runs {
        for (v, (_, graph)) in variants.iter().enumerate() {
            let options = RunOptions::new().retention(Retention::Sinks);
            let t = Instant::now();
            rt.block_on(graph.run_with((), options))
                .expect("run succeeds");
            let el = t.elapsed();
            if i > 0 {
                // The first round is a warm-up.
                samples[v].push(el.as_secs_f64() * 1e6 / n as f64);
            }
        }
    }
    let bare = median(samples[0].clone());
    for ((name, graph), s) in variants.iter().zip(samples) {
        let m = median(s);
        println!(
            "n={n:>7}  {name:<15} {m:.3} µs/stage ({:+.3})  chain: {:?}",
            m - bare,
            graph.interceptors_of("stage_0").unwrap()
        );
    }
}
