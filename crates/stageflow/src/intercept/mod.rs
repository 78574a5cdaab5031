//! Interceptors: code that runs around every execution of a stage (onion-style), for timeouts,
//! retries, circuit breakers, concurrency and rate limits, idempotency, auth checks, logging...
//!
//! An [`Interceptor`] gets the stage's [`StageContext`] and a [`Next`] handle to the rest of the
//! chain (the inner interceptors, then the stage itself). It may run code before and after
//! `next.run(ctx)`, call it several times (retry), or not at all (short-circuit). A
//! short-circuit returns a real [`StageResult`]: a denied stage fails (or is skipped) with the
//! interceptor's reason, never a silent success.
//!
//! **Ordering.** Lower [`priority`](Interceptor::priority) is further out (runs first, finishes
//! last); ties keep registration order (pipeline-wide registrations first, then the stage's own).
//! The built-ins use these priorities (outermost first), so that a stack of them composes sensibly
//! without configuration:
//!
//! | priority | interceptor | why there |
//! |---|---|---|
//! | 0 | your own, by default | outermost: sees the final outcome |
//! | [`priority::IDEMPOTENCY`] (100) | [`Idempotency`] | a replay skips everything inside |
//! | [`priority::CIRCUIT_BREAKER`] (200) | [`CircuitBreaker`] | counts one failure per stage execution, after retries |
//! | [`priority::RETRY`] (300) | [`Retry`] | each attempt goes through the limits and the timeout |
//! | [`priority::RATE_LIMIT`] (400) | [`RateLimit`] | every attempt takes a token |
//! | [`priority::CONCURRENCY`] (500) | [`ConcurrencyLimit`] | the permit is not held during backoff |
//! | [`priority::TIMEOUT`] (600) | [`Timeout`] | limits one attempt of the stage itself, not queueing |
//!
//! Use [`InterceptorExt::with_priority`] to place one elsewhere (for example a timeout around all
//! retries).
//!
//! **Scope.** Register with [`Pipeline::intercept`](crate::Pipeline::intercept) (every stage),
//! [`Pipeline::intercept_stages`](crate::Pipeline::intercept_stages) (named stages),
//! [`Pipeline::intercept_kind`](crate::Pipeline::intercept_kind) (stages of a kind), or on the
//! most recent stage with [`Pipeline::interceptor`](crate::Pipeline::interceptor),
//! [`Pipeline::timeout`](crate::Pipeline::timeout) and [`Pipeline::retry`](crate::Pipeline::retry).
//! A stage-level interceptor replaces a pipeline-level one with the same [`name`](Interceptor::name)
//! (so `.timeout(d)` on a stage overrides a pipeline-wide timeout).
//!
//! **Cost.** Each stage's chain is resolved once, when the pipeline is built, and stored in the
//! graph node (the stage is wrapped). A stage with no interceptors is stored as is: its execution
//! path is exactly the one without this module. A stage with interceptors costs one boxed future
//! per interceptor per execution (`examples/intercept_overhead.rs` measures it).
//!
//! **Shared state.** Interceptor instances live in the built [`Graph`](crate::Graph), so their
//! state (breaker state, semaphores, token buckets) is shared by every run of that graph. When an
//! interceptor needs state per stage, it returns a per-stage instance from
//! [`bind`](Interceptor::bind), called once per stage at build time.
//!
//! **Why not tower?** A tower `Service` is called through `&mut self` after `poll_ready`, so
//! sharing one across concurrent stages needs a clone per call or a `Buffer` (a channel hop to a
//! worker task per call, which would defeat the executor's inline polling); most tower layers also
//! create their state in `Layer::layer`, so state would not be shared across runs. The
//! [`Interceptor`] shape (`intercept(ctx, next)`) is the same around-middleware idea with `&self`
//! and borrowed continuations, so porting a tower middleware is mechanical.
//!
//! ```
//! use std::time::Duration;
//! use stageflow::intercept::{Interceptor, Next, RetryPolicy};
//! use stageflow::{async_trait, Pipeline, StageContext, StageOutput, StageResult};
//!
//! /// Denies every stage whose name starts with `admin_`.
//! struct Deny;
//!
//! #[async_trait]
//! impl Interceptor for Deny {
//!     fn name(&self) -> &str {
//!         "deny"
//!     }
//!     async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
//!         if ctx.stage_name().starts_with("admin_") {
//!             return Ok(StageOutput::fail("denied: admin stages are disabled"));
//!         }
//!         next.run(ctx).await
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let graph = Pipeline::builder("p")
//!     .intercept(Deny)
//!     .stage("fetch", |_ctx: StageContext| async { StageOutput::ok() })
//!     .timeout(Duration::from_secs(5))
//!     .retry(RetryPolicy::attempts(3))
//!     .stage("admin_reset", |_ctx: StageContext| async { StageOutput::ok() })
//!     .build()
//!     .unwrap();
//! let failure = graph.run(()).await.unwrap_err();
//! assert_eq!(failure.stage(), "admin_reset");
//! assert_eq!(failure.to_string(), "stage `admin_reset` failed: denied: admin stages are disabled");
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::context::StageContext;
use crate::error::StageError;
use crate::kind::StageKind;
use crate::output::StageOutput;
use crate::stage::{SharedStage, Stage, StageResult};

