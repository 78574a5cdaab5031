//! Helpers shared by the integration tests. Each test binary uses a subset of them.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use stageflow::observe::MemorySink;
use stageflow::{
    BuildError, ErrorCode, Graph, InputError, Pipeline, Results, RunFailure, RunOptions, RunReport,
    StageContext, StageOutput, StageSpec,
};

/// A stage that does nothing.
pub async fn noop(_ctx: StageContext) -> StageOutput {
    StageOutput::ok()
}

/// A future that is ready at once with `StageOutput::ok()`: a stage returning it completes on its
/// first poll, and its closure can do its work synchronously.
pub struct ReadyOk;

impl Future for ReadyOk {
    type Output = StageOutput;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(StageOutput::ok())
    }
}

/// Name of stage `i` in the chains built here.
pub fn chain_name(i: usize) -> String {
    format!("s_{i}")
}

/// A counting chain of `n` stages: stage `s_i` reads `value` from `s_{i-1}` (0 for the first) and
/// outputs `value + 1`, so `s_{n-1}` ends with `n`.
pub fn counting_chain(n: usize) -> Pipeline {
    Pipeline::builder("chain").with_linear_chain(n, |i| {
        let prev = (i > 0).then(|| chain_name(i - 1));
        StageSpec::new(chain_name(i), move |ctx: StageContext| {
            let prev = prev.clone();
            async move {
                let v: u64 = match &prev {
                    Some(p) => ctx.get_from(p, "value")?,
                    None => 0,
                };
                Ok::<_, InputError>(StageOutput::ok().with("value", v + 1))
            }
        })
    })
}

/// Names of the stages with a retained output, in definition order.
pub fn result_names(results: &Results) -> Vec<String> {
    results.names().map(str::to_owned).collect()
}

/// The build error of a pipeline that must not build.
pub fn build_err(p: Pipeline) -> BuildError {
    match p.build() {
        Ok(g) => panic!("pipeline `{}` should not build", g.name()),
        Err(e) => e,
    }
}

/// The codes of a build error, in order.
pub fn codes(e: &BuildError) -> Vec<ErrorCode> {
    e.errors.iter().map(|e| e.code).collect()
}

/// Runs `graph` on `()` with `options` plus a fresh [`MemorySink`]; returns the outcome and the
/// sink holding the run's events.
pub async fn recorded(
    graph: &Graph,
    options: RunOptions,
) -> (Result<RunReport, RunFailure>, MemorySink) {
    let sink = MemorySink::new();
    let outcome = graph.run_with((), options.events(sink.clone())).await;
    (outcome, sink)
}

/// [`recorded`] for a run that must return a report.
pub async fn recorded_ok(graph: &Graph, options: RunOptions) -> (RunReport, MemorySink) {
    let (outcome, sink) = recorded(graph, options).await;
    (outcome.unwrap(), sink)
}

/// [`recorded`] for a run that must fail.
pub async fn recorded_err(graph: &Graph, options: RunOptions) -> (RunFailure, MemorySink) {
    let (outcome, sink) = recorded(graph, options).await;
    (outcome.unwrap_err(), sink)
}

/// Increments a counter when dropped: proves a stage future was dropped (aborted or finished).
pub struct DropCounter(pub Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Tracks how many stages run at once and the most seen.
#[derive(Default)]
pub struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    pub fn enter(self: &Arc<Self>) -> GaugeGuard {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        GaugeGuard(self.clone())
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }

    pub fn current(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
}

/// Leaves the gauge when dropped (also when the stage is aborted).
pub struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A multi-threaded runtime with two workers, for tests (such as proptests) that are not
/// `#[tokio::test]` functions.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
