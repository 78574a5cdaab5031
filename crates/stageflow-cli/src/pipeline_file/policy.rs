//! Timeouts and retries of one stage, kept apart from what the stage runs so that they can move
//! to the library's interceptor layer once it exists.
//!
//! - `timeout` bounds each attempt: the attempt gets a deadline, and what it runs is terminated
//!   there (SIGTERM, then SIGKILL after the grace period);
//! - `retries = N` allows N more attempts after a failed one (a non-zero exit or a timeout),
//!   `retry_delay` apart. An interrupt ends the loop at once.

use std::future::Future;
use std::time::Duration;

use stageflow::StageOutput;
use tokio::time::Instant;

use super::control::Control;

/// How one attempt ended.
pub(crate) enum Attempt {
    /// Success, with the stage's output.
    Ok(StageOutput),
    /// Failure; another attempt may succeed.
    Failed(String),
    /// The run was interrupted.
    Interrupted,
}

/// A stage's timeout and retry settings.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Policy {
    pub(crate) timeout: Option<Duration>,
    pub(crate) retries: u32,
    pub(crate) retry_delay: Duration,
}

impl Policy {
    /// Runs `attempt(number, deadline)` until it succeeds, is interrupted, or runs out of
    /// attempts. `on_retry(number, error)` is told about each failed attempt that will be
    /// retried. Returns the last outcome and the number of attempts made.
    pub(crate) async fn run<F, Fut>(
        &self,
        control: &Control,
        mut on_retry: impl FnMut(u32, &str),
        mut attempt: F,
    ) -> (Attempt, u32)
    where
        F: FnMut(u32, Option<Instant>) -> Fut,
        Fut: Future<Output = Attempt>,
    {
        let total = self.retries + 1;
        let mut number = 1;
        loop {
            let deadline = self.timeout.map(|t| Instant::now() + t);
            match attempt(number, deadline).await {
                Attempt::Failed(error) if number < total => {
                    on_retry(number, &error);
                    tokio::select! {
                        () = tokio::time::sleep(self.retry_delay) => {}
                        () = control.interrupted() => return (Attempt::Interrupted, number),
                    }
                    number += 1;
                }
                Attempt::Failed(error) if total > 1 => {
                    return (
                        Attempt::Failed(format!("failed after {total} attempts; last: {error}")),
                        number,
                    )
                }
                other => return (other, number),
            }
        }
    }
}
