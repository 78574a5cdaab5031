//! Segmentation: split a pipeline into segments that run one after the other, each as a unit.
//!
//! A [`SegmentPlan`] assigns every stage to a segment, so that a stage's dependencies are in its
//! own segment or an earlier one. Build it
//! - every N levels of depth ([`SegmentPlan::by_depth`]; a stage's depth is the length of the
//!   longest path to it from a root, computed iteratively), or
//! - at explicit boundaries ([`SegmentPlan::at_boundaries`]: each named stage starts a new
//!   segment, and so does everything after it).
//!
//! Running with a plan ([`Graph::run_segmented`], or a durable run with
//! [`Checkpoint::segments`](crate::durable::Checkpoint::segments)), segment `k + 1` starts only
//! once every stage of segment `k` finished; inside a segment, stages run as usual (in parallel
//! where the graph allows). At each boundary the run
//! - emits `segment.<k>.completed` (and `segment.<k+1>.started`) through the run's event sink,
//!   with `{"segment", "segments", "stages", "stages_done"}` as data, so progress can be followed
//!   segment by segment;
//! - commits the segment's records when the run is durable with
//!   [`Durability::SegmentBoundaries`](crate::durable::Durability::SegmentBoundaries);
//! - under [`Retention::Sinks`](crate::Retention::Sinks), holds only the outputs that a later
//!   segment still needs (the [`cross_edges`](SegmentPlan::cross_edges)); the others were freed
//!   as soon as their last consumer started.
//!
//! The plan is plain, serializable data (stage names per segment and the edges that cross
//! segments) with the pipeline's [fingerprint](crate::durable::Fingerprint), so that a
//! distributed backend can hand segments to different workers and ship only the outputs named by
//! the cross-segment edges.
//!
//! ```
//! use stageflow::observe::MemorySink;
//! use stageflow::segment::SegmentPlan;
//! use stageflow::{Pipeline, RunOptions, StageContext, StageOutput, StageSpec};
//!
//! # #[tokio::main] async fn main() {
//! let graph = Pipeline::builder("chain")
//!     .with_linear_chain(10, |i| {
//!         StageSpec::new(format!("s{i}"), |_ctx: StageContext| async { StageOutput::ok() })
//!     })
//!     .build()
//!     .unwrap();
//! let plan = SegmentPlan::by_depth(&graph, 4);
//! assert_eq!(plan.len(), 3); // s0..s3, s4..s7, s8..s9
//! assert_eq!(plan.segments[1].stages, ["s4", "s5", "s6", "s7"]);
//! assert_eq!(plan.cross_edges.len(), 2); // s3 -> s4, s7 -> s8
//!
//! let sink = MemorySink::new();
//! let report = graph
//!     .run_segmented((), RunOptions::new().events(sink.clone()), &plan)
//!     .await
//!     .unwrap();
//! assert!(report.is_completed());
//! assert!(sink.event_types().contains(&"segment.2.completed".to_owned()));
//! # }
//! ```

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use std::sync::Arc;

use crate::context::RunShared;
use crate::graph::{Graph, GraphInner};
use crate::observe::EventKind;
use crate::output::StageOutput;
use crate::run::ext::{Extensions, RunHook, Schedule};
use crate::run::{RunFailure, RunOptions, RunReport};

/// One segment: its position and its stages (definition order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Position in the plan, from 0.
    pub index: usize,
    /// Names of its stages, in definition order.
    pub stages: Vec<String>,
}

/// A dependency edge whose ends are in different segments: the output of `from` must be available
/// to the segment of `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrossEdge {
    /// The dependency.
    pub from: String,
    /// The dependent.
    pub to: String,
    /// Segment of `from`.
    pub from_segment: usize,
    /// Segment of `to` (always greater than `from_segment`).
    pub to_segment: usize,
}

