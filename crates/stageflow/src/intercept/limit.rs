//! Concurrency and rate limits, per stage or shared by a set of stages.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{priority, Interceptor, Next, StageInfo};
use crate::context::StageContext;
use crate::error::StageError;
use crate::stage::StageResult;

/// At most `n` executions at once, per stage or shared by every stage it applies to.
///
/// [`RunOptions::max_concurrency`](crate::RunOptions::max_concurrency) caps one run; this caps
/// executions across all runs of the graph (the semaphore lives in the interceptor, inside the
/// built graph). Register a [`shared`](Self::shared) limit with
/// [`Pipeline::intercept_kind`](crate::Pipeline::intercept_kind) for a per-kind limit. Waiting for
/// a permit stops when the run is cancelled (the stage then fails, as cancelled).
///
/// ```
/// use stageflow::intercept::ConcurrencyLimit;
/// use stageflow::{Pipeline, StageContext, StageKind, StageOutput};
/// let graph = Pipeline::builder("p")
///     // At most 4 agent stages at once, across all runs of this graph.
///     .intercept_kind(StageKind::Agent, ConcurrencyLimit::shared(4))
///     // At most 1 execution of each stage at once.
///     .intercept(ConcurrencyLimit::per_stage(1))
///     .stage("a", |_ctx: StageContext| async { StageOutput::ok() })
///     .kind(StageKind::Agent)
///     .build()
///     .unwrap();
/// # let _ = graph;
/// ```
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit {
    permits: usize,
    shared: Option<Arc<Semaphore>>,
}

impl ConcurrencyLimit {
    /// One limit of `n` (at least 1) shared by every stage it applies to.
    pub fn shared(n: usize) -> Self {
        let n = n.max(1);
        ConcurrencyLimit {
            permits: n,
            shared: Some(Arc::new(Semaphore::new(n))),
        }
    }

    /// A separate limit of `n` (at least 1) for each stage it applies to.
    pub fn per_stage(n: usize) -> Self {
        ConcurrencyLimit {
            permits: n.max(1),
            shared: None,
        }
    }

    /// Permits currently free in a shared limit (`None` for a per-stage one).
    pub fn available(&self) -> Option<usize> {
        self.shared.as_ref().map(|s| s.available_permits())
    }
}

struct BoundLimit {
    semaphore: Arc<Semaphore>,
}

async fn with_permit(semaphore: &Semaphore, ctx: StageContext, next: Next<'_>) -> StageResult {
    // Fast path: a free permit, no waiting (and no cancellation future).
    if let Ok(_permit) = semaphore.try_acquire() {
        return next.run(ctx).await;
    }
    let permit = tokio::select! {
        biased;
        permit = semaphore.acquire() => permit,
        () = ctx.cancelled() => {
            return Err(StageError::msg("cancelled while waiting for a concurrency permit"));
        }
    };
    let _permit = permit.map_err(|_| StageError::msg("concurrency limit closed"))?;
    next.run(ctx).await
}

#[async_trait::async_trait]
impl Interceptor for BoundLimit {
    fn name(&self) -> &str {
        "concurrency_limit"
    }
    fn priority(&self) -> i32 {
        priority::CONCURRENCY
    }
    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        with_permit(&self.semaphore, ctx, next).await
    }
}

#[async_trait::async_trait]
impl Interceptor for ConcurrencyLimit {
    fn name(&self) -> &str {
        "concurrency_limit"
    }

    fn priority(&self) -> i32 {
        priority::CONCURRENCY
    }

    fn bind(&self, _stage: &StageInfo<'_>) -> Option<Arc<dyn Interceptor>> {
        let semaphore = match &self.shared {
            Some(s) => s.clone(),
            None => Arc::new(Semaphore::new(self.permits)),
        };
        Some(Arc::new(BoundLimit { semaphore }))
    }

    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        match &self.shared {
            Some(s) => with_permit(s, ctx, next).await,
            // Unbound per-stage limit (never happens through a pipeline): nothing to share.
            None => next.run(ctx).await,
        }
    }
}

