//! `--events FILE.jsonl`: the run's events, one JSON object per line, written as they happen.
//!
//! The file is written by the library's [`JsonlSink`], so its lines have the library's format
//! and event types (`pipeline.started`, `stage.<name>.completed`, ...; see
//! [`stageflow::observe`]): a dashboard reading the events of pipelines run from Rust reads
//! those of `stageflow run` too. Every event has `type`, `run_id`, `pipeline` and `timestamp`.
//! Stage events add `stage`; finished ones add `duration_ms`, `status` (`ok`, `fail`, `skip`,
//! `cancel`) and `error` (the failure, or the skip or cancel reason), with `started_at` and
//! `attempts` in `data`. What a pipeline file adds to the library's taxonomy:
//! `stage.<name>.restored` (committed by an earlier execution, not run again),
//! `cleanup.completed` / `cleanup.failed`. Stages of a child pipeline appear as
//! `parent_stage/child_stage`.

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{json, Map, Value};
use stageflow::observe::{Event, EventKind, EventSink, JsonlSink, Rfc3339, WhenFull};
use stageflow::StageKind;
use uuid::Uuid;

/// The events file.
pub(crate) struct EventLog {
    sink: JsonlSink,
    run_id: Uuid,
    /// Set by [`last`](Self::last): later events (of stages still winding down) are not written.
    ended: Mutex<bool>,
}

/// A finished stage, as the events file reports it.
pub(crate) struct StageEnd<'a> {
    pub(crate) kind: EventKind,
    pub(crate) status: &'static str,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) duration: Option<std::time::Duration>,
    pub(crate) attempts: u32,
    pub(crate) error: Option<&'a str>,
}

impl EventLog {
    /// Creates (truncates) `path`. Nothing is dropped when the disk is slow: emitters wait.
    pub(crate) fn create(path: &Path, run_id: Uuid) -> std::io::Result<Self> {
        let sink = JsonlSink::builder()
            .when_full(WhenFull::Block)
            .create(path)?;
        Ok(EventLog {
            sink,
            run_id,
            ended: Mutex::new(false),
        })
    }

    /// An event of this run in `pipeline`, stamped now.
    pub(crate) fn event(&self, kind: EventKind, pipeline: &str) -> Event {
        Event::new(kind, self.run_id, pipeline)
    }

    /// An event of stage `stage` of `pipeline`.
    pub(crate) fn stage_event(&self, kind: EventKind, pipeline: &str, stage: &str) -> Event {
        self.event(kind, pipeline)
            .with_stage(stage, StageKind::Work)
    }

    /// `stage.<stage>.completed` (or `failed`, `skipped`, `cancelled`).
    pub(crate) fn stage_end(&self, pipeline: &str, stage: &str, end: StageEnd<'_>) {
        let mut event = self
            .stage_event(end.kind, pipeline, stage)
            .with_status(end.status);
        event.duration = end.duration;
        event.error = end.error.map(str::to_owned);
        event.data = without_nulls(json!({
            "started_at": end.started_at.map(|t| Rfc3339(t).to_string()),
            "attempts": (end.attempts > 0).then_some(end.attempts),
        }));
        self.emit(event);
    }

    /// Writes `event` (after those emitted before it).
    pub(crate) fn emit(&self, event: Event) {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if !*ended {
            self.sink.try_emit(event);
        }
    }

    /// Writes `event` as the file's last one: nothing emitted after it is written. Only the first
    /// call writes, unless `overrule`: a second Ctrl-C ends the file with its own verdict even
    /// if the run got to report its end first.
    pub(crate) fn last(&self, event: Event, overrule: bool) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if !*ended || overrule {
            self.sink.try_emit(event);
            *ended = true;
        }
    }

    /// Writes out and syncs what was emitted, and closes the file. The first write error, if
    /// any: reported at the end of the run, never swallowed.
    pub(crate) async fn close(&self) -> Option<String> {
        self.sink
            .close()
            .await
            .err()
            .map(|e| format!("writing the events file failed: {e}"))
    }
}

/// `value` (an object) without its null fields: `null` when none is left.
pub(crate) fn without_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let map: Map<String, Value> = map.into_iter().filter(|(_, v)| !v.is_null()).collect();
            if map.is_empty() {
                Value::Null
            } else {
                Value::Object(map)
            }
        }
        other => other,
    }
}