mod breaker;
mod guard;
mod idempotency;
mod limit;
mod retry;
mod timeout;

pub use crate::error::TimeoutError;
pub use breaker::{BreakerState, CircuitBreaker, CircuitOpenError};
pub use guard::GuardRetry;
pub use idempotency::{
    Idempotency, IdempotencyMismatch, IdempotencyStore, MemoryIdempotencyStore, StoredOutput,
};
pub use limit::{ConcurrencyLimit, RateLimit};
pub use retry::{Jitter, RetriesExhausted, Retry, RetryPolicy};
pub use timeout::Timeout;

/// Default priorities of the built-in interceptors (lower is further out). See the
/// [module docs](self).
pub mod priority {
    /// Default priority of user interceptors and [`Hooks`](super::Hooks).
    pub const DEFAULT: i32 = 0;
    /// [`Idempotency`](super::Idempotency).
    pub const IDEMPOTENCY: i32 = 100;
    /// [`CircuitBreaker`](super::CircuitBreaker).
    pub const CIRCUIT_BREAKER: i32 = 200;
    /// [`Retry`](super::Retry).
    pub const RETRY: i32 = 300;
    /// [`RateLimit`](super::RateLimit).
    pub const RATE_LIMIT: i32 = 400;
    /// [`ConcurrencyLimit`](super::ConcurrencyLimit).
    pub const CONCURRENCY: i32 = 500;
    /// [`Timeout`](super::Timeout).
    pub const TIMEOUT: i32 = 600;
}

/// Which stage an interceptor is being bound to; see [`Interceptor::bind`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct StageInfo<'a> {
    /// The stage's name.
    pub name: &'a str,
    /// The stage's kind.
    pub kind: StageKind,
}

/// Code that runs around each execution of a stage. See the [module docs](self).
///
/// ```
/// use stageflow::intercept::{Interceptor, Next};
/// use stageflow::{async_trait, StageContext, StageResult};
///
/// /// Logs how long each stage took.
/// struct Timing;
///
/// #[async_trait]
/// impl Interceptor for Timing {
///     fn name(&self) -> &str {
///         "timing"
///     }
///     async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
///         let started = std::time::Instant::now();
///         let name = ctx.stage_name().to_owned();
///         let result = next.run(ctx).await;
///         tracing::debug!(stage = %name, elapsed = ?started.elapsed());
///         result
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Interceptor: Send + Sync + 'static {
    /// A short name (`"timeout"`, `"retry"`...). A stage-level interceptor replaces a
    /// pipeline-level one with the same name.
    fn name(&self) -> &str;

    /// Position in the chain: lower is further out. Defaults to [`priority::DEFAULT`] (0).
    fn priority(&self) -> i32 {
        priority::DEFAULT
    }

    /// Called once per stage the interceptor applies to, when the pipeline is built. Return a
    /// per-stage instance to keep state per stage (as [`CircuitBreaker`] does), or `None` (the
    /// default) to use this instance for every stage.
    fn bind(&self, stage: &StageInfo<'_>) -> Option<Arc<dyn Interceptor>> {
        let _ = stage;
        None
    }

    /// Runs around one execution of the stage. Call `next.run(ctx)` to continue the chain (any
    /// number of times), or return a result without calling it to short-circuit the stage.
    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult;
}

impl fmt::Debug for dyn Interceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Interceptor({}, priority {})",
            self.name(),
            self.priority()
        )
    }
}

/// The rest of an interceptor chain: the inner interceptors, then the stage.
///
/// [`run`](Self::run) may be called several times (each call runs the rest of the chain again,
/// with the context given); [`StageContext`] is cheap to clone for that.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    chain: &'a [Arc<dyn Interceptor>],
    stage: &'a SharedStage,
}

