//! Timing, counting and checking one scenario.
//!
//! Each size is built and run `repeat` times from scratch (a fresh graph and [`Tracker`] per
//! repeat, so `build_ms` is a real build and no state leaks between runs). Build time covers
//! defining the pipeline (names and specs) plus [`Pipeline::build`](stageflow::Pipeline::build);
//! run time covers `run_with` until the caller holds the report. Dropping the graph and the report
//! happens outside both timers. Reported figures are medians over the repeats; the golden checks
//! must hold in every repeat.

use std::sync::Arc;
use std::time::{Duration, Instant};

use stageflow::{Graph, Retention, RunOptions};
use tokio::runtime::Runtime;

use super::scenarios::{chain_name, Shape, Tracker};
use super::{memory, FailRow, Plan, Rows, ScaleRow, ScenarioReport};
use crate::alloc;
use crate::CliError;

/// What every measurement shares.
#[derive(Debug)]
pub struct Env<'a> {
    /// The runtime runs execute on.
    pub rt: &'a Runtime,
    /// Runs per size.
    pub repeat: u32,
    /// Concurrency cap passed to [`RunOptions::max_concurrency`].
    pub max_concurrency: Option<usize>,
    /// Print one progress line per size on stderr.
    pub progress: bool,
}

impl Env<'_> {
    fn options(&self, retention: Retention) -> RunOptions {
        let options = RunOptions::new().retention(retention);
        match self.max_concurrency {
            Some(n) => options.max_concurrency(n),
            None => options,
        }
    }
}

/// Measures every size of `plan`.
pub fn run_plan(plan: &Plan, env: &Env<'_>) -> Result<ScenarioReport, CliError> {
    let mut peak_rss_reset = true;
    let (scenario, rows) = match plan {
        Plan::Scale { scenario, shapes } => {
            let mut rows = Vec::with_capacity(shapes.len());
            for shape in shapes {
                if env.progress {
                    eprintln!("stress {scenario}: {} stages ...", shape.stage_count());
                }
                peak_rss_reset &= memory::reset_peak();
                rows.push(measure_shape(shape, env)?);
            }
            (*scenario, Rows::Scale(rows))
        }
        Plan::Fail { stages, at } => {
            let mut rows = Vec::with_capacity(at.len());
            for &k in at {
                if env.progress {
                    eprintln!("stress fail: {stages} stages, failing at {k} ...");
                }
                rows.push(measure_failure(*stages, k, env)?);
            }
            ("fail", Rows::Fail(rows))
        }
    };
    Ok(ScenarioReport {
        scenario,
        description: plan.description(),
        repeat: env.repeat,
        worker_threads: env.rt.metrics().num_workers(),
        max_concurrency: env.max_concurrency,
        peak_rss_reset,
        rows,
    })
}

/// Builds a graph, or reports the harness bug that made it invalid.
fn build(shape: &Shape, tracker: &Arc<Tracker>) -> Result<Graph, CliError> {
    shape.build(tracker).map_err(|err| {
        CliError::Failed(format!(
            "internal error: the stress pipeline does not build: {err}"
        ))
    })
}

