//! The pipelines the stress scenarios run, and the golden checks they carry.
//!
//! Every stage is a [`TrackedStage`]: it checks the value it read against what its position in the
//! graph says it must be, counts a mismatch in a shared [`Tracker`] if not, and counts itself as
//! executed. The harness then also checks the sinks' final values. A run is "golden" only if no
//! stage saw a wrong value, every stage ran exactly once and the sinks hold the expected result, so
//! a fast number can never hide a lost or duplicated stage.
//!
//! Why the stages look the way they do:
//! - **One stage object per role, shared by all stages.** The specs are built with
//!   [`StageSpec::from_shared`], so a 10,000,000-stage chain holds one stage object, not ten
//!   million: memory measures the engine, not the harness.
//! - **The position comes from the stage's name** (`stage_17` is stage 17), parsed without
//!   allocating, so the shared object still knows what each execution must see.
//! - **No allocation per execution on the harness side.** The predecessor's value is read with
//!   [`StageContext::get`], which searches the declared dependencies without building a name; the
//!   stage is a closure returning a ready future, the cheapest shape the engine accepts. What
//!   `alloc_bytes_per_stage` reports is therefore the engine's own cost (context, boxed future,
//!   output map, `Arc`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use stageflow::{
    BuildError, Graph, Pipeline, Results, Stage, StageContext, StageError, StageOutput,
    StageResult, StageSpec,
};

/// The value the wide scenario's source emits; worker `i` emits `SOURCE_VALUE + i`.
pub const SOURCE_VALUE: u64 = 1_000;

/// Counters shared by every stage of one run (relaxed atomics: statistics only, read after the run).
#[derive(Debug, Default)]
pub struct Tracker {
    executed: AtomicU64,
    mismatches: AtomicU64,
    fail_at: Option<u64>,
    failed_at: OnceLock<Instant>,
}

impl Tracker {
    /// A tracker for a run where no stage fails on purpose.
    pub fn new() -> Arc<Self> {
        Arc::new(Tracker::default())
    }

    /// A tracker for a chain whose stage `at` (1-based) fails.
    pub fn failing_at(at: u64) -> Arc<Self> {
        Arc::new(Tracker {
            fail_at: Some(at),
            ..Tracker::default()
        })
    }

    /// Stage executions so far.
    pub fn executed(&self) -> u64 {
        self.executed.load(Relaxed)
    }

    /// Stages that read a value other than the expected one.
    pub fn mismatches(&self) -> u64 {
        self.mismatches.load(Relaxed)
    }

    /// When the failing stage returned its failure, if it did.
    pub fn failed_at(&self) -> Option<Instant> {
        self.failed_at.get().copied()
    }

    fn check(&self, ok: bool) {
        if !ok {
            self.mismatches.fetch_add(1, Relaxed);
        }
    }
}

/// What a [`TrackedStage`] does, by position in its scenario's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Chain stage `k`: reads `k - 1` from its predecessor (0 for the first), outputs `k`.
    Chain,
    /// The wide scenario's source: outputs [`SOURCE_VALUE`].
    WideSource,
    /// Wide worker `i`: reads [`SOURCE_VALUE`] from the source, outputs `SOURCE_VALUE + i`.
    WideWorker,
    /// The wide scenario's sink: reads all `width` workers, outputs their count and sum.
    WideSink {
        /// Number of workers.
        width: u64,
    },
    /// Lattice node in layer `l`: reads `width` inputs each equal to `l - 1` (none in layer 1),
    /// outputs `l`.
    Lattice {
        /// Nodes per layer.
        width: u64,
    },
}

/// A stage that checks what it reads and counts itself. See the [module docs](self).
#[derive(Debug)]
pub struct TrackedStage {
    role: Role,
    tracker: Arc<Tracker>,
}

impl TrackedStage {
    /// The shared stage object for `role`, reporting to `tracker`.
    pub fn shared(role: Role, tracker: Arc<Tracker>) -> Arc<dyn Stage> {
        let stage = TrackedStage { role, tracker };
        Arc::new(move |ctx: StageContext| std::future::ready(stage.step(&ctx)))
    }

    /// One execution: read, check, count, output.
    fn step(&self, ctx: &StageContext) -> StageResult {
        let t = &*self.tracker;
        t.executed.fetch_add(1, Relaxed);
        let name = ctx.stage_name();
        match self.role {
            Role::Chain => {
                let k = position(name, "stage_")?;
                let prev: u64 = if k == 1 { 0 } else { ctx.get("value")? };
                t.check(prev == k - 1);
                if t.fail_at == Some(k) {
                    let _ = t.failed_at.set(Instant::now());
                    return Ok(StageOutput::fail(format!("injected failure at stage {k}")));
                }
                Ok(StageOutput::ok().with("value", prev + 1))
            }
            Role::WideSource => Ok(StageOutput::ok().with("value", SOURCE_VALUE)),
            Role::WideWorker => {
                let i = position(name, "w_")?;
                let source: u64 = ctx.get("value")?;
                t.check(source == SOURCE_VALUE);
                Ok(StageOutput::ok().with("value", source + i))
            }
            Role::WideSink { width } => {
                let (mut count, mut sum) = (0u64, 0u64);
                for (_, output) in ctx.inputs() {
                    count += 1;
                    sum = sum.wrapping_add(output.get::<u64>("value")?);
                }
                t.check(count == width && sum == wide_sum(width));
                Ok(StageOutput::ok().with("count", count).with("sum", sum))
            }
            Role::Lattice { width } => {
                let layer = position(name, "L")?;
                let mut count = 0u64;
                for (_, output) in ctx.inputs() {
                    count += 1;
                    t.check(output.get::<u64>("value")? == layer - 1);
                }
                t.check(count == if layer == 1 { 0 } else { width });
                Ok(StageOutput::ok().with("value", layer))
            }
        }
    }
}

