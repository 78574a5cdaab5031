//! Retries with exponential backoff and jitter.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use super::{is_timeout, priority, sleep_unless_cancelled, Fnv, Interceptor, Next};
use crate::context::StageContext;
use crate::error::StageError;
use crate::observe::EventKind;
use crate::output::{StageOutput, StageStatus};
use crate::stage::StageResult;

/// How the backoff delay is randomized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Jitter {
    /// The exact exponential delay.
    None,
    /// A uniform delay in `[0, d]` ("full jitter").
    Full,
    /// `d/2` plus a uniform delay in `[0, d/2]` ("equal jitter", the default).
    #[default]
    Equal,
}

/// When and how often [`Retry`] runs a stage again.
///
/// A stage is retried when it returns [`StageOutput::retry`](crate::StageOutput::retry), an error marked
/// [`StageError::retryable`](crate::StageError::retryable), or (with [`retry_timeouts`](Self::retry_timeouts)) a
/// [`TimeoutError`](super::TimeoutError). Other failures, skips, cancels and panics are final.
///
/// The delay before retry `n` (`n = 1` before the second attempt) is
/// `min(initial · multiplier^(n-1), max_delay)`, then [`Jitter`]ed. Jitter is drawn from a small
/// deterministic generator: seeded with [`seed`](Self::seed), the delays of a stage are the same
/// in every run.
///
/// ```
/// use std::time::Duration;
/// use stageflow::intercept::{Jitter, RetryPolicy};
/// let policy = RetryPolicy::attempts(4)
///     .initial_delay(Duration::from_millis(100))
///     .multiplier(2.0)
///     .max_delay(Duration::from_millis(300))
///     .jitter(Jitter::None);
/// assert_eq!(policy.max_attempts(), 4);
/// assert_eq!(policy.base_delay(1), Duration::from_millis(100));
/// assert_eq!(policy.base_delay(2), Duration::from_millis(200));
/// assert_eq!(policy.base_delay(3), Duration::from_millis(300)); // capped
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    attempts: u32,
    initial: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: Jitter,
    seed: Option<u64>,
    retry_timeouts: bool,
}

impl RetryPolicy {
    /// At most `attempts` executions in all (raised to 1 if 0): `attempts(3)` means the first try
    /// and up to two retries. Defaults: 100 ms initial delay, multiplier 2, at most 30 s, equal
    /// jitter, timeouts not retried.
    pub fn attempts(attempts: u32) -> Self {
        RetryPolicy {
            attempts: attempts.max(1),
            initial: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_secs(30),
            jitter: Jitter::Equal,
            seed: None,
            retry_timeouts: false,
        }
    }

    /// Delay before the first retry.
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial = delay;
        self
    }

    /// Growth factor per retry (1.0 gives a constant delay; values below 1 are raised to 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Upper bound of the delay (before jitter).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How the delay is randomized.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Seeds the jitter, making the delays of each stage reproducible.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Whether [`TimeoutError`](super::TimeoutError)s are retried (default `false`).
    pub fn retry_timeouts(mut self, on: bool) -> Self {
        self.retry_timeouts = on;
        self
    }

    /// The most executions.
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// The delay before retry `retry` (1-based), before jitter.
    pub fn base_delay(&self, retry: u32) -> Duration {
        let factor = self
            .multiplier
            .powi(retry.saturating_sub(1).min(1024) as i32);
        let secs = self.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max_delay.as_secs_f64() {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay before retry `retry` with jitter, given a uniform random number in `[0, 1)`.
    pub fn delay(&self, retry: u32, random: f64) -> Duration {
        let base = self.base_delay(retry);
        match self.jitter {
            Jitter::None => base,
            Jitter::Full => base.mul_f64(random),
            Jitter::Equal => base / 2 + (base / 2).mul_f64(random),
        }
    }

    /// Whether `result` asks for another attempt.
    fn wants_retry(&self, result: &StageResult) -> bool {
        match result {
            Ok(out) => out.status() == StageStatus::Retry,
            Err(e) => e.is_retryable() || (self.retry_timeouts && is_timeout(e)),
        }
    }
}

/// The reason given by a `retry` output.
fn retry_message(out: &StageOutput) -> &str {
    out.message().unwrap_or("retry requested")
}

/// Runs a stage again on retryable failures; see [`RetryPolicy`].
///
/// Before each new attempt it emits a `stage.<name>.retried` event
/// ([`EventKind::StageRetried`]) with data `{"attempt", "delay_ms", "reason"}` (`attempt` is the
/// number of the attempt about to start, 2 for the first retry). It stops waiting as soon as the
/// run is cancelled. When the attempts run out, the stage fails with a
/// [`RetriesExhausted`] error (`"<last error> (gave up after 3 attempts)"`), no longer marked
/// retryable.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use stageflow::intercept::{Jitter, RetryPolicy};
/// use stageflow::{Pipeline, StageContext, StageOutput};
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let calls = Arc::new(AtomicU32::new(0));
/// let c = calls.clone();
/// let graph = Pipeline::builder("p")
///     .stage("flaky", move |_ctx: StageContext| {
///         let n = c.fetch_add(1, Ordering::SeqCst);
///         async move { if n < 2 { StageOutput::retry("503") } else { StageOutput::ok() } }
///     })
///     .retry(RetryPolicy::attempts(3).jitter(Jitter::None))
///     .build()
///     .unwrap();
/// graph.run(()).await.unwrap();
/// assert_eq!(calls.load(Ordering::SeqCst), 3);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Retry {
    policy: RetryPolicy,
}

