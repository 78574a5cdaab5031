//! The run loop's vocabulary, shared by its parts (the driver, guard retry, the observer and the
//! extensions): per-stage state, how a stage execution ended, and stage futures.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::error::{panic_message, StageError};
use crate::output::StageOutput;
use crate::stage::StageResult;

/// How a stage ended, as the observer sees it.
pub(crate) enum Outcome<'a> {
    Output(&'a StageOutput),
    Error(&'a StageError),
    Panic(&'a str),
    Condition(&'a str),
}

/// How a stage execution ended, before the executor interprets it.
pub(crate) enum Finished {
    Returned(StageResult),
    Panicked(String),
}

impl From<Result<StageResult, Box<dyn Any + Send>>> for Finished {
    fn from(r: Result<StageResult, Box<dyn Any + Send>>) -> Self {
        match r {
            Ok(result) => Finished::Returned(result),
            Err(payload) => Finished::Panicked(panic_message(payload.as_ref())),
        }
    }
}

impl Finished {
    pub(crate) fn outcome(&self) -> Outcome<'_> {
        match self {
            Finished::Returned(Ok(output)) => Outcome::Output(output),
            Finished::Returned(Err(err)) => Outcome::Error(err),
            Finished::Panicked(message) => Outcome::Panic(message),
        }
    }
}

/// Per-stage, per-run state: 16 bytes a stage.
pub(crate) struct NodeState {
    /// Dependencies that have not finished yet.
    pub(crate) pending_deps: u32,
    /// Dependents that have not started yet (they take their inputs when they start).
    pub(crate) pending_consumers: u32,
    pub(crate) output: Option<Arc<StageOutput>>,
}

/// `pending_deps` of a stage restored from a checkpoint: so large that finishing dependencies
/// never brings it to zero, so it never becomes ready (it is done already).
pub(crate) const RESTORED: u32 = u32::MAX;

pub(crate) type StageFuture = futures_util::future::CatchUnwind<
    AssertUnwindSafe<futures_util::future::BoxFuture<'static, StageResult>>,
>;

/// Runs a stage future as its own task; it reports back through the task set.
pub(crate) fn spawn_stage(tasks: &mut JoinSet<(u32, Finished)>, idx: u32, fut: StageFuture) {
    tasks.spawn(async move { (idx, Finished::from(fut.await)) });
}

/// Reason given to stages skipped because every input was skipped.
pub const UPSTREAM_SKIPPED: &str = "all upstream stages skipped";
/// Reason given to stages whose condition returned false.
pub const CONDITION_NOT_MET: &str = "condition not met";
/// Reason given, under [`FailurePolicy::Continue`](crate::FailurePolicy::Continue), to stages
/// downstream of a failed stage.
pub const UPSTREAM_FAILED: &str = "upstream failed";
