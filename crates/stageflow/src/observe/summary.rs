//! End-of-run summary: slowest stages, duration percentiles, critical path.
//!
//! Enabled with [`RunOptions::summary`](crate::RunOptions::summary); only then does the run
//! record per-stage durations (8 bytes a stage). Everything is computed once, after the run, in
//! `O(n log top)` plus one sort of the durations, and without recursion: the critical path is a
//! longest-path pass over the graph in topological order (Kahn's algorithm), so it works for a
//! chain of millions of stages.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use serde::Serialize;

use crate::topology::Topology;

/// Summary settings.
///
/// ```
/// use stageflow::{observe::SummaryOptions, RunOptions};
/// let opts = RunOptions::new().summary(SummaryOptions::new().top(5));
/// # let _ = opts;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryOptions {
    pub(crate) top: usize,
    pub(crate) max_path_names: usize,
}

impl Default for SummaryOptions {
    fn default() -> Self {
        SummaryOptions {
            top: 10,
            max_path_names: 1000,
        }
    }
}

impl SummaryOptions {
    /// Defaults: top 10 slowest stages; name at most 1,000 stages of the critical path.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many slowest stages to list.
    pub fn top(mut self, n: usize) -> Self {
        self.top = n;
        self
    }

    /// Name at most `n` stages of the critical path (its length and duration are always exact;
    /// for a path longer than `n`, the first `n / 2` and last `n / 2` names are kept).
    pub fn max_path_names(mut self, n: usize) -> Self {
        self.max_path_names = n;
        self
    }
}

/// A stage and how long it ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StageTiming {
    /// The stage.
    pub stage: String,
    /// Its duration (from invocation to result).
    pub duration: Duration,
}

/// Duration percentiles over the stages that finished (nearest-rank).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Longest.
    pub max: Duration,
}

/// The longest-duration dependency path through the graph: the stages that bound the run's wall
/// time if every stage ran as soon as its dependencies finished.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CriticalPath {
    /// Sum of the durations along the path.
    pub duration: Duration,
    /// Number of stages on the path.
    pub len: usize,
    /// Stage names from the first to the last (possibly elided in the middle, see
    /// [`SummaryOptions::max_path_names`]).
    pub stages: Vec<String>,
    /// `true` when names were elided.
    pub elided: bool,
}

/// The end-of-run summary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    /// Stages with a recorded duration (those that finished).
    pub timed: usize,
    /// Slowest stages, slowest first.
    pub slowest: Vec<StageTiming>,
    /// Duration percentiles.
    pub percentiles: Percentiles,
    /// Critical path.
    pub critical_path: CriticalPath,
}

/// Marks a stage without a recorded duration.
pub(crate) const UNTIMED: u64 = u64::MAX;

pub(crate) fn summarize(
    graph: &Topology,
    durations: &[u64],
    options: SummaryOptions,
) -> RunSummary {
    let n = graph.len();
    debug_assert_eq!(durations.len(), n);

    // Slowest: a min-heap of the top N.
    let mut heap: BinaryHeap<Reverse<(u64, Reverse<u32>)>> =
        BinaryHeap::with_capacity(options.top + 1);
    let mut timed: Vec<u64> = Vec::with_capacity(n);
    for (i, &d) in durations.iter().enumerate() {
        if d == UNTIMED {
            continue;
        }
        timed.push(d);
        if options.top > 0 {
            heap.push(Reverse((d, Reverse(i as u32))));
            if heap.len() > options.top {
                heap.pop();
            }
        }
    }
    let mut slowest: Vec<(u64, u32)> = heap
        .into_iter()
        .map(|Reverse((d, Reverse(i)))| (d, i))
        .collect();
    slowest.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let slowest = slowest
        .into_iter()
        .map(|(d, i)| StageTiming {
            stage: graph.name(i).to_owned(),
            duration: Duration::from_nanos(d),
        })
        .collect();

    timed.sort_unstable();
    let rank = |p: f64| -> Duration {
        if timed.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((p * timed.len() as f64).ceil() as usize).clamp(1, timed.len()) - 1;
        Duration::from_nanos(timed[idx])
    };
    let percentiles = Percentiles {
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: timed
            .last()
            .map_or(Duration::ZERO, |&d| Duration::from_nanos(d)),
    };

    RunSummary {
        timed: timed.len(),
        slowest,
        percentiles,
        critical_path: critical_path(graph, durations, options.max_path_names),
    }
}

/// Longest path by total duration, in topological order, iteratively.
fn critical_path(graph: &Topology, durations: &[u64], max_names: usize) -> CriticalPath {
    let n = graph.len();
    if n == 0 {
        return CriticalPath::default();
    }
    const NONE: u32 = u32::MAX;
    let cost = |i: u32| match durations[i as usize] {
        UNTIMED => 0,
        d => d,
    };
    let mut dist = vec![0u64; n];
    let mut pred = vec![NONE; n];
    for i in graph.topological_indices() {
        let (mut best, mut best_pred) = (0u64, NONE);
        for &d in graph.deps(i) {
            if best_pred == NONE || dist[d as usize] > best {
                best = dist[d as usize];
                best_pred = d;
            }
        }
        dist[i as usize] = best.saturating_add(cost(i));
        pred[i as usize] = best_pred;
    }
    let (end, &total) = dist
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(&a.0)))
        .expect("n > 0");
    let mut path = Vec::new();
    let mut cur = end as u32;
    while cur != NONE {
        path.push(cur);
        cur = pred[cur as usize];
    }
    path.reverse();
    let len = path.len();
    let elided = len > max_names;
    let names: Vec<String> = if elided {
        let half = max_names / 2;
        path[..half]
            .iter()
            .chain(&path[len - half..])
            .map(|&i| graph.name(i).to_owned())
            .collect()
    } else {
        path.iter().map(|&i| graph.name(i).to_owned()).collect()
    };
    CriticalPath {
        duration: Duration::from_nanos(total),
        len,
        stages: names,
        elided,
    }
}