impl<'a> Next<'a> {
    /// Runs the rest of the chain with `ctx`.
    pub fn run(&self, ctx: StageContext) -> BoxFuture<'a, StageResult> {
        match self.chain.split_first() {
            Some((first, rest)) => first.intercept(
                ctx,
                Next {
                    chain: rest,
                    stage: self.stage,
                },
            ),
            None => self.stage.execute(ctx),
        }
    }

    /// Names of the interceptors still to run, outermost first.
    pub fn remaining(&self) -> impl Iterator<Item = &str> {
        self.chain.iter().map(|i| i.name())
    }
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.remaining()).finish()
    }
}

/// Extension methods for interceptors.
pub trait InterceptorExt: Interceptor + Sized {
    /// The same interceptor at another [`priority`](Interceptor::priority).
    ///
    /// ```
    /// use std::time::Duration;
    /// use stageflow::intercept::{Interceptor, InterceptorExt, Timeout};
    /// // A timeout around all retry attempts instead of each one.
    /// let total = Timeout::new(Duration::from_secs(10)).with_priority(250);
    /// assert_eq!(total.priority(), 250);
    /// ```
    fn with_priority(self, priority: i32) -> WithPriority<Self> {
        WithPriority {
            inner: self,
            priority,
        }
    }
}

impl<I: Interceptor> InterceptorExt for I {}

/// An interceptor at another priority; see [`InterceptorExt::with_priority`].
#[derive(Debug)]
pub struct WithPriority<I> {
    inner: I,
    priority: i32,
}

#[async_trait::async_trait]
impl<I: Interceptor> Interceptor for WithPriority<I> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    fn bind(&self, stage: &StageInfo<'_>) -> Option<Arc<dyn Interceptor>> {
        let priority = self.priority;
        self.inner.bind(stage).map(|bound| {
            Arc::new(Rebound {
                inner: bound,
                priority,
            }) as Arc<dyn Interceptor>
        })
    }
    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        self.inner.intercept(ctx, next).await
    }
}

/// A bound (per-stage) interceptor keeping the priority of its [`WithPriority`] parent.
struct Rebound {
    inner: Arc<dyn Interceptor>,
    priority: i32,
}

#[async_trait::async_trait]
impl Interceptor for Rebound {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        self.inner.intercept(ctx, next).await
    }
}

/// What a [`Hooks::before`] hook decides.
#[derive(Debug)]
pub enum Before {
    /// Run the stage.
    Continue,
    /// Do not run the stage; it is skipped with this reason.
    Skip(String),
    /// Do not run the stage; it fails with this reason.
    Fail(String),
    /// Do not run the stage; use this result instead.
    Respond(StageResult),
}

/// The simple, hook-style way to write an interceptor: `before`, `after` and `on_error`. Wrap it
/// with [`hooks`] to register it.
///
/// Order per stage execution: `before`; unless it short-circuits, the rest of the chain runs,
/// then `on_error` if the result is an `Err`, then `after` on the (possibly recovered) result. A
/// short-circuit result does not pass through this interceptor's `on_error`/`after` (it never ran
/// anything), but does pass through the outer interceptors'.
///
/// ```
/// use stageflow::intercept::{hooks, Before, Hooks};
/// use stageflow::{async_trait, Pipeline, StageContext, StageOutput, StageStatus};
///
/// struct RequireUser;
///
/// #[async_trait]
/// impl Hooks for RequireUser {
///     fn name(&self) -> &str {
///         "require_user"
///     }
///     async fn before(&self, ctx: &StageContext) -> Before {
///         match ctx.identity().user_id {
///             Some(_) => Before::Continue,
///             None => Before::Fail("denied: no user in the run identity".into()),
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let graph = Pipeline::builder("p")
///     .intercept(hooks(RequireUser))
///     .stage("a", |_ctx: StageContext| async { StageOutput::ok() })
///     .build()
///     .unwrap();
/// let failure = graph.run(()).await.unwrap_err();
/// assert_eq!(failure.to_string(), "stage `a` failed: denied: no user in the run identity");
/// # }
/// ```
#[async_trait::async_trait]
pub trait Hooks: Send + Sync + 'static {
    /// A short name; see [`Interceptor::name`].
    fn name(&self) -> &str;

    /// See [`Interceptor::priority`].
    fn priority(&self) -> i32 {
        priority::DEFAULT
    }

    /// Before the stage (and the inner interceptors) run.
    async fn before(&self, ctx: &StageContext) -> Before {
        let _ = ctx;
        Before::Continue
    }

    /// When the rest of the chain returned an error. Return `Ok` to recover. Defaults to passing
    /// the error on.
    async fn on_error(&self, ctx: &StageContext, error: StageError) -> StageResult {
        let _ = ctx;
        Err(error)
    }

    /// After the rest of the chain (and `on_error`), with its result. Defaults to passing it on.
    async fn after(&self, ctx: &StageContext, result: StageResult) -> StageResult {
        let _ = ctx;
        result
    }
}

