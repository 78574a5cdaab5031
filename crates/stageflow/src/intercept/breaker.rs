//! Circuit breaker, per stage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{priority, Interceptor, Next, StageInfo};
use crate::context::StageContext;
use crate::error::StageError;
use crate::stage::StageResult;

/// The state of one stage's breaker; see [`CircuitBreaker::state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Executions go through; `failures` in a row so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Executions fail at once with a [`CircuitOpenError`] until the open interval passes.
    Open {
        /// Time until the next execution is let through as a probe.
        remaining: Duration,
    },
    /// The open interval passed: the next execution is a probe (one at a time); its success
    /// closes the breaker, its failure opens it again.
    HalfOpen {
        /// Whether a probe is running now.
        probing: bool,
    },
}

#[derive(Debug)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, failures: u32 },
    HalfOpen { probing: bool },
}

#[derive(Debug)]
struct Cell {
    /// `false` while closed with no failure recorded: then an execution needs no lock.
    dirty: AtomicBool,
    state: Mutex<State>,
}

impl Cell {
    fn new() -> Self {
        Cell {
            dirty: AtomicBool::new(false),
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Breaker settings.
#[derive(Clone, Copy, Debug)]
struct Config {
    threshold: u32,
    open_for: Duration,
}

/// Stops calling a stage that keeps failing.
///
/// Per stage (each stage it applies to gets its own state): after `failure_threshold`
/// consecutive failed executions the breaker opens, and executions fail at once with a
/// [`CircuitOpenError`] ("circuit open ...", never a fake success) for `open_for`. Then it is
/// half-open: one execution at a time is let through as a probe; success closes the breaker,
/// failure opens it again.
///
/// A failure is an error or a `fail`/`retry` output, counted once per stage execution (at its
/// default priority the breaker sits outside [`Retry`](super::Retry), so a stage that fails after
/// three attempts is one failure). Skips and cancels count as neither. A probe that is dropped
/// (the run was cancelled) frees the probe slot without a verdict.
///
/// The state lives in this instance, inside the built graph: every run of the graph shares it.
/// Time is tokio's clock, so tests can use a paused clock.
///
/// ```
/// use std::time::Duration;
/// use stageflow::intercept::{BreakerState, CircuitBreaker};
/// use stageflow::{Pipeline, StageContext, StageOutput};
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let breaker = CircuitBreaker::new(2, Duration::from_secs(30));
/// let graph = Pipeline::builder("p")
///     .intercept(breaker.clone())
///     .stage("call", |_ctx: StageContext| async { StageOutput::fail("503") })
///     .build()
///     .unwrap();
/// graph.run(()).await.unwrap_err();
/// graph.run(()).await.unwrap_err();
/// assert!(matches!(breaker.state("call"), Some(BreakerState::Open { .. })));
/// let failure = graph.run(()).await.unwrap_err();
/// assert!(failure.to_string().contains("circuit open"), "{failure}");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    config: Config,
    cells: Arc<Mutex<HashMap<String, Arc<Cell>>>>,
}

impl CircuitBreaker {
    /// Opens after `failure_threshold` consecutive failures (at least 1), for `open_for`.
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        CircuitBreaker {
            config: Config {
                threshold: failure_threshold.max(1),
                open_for,
            },
            cells: Arc::default(),
        }
    }

    /// The state of stage `stage`'s breaker, or `None` if the breaker is not bound to it.
    pub fn state(&self, stage: &str) -> Option<BreakerState> {
        let cell = self.cell_if_bound(stage)?;
        let state = cell.lock();
        Some(match *state {
            State::Closed { failures } => BreakerState::Closed { failures },
            State::Open { until, .. } => BreakerState::Open {
                remaining: until.saturating_duration_since(Instant::now()),
            },
            State::HalfOpen { probing } => BreakerState::HalfOpen { probing },
        })
    }

    /// Closes stage `stage`'s breaker and forgets its failures.
    pub fn reset(&self, stage: &str) {
        if let Some(cell) = self.cell_if_bound(stage) {
            *cell.lock() = State::Closed { failures: 0 };
            cell.dirty.store(false, Ordering::Release);
        }
    }

    fn cell_if_bound(&self, stage: &str) -> Option<Arc<Cell>> {
        let cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        cells.get(stage).cloned()
    }

    /// The breaker of stage `stage`, its state created on first use.
    fn bound(&self, stage: &str) -> Bound {
        let mut cells = self.cells.lock().unwrap_or_else(PoisonError::into_inner);
        let cell = cells
            .entry(stage.to_owned())
            .or_insert_with(|| Arc::new(Cell::new()))
            .clone();
        Bound {
            config: self.config,
            cell,
            stage: stage.to_owned(),
        }
    }
}

/// A stage's circuit breaker is open (or half-open with its probe running), so the stage was not
/// executed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CircuitOpenError {
    /// Open.
    #[error("circuit open: stage `{stage}` failed {failures} times in a row; next probe in {retry_in:?}")]
    Open {
        /// The stage.
        stage: String,
        /// Consecutive failures that opened it.
        failures: u32,
        /// Time until a probe is let through.
        retry_in: Duration,
    },
    /// Half-open, and the single probe is running.
    #[error("circuit open (half-open): stage `{stage}` has a probe in flight")]
    ProbeInFlight {
        /// The stage.
        stage: String,
    },
}