impl Retry {
    /// A retry interceptor with `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Retry { policy }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl From<RetryPolicy> for Retry {
    fn from(policy: RetryPolicy) -> Self {
        Retry::new(policy)
    }
}

/// A stage kept failing after every attempt its [`RetryPolicy`] allowed.
#[derive(Debug, thiserror::Error)]
#[error("{last} (gave up after {attempts} attempts)")]
pub struct RetriesExhausted {
    /// Executions made.
    pub attempts: u32,
    /// The last attempt's error.
    pub last: StageError,
}

/// splitmix64: a tiny, good-enough generator for jitter.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

static UNSEEDED: AtomicU64 = AtomicU64::new(0);

#[async_trait::async_trait]
impl Interceptor for Retry {
    fn name(&self) -> &str {
        "retry"
    }

    fn priority(&self) -> i32 {
        priority::RETRY
    }

    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        let policy = &self.policy;
        let mut attempt = 1;
        let mut rng: Option<u64> = None;
        loop {
            if attempt >= policy.attempts {
                // The last attempt: `ctx` is not needed after it.
                let result = next.run(ctx).await;
                // With a single attempt allowed nothing was retried: pass the result on as is.
                return if attempt > 1 && policy.wants_retry(&result) {
                    Err(exhausted(result, attempt))
                } else {
                    counted(result, attempt)
                };
            }
            let result = next.run(ctx.clone()).await;
            if !policy.wants_retry(&result) || ctx.is_cancelled() {
                return counted(result, attempt);
            }
            let reason = match &result {
                Ok(out) => retry_message(out).to_owned(),
                Err(e) => e.to_string(),
            };
            let state = rng.get_or_insert_with(|| {
                let stage = Fnv::hash(ctx.stage_name().as_bytes());
                match policy.seed {
                    Some(seed) => seed ^ stage,
                    None => {
                        stage
                            ^ (ctx.run_id().as_u128() as u64)
                            ^ UNSEEDED.fetch_add(1, Ordering::Relaxed).rotate_left(32)
                    }
                }
            });
            let random = (splitmix(state) >> 11) as f64 / (1u64 << 53) as f64;
            let delay = policy.delay(attempt, random);
            attempt += 1;
            ctx.emit_lifecycle(
                EventKind::StageRetried,
                json!({
                    "attempt": attempt,
                    "delay_ms": delay.as_secs_f64() * 1000.0,
                    "reason": reason,
                }),
            );
            tracing::debug!(target: "stageflow", stage = ctx.stage_name(), attempt, ?delay, %reason, "retrying stage");
            if !sleep_unless_cancelled(&ctx, delay).await {
                return counted(result, attempt - 1);
            }
        }
    }
}

/// `result` with the executions it took (summed with any inner retry's), for the stage record.
fn counted(result: StageResult, attempts: u32) -> StageResult {
    result.map(|mut out| {
        out.add_attempts(attempts - 1);
        out
    })
}

fn exhausted(result: StageResult, attempts: u32) -> StageError {
    let last = match result {
        Err(e) => e,
        Ok(out) => StageError::msg(retry_message(&out)),
    };
    StageError::from(RetriesExhausted { attempts, last })
}

impl fmt::Display for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} attempts, {:?} x{} up to {:?}, {:?} jitter",
            self.attempts, self.initial, self.multiplier, self.max_delay, self.jitter
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_bounds() {
        let p = RetryPolicy::attempts(5).initial_delay(Duration::from_millis(100));
        let d = p.clone().jitter(Jitter::Full).delay(2, 0.5);
        assert_eq!(d, Duration::from_millis(100));
        let d = p.clone().jitter(Jitter::Equal).delay(1, 0.0);
        assert_eq!(d, Duration::from_millis(50));
        let d = p.jitter(Jitter::Equal).delay(1, 0.999_999);
        assert!(d < Duration::from_millis(100) && d > Duration::from_millis(99));
    }
}