/// A token bucket: on average `rate` executions per `per`, with bursts of up to `burst`.
///
/// An execution takes one token; without one it waits (first come, first served: each waiter
/// reserves the next token) before it starts. Per stage or shared, like [`ConcurrencyLimit`].
/// Time is tokio's clock.
///
/// ```
/// use std::time::Duration;
/// use stageflow::intercept::RateLimit;
/// // 10 calls a second, bursts of 5, shared by every stage that calls the API.
/// let api = RateLimit::shared(10, Duration::from_secs(1)).burst(5);
/// # let _ = api;
/// ```
#[derive(Clone, Debug)]
pub struct RateLimit {
    interval: Duration,
    burst: u32,
    shared: Option<Arc<Mutex<Bucket>>>,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens available at `at` (negative: reserved by waiters).
    tokens: f64,
    at: Instant,
    burst: f64,
    interval: Duration,
}

impl Bucket {
    fn new(burst: u32, interval: Duration) -> Self {
        Bucket {
            tokens: f64::from(burst),
            at: Instant::now(),
            burst: f64::from(burst),
            interval,
        }
    }

    /// Takes a token; returns how long to wait for it.
    fn take(&mut self) -> Duration {
        let now = Instant::now();
        let per_token = self.interval.as_secs_f64();
        if per_token > 0.0 {
            let refill = now.saturating_duration_since(self.at).as_secs_f64() / per_token;
            self.tokens = (self.tokens + refill).min(self.burst);
        } else {
            self.tokens = self.burst;
        }
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens * per_token)
        }
    }
}

impl RateLimit {
    fn new(rate: u32, per: Duration, shared: bool) -> Self {
        let rate = rate.max(1);
        let interval = per / rate;
        let burst = 1;
        RateLimit {
            interval,
            burst,
            shared: shared.then(|| Arc::new(Mutex::new(Bucket::new(burst, interval)))),
        }
    }

    /// `rate` executions per `per`, shared by every stage it applies to (burst 1 until
    /// [`burst`](Self::burst) is set).
    pub fn shared(rate: u32, per: Duration) -> Self {
        Self::new(rate, per, true)
    }

    /// `rate` executions per `per` for each stage it applies to.
    pub fn per_stage(rate: u32, per: Duration) -> Self {
        Self::new(rate, per, false)
    }

    /// Allows bursts of up to `burst` executions (at least 1). The bucket starts full.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        if self.shared.is_some() {
            self.shared = Some(Arc::new(Mutex::new(Bucket::new(self.burst, self.interval))));
        }
        self
    }
}

struct BoundRate {
    bucket: Arc<Mutex<Bucket>>,
}

async fn with_token(bucket: &Mutex<Bucket>, ctx: StageContext, next: Next<'_>) -> StageResult {
    let wait = bucket.lock().unwrap_or_else(PoisonError::into_inner).take();
    if !wait.is_zero() {
        tokio::select! {
            biased;
            () = ctx.cancelled() => {
                return Err(StageError::msg("cancelled while waiting for a rate-limit token"));
            }
            () = tokio::time::sleep(wait) => {}
        }
    }
    next.run(ctx).await
}

#[async_trait::async_trait]
impl Interceptor for BoundRate {
    fn name(&self) -> &str {
        "rate_limit"
    }
    fn priority(&self) -> i32 {
        priority::RATE_LIMIT
    }
    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        with_token(&self.bucket, ctx, next).await
    }
}

#[async_trait::async_trait]
impl Interceptor for RateLimit {
    fn name(&self) -> &str {
        "rate_limit"
    }

    fn priority(&self) -> i32 {
        priority::RATE_LIMIT
    }

    fn bind(&self, _stage: &StageInfo<'_>) -> Option<Arc<dyn Interceptor>> {
        let bucket = match &self.shared {
            Some(b) => b.clone(),
            None => Arc::new(Mutex::new(Bucket::new(self.burst, self.interval))),
        };
        Some(Arc::new(BoundRate { bucket }))
    }

    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        match &self.shared {
            Some(b) => with_token(b, ctx, next).await,
            None => next.run(ctx).await,
        }
    }
}
