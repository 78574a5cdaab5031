//! Helpers for the engine benchmarks: the runtime, the Stageflow graphs under test, and the
//! hand-written "floor" scheduler they are compared to.

// Each benchmark target compiles this module and uses part of it.
#![allow(dead_code)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use stageflow::{
    async_trait, Graph, Pipeline, Stage, StageContext, StageOutput, StageResult, StageSpec,
};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

/// The runtime every benchmark uses: multi-threaded, two workers (the machine has two cores).
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `fut` as a task on a runtime worker and waits for it.
///
/// Criterion drives async benchmarks with `block_on` on the main thread; spawning moves the
/// scheduler loop onto a worker, as in an application, instead of adding a third busy thread on
/// a two-core machine. Both Stageflow and the floors go through it, and one spawn per iteration
/// is noise next to 1,000+ stages.
pub async fn on_worker<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> T {
    tokio::spawn(fut).await.expect("benchmark task panicked")
}

// ---------------------------------------------------------------------------------------------
// Stageflow graphs
// ---------------------------------------------------------------------------------------------

/// A chain stage: reads its predecessor's accumulated `value` and returns it plus one. The first
/// stage of a chain returns 1.
pub struct TrackedStage {
    first: bool,
}

#[async_trait]
impl Stage for TrackedStage {
    async fn execute(&self, ctx: StageContext) -> StageResult {
        let previous = if self.first {
            0
        } else {
            // Searches the declared dependencies (just one here) without allocating.
            ctx.get::<u64>("value")?
        };
        Ok(StageOutput::ok().with("value", previous + 1))
    }
}

/// Name of stage `i` of a chain.
pub fn chain_name(i: usize) -> String {
    format!("s{i}")
}

/// The definition of an `n`-stage chain of [`TrackedStage`]s named `s0..s{n-1}`. Two stage objects
/// are shared by all specs, so the definition allocates names and specs only.
pub fn chain_pipeline(n: usize) -> Pipeline {
    let first: Arc<dyn Stage> = Arc::new(TrackedStage { first: true });
    let next: Arc<dyn Stage> = Arc::new(TrackedStage { first: false });
    Pipeline::builder("chain").with_linear_chain(n, |i| {
        let stage = if i == 0 { &first } else { &next };
        StageSpec::from_shared(chain_name(i), stage.clone())
    })
}

/// An `n`-stage chain of [`TrackedStage`]s, built and validated.
pub fn chain_graph(n: usize) -> Graph {
    chain_pipeline(n).build().expect("valid chain")
}

/// A stage that does nothing: the wide shapes measure scheduling, not stage work.
fn noop() -> Arc<dyn Stage> {
    Arc::new(|_ctx: StageContext| async { StageOutput::ok() })
}

/// One source, `width` parallel stages that depend on it, one sink that depends on all of them.
pub fn fan_out_graph(width: usize) -> Graph {
    let noop = noop();
    Pipeline::builder("fan_out")
        .with_fan_out_fan_in(
            StageSpec::from_shared("source", noop.clone()),
            width,
            |i| StageSpec::from_shared(format!("w{i}"), noop.clone()),
            StageSpec::from_shared("sink", noop.clone()),
        )
        .build()
        .expect("valid fan-out")
}

/// `layers` layers of `width` stages; every stage depends on every stage of the previous layer.
pub fn lattice_graph(layers: usize, width: usize) -> Graph {
    let noop = noop();
    let mut pipeline = Pipeline::builder("lattice");
    pipeline.reserve(layers * width);
    let mut previous: Vec<String> = Vec::new();
    for layer in 0..layers {
        let current: Vec<String> = (0..width).map(|k| format!("l{layer}_{k}")).collect();
        for name in &current {
            pipeline = pipeline
                .add(StageSpec::from_shared(name.clone(), noop.clone()).after(previous.as_slice()));
        }
        previous = current;
    }
    pipeline.build().expect("valid lattice")
}

// ---------------------------------------------------------------------------------------------
// The floor: a hand-written dependency-counting scheduler
// ---------------------------------------------------------------------------------------------

/// A boxed async closure: the floor's stage. Takes its input value, returns its output value.
pub type Task = Box<dyn Fn(u64) -> Pin<Box<dyn Future<Output = u64> + Send>> + Send + Sync>;