/// One size of `depth`, `wide` or `lattice`.
fn measure_shape(shape: &Shape, env: &Env<'_>) -> Result<ScaleRow, CliError> {
    let stages = shape.stage_count();
    let (mut build_ms, mut run_ms, mut bytes, mut calls) = (vec![], vec![], vec![], vec![]);
    let mut graph_bytes = vec![];
    let (mut golden_ok, mut completed) = (true, true);
    for _ in 0..env.repeat {
        let tracker = Tracker::new();
        let started = Instant::now();
        let graph = build(shape, &tracker)?;
        build_ms.push(ms(started.elapsed()));
        graph_bytes.push(graph.structure_bytes() as f64 / stages as f64);

        let options = env.options(Retention::Sinks);
        let before = alloc::snapshot();
        let started = Instant::now();
        let outcome = env.rt.block_on(graph.run_with((), options));
        let elapsed = started.elapsed();
        let allocated = alloc::snapshot().since(before);
        run_ms.push(ms(elapsed));
        bytes.push(allocated.bytes as f64 / stages as f64);
        calls.push(allocated.calls as f64 / stages as f64);

        let (done, sinks_ok) = match &outcome {
            Ok(report) => (report.is_completed(), shape.sinks_ok(report.results())),
            Err(failure) => {
                eprintln!("warning: {stages}-stage run failed: {failure}");
                (false, false)
            }
        };
        completed &= done;
        golden_ok &=
            done && sinks_ok && tracker.mismatches() == 0 && tracker.executed() == stages as u64;
        drop(outcome);
        drop(graph);
    }
    let run_median = median(run_ms);
    Ok(ScaleRow {
        stages,
        build_ms: median(build_ms),
        run_ms: run_median,
        per_stage_us: run_median * 1_000.0 / stages as f64,
        graph_bytes_per_stage: median(graph_bytes),
        peak_rss_mb: memory::peak_rss_mb(),
        alloc_bytes_per_stage: median(bytes),
        allocs_per_stage: median(calls),
        golden_ok,
        completed,
    })
}

/// One failure point of `fail`: a chain of `stages` whose stage `at` (1-based) fails.
fn measure_failure(stages: usize, at: usize, env: &Env<'_>) -> Result<FailRow, CliError> {
    let shape = Shape::Chain { stages };
    let expected_stage = chain_name(at);
    let mut surface_ms = Vec::new();
    let mut golden_ok = true;
    let mut row = None;
    for _ in 0..env.repeat {
        let tracker = Tracker::failing_at(at as u64);
        let graph = build(&shape, &tracker)?;
        let outcome = env
            .rt
            .block_on(graph.run_with((), env.options(Retention::All)));
        let seen = Instant::now();
        let (error, partial_results, names_stage) = match &outcome {
            Ok(_) => (None, 0, false),
            Err(failure) => (
                Some(failure.to_string()),
                failure.partial_results().len(),
                failure.stage() == expected_stage,
            ),
        };
        if let Some(failed_at) = tracker.failed_at() {
            surface_ms.push(ms(seen.saturating_duration_since(failed_at)));
        }
        let stages_ran = tracker.executed();
        let ok = names_stage
            && stages_ran == at as u64
            && partial_results == at - 1
            && tracker.mismatches() == 0;
        // Report a failing repeat's figures if there is one, else the last repeat's.
        if golden_ok {
            row = Some((error, stages_ran, partial_results));
        }
        golden_ok &= ok;
        drop(outcome);
        drop(graph);
    }
    let (error, stages_ran, partial_results) = row.unwrap_or((None, 0, 0));
    Ok(FailRow {
        stages,
        at,
        error,
        stages_ran,
        partial_results,
        surface_ms: (!surface_ms.is_empty()).then(|| median(surface_ms)),
        golden_ok,
    })
}

/// Milliseconds as a float.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// The median (mean of the middle two for an even count); `NaN` for no values.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    fn env(rt: &Runtime) -> Env<'_> {
        Env {
            rt,
            repeat: 2,
            max_concurrency: None,
            progress: false,
        }
    }

    #[test]
    fn small_shapes_are_golden() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        for shape in [
            Shape::Chain { stages: 50 },
            Shape::Wide { width: 50 },
            Shape::Lattice {
                layers: 4,
                width: 3,
            },
        ] {
            let row = measure_shape(&shape, &env(&rt)).unwrap();
            assert!(row.golden_ok && row.completed, "{shape:?}: {row:?}");
            assert_eq!(row.stages, shape.stage_count());
        }
    }

    #[test]
    fn failure_row_counts_stages() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let row = measure_failure(20, 7, &env(&rt)).unwrap();
        assert!(row.golden_ok, "{row:?}");
        assert_eq!((row.stages_ran, row.partial_results), (7, 6));
        assert!(row.error.unwrap().contains("`stage_7`"));
    }
}