/// How a pipeline is split into segments; see the [module docs](self). Serializable.
///
/// ```
/// use stageflow::segment::SegmentPlan;
/// use stageflow::{Pipeline, StageContext, StageOutput};
/// let graph = Pipeline::builder("p")
///     .stage("a", |_c: StageContext| async { StageOutput::ok() })
///     .stage("b", |_c: StageContext| async { StageOutput::ok() })
///     .after("a")
///     .stage("c", |_c: StageContext| async { StageOutput::ok() })
///     .after("b")
///     .build()
///     .unwrap();
/// let plan = SegmentPlan::at_boundaries(&graph, ["b"]).unwrap();
/// assert_eq!(plan.segments[0].stages, ["a"]);
/// assert_eq!(plan.segments[1].stages, ["b", "c"]);
/// let json = serde_json::to_string(&plan).unwrap();
/// let back: SegmentPlan = serde_json::from_str(&json).unwrap();
/// assert_eq!(back, plan);
/// back.check(&graph).unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentPlan {
    /// The pipeline's name.
    pub pipeline: String,
    /// The pipeline's [fingerprint](crate::durable::Fingerprint): a plan only runs on the pipeline
    /// it was made for.
    pub fingerprint: String,
    /// The segments, in execution order.
    pub segments: Vec<Segment>,
    /// Every edge between two segments.
    pub cross_edges: Vec<CrossEdge>,
}

/// A [`SegmentPlan`] that does not fit a pipeline, or boundaries that name no stage.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentError {
    /// The plan was made for another pipeline (or another version of this one).
    #[error("the segment plan was made for pipeline `{plan_pipeline}` ({plan_fingerprint}), not for `{pipeline}` ({fingerprint})")]
    OtherPipeline {
        /// Pipeline named in the plan.
        plan_pipeline: String,
        /// Fingerprint in the plan.
        plan_fingerprint: String,
        /// The pipeline it was used with.
        pipeline: String,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// A stage name that is not in the pipeline.
    #[error("segment plan: no stage `{0}` in the pipeline")]
    UnknownStage(String),
    /// A stage in no segment, or in two.
    #[error("segment plan: stage `{stage}` is in {count} segments (must be in exactly one)")]
    Coverage {
        /// The stage.
        stage: String,
        /// How many segments list it.
        count: usize,
    },
    /// A stage in an earlier segment than one of its dependencies.
    #[error("segment plan: stage `{stage}` (segment {segment}) depends on `{dependency}` of the later segment {dependency_segment}")]
    Backward {
        /// The stage.
        stage: String,
        /// Its segment.
        segment: usize,
        /// The dependency.
        dependency: String,
        /// The dependency's segment.
        dependency_segment: usize,
    },
}

/// A segmented run that did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SegmentRunError {
    /// The plan does not fit the pipeline; nothing ran.
    #[error(transparent)]
    Plan(#[from] SegmentError),
    /// A stage failed.
    #[error("{0}")]
    Failed(Box<RunFailure>),
}

impl SegmentPlan {
    /// Segments of `every` levels of depth (at least 1): segment `k` holds the stages whose depth
    /// (longest path from a root) is in `k * every .. (k + 1) * every`. Linear time.
    pub fn by_depth(graph: &Graph, every: usize) -> SegmentPlan {
        let every = every.max(1) as u32;
        let g = &*graph.inner;
        let depth = depths(g);
        let seg: Vec<u32> = depth.iter().map(|d| d / every).collect();
        Self::from_assignment(graph, seg)
    }

