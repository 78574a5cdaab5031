//! How checkpointing, resume and segments plug into the run loop without the loop knowing them.
//!
//! A run may carry [`Extensions`]: stages restored from a checkpoint (done before the run starts)
//! and [`RunHook`]s, called at the points of the loop where they act. Plain runs carry none and pay
//! one not-taken branch per stage start and end. The hooks see the schedule only through
//! [`Schedule`], which holds a stage back or releases it; they never reach into the loop's state.

use std::collections::VecDeque;
use std::sync::Arc;

use super::node::{NodeState, RESTORED};
use crate::context::RunShared;
use crate::output::StageOutput;

/// What a run is extended with.
#[derive(Default)]
pub(crate) struct Extensions {
    /// Stages restored from a checkpoint, with their outputs: done before the run starts.
    pub(crate) restored: Vec<(u32, Arc<StageOutput>)>,
    /// Called in order at each point of the loop.
    pub(crate) hooks: Vec<Box<dyn RunHook>>,
}

/// The part of the run loop's schedule a hook may change.
pub(crate) struct Schedule<'a> {
    pub(super) state: &'a mut [NodeState],
    pub(super) ready: &'a mut VecDeque<u32>,
}

impl Schedule<'_> {
    /// Whether stage `idx` was restored from a checkpoint (it never runs).
    pub(crate) fn is_restored(&self, idx: u32) -> bool {
        self.state[idx as usize].pending_deps == RESTORED
    }

    /// Holds stage `idx` back by one more pending dependency (no effect on a restored stage).
    pub(crate) fn hold(&mut self, idx: u32) {
        let st = &mut self.state[idx as usize];
        if st.pending_deps != RESTORED {
            st.pending_deps += 1;
        }
    }

    /// Releases one hold of stage `idx`; it becomes ready when nothing else holds it.
    pub(crate) fn release(&mut self, idx: u32) {
        let st = &mut self.state[idx as usize];
        if st.pending_deps != RESTORED {
            st.pending_deps -= 1;
            if st.pending_deps == 0 {
                self.ready.push_back(idx);
            }
        }
    }

    /// Keeps only the ready stages for which `keep` holds (the others wait for a release).
    pub(crate) fn retain_ready(&mut self, keep: impl FnMut(&u32) -> bool) {
        self.ready.retain(keep);
    }
}

/// Code the run loop calls at fixed points of a run. Every method has a no-op default.
pub(crate) trait RunHook: Send {
    /// Once, after the restored stages were marked done and before the first stage starts.
    fn attach(&mut self, schedule: Schedule<'_>) {
        let _ = schedule;
    }

    /// Stage `idx` is about to start.
    fn started(&mut self, idx: u32) {
        let _ = idx;
    }

    /// Stage `idx` finished `ok` or `skip` with `output`, and its dependents were released.
    /// `record` is false for a producer under guard retry: it is recorded with
    /// [`record`](Self::record) once its guard accepts an output. Returns the number of segment
    /// boundaries the stage completed (0 for hooks that are not a segment gate); the loop then
    /// calls [`boundary`](Self::boundary) on every hook that many times.
    fn finished(
        &mut self,
        idx: u32,
        output: &Arc<StageOutput>,
        record: bool,
        schedule: Schedule<'_>,
        shared: &RunShared,
    ) -> u32 {
        let _ = (idx, output, record, schedule, shared);
        0
    }

    /// Stage `idx`'s final output, accepted by its guard.
    fn record(&mut self, idx: u32, output: Arc<StageOutput>) {
        let _ = (idx, output);
    }

    /// A segment finished.
    fn boundary(&mut self) {}
}
