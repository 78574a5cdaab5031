//! The run loop's side of failure policies, the cancel grace period and cleanup: what one run
//! keeps about its failures. Costs nothing per stage unless used. Guard retry is in
//! [`guard`](super::guard).

use std::time::Duration;

use hashbrown::HashMap;

use super::guard::GuardRuntime;
use super::node::{StageFuture, UPSTREAM_FAILED};
use super::options::{FailurePolicy, RunOptions, DEFAULT_CLEANUP_TIMEOUT};
use super::report::FailureCause;
use crate::cleanup::CleanupError;
use crate::graph::GraphInner;
use crate::output::{StageOutput, StageStatus};

/// Per-run state of the resilience features. Costs nothing per stage unless used.
pub(super) struct Resilience {
    pub(super) continue_on_failure: bool,
    pub(super) grace: Duration,
    pub(super) cleanup_timeout: Duration,
    /// Every failure, in order (fail-fast: at most a few).
    pub(super) failures: Vec<(u32, FailureCause)>,
    /// `(skipped stage, failed stage)` under `FailurePolicy::Continue`.
    pub(super) skipped_upstream: Vec<(u32, u32)>,
    /// For stages skipped as "upstream failed": the failed stage they are downstream of.
    failure_root: HashMap<u32, u32>,
    pub(super) cleanup_errors: Vec<CleanupError>,
    /// `Some` when the graph has guard retry policies.
    pub(super) guards: Option<Box<GuardRuntime>>,
    /// Re-runs to spawn, queued by `complete` (which cannot reach the task set).
    pub(super) respawn: Vec<(u32, StageFuture)>,
}

impl Default for Resilience {
    fn default() -> Self {
        Resilience {
            continue_on_failure: false,
            grace: Duration::ZERO,
            cleanup_timeout: DEFAULT_CLEANUP_TIMEOUT,
            failures: Vec::new(),
            skipped_upstream: Vec::new(),
            failure_root: HashMap::new(),
            cleanup_errors: Vec::new(),
            guards: None,
            respawn: Vec::new(),
        }
    }
}

impl Resilience {
    pub(super) fn configure(&mut self, options: &RunOptions, graph: &GraphInner) {
        self.continue_on_failure = options.failure_policy == FailurePolicy::Continue;
        self.grace = options.cancel_grace;
        self.cleanup_timeout = options.cleanup_timeout.unwrap_or(DEFAULT_CLEANUP_TIMEOUT);
        self.guards = GuardRuntime::for_graph(graph);
    }

    /// If `output` (of dependency `dep`) means "a stage upstream failed", the failed stage.
    pub(super) fn failed_root(&self, dep: u32, output: &StageOutput) -> Option<u32> {
        match output.status() {
            StageStatus::Fail | StageStatus::Retry => Some(dep),
            StageStatus::Skip if output.message() == Some(UPSTREAM_FAILED) => {
                Some(self.failure_root.get(&dep).copied().unwrap_or(dep))
            }
            _ => None,
        }
    }

    pub(super) fn skipped_because(&mut self, idx: u32, root: u32) {
        self.failure_root.insert(idx, root);
        self.skipped_upstream.push((idx, root));
    }
}