    /// Segments that start at the named stages: a stage's segment is the largest of its
    /// dependencies' segments, plus one if it is named. So each named stage starts a new segment,
    /// and everything that depends on it is in that segment or a later one. Empty segments are
    /// left out.
    pub fn at_boundaries<'a>(
        graph: &Graph,
        boundaries: impl IntoIterator<Item = &'a str>,
    ) -> Result<SegmentPlan, SegmentError> {
        let g = &*graph.inner;
        let mut is_boundary = vec![false; g.len()];
        for name in boundaries {
            let idx = g
                .index_of(name)
                .ok_or_else(|| SegmentError::UnknownStage(name.to_owned()))?;
            is_boundary[idx as usize] = true;
        }
        let mut seg = vec![0u32; g.len()];
        for idx in g.topological_indices() {
            let base = g
                .deps(idx)
                .iter()
                .map(|&d| seg[d as usize])
                .max()
                .unwrap_or(0);
            seg[idx as usize] = base + u32::from(is_boundary[idx as usize]);
        }
        Ok(Self::from_assignment(graph, seg))
    }

    /// The plan of an assignment of stages to (possibly sparse) segment numbers that never
    /// decrease along an edge.
    fn from_assignment(graph: &Graph, mut seg: Vec<u32>) -> SegmentPlan {
        let g = &*graph.inner;
        // Compact: drop empty segment numbers.
        let max = seg.iter().copied().max().unwrap_or(0) as usize;
        let mut used = vec![false; max + 1];
        for &s in &seg {
            used[s as usize] = true;
        }
        let mut renumber = vec![0u32; max + 1];
        let mut next = 0u32;
        for (s, &u) in used.iter().enumerate() {
            if u {
                renumber[s] = next;
                next += 1;
            }
        }
        for s in &mut seg {
            *s = renumber[*s as usize];
        }
        let mut segments: Vec<Segment> = (0..next as usize)
            .map(|index| Segment {
                index,
                stages: Vec::new(),
            })
            .collect();
        let mut cross_edges = Vec::new();
        for i in 0..g.len() as u32 {
            let s = seg[i as usize] as usize;
            segments[s].stages.push(g.name(i).to_owned());
            for &d in g.deps(i) {
                let ds = seg[d as usize] as usize;
                if ds != s {
                    cross_edges.push(CrossEdge {
                        from: g.name(d).to_owned(),
                        to: g.name(i).to_owned(),
                        from_segment: ds,
                        to_segment: s,
                    });
                }
            }
        }
        SegmentPlan {
            pipeline: g.pipeline_name().to_owned(),
            fingerprint: graph.fingerprint().to_string(),
            segments,
            cross_edges,
        }
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// `true` when the plan has no segment.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Checks that the plan fits `graph`: same fingerprint, every stage in exactly one segment,
    /// and no stage in an earlier segment than one of its dependencies.
    pub fn check(&self, graph: &Graph) -> Result<(), SegmentError> {
        self.assignment(graph).map(|_| ())
    }

    /// Segment of every stage, by stage index.
    fn assignment(&self, graph: &Graph) -> Result<Vec<u32>, SegmentError> {
        let g = &*graph.inner;
        let fingerprint = graph.fingerprint().to_string();
        if fingerprint != self.fingerprint || g.pipeline_name() != self.pipeline {
            return Err(SegmentError::OtherPipeline {
                plan_pipeline: self.pipeline.clone(),
                plan_fingerprint: self.fingerprint.clone(),
                pipeline: g.pipeline_name().to_owned(),
                fingerprint,
            });
        }
        const NONE: u32 = u32::MAX;
        let mut seg = vec![NONE; g.len()];
        for (s, segment) in self.segments.iter().enumerate() {
            for name in &segment.stages {
                let idx = g
                    .index_of(name)
                    .ok_or_else(|| SegmentError::UnknownStage(name.clone()))?;
                if seg[idx as usize] != NONE {
                    return Err(SegmentError::Coverage {
                        stage: name.clone(),
                        count: 2,
                    });
                }
                seg[idx as usize] = s as u32;
            }
        }
        for i in 0..g.len() as u32 {
            let s = seg[i as usize];
            if s == NONE {
                return Err(SegmentError::Coverage {
                    stage: g.name(i).to_owned(),
                    count: 0,
                });
            }
            for &d in g.deps(i) {
                if seg[d as usize] > s {
                    return Err(SegmentError::Backward {
                        stage: g.name(i).to_owned(),
                        segment: s as usize,
                        dependency: g.name(d).to_owned(),
                        dependency_segment: seg[d as usize] as usize,
                    });
                }
            }
        }
        Ok(seg)
    }
}

/// Longest path from a root to each stage (roots have depth 0).
fn depths(g: &GraphInner) -> Vec<u32> {
    let mut depth = vec![0u32; g.len()];
    for i in g.topological_indices() {
        let d = depth[i as usize];
        for &j in g.dependents(i) {
            depth[j as usize] = depth[j as usize].max(d + 1);
        }
    }
    depth
}

impl Graph {
    /// Runs the pipeline segment by segment following `plan` (see [`crate::segment`]). Otherwise
    /// like [`run_with`](Self::run_with).
    pub async fn run_segmented(
        &self,
        input: impl Into<Value>,
        options: RunOptions,
        plan: &SegmentPlan,
    ) -> Result<RunReport, SegmentRunError> {
        let gate = SegmentGate::new(self, plan)?;
        let ext = Extensions {
            hooks: vec![Box::new(gate)],
            ..Extensions::default()
        };
        self.run_extended(input.into(), options, ext)
            .await
            .map_err(|failure| SegmentRunError::Failed(Box::new(failure)))
    }
}

