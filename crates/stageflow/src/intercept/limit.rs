//! Concurrency and rate limits, per stage or shared by a set of stages.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{priority, sleep_unless_cancelled, Interceptor, Next, StageInfo};
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
    /// The limit's semaphore; `None` in a per-stage limit before [`bind`](Interceptor::bind)
    /// gives each stage its own.
    semaphore: Option<Arc<Semaphore>>,
}

impl ConcurrencyLimit {
    /// One limit of `n` (at least 1) shared by every stage it applies to.
    pub fn shared(n: usize) -> Self {
        let n = n.max(1);
        ConcurrencyLimit {
            permits: n,
            semaphore: Some(Arc::new(Semaphore::new(n))),
        }
    }

    /// A separate limit of `n` (at least 1) for each stage it applies to.
    pub fn per_stage(n: usize) -> Self {
        ConcurrencyLimit {
            permits: n.max(1),
            semaphore: None,
        }
    }

    /// Permits currently free in a shared limit (`None` for a per-stage one).
    pub fn available(&self) -> Option<usize> {
        self.semaphore.as_ref().map(|s| s.available_permits())
    }
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
impl Interceptor for ConcurrencyLimit {
    fn name(&self) -> &str {
        "concurrency_limit"
    }

    fn priority(&self) -> i32 {
        priority::CONCURRENCY
    }

    /// A per-stage limit gets a semaphore for the stage; a shared one is used as is.
    fn bind(&self, _stage: &StageInfo<'_>) -> Option<Arc<dyn Interceptor>> {
        self.semaphore.is_none().then(|| {
            Arc::new(ConcurrencyLimit {
                permits: self.permits,
                semaphore: Some(Arc::new(Semaphore::new(self.permits))),
            }) as Arc<dyn Interceptor>
        })
    }

    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        match &self.semaphore {
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
    /// The limit's bucket; `None` in a per-stage limit before [`bind`](Interceptor::bind) gives
    /// each stage its own.
    bucket: Option<Arc<Mutex<Bucket>>>,
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
            bucket: shared.then(|| Arc::new(Mutex::new(Bucket::new(burst, interval)))),
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
        if self.bucket.is_some() {
            self.bucket = Some(Arc::new(Mutex::new(Bucket::new(self.burst, self.interval))));
        }
        self
    }
}

async fn with_token(bucket: &Mutex<Bucket>, ctx: StageContext, next: Next<'_>) -> StageResult {
    let wait = bucket.lock().unwrap_or_else(PoisonError::into_inner).take();
    if !wait.is_zero() && !sleep_unless_cancelled(&ctx, wait).await {
        return Err(StageError::msg(
            "cancelled while waiting for a rate-limit token",
        ));
    }
    next.run(ctx).await
}

#[async_trait::async_trait]
impl Interceptor for RateLimit {
    fn name(&self) -> &str {
        "rate_limit"
    }

    fn priority(&self) -> i32 {
        priority::RATE_LIMIT
    }

    /// A per-stage limit gets a bucket for the stage; a shared one is used as is.
    fn bind(&self, _stage: &StageInfo<'_>) -> Option<Arc<dyn Interceptor>> {
        self.bucket.is_none().then(|| {
            Arc::new(RateLimit {
                bucket: Some(Arc::new(Mutex::new(Bucket::new(self.burst, self.interval)))),
                ..*self
            }) as Arc<dyn Interceptor>
        })
    }

    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        match &self.bucket {
            Some(b) => with_token(b, ctx, next).await,
            // Unbound per-stage limit (never happens through a pipeline): nothing to share.
            None => next.run(ctx).await,
        }
    }
}