/// The floor's stage body: its input plus one. With inputs combined by `max`, every stage's
/// output is its depth (1 for a root), which gives each shape a cheap checkable result.
pub fn plus_one() -> Task {
    Box::new(|x| Box::pin(async move { x + 1 }))
}

/// `n` floor stages.
pub fn tasks(n: usize) -> Vec<Task> {
    (0..n).map(|_| plus_one()).collect()
}

/// Dependencies of each node of an `n`-node chain.
pub fn chain_deps(n: usize) -> Vec<Vec<usize>> {
    (0..n)
        .map(|i| if i == 0 { Vec::new() } else { vec![i - 1] })
        .collect()
}

/// Dependencies of a fan-out: node 0 is the source, `1..=width` the parallel stages, the last
/// node the sink.
pub fn fan_out_deps(width: usize) -> Vec<Vec<usize>> {
    let mut deps = vec![Vec::new()];
    deps.extend((0..width).map(|_| vec![0]));
    deps.push((1..=width).collect());
    deps
}

/// Dependencies of a `layers` x `width` lattice, layer by layer.
pub fn lattice_deps(layers: usize, width: usize) -> Vec<Vec<usize>> {
    (0..layers * width)
        .map(|i| {
            let layer = i / width;
            if layer == 0 {
                Vec::new()
            } else {
                ((layer - 1) * width..layer * width).collect()
            }
        })
        .collect()
}

/// The floor: plain adjacency lists, in-degree counters, and a ready list. A ready stage is
/// awaited inline when it is the only thing to do, and spawned on tokio when several are ready.
/// No names, no outputs map, no error, skip or cancellation handling: what any DAG runner has to
/// do at the very least.
pub struct Floor {
    tasks: Vec<Task>,
    dependents: Vec<Vec<usize>>,
    in_degree: Vec<u32>,
    roots: Vec<usize>,
}

/// Per-run state of the [`Floor`].
struct FloorRun {
    pending: Vec<u32>,
    input: Vec<u64>,
    ready: Vec<usize>,
    last: u64,
}

impl Floor {
    /// A floor graph with one [`plus_one`] task per node of `deps`.
    pub fn new(deps: &[Vec<usize>]) -> Self {
        let n = deps.len();
        let mut dependents = vec![Vec::new(); n];
        for (i, ds) in deps.iter().enumerate() {
            for &d in ds {
                dependents[d].push(i);
            }
        }
        Floor {
            tasks: tasks(n),
            dependents,
            in_degree: deps.iter().map(|ds| ds.len() as u32).collect(),
            roots: (0..n).filter(|&i| deps[i].is_empty()).collect(),
        }
    }

    /// Runs every task once, in dependency order; returns the last node's output.
    pub async fn run(&self) -> u64 {
        let n = self.tasks.len();
        let mut run = FloorRun {
            pending: self.in_degree.clone(),
            input: vec![0; n],
            ready: self.roots.clone(),
            last: 0,
        };
        let mut running: JoinSet<(usize, u64)> = JoinSet::new();
        loop {
            if run.ready.len() == 1 && running.is_empty() {
                let i = run.ready.pop().expect("one ready node");
                let out = (self.tasks[i])(run.input[i]).await;
                self.complete(&mut run, i, out);
                continue;
            }
            for i in run.ready.drain(..) {
                let fut = (self.tasks[i])(run.input[i]);
                running.spawn(async move { (i, fut.await) });
            }
            match running.join_next().await {
                Some(joined) => {
                    let (i, out) = joined.expect("floor task panicked");
                    self.complete(&mut run, i, out);
                }
                None => break,
            }
        }
        run.last
    }

    fn complete(&self, run: &mut FloorRun, i: usize, out: u64) {
        for &j in &self.dependents[i] {
            run.input[j] = run.input[j].max(out);
            run.pending[j] -= 1;
            if run.pending[j] == 0 {
                run.ready.push(j);
            }
        }
        if i == self.tasks.len() - 1 {
            run.last = out;
        }
    }
}

/// The simplest possible chain: a loop awaiting each boxed closure on the previous output.
pub async fn plain_loop(tasks: &[Task]) -> u64 {
    let mut value = 0;
    for task in tasks {
        value = task(value).await;
    }
    value
}