/// The executor side of a plan: holds every stage of a later segment back by one extra pending
/// dependency, released when the segment before it finishes.
pub(crate) struct SegmentGate {
    seg_of: Vec<u32>,
    /// Stages per segment: `members[offsets[s]..offsets[s + 1]]`.
    offsets: Vec<usize>,
    members: Vec<u32>,
    /// Stages of each segment not finished yet.
    remaining: Vec<u32>,
    /// The open segment; earlier ones are finished.
    current: usize,
    done: usize,
    opened_at: Instant,
}

impl SegmentGate {
    pub(crate) fn new(graph: &Graph, plan: &SegmentPlan) -> Result<SegmentGate, SegmentError> {
        let seg_of = plan.assignment(graph)?;
        let count = plan.len();
        let mut offsets = vec![0usize; count + 1];
        for &s in &seg_of {
            offsets[s as usize + 1] += 1;
        }
        for s in 0..count {
            offsets[s + 1] += offsets[s];
        }
        let mut fill = offsets.clone();
        let mut members = vec![0u32; seg_of.len()];
        for (i, &s) in seg_of.iter().enumerate() {
            members[fill[s as usize]] = i as u32;
            fill[s as usize] += 1;
        }
        Ok(SegmentGate {
            seg_of,
            offsets,
            members,
            remaining: vec![0; count],
            current: 0,
            done: 0,
            opened_at: Instant::now(),
        })
    }

    fn members(&self, s: usize) -> &[u32] {
        &self.members[self.offsets[s]..self.offsets[s + 1]]
    }
}

/// The gate in the run loop.
impl RunHook for SegmentGate {
    /// Counts what is left of each segment (restored stages are done), opens the first segment
    /// with work left, and holds every later one back by one pending dependency.
    fn attach(&mut self, mut schedule: Schedule<'_>) {
        for s in 0..self.remaining.len() {
            let left = self
                .members(s)
                .iter()
                .filter(|&&i| !schedule.is_restored(i))
                .count();
            self.remaining[s] = left as u32;
            self.done += self.members(s).len() - left;
        }
        self.current = self
            .remaining
            .iter()
            .position(|&r| r > 0)
            .unwrap_or(self.remaining.len());
        // Members are stored segment by segment: the later segments are one tail.
        let later = self.offsets[(self.current + 1).min(self.remaining.len())];
        for &i in &self.members[later..] {
            schedule.hold(i);
        }
        let current = self.current as u32;
        let seg_of = &self.seg_of;
        schedule.retain_ready(|&i| seg_of[i as usize] <= current);
        self.opened_at = Instant::now();
    }

    fn finished(
        &mut self,
        idx: u32,
        _output: &Arc<StageOutput>,
        _record: bool,
        mut schedule: Schedule<'_>,
        shared: &RunShared,
    ) -> u32 {
        let s = self.seg_of[idx as usize] as usize;
        self.remaining[s] -= 1;
        self.done += 1;
        let mut boundaries = 0;
        while self.current < self.remaining.len() && self.remaining[self.current] == 0 {
            let finished = self.current;
            boundaries += 1;
            self.emit(shared, finished, "completed");
            self.current += 1;
            if self.current == self.remaining.len() {
                break;
            }
            self.opened_at = Instant::now();
            self.emit(shared, self.current, "started");
            let (from, to) = (self.offsets[self.current], self.offsets[self.current + 1]);
            for &i in &self.members[from..to] {
                schedule.release(i);
            }
        }
        boundaries
    }
}

impl SegmentGate {
    fn emit(&self, shared: &RunShared, segment: usize, what: &str) {
        let Some(obs) = &shared.observe else {
            return;
        };
        if obs.sink.is_none() {
            return;
        }
        let mut data = json!({
            "segment": segment,
            "segments": self.remaining.len(),
            "stages": self.members(segment).len(),
            "stages_done": self.done,
        });
        if what == "completed" {
            data["duration_ms"] = json!(self.opened_at.elapsed().as_secs_f64() * 1000.0);
        }
        let event = obs
            .event(EventKind::Custom(
                format!("segment.{segment}.{what}").into(),
            ))
            .with_data(data);
        obs.emit_external(event);
    }
}
