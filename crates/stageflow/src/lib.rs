//! # Stageflow
//!
//! Run pipelines of async stages as a DAG: each stage starts as soon as its dependencies are done,
//! independent stages run in parallel, and per-stage overhead stays flat from ten stages to ten
//! million, with no recursion anywhere.
//!
//! The pieces, one module each:
//! - [`stage`]: the [`Stage`] trait (and async closures as stages), [`StageKind`];
//! - [`output`]: [`StageOutput`], [`StageStatus`] and the serializable [`OutputData`];
//! - [`context`]: [`StageContext`], what a running stage sees;
//! - [`pipeline`]: the fluent [`Pipeline`] builder and shape helpers;
//! - [`graph`]: the validated, immutable [`Graph`];
//! - [`executor`]: the run loop ([`Graph::run`]);
//! - [`results`]: [`RunReport`], [`RunFailure`], [`Results`], [`RunOptions`];
//! - [`error`]: build-time and stage errors;
//! - [`intercept`]: interceptors around stages, and the built-in timeout, retry, circuit
//!   breaker, concurrency and rate limits, and idempotency;
//! - [`cleanup`]: cleanup actions stages register, run when the run ends;
//! - [`observe`]: lifecycle events and sinks, tracing spans, progress, memory, stall watchdog,
//!   run summary and wide events.
//! - [`store`]: the run store trait and records ([`store::RunStore`]), and an in-memory store;
//!   the SQLite store is in the `stageflow-store` crate;
//! - [`durable`]: checkpointed runs and resume after a crash ([`Graph::run_durable`],
//!   [`Graph::resume`]);
//! - [`subpipeline`]: a stage that runs a child pipeline ([`subpipeline::Subpipeline`]);
//! - [`segment`]: splitting a pipeline into segments that run (and checkpoint) as units.
//!
//! ```
//! use stageflow::{Pipeline, StageContext, StageOutput, StageSpec};
//!
//! # #[tokio::main] async fn main() {
//! // A 1000-stage chain where each stage adds one to its predecessor's value.
//! let graph = Pipeline::builder("count")
//!     .with_linear_chain(1000, |i| {
//!         StageSpec::new(format!("s{i}"), move |ctx: StageContext| async move {
//!             let prev: u64 = if i == 0 { 0 } else { ctx.get_from(&format!("s{}", i - 1), "value")? };
//!             Ok::<_, stageflow::InputError>(StageOutput::ok().with("value", prev + 1))
//!         })
//!     })
//!     .build()
//!     .expect("valid pipeline");
//!
//! let report = graph.run(()).await.expect("no stage fails");
//! assert_eq!(report.results().get_data::<u64>("s999", "value").unwrap(), 1000);
//! # }
//! ```
//!
//! ## Semantics in one place
//! - **ok**: dependents may start.
//! - **skip**: counts as finished; dependents run unless *all* their inputs were skipped (then
//!   they are skipped too). See [`Pipeline::when`].
//! - **cancel**: graceful stop; [`Graph::run`] returns `Ok` with [`RunStatus::Cancelled`] and the
//!   partial results.
//! - **fail / retry / error / panic**: fail-fast; running stages are cancelled (given the
//!   [grace period](RunOptions::cancel_grace), zero by default) and awaited, and [`Graph::run`]
//!   returns a [`RunFailure`] naming the stage and cause, with partial results. With
//!   [`FailurePolicy::Continue`] the run goes on, skipping only what is downstream of a failure.
//!   `retry` outputs and retryable errors are retried only under a [`RetryPolicy`] (see
//!   [`intercept`]).
//! - **cleanup**: actions stages register with [`StageContext::on_cleanup`] run when the run ends,
//!   last first, whatever the outcome; their errors are reported, never swallowed.
#![warn(missing_docs)]

pub mod cleanup;
pub mod context;
pub mod durable;
pub mod error;
pub mod executor;
pub mod graph;
pub mod intercept;
pub mod observe;
pub mod output;
pub mod pipeline;
pub mod results;
pub mod segment;
pub mod stage;
pub mod store;
pub mod subpipeline;

pub use async_trait::async_trait;
pub use cleanup::CleanupError;
pub use context::{ConditionInputs, RunIdentity, RunTimer, StageContext};
pub use error::{
    BoxError, BuildError, DataError, ErrorCode, InputError, StageError, ValidationError,
};
pub use graph::Graph;
pub use intercept::{GuardRetry, Interceptor, Next, RetryPolicy};
pub use output::{OutputData, StageOutput, StageStatus};
pub use pipeline::{IntoConditionResult, IntoDeps, Pipeline, StageSpec, ROUTE_KEY};
pub use results::{
    FailureCause, FailurePolicy, Results, Retention, RunFailure, RunOptions, RunReport, RunStats,
    RunStatus, StageFailure, UpstreamSkip,
};
pub use stage::{IntoStageResult, Stage, StageKind, StageResult};
pub use tokio_util::sync::CancellationToken;

/// The README's Rust examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