/// Turns [`Hooks`] into an [`Interceptor`].
pub fn hooks<H: Hooks>(hooks: H) -> HookInterceptor<H> {
    HookInterceptor(hooks)
}

/// [`Hooks`] as an [`Interceptor`]; see [`hooks`].
#[derive(Debug)]
pub struct HookInterceptor<H>(pub H);

#[async_trait::async_trait]
impl<H: Hooks> Interceptor for HookInterceptor<H> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn priority(&self) -> i32 {
        self.0.priority()
    }
    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        match self.0.before(&ctx).await {
            Before::Continue => {}
            Before::Skip(reason) => return Ok(StageOutput::skip(reason)),
            Before::Fail(reason) => return Ok(StageOutput::fail(reason)),
            Before::Respond(result) => return result,
        }
        let result = match next.run(ctx.clone()).await {
            Err(error) => self.0.on_error(&ctx, error).await,
            ok => ok,
        };
        self.0.after(&ctx, result).await
    }
}

/// Where a pipeline-level interceptor applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    All,
    Stages(Vec<String>),
    Kind(StageKind),
}

/// A pipeline-level registration.
#[derive(Clone)]
pub(crate) struct Registration {
    pub(crate) scope: Scope,
    pub(crate) interceptor: Arc<dyn Interceptor>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} on {:?}", self.interceptor, self.scope)
    }
}

/// A stage together with its resolved interceptor chain: what the graph stores for an
/// intercepted stage.
pub(crate) struct Intercepted {
    stage: SharedStage,
    chain: Box<[Arc<dyn Interceptor>]>,
}

impl Intercepted {
    /// The whole chain, then the stage.
    fn next(&self) -> Next<'_> {
        Next {
            chain: &self.chain,
            stage: &self.stage,
        }
    }

    /// Names of the chain's interceptors, outermost first.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.chain.iter().map(|i| i.name())
    }
}

#[async_trait::async_trait]
impl Stage for Intercepted {
    async fn execute(&self, ctx: StageContext) -> StageResult {
        self.next().run(ctx).await
    }

    fn kind(&self) -> StageKind {
        self.stage.kind()
    }

    fn execute_shared(self: Arc<Self>, ctx: StageContext) -> BoxFuture<'static, StageResult> {
        Box::pin(async move { self.next().run(ctx).await })
    }
}

/// Resolves the chain of one stage: the pipeline registrations in scope plus the stage's own (a
/// stage-level interceptor replaces pipeline-level ones of the same name), bound to the stage,
/// sorted by priority (stable). `None` when no interceptor applies: the stage is then stored as
/// is.
pub(crate) fn resolve(
    stage: &SharedStage,
    name: &str,
    kind: StageKind,
    pipeline: &[Registration],
    own: &[Arc<dyn Interceptor>],
) -> Option<Arc<Intercepted>> {
    if pipeline.is_empty() && own.is_empty() {
        return None;
    }
    let in_scope = |r: &&Registration| match &r.scope {
        Scope::All => true,
        Scope::Stages(names) => names.iter().any(|n| n == name),
        Scope::Kind(k) => *k == kind,
    };
    let info = StageInfo { name, kind };
    let mut chain: Vec<Arc<dyn Interceptor>> = pipeline
        .iter()
        .filter(in_scope)
        .map(|r| &r.interceptor)
        .filter(|i| !own.iter().any(|o| o.name() == i.name()))
        .chain(own)
        .map(|i| i.bind(&info).unwrap_or_else(|| i.clone()))
        .collect();
    if chain.is_empty() {
        return None;
    }
    chain.sort_by_key(|i| i.priority());
    Some(Arc::new(Intercepted {
        stage: stage.clone(),
        chain: chain.into_boxed_slice(),
    }))
}

/// Whether an error is one of the engine's timeouts ([`TimeoutError`]).
pub(crate) fn is_timeout(error: &StageError) -> bool {
    error.source().downcast_ref::<TimeoutError>().is_some()
}

/// Sleeps for `delay`; `false` if the run was cancelled first (the sleep is then dropped).
async fn sleep_unless_cancelled(ctx: &StageContext, delay: Duration) -> bool {
    tokio::select! {
        biased;
        () = ctx.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// 64-bit FNV-1a: the stable hash behind idempotency parameter hashes (kept by stores, so it
/// must not change between processes or versions) and per-stage retry jitter seeds. Implements
/// [`std::io::Write`] so that JSON can be hashed as it is serialized, without a buffer.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn hash(bytes: &[u8]) -> u64 {
        let mut h = Fnv::new();
        h.bytes(bytes);
        h.0
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
}

impl std::io::Write for Fnv {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
