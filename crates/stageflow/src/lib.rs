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
//! - [`observe`]: lifecycle events and sinks, tracing spans, progress, memory, stall watchdog,
//!   run summary and wide events.
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
//! - **fail / retry / error / panic**: fail-fast; running stages are cancelled and awaited, and
//!   [`Graph::run`] returns a [`RunFailure`] naming the stage and cause, with partial results.
#![warn(missing_docs)]

pub mod context;
pub mod error;
pub mod executor;
pub mod graph;
pub mod observe;
pub mod output;
pub mod pipeline;
pub mod results;
pub mod stage;

pub use async_trait::async_trait;
pub use context::{ConditionInputs, RunIdentity, RunTimer, StageContext};
pub use error::{
    BoxError, BuildError, DataError, ErrorCode, InputError, StageError, ValidationError,
};
pub use graph::Graph;
pub use output::{OutputData, StageOutput, StageStatus};
pub use pipeline::{IntoConditionResult, IntoDeps, Pipeline, StageSpec, ROUTE_KEY};
pub use results::{
    FailureCause, Results, Retention, RunFailure, RunOptions, RunReport, RunStats, RunStatus,
};
pub use stage::{IntoStageResult, Stage, StageKind, StageResult};
pub use tokio_util::sync::CancellationToken;

/// The README's Rust examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
