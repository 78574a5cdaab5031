//! Per-stage time limit.

use std::time::Duration;

use super::{priority, Interceptor, Next};
use crate::context::StageContext;
use crate::error::{StageError, TimeoutError};
use crate::stage::StageResult;

/// Fails a stage that runs longer than a limit, with a [`TimeoutError`]
/// (`"timed out after 250ms"`). There is no timeout unless one is configured.
///
/// At its default priority ([`priority::TIMEOUT`]) it is the innermost built-in, so it limits each
/// attempt of the stage itself (not the wait for a concurrency permit or a rate-limit token).
/// The stage's future is dropped when the limit passes. A [`Retry`](super::Retry) retries
/// timeouts only when asked ([`RetryPolicy::retry_timeouts`](super::RetryPolicy::retry_timeouts)).
///
/// ```
/// use std::time::Duration;
/// use stageflow::intercept::Timeout;
/// use stageflow::{Pipeline, StageContext, StageOutput};
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let graph = Pipeline::builder("p")
///     .stage("slow", |_ctx: StageContext| async {
///         tokio::time::sleep(Duration::from_secs(1)).await;
///         StageOutput::ok()
///     })
///     .timeout(Duration::from_millis(250))
///     .build()
///     .unwrap();
/// let failure = graph.run(()).await.unwrap_err();
/// assert_eq!(failure.to_string(), "stage `slow` failed: timed out after 250ms");
/// # let _ = Timeout::new(Duration::from_secs(1));
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Timeout {
    limit: Duration,
}

impl Timeout {
    /// A timeout of `limit` per stage execution.
    pub fn new(limit: Duration) -> Self {
        Timeout { limit }
    }

    /// The limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }
}

#[async_trait::async_trait]
impl Interceptor for Timeout {
    fn name(&self) -> &str {
        "timeout"
    }

    fn priority(&self) -> i32 {
        priority::TIMEOUT
    }

    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        match tokio::time::timeout(self.limit, next.run(ctx)).await {
            Ok(result) => result,
            Err(_) => Err(StageError::from(TimeoutError { limit: self.limit })),
        }
    }
}
