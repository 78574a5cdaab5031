//! What the executor calls into when a run is checkpointed, resumed or segmented.

use std::collections::VecDeque;
use std::sync::Arc;

use super::recorder::Recorder;
use crate::context::RunShared;
use crate::executor::NodeState;
use crate::output::StageOutput;
use crate::segment::SegmentGate;

/// Per-run extensions of the executor. Plain runs have none.
#[derive(Default)]
pub(crate) struct RunExt {
    /// Stages restored from a checkpoint, with their outputs: done before the run starts.
    pub(crate) restored: Vec<(u32, Arc<StageOutput>)>,
    /// Sends finished stages to the checkpoint writer.
    pub(crate) recorder: Option<Recorder>,
    /// Runs segment by segment.
    pub(crate) segments: Option<SegmentGate>,
}

impl RunExt {
    /// Called once, after the restored stages were marked done and before the first stage starts.
    pub(crate) fn attach(&mut self, state: &mut [NodeState], ready: &mut VecDeque<u32>) {
        if let Some(gate) = &mut self.segments {
            gate.attach(state, ready);
        }
    }

    /// Stage `idx` is about to start.
    pub(crate) fn started(&mut self, idx: u32) {
        if let Some(recorder) = &mut self.recorder {
            recorder.started(idx);
        }
    }

    /// Stage `idx` finished `ok` or `skip`; its output is in `state[idx]` and its dependents were
    /// released. `record`: false for a producer under guard retry, recorded with
    /// [`record`](Self::record) once its guard accepts an output (a re-run may replace it first).
    pub(crate) fn finished(
        &mut self,
        idx: u32,
        record: bool,
        shared: &RunShared,
        state: &mut [NodeState],
        ready: &mut VecDeque<u32>,
    ) {
        if let (true, Some(output)) = (record, &state[idx as usize].output) {
            self.record(idx, output.clone());
        }
        if let Some(gate) = &mut self.segments {
            gate.finished(idx, shared, state, ready, self.recorder.as_mut());
        }
    }

    /// Sends stage `idx`'s final `output` to the checkpoint writer.
    pub(crate) fn record(&mut self, idx: u32, output: Arc<StageOutput>) {
        if let Some(recorder) = &mut self.recorder {
            recorder.finished(idx, output);
        }
    }
}
