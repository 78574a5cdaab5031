//! The labels every event of a run carries (run ids, pipeline, the run's clock), and how the
//! events of one run are built from them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use uuid::Uuid;

use super::event::{Event, EventKind, Name};
use crate::topology::Topology;

/// What every event of a run carries, and how its events are built: shared by the observer and
/// by the [`JsonlSink`](super::JsonlSink) writer, which expands the compact stage events of the
/// fast path with the same code.
pub(crate) struct RunLabels {
    pub(crate) run_id: Uuid,
    /// Subpipeline links, copied into every event.
    pub(crate) parent_run_id: Option<Uuid>,
    pub(crate) root_run_id: Option<Uuid>,
    pub(crate) pipeline: Name,
    pub(crate) topo: Arc<Topology>,
    /// Wall-clock time of the run's start: event timestamps are this plus the run's clock.
    pub(crate) start_wall: SystemTime,
}

impl RunLabels {
    /// A run-level event of this run, stamped `at_ns` on the run's clock (no clock read).
    // Always inlined, like `stage_event` and `emit`: an event is 256 bytes, and each call level
    // left out of line copies it once more on the per-stage path.
    #[inline(always)]
    pub(crate) fn event_at(&self, kind: EventKind, at_ns: u64) -> Event {
        Event {
            kind,
            run_id: self.run_id,
            parent_run_id: self.parent_run_id,
            root_run_id: self.root_run_id,
            pipeline: self.pipeline.clone(),
            stage: None,
            stage_kind: None,
            timestamp: self.timestamp(at_ns),
            duration: None,
            status: None,
            error: None,
            allocated_bytes: None,
            data: Value::Null,
        }
    }

    /// The wall-clock time of `at_ns` on the run's clock.
    #[inline]
    pub(crate) fn timestamp(&self, at_ns: u64) -> SystemTime {
        self.start_wall + Duration::from_nanos(at_ns)
    }

    /// An event of stage `idx`.
    #[inline(always)]
    pub(crate) fn stage_event(&self, kind: EventKind, idx: u32, at_ns: u64) -> Event {
        let mut event = self.event_at(kind, at_ns);
        event.stage = Some(Name::from(self.topo.name(idx)));
        event.stage_kind = Some(self.topo.kind(idx));
        event
    }
}
