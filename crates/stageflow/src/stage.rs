//! The stage contract: an async unit of work that reads its dependencies' outputs and returns a
//! [`StageOutput`].
//!
//! Two ways to write a stage:
//! - implement [`Stage`] on a type (with `#[async_trait]`), when the stage has configuration or
//!   state, or a [`kind`](Stage::kind) of its own;
//! - pass an async closure `|ctx: StageContext| async move { ... }`: closures implement [`Stage`]
//!   directly.
//!
//! Either way the stage may return a [`StageOutput`], a `Result<StageOutput, E>` for any error `E`
//! (so `?` works), or `()` (an empty [`StageOutput::ok`]); see [`IntoStageResult`].

use std::future::Future;
use std::sync::Arc;

use crate::context::StageContext;
use crate::error::StageError;
use crate::kind::StageKind;
use crate::output::StageOutput;
use futures_util::future::BoxFuture;

/// What a stage returns once its output is normalized.
pub type StageResult = Result<StageOutput, StageError>;

/// An async unit of work in a pipeline.
///
/// ```
/// use stageflow::{async_trait, Stage, StageContext, StageKind, StageOutput, StageResult};
///
/// struct Double;
///
/// #[async_trait]
/// impl Stage for Double {
///     async fn execute(&self, ctx: StageContext) -> StageResult {
///         let n: i64 = ctx.get_from("source", "n")?;
///         Ok(StageOutput::ok().with("n", n * 2))
///     }
///     fn kind(&self) -> StageKind {
///         StageKind::Transform
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Stage: Send + Sync + 'static {
    /// Runs the stage. `ctx` gives the declared dependencies' outputs, the run input and identity,
    /// and the run's cancellation signal.
    async fn execute(&self, ctx: StageContext) -> StageResult;

    /// The stage's kind, used when the pipeline does not set one. Defaults to [`StageKind::Work`].
    fn kind(&self) -> StageKind {
        StageKind::Work
    }

    /// Runs the stage from a shared handle, producing a `'static` future the executor can move
    /// between threads. The default wraps [`execute`](Self::execute); closure stages override it to
    /// save one allocation. There is no reason to override it yourself.
    #[doc(hidden)]
    fn execute_shared(self: Arc<Self>, ctx: StageContext) -> BoxFuture<'static, StageResult> {
        Box::pin(async move { self.execute(ctx).await })
    }
}

/// Values a stage (or stage closure) may return.
pub trait IntoStageResult {
    /// Normalizes into a [`StageResult`].
    fn into_stage_result(self) -> StageResult;
}

impl IntoStageResult for StageOutput {
    fn into_stage_result(self) -> StageResult {
        Ok(self)
    }
}

impl IntoStageResult for () {
    fn into_stage_result(self) -> StageResult {
        Ok(StageOutput::ok())
    }
}

impl<E: Into<StageError>> IntoStageResult for Result<StageOutput, E> {
    fn into_stage_result(self) -> StageResult {
        self.map_err(Into::into)
    }
}

impl<E: Into<StageError>> IntoStageResult for Result<(), E> {
    fn into_stage_result(self) -> StageResult {
        self.map(|()| StageOutput::ok()).map_err(Into::into)
    }
}

/// Async closures are stages: `|ctx: StageContext| async move { StageOutput::ok() }`.
#[async_trait::async_trait]
impl<F, Fut> Stage for F
where
    F: Fn(StageContext) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoStageResult,
{
    async fn execute(&self, ctx: StageContext) -> StageResult {
        self(ctx).await.into_stage_result()
    }

    fn execute_shared(self: Arc<Self>, ctx: StageContext) -> BoxFuture<'static, StageResult> {
        let fut = self(ctx);
        Box::pin(async move { fut.await.into_stage_result() })
    }
}

/// A type-erased, shareable stage: what the graph stores.
pub(crate) type SharedStage = Arc<dyn Stage>;
