//! # Stageflow
//!
//! Run pipelines of async stages as a DAG: each stage starts as soon as its dependencies are done,
//! independent stages run in parallel, and per-stage overhead stays flat from ten stages to ten
//! million, with no recursion anywhere.
//!
//! The pieces, one module each, from the bottom layer up (a module only uses the ones above it
//! in this list; `scripts/check-import-cycles` keeps the files free of import cycles):
//! - the model: [`error`] (build-time and stage errors), [`kind`] ([`StageKind`]), [`output`]
//!   ([`StageOutput`], [`StageStatus`], [`OutputData`]), [`store`] (the run store trait and
//!   records, an in-memory store; SQLite is in the `stageflow-store` crate);
//! - [`observe`]: lifecycle events and sinks, progress, memory, stall watchdog, run summary and
//!   wide events; it knows no run loop, graph or result;
//! - [`context`] ([`StageContext`], what a running stage sees), [`cleanup`] (actions stages
//!   register, run when the run ends) and [`stage`] (the [`Stage`] trait; async closures are
//!   stages);
//! - [`intercept`]: interceptors around stages, and the built-in timeout, retry, circuit breaker,
//!   concurrency and rate limits, idempotency and guard retry;
//! - the definition: [`spec`] ([`StageSpec`]), [`pipeline`] (the fluent [`Pipeline`] builder and
//!   shape helpers), [`graph`] (the validated, immutable [`Graph`]), [`segment`] (splitting a
//!   pipeline into segments);
//! - [`run`]: the run loop ([`Graph::run`]), [`RunOptions`], [`RunReport`], [`RunFailure`],
//!   [`Results`];
//! - extensions on top of runs: [`durable`] (checkpointed runs and resume after a crash),
//!   [`subpipeline`] (a stage that runs a child pipeline).
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
pub mod graph;
pub mod intercept;
pub mod kind;
pub mod observe;
pub mod output;
pub mod pipeline;
pub mod run;
pub mod segment;
pub mod spec;
pub mod stage;
pub mod store;
pub mod subpipeline;
mod topology;

pub use async_trait::async_trait;
pub use cleanup::CleanupError;
pub use context::{ConditionInputs, RunIdentity, RunTimer, StageContext};
pub use error::{
    BoxError, BuildError, DataError, ErrorCode, InputError, StageError, ValidationError,
};
pub use graph::Graph;
pub use intercept::{GuardRetry, Interceptor, Next, RetryPolicy};
pub use kind::StageKind;
pub use output::{OutputData, StageOutput, StageStatus};
pub use pipeline::{Pipeline, ROUTE_KEY};
pub use run::{
    FailureCause, FailurePolicy, Results, Retention, RunFailure, RunOptions, RunReport, RunStats,
    RunStatus, StageFailure, UpstreamSkip,
};
pub use spec::{IntoConditionResult, IntoDeps, StageSpec};
pub use stage::{IntoStageResult, Stage, StageResult};
pub use tokio_util::sync::CancellationToken;

/// The README's Rust examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
