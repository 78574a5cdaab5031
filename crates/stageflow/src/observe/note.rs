//! [`StageNote`]: a stage lifecycle event in compact form, the engine's fast path into sinks
//! that can expand it themselves ([`NoteSink`], implemented by [`JsonlSink`](super::JsonlSink)).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use crate::observe::event::{Event, EventKind, EventParts};
use crate::observe::labels::RunLabels;

/// A stage's lifecycle event in compact form: the engine's fast path into a [`NoteSink`] such as
/// [`JsonlSink`](super::JsonlSink). The executor hands over a few numbers (no strings, no
/// allocation, a quarter of an [`Event`]'s size); the writer thread encodes them, with the run's
/// labels, into the very line of the [`Event`] the engine builds for other sinks
/// ([`event_in`](Self::event_in)), so the file is the same either way (a unit test checks it byte
/// for byte).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StageNote {
    /// The run, as registered with [`NoteSink::begin_run`].
    pub(crate) run: u64,
    pub(crate) idx: u32,
    pub(crate) kind: NoteKind,
    pub(crate) status: &'static str,
    /// On the run's clock.
    pub(crate) at_ns: u64,
    pub(crate) duration: Option<Duration>,
    pub(crate) allocated_bytes: Option<u64>,
}

/// The lifecycle events a [`StageNote`] can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NoteKind {
    Started,
    Completed,
    Skipped,
    Cancelled,
    Failed,
}

impl NoteKind {
    fn event_kind(self) -> &'static EventKind {
        match self {
            NoteKind::Started => &EventKind::StageStarted,
            NoteKind::Completed => &EventKind::StageCompleted,
            NoteKind::Skipped => &EventKind::StageSkipped,
            NoteKind::Cancelled => &EventKind::StageCancelled,
            NoteKind::Failed => &EventKind::StageFailed,
        }
    }
}

/// A sink that takes stage lifecycle events as [`StageNote`]s and expands them itself, with the
/// labels its runs registered (the line it writes is the one the [`Event`] would give).
pub(crate) trait NoteSink: Send + Sync {
    /// Registers a run whose stage events come as notes; returns its key for them.
    fn begin_run(&self, labels: Arc<RunLabels>) -> u64;
    /// Offers a stage event in compact form, like
    /// [`EventSink::try_emit`](super::EventSink::try_emit).
    fn try_emit_note(&self, note: StageNote) -> bool;
    /// The run will send no more notes.
    fn end_run(&self, run: u64);
}

/// The way into a sink's [`NoteSink`] side; see
/// [`EventSink::note_path`](super::EventSink::note_path). Only the engine uses it.
#[doc(hidden)]
pub struct NotePath(pub(crate) Arc<dyn NoteSink>);

impl std::fmt::Debug for NotePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NotePath")
    }
}

impl StageNote {
    /// The event this note stands for, in run `labels`: what other sinks get.
    #[inline(always)]
    pub(crate) fn event_in(self, labels: &RunLabels) -> Event {
        let mut event = labels.stage_event(self.kind.event_kind().clone(), self.idx, self.at_ns);
        event.status = Some(Cow::Borrowed(self.status));
        event.duration = self.duration;
        event.allocated_bytes = self.allocated_bytes;
        event
    }

    /// The same event's fields, borrowed from the note and `labels` without building it: what
    /// the writer encodes. (A test checks that both give the same line.)
    pub(crate) fn parts<'a>(self, labels: &'a RunLabels) -> EventParts<'a> {
        static NO_DATA: serde_json::Value = serde_json::Value::Null;
        EventParts {
            kind: self.kind.event_kind(),
            run_id: labels.run_id,
            parent_run_id: labels.parent_run_id,
            root_run_id: labels.root_run_id,
            pipeline: &labels.pipeline,
            stage: Some(labels.topo.name(self.idx)),
            stage_kind: Some(labels.topo.kind(self.idx)),
            timestamp: labels.timestamp(self.at_ns),
            duration: self.duration,
            status: Some(self.status),
            error: None,
            allocated_bytes: self.allocated_bytes,
            data: &NO_DATA,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use uuid::Uuid;

    use super::*;
    use crate::observe::event::Encoder;
    use crate::{Pipeline, StageContext, StageOutput};

    /// The fast path writes exactly the line the engine's event for the same note encodes to.
    #[test]
    fn a_note_encodes_to_the_same_line_as_its_event() {
        let graph = Pipeline::builder("pipe \"quoted\"")
            .stage("plain", |_c: StageContext| async { StageOutput::ok() })
            .stage("we\"ird\\name", |_c: StageContext| async {
                StageOutput::ok()
            })
            .build()
            .unwrap();
        for (parent, root) in [(None, None), (Some(Uuid::now_v7()), Some(Uuid::now_v7()))] {
            let labels = RunLabels {
                run_id: Uuid::now_v7(),
                parent_run_id: parent,
                root_run_id: root,
                pipeline: crate::observe::Name::from(graph.name()),
                topo: graph.inner.topo.clone(),
                start_wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
            };
            let kinds = [
                (NoteKind::Started, "running"),
                (NoteKind::Completed, "ok"),
                (NoteKind::Skipped, "skip"),
                (NoteKind::Cancelled, "aborted"),
                (NoteKind::Failed, "error"),
            ];
            for idx in 0..2 {
                for (kind, status) in kinds {
                    for (duration, allocated) in [
                        (None, None),
                        (Some(Duration::from_nanos(1_234_567)), Some(4096)),
                    ] {
                        let note = StageNote {
                            run: 7,
                            idx,
                            kind,
                            status,
                            at_ns: 999_999_999_123,
                            duration,
                            allocated_bytes: allocated,
                        };
                        let (mut fast, mut full) = (Vec::new(), Vec::new());
                        let mut encoder = Encoder::default();
                        encoder.encode_parts(&note.parts(&labels), &mut fast);
                        encoder.encode(&note.event_in(&labels), &mut full);
                        assert_eq!(
                            String::from_utf8(fast).unwrap(),
                            String::from_utf8(full).unwrap()
                        );
                    }
                }
            }
        }
    }
}