/// The breaker bound to one stage.
struct Bound {
    config: Config,
    cell: Arc<Cell>,
    stage: String,
}

/// Frees the half-open probe slot if the probe ends without a verdict (dropped or panicked).
struct ProbeSlot<'a> {
    cell: &'a Cell,
    armed: bool,
}

impl Drop for ProbeSlot<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut state = self.cell.lock();
            if let State::HalfOpen { probing } = &mut *state {
                *probing = false;
            }
        }
    }
}

fn is_failure(result: &StageResult) -> bool {
    match result {
        Ok(out) => out.status().is_failure(),
        Err(_) => true,
    }
}

impl Bound {
    async fn call(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        let cell = &*self.cell;
        if !cell.dirty.load(Ordering::Acquire) {
            // Closed with no failures: the common case, no lock unless this one fails.
            let result = next.run(ctx).await;
            if is_failure(&result) {
                self.record(false, false);
            }
            return result;
        }
        let probe = {
            let mut state = cell.lock();
            match &mut *state {
                State::Closed { .. } => false,
                State::Open { until, failures } => {
                    let now = Instant::now();
                    if now < *until {
                        return Err(StageError::from(CircuitOpenError::Open {
                            stage: self.stage.clone(),
                            failures: *failures,
                            retry_in: *until - now,
                        }));
                    }
                    *state = State::HalfOpen { probing: true };
                    true
                }
                State::HalfOpen { probing: true } => {
                    return Err(StageError::from(CircuitOpenError::ProbeInFlight {
                        stage: self.stage.clone(),
                    }));
                }
                State::HalfOpen { probing } => {
                    *probing = true;
                    true
                }
            }
        };
        let mut slot = ProbeSlot { cell, armed: probe };
        let result = next.run(ctx).await;
        slot.armed = false;
        self.record(probe, !is_failure(&result));
        result
    }

    fn record(&self, probe: bool, success: bool) {
        let cell = &*self.cell;
        let mut state = cell.lock();
        match (&mut *state, probe, success) {
            (State::HalfOpen { .. }, true, true) => {
                *state = State::Closed { failures: 0 };
                cell.dirty.store(false, Ordering::Release);
            }
            (State::HalfOpen { .. }, true, false) => {
                *state = State::Open {
                    until: Instant::now() + self.config.open_for,
                    failures: self.config.threshold,
                };
            }
            (State::Closed { failures }, false, true) => {
                *failures = 0;
                cell.dirty.store(false, Ordering::Release);
            }
            (State::Closed { failures }, false, false) => {
                *failures += 1;
                cell.dirty.store(true, Ordering::Release);
                if *failures >= self.config.threshold {
                    let failures = *failures;
                    *state = State::Open {
                        until: Instant::now() + self.config.open_for,
                        failures,
                    };
                }
            }
            // A late result of an execution admitted before the breaker changed state: the
            // breaker already decided, so it does not count.
            _ => {}
        }
    }
}

#[async_trait::async_trait]
impl Interceptor for Bound {
    fn name(&self) -> &str {
        "circuit_breaker"
    }
    fn priority(&self) -> i32 {
        priority::CIRCUIT_BREAKER
    }
    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        self.call(ctx, next).await
    }
}

#[async_trait::async_trait]
impl Interceptor for CircuitBreaker {
    fn name(&self) -> &str {
        "circuit_breaker"
    }

    fn priority(&self) -> i32 {
        priority::CIRCUIT_BREAKER
    }

    fn bind(&self, stage: &StageInfo<'_>) -> Option<Arc<dyn Interceptor>> {
        Some(Arc::new(self.bound(stage.name)))
    }

    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        // Only reached when used without binding (the pipeline always binds).
        let bound = self.bound(ctx.stage_name());
        bound.call(ctx, next).await
    }
}