/// The number right after `prefix` in `name` (up to the next `_`), e.g. `position("L3_7", "L")`
/// is 3. Positions are 1-based; a name without one is a harness bug, reported as a stage error.
fn position(name: &str, prefix: &str) -> Result<u64, StageError> {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.split('_').next())
        .and_then(|digits| digits.parse::<u64>().ok())
        .filter(|&k| k >= 1)
        .ok_or_else(|| StageError::msg(format!("stage `{name}` has no position after `{prefix}`")))
}

/// What the wide sink must read: `width` workers, worker `i` emitting `SOURCE_VALUE + i`.
pub fn wide_sum(width: u64) -> u64 {
    width
        .wrapping_mul(SOURCE_VALUE)
        .wrapping_add(width.wrapping_mul(width.wrapping_add(1)) / 2)
}

/// Name of chain stage `k` (1-based).
pub fn chain_name(k: usize) -> String {
    format!("stage_{k}")
}

/// A graph shape that runs to completion, with its closed-form expected result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `stages` stages in a line.
    Chain {
        /// Length of the chain.
        stages: usize,
    },
    /// One source, `width` parallel workers, one sink.
    Wide {
        /// Number of workers.
        width: usize,
    },
    /// `layers` layers of `width` nodes; each node depends on every node of the layer before.
    Lattice {
        /// Number of layers.
        layers: usize,
        /// Nodes per layer.
        width: usize,
    },
}

impl Shape {
    /// Total number of stages.
    pub fn stage_count(&self) -> usize {
        match *self {
            Shape::Chain { stages } => stages,
            Shape::Wide { width } => width + 2,
            Shape::Lattice { layers, width } => layers * width,
        }
    }

    /// Builds the graph, every stage reporting to `tracker`.
    pub fn build(&self, tracker: &Arc<Tracker>) -> Result<Graph, BuildError> {
        match *self {
            Shape::Chain { stages } => {
                let stage = TrackedStage::shared(Role::Chain, tracker.clone());
                Pipeline::builder("stress-depth")
                    .with_linear_chain(stages, |i| {
                        StageSpec::from_shared(chain_name(i + 1), stage.clone())
                    })
                    .build()
            }
            Shape::Wide { width } => {
                let worker = TrackedStage::shared(Role::WideWorker, tracker.clone());
                let sink = TrackedStage::shared(
                    Role::WideSink {
                        width: width as u64,
                    },
                    tracker.clone(),
                );
                Pipeline::builder("stress-wide")
                    .with_fan_out_fan_in(
                        StageSpec::from_shared(
                            "source",
                            TrackedStage::shared(Role::WideSource, tracker.clone()),
                        ),
                        width,
                        |i| StageSpec::from_shared(format!("w_{}", i + 1), worker.clone()),
                        StageSpec::from_shared("sink", sink),
                    )
                    .build()
            }
            Shape::Lattice { layers, width } => {
                let stage = TrackedStage::shared(
                    Role::Lattice {
                        width: width as u64,
                    },
                    tracker.clone(),
                );
                let mut pipeline = Pipeline::builder("stress-lattice");
                pipeline.reserve(layers * width);
                let mut previous: Vec<String> = Vec::new();
                for layer in 1..=layers {
                    let names: Vec<String> = (1..=width).map(|j| lattice_name(layer, j)).collect();
                    for name in &names {
                        pipeline = pipeline.add(
                            StageSpec::from_shared(name.as_str(), stage.clone())
                                .after(previous.as_slice()),
                        );
                    }
                    previous = names;
                }
                pipeline.build()
            }
        }
    }

    /// Whether the retained sink outputs (run with `Retention::Sinks`) hold the expected values.
    pub fn sinks_ok(&self, results: &Results) -> bool {
        match *self {
            Shape::Chain { stages } => {
                results.len() == 1
                    && results
                        .get_data::<u64>(&chain_name(stages), "value")
                        .is_ok_and(|v| v == stages as u64)
            }
            Shape::Wide { width } => {
                let w = width as u64;
                results.len() == 1
                    && results
                        .get_data::<u64>("sink", "count")
                        .is_ok_and(|c| c == w)
                    && results
                        .get_data::<u64>("sink", "sum")
                        .is_ok_and(|s| s == wide_sum(w))
            }
            Shape::Lattice { layers, width } => {
                results.len() == width
                    && (1..=width).all(|j| {
                        results
                            .get_data::<u64>(&lattice_name(layers, j), "value")
                            .is_ok_and(|v| v == layers as u64)
                    })
            }
        }
    }
}

/// Name of lattice node `j` of layer `layer` (both 1-based).
fn lattice_name(layer: usize, j: usize) -> String {
    format!("L{layer}_{j}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_without_allocating_names() {
        assert_eq!(position("stage_17", "stage_").unwrap(), 17);
        assert_eq!(position("w_3", "w_").unwrap(), 3);
        assert_eq!(position("L12_4", "L").unwrap(), 12);
        assert!(position("stage_0", "stage_").is_err());
        assert!(position("sink", "w_").is_err());
    }

    #[test]
    fn wide_sum_is_closed_form() {
        let w = 100u64;
        let direct: u64 = (1..=w).map(|i| SOURCE_VALUE + i).sum();
        assert_eq!(wide_sum(w), direct);
    }

    #[test]
    fn shapes_count_stages() {
        assert_eq!(Shape::Chain { stages: 7 }.stage_count(), 7);
        assert_eq!(Shape::Wide { width: 7 }.stage_count(), 9);
        assert_eq!(
            Shape::Lattice {
                layers: 3,
                width: 4
            }
            .stage_count(),
            12
        );
    }
}
