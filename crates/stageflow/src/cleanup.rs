//! Cleanup actions registered by stages, run when the run ends.
//!
//! A stage registers an action with [`StageContext::on_cleanup`](crate::StageContext::on_cleanup).
//! When the run ends (completed, failed or cancelled), after every stage has finished or been
//! dropped, the actions run one at a time, last registered first, each under a time limit
//! ([`RunOptions::cleanup_timeout`](crate::RunOptions::cleanup_timeout), default 5 s). Errors,
//! panics and timeouts are collected into [`CleanupError`]s and reported in
//! [`RunReport::cleanup_errors`](crate::RunReport::cleanup_errors) /
//! [`RunFailure::cleanup_errors`](crate::RunFailure::cleanup_errors); they never change the run's
//! outcome and are never swallowed.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::error::{panic_message, StageError, TimeoutError};

/// A cleanup action that failed, panicked or timed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanupError {
    /// The stage that registered it.
    pub stage: String,
    /// The action's name.
    pub name: String,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for CleanupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cleanup `{}` of stage `{}` failed: {}",
            self.name, self.stage, self.message
        )
    }
}

impl std::error::Error for CleanupError {}

/// What a cleanup action may return: `()` or `Result<(), E>`.
pub trait IntoCleanupResult {
    /// Normalizes into a `Result`.
    fn into_cleanup_result(self) -> Result<(), StageError>;
}

impl IntoCleanupResult for () {
    fn into_cleanup_result(self) -> Result<(), StageError> {
        Ok(())
    }
}

impl<E: Into<StageError>> IntoCleanupResult for Result<(), E> {
    fn into_cleanup_result(self) -> Result<(), StageError> {
        self.map_err(Into::into)
    }
}

struct Action {
    stage: String,
    name: String,
    run: Box<dyn FnOnce() -> BoxFuture<'static, Result<(), StageError>> + Send>,
}

/// The run's cleanup actions.
#[derive(Default)]
pub(crate) struct CleanupRegistry {
    actions: Mutex<Vec<Action>>,
}

impl CleanupRegistry {
    pub(crate) fn register<F, Fut>(&self, stage: &str, name: String, action: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoCleanupResult,
    {
        let run = Box::new(move || -> BoxFuture<'static, Result<(), StageError>> {
            let fut = action();
            Box::pin(async move { fut.await.into_cleanup_result() })
        });
        self.actions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Action {
                stage: stage.to_owned(),
                name,
                run,
            });
    }

    /// Runs every registered action, last first, each under `timeout`; returns the failures.
    pub(crate) async fn run_all(&self, timeout: Duration) -> Vec<CleanupError> {
        let mut errors = Vec::new();
        loop {
            // Actions registered by other actions run too (still last first).
            let Some(action) = self
                .actions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
            else {
                break;
            };
            let Action { stage, name, run } = action;
            let outcome = AssertUnwindSafe(async move {
                let fut = run();
                tokio::time::timeout(timeout, fut).await
            })
            .catch_unwind()
            .await;
            let message = match outcome {
                Ok(Ok(Ok(()))) => continue,
                Ok(Ok(Err(e))) => e.to_string(),
                Ok(Err(_)) => TimeoutError { limit: timeout }.to_string(),
                Err(payload) => format!("panicked: {}", panic_message(payload.as_ref())),
            };
            errors.push(CleanupError {
                stage,
                name,
                message,
            });
        }
        errors
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.actions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }
}
