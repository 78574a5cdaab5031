//! The event model: lifecycle events the engine emits, and the custom events and artifacts a stage
//! may attach to its [`StageOutput`](crate::StageOutput).
//!
//! # Taxonomy
//!
//! | type string | kind | emitted when |
//! |---|---|---|
//! | `pipeline.created` | [`EventKind::PipelineCreated`] | the run's state is set up |
//! | `pipeline.started` | [`EventKind::PipelineStarted`] | right before the first stage starts |
//! | `pipeline.completed` | [`EventKind::PipelineCompleted`] | every stage finished |
//! | `pipeline.failed` | [`EventKind::PipelineFailed`] | a stage failed (fail-fast) |
//! | `pipeline.cancelled` | [`EventKind::PipelineCancelled`] | a stage or the caller cancelled the run |
//! | `pipeline.stalled` | [`EventKind::PipelineStalled`] | the [watchdog](super::Watchdog) saw no stage finish for too long |
//! | `pipeline.wide` | [`EventKind::PipelineWide`] | one summary record per run (opt-in, [`WideEvents`](super::WideEvents)) |
//! | `stage.<name>.started` | [`EventKind::StageStarted`] | the stage's code is invoked |
//! | `stage.<name>.completed` | [`EventKind::StageCompleted`] | it returned an `ok` output |
//! | `stage.<name>.skipped` | [`EventKind::StageSkipped`] | it returned `skip`, or was skipped by its condition or because all inputs were skipped (then without `started`) |
//! | `stage.<name>.failed` | [`EventKind::StageFailed`] | it returned `fail`/`retry`/an error, panicked, or its condition failed |
//! | `stage.<name>.cancelled` | [`EventKind::StageCancelled`] | it returned `cancel`, or was still running when the run stopped |
//! | `stage.<name>.retried` | [`EventKind::StageRetried`] | before each new attempt of a [`Retry`](crate::intercept::Retry) interceptor or a [guard retry](crate::GuardRetry), with the attempt number in `data` |
//! | `stage.<name>.artifact` | [`EventKind::StageArtifact`] | one per [`Artifact`](crate::output::Artifact) in the stage's output |
//! | `stage.wide` | [`EventKind::StageWide`] | one summary record per stage (opt-in) |
//! | anything else | [`EventKind::Custom`] | a [`CustomEvent`](crate::output::CustomEvent) in a stage's output, or [`StageContext::emit_event`](crate::StageContext::emit_event) |

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::SerializeMap;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::kind::StageKind;

/// A pipeline or stage name in an [`Event`]: stored inline when short (up to 22 bytes, the usual
/// case), shared otherwise. Events cross threads by the million; inline names cost no allocation
/// and no reference count traffic between the executor and a sink's writer thread.
///
/// ```
/// use stageflow::observe::Name;
/// let short = Name::from("load_users");
/// let long = Name::from("a-rather-long-stage-name-that-does-not-fit-inline");
/// assert_eq!(&*short, "load_users");
/// assert_eq!(long.as_str().len(), 49);
/// ```
#[derive(Clone)]
pub struct Name(NameRepr);

const INLINE: usize = 22;

#[derive(Clone)]
enum NameRepr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl Name {
    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            NameRepr::Inline { len, bytes } => {
                // SAFETY: `bytes[..len]` is a copy of a whole `&str` (see `From<&str>`), so it is
                // valid UTF-8.
                unsafe { std::str::from_utf8_unchecked(&bytes[..*len as usize]) }
            }
            NameRepr::Shared(s) => s,
        }
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Name(NameRepr::Inline {
                len: s.len() as u8,
                bytes,
            })
        } else {
            Name(NameRepr::Shared(Arc::from(s)))
        }
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name::from(s.as_str())
    }
}

impl From<Arc<str>> for Name {
    fn from(s: Arc<str>) -> Self {
        if s.len() <= INLINE {
            Name::from(&*s)
        } else {
            Name(NameRepr::Shared(s))
        }
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What happened. The [`Event::event_type`] string is derived from it (and the stage name).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventKind {
    /// `pipeline.created`
    PipelineCreated,
    /// `pipeline.started`
    PipelineStarted,
    /// `pipeline.completed`
    PipelineCompleted,
    /// `pipeline.failed`
    PipelineFailed,
    /// `pipeline.cancelled`
    PipelineCancelled,
    /// `pipeline.stalled`
    PipelineStalled,
    /// `pipeline.wide`
    PipelineWide,
    /// `stage.<name>.started`
    StageStarted,
    /// `stage.<name>.completed`
    StageCompleted,
    /// `stage.<name>.failed`
    StageFailed,
    /// `stage.<name>.skipped`
    StageSkipped,
    /// `stage.<name>.cancelled`
    StageCancelled,
    /// `stage.<name>.retried`: emitted before each new attempt by the
    /// [`Retry`](crate::intercept::Retry) interceptor and by [guard retry](crate::GuardRetry), with
    /// the attempt number (and the delay or guard) in [`Event::data`].
    StageRetried,
    /// `stage.<name>.artifact`
    StageArtifact,
    /// `stage.wide`
    StageWide,
    /// Any other type string, used as is.
    Custom(Cow<'static, str>),
}

impl EventKind {
    /// The suffix of a `stage.<name>.<suffix>` type, for the per-stage lifecycle kinds.
    pub fn stage_suffix(&self) -> Option<&'static str> {
        Some(match self {
            EventKind::StageStarted => "started",
            EventKind::StageCompleted => "completed",
            EventKind::StageFailed => "failed",
            EventKind::StageSkipped => "skipped",
            EventKind::StageCancelled => "cancelled",
            EventKind::StageRetried => "retried",
            EventKind::StageArtifact => "artifact",
            _ => return None,
        })
    }

    /// The fixed type string of the run-level kinds (`pipeline.*`, `stage.wide`) and custom ones.
    pub fn fixed_type(&self) -> Option<&str> {
        Some(match self {
            EventKind::PipelineCreated => "pipeline.created",
            EventKind::PipelineStarted => "pipeline.started",
            EventKind::PipelineCompleted => "pipeline.completed",
            EventKind::PipelineFailed => "pipeline.failed",
            EventKind::PipelineCancelled => "pipeline.cancelled",
            EventKind::PipelineStalled => "pipeline.stalled",
            EventKind::PipelineWide => "pipeline.wide",
            EventKind::StageWide => "stage.wide",
            EventKind::Custom(t) => t,
            _ => return None,
        })
    }

    /// `true` for the kinds that report a problem (failed, stalled); the tracing sink logs them
    /// at `WARN`.
    pub fn is_problem(&self) -> bool {
        matches!(
            self,
            EventKind::PipelineFailed | EventKind::PipelineStalled | EventKind::StageFailed
        )
    }
}

/// One observability event. Cheap to build (no formatting happens until a sink serializes it) and
/// `Clone` for fan-out.
///
/// Built by the engine; a component that emits its own events (a retry interceptor, a stage using
/// [`StageContext::emit_event`](crate::StageContext::emit_event)) uses [`Event::new`] and the
/// `with_*` methods:
///
/// ```
/// use stageflow::observe::{Event, EventKind};
/// let ev = Event::new(EventKind::StageRetried, uuid::Uuid::nil(), "ingest")
///     .with_stage("fetch", stageflow::StageKind::Work)
///     .with_data(serde_json::json!({"attempt": 2}));
/// assert_eq!(ev.event_type(), "stage.fetch.retried");
/// let line = ev.to_json_line();
/// let back: serde_json::Value = serde_json::from_str(&line).unwrap();
/// assert_eq!(back["type"], "stage.fetch.retried");
/// assert_eq!(back["data"]["attempt"], 2);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The run it belongs to.
    pub run_id: Uuid,
    /// For a [subpipeline](crate::subpipeline) run: the run of the stage that started it.
    pub parent_run_id: Option<Uuid>,
    /// For a [subpipeline](crate::subpipeline) run: the outermost run of the tree.
    pub root_run_id: Option<Uuid>,
    /// The pipeline's name.
    pub pipeline: Name,
    /// The stage, for stage-scoped events.
    pub stage: Option<Name>,
    /// The stage's kind, for stage-scoped events.
    pub stage_kind: Option<StageKind>,
    /// Wall-clock time of the event (derived from the run's monotonic clock, so events of one run
    /// are ordered even if the system clock jumps).
    pub timestamp: SystemTime,
    /// How long the stage (or run) took, on terminal events.
    pub duration: Option<Duration>,
    /// Outcome detail: `ok`, `skip`, `fail`, `retry`, `error`, `panic`, `condition_error`,
    /// `cancel` (the stage asked), `aborted` (the run stopped under it), or for runs `completed`,
    /// `failed`, `cancelled`.
    pub status: Option<Cow<'static, str>>,
    /// The error text, skip reason or cancel reason.
    pub error: Option<String>,
    /// Bytes allocated while the stage was polled (when memory monitoring and an
    /// [allocation counter](super::memory::set_allocation_counter) are on).
    pub allocated_bytes: Option<u64>,
    /// Extra payload (`Value::Null` when there is none).
    pub data: Value,
}

impl Event {
    /// An event of `kind` for run `run_id` of `pipeline`, timestamped now.
    pub fn new(kind: EventKind, run_id: Uuid, pipeline: impl Into<Name>) -> Self {
        Event {
            kind,
            run_id,
            parent_run_id: None,
            root_run_id: None,
            pipeline: pipeline.into(),
            stage: None,
            stage_kind: None,
            timestamp: SystemTime::now(),
            duration: None,
            status: None,
            error: None,
            allocated_bytes: None,
            data: Value::Null,
        }
    }

    /// Sets the stage.
    pub fn with_stage(mut self, name: impl Into<Name>, kind: StageKind) -> Self {
        self.stage = Some(name.into());
        self.stage_kind = Some(kind);
        self
    }

    /// Sets the payload.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    /// Sets the status.
    pub fn with_status(mut self, status: impl Into<Cow<'static, str>>) -> Self {
        self.status = Some(status.into());
        self
    }

    /// Sets the error text.
    pub fn with_error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }

    /// Sets the duration.
    pub fn with_duration(mut self, duration: Duration) -> Self {
        self.duration = Some(duration);
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, timestamp: SystemTime) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// The type string: `pipeline.started`, `stage.<name>.completed`, `stage.wide`, or a custom
    /// type. A stage-scoped kind without a stage renders as `stage.?.<suffix>`.
    pub fn event_type(&self) -> Cow<'_, str> {
        match self.kind.stage_suffix() {
            Some(suffix) => Cow::Owned(format!(
                "stage.{}.{suffix}",
                self.stage.as_deref().unwrap_or("?")
            )),
            None => Cow::Borrowed(self.kind.fixed_type().unwrap_or("unknown")),
        }
    }

    /// The stage name, if the event is stage-scoped.
    pub fn stage_name(&self) -> Option<&str> {
        self.stage.as_deref()
    }

    /// Serializes the event as one JSON object on one line (no trailing newline): the JSON Lines
    /// record format. Same fields as the [`Serialize`] impl.
    pub fn to_json_line(&self) -> String {
        let mut out = Vec::with_capacity(256);
        let mut enc = Encoder::default();
        enc.encode(self, &mut out);
        String::from_utf8(out).expect("the encoder writes UTF-8")
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.event_type())
    }
}

/// Serializes as `{"type", "run_id", "parent_run_id"?, "root_run_id"?, "pipeline", "stage"?, "stage_kind"?, "timestamp",
/// "duration_ms"?, "status"?, "error"?, "allocated_bytes"?, "data"?}` with an RFC 3339 UTC
/// timestamp (microseconds) and fractional milliseconds.
impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("type", &*self.event_type())?;
        map.serialize_entry("run_id", &self.run_id.hyphenated().to_string())?;
        if let Some(parent) = self.parent_run_id {
            map.serialize_entry("parent_run_id", &parent.hyphenated().to_string())?;
        }
        if let Some(root) = self.root_run_id {
            map.serialize_entry("root_run_id", &root.hyphenated().to_string())?;
        }
        map.serialize_entry("pipeline", self.pipeline.as_str())?;
        if let Some(stage) = &self.stage {
            map.serialize_entry("stage", stage.as_str())?;
        }
        if let Some(kind) = self.stage_kind {
            map.serialize_entry("stage_kind", kind.as_str())?;
        }
        map.serialize_entry("timestamp", &Rfc3339(self.timestamp).to_string())?;
        if let Some(d) = self.duration {
            map.serialize_entry("duration_ms", &duration_ms(d))?;
        }
        if let Some(status) = &self.status {
            map.serialize_entry("status", &**status)?;
        }
        if let Some(error) = &self.error {
            map.serialize_entry("error", error)?;
        }
        if let Some(bytes) = self.allocated_bytes {
            map.serialize_entry("allocated_bytes", &bytes)?;
        }
        if !self.data.is_null() {
            map.serialize_entry("data", &self.data)?;
        }
        map.end()
    }
}

/// Milliseconds with microsecond precision, as a JSON number.
fn duration_ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Displays a [`SystemTime`] as RFC 3339 UTC with microseconds: `2025-01-31T12:34:56.123456Z`,
/// the format of event timestamps.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use stageflow::observe::Rfc3339;
/// let t = UNIX_EPOCH + Duration::from_micros(1_709_251_199_123_456);
/// assert_eq!(Rfc3339(t).to_string(), "2024-02-29T23:59:59.123456Z");
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Rfc3339(pub SystemTime);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, micros) = unix_parts(self.0);
        let mut buf = [0u8; 19];
        write_datetime(secs, &mut buf);
        write!(
            f,
            "{}.{micros:06}Z",
            std::str::from_utf8(&buf).expect("ASCII")
        )
    }
}

fn unix_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_micros()),
        Err(e) => {
            let d = e.duration();
            let mut secs = -(d.as_secs() as i64);
            let mut micros = d.subsec_micros();
            if micros > 0 {
                secs -= 1;
                micros = 1_000_000 - micros;
            }
            (secs, micros)
        }
    }
}

/// Writes `YYYY-MM-DDTHH:MM:SS` for `secs` since the Unix epoch (proleptic Gregorian, UTC).
fn write_datetime(secs: i64, out: &mut [u8; 19]) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let year = year.clamp(0, 9999) as u32;
    let two = |v: u32, o: &mut [u8]| {
        o[0] = b'0' + (v / 10) as u8;
        o[1] = b'0' + (v % 10) as u8;
    };
    two(year / 100, &mut out[0..2]);
    two(year % 100, &mut out[2..4]);
    out[4] = b'-';
    two(month as u32, &mut out[5..7]);
    out[7] = b'-';
    two(day as u32, &mut out[8..10]);
    out[10] = b'T';
    two((rem / 3600) as u32, &mut out[11..13]);
    out[13] = b':';
    two((rem / 60 % 60) as u32, &mut out[14..16]);
    out[16] = b':';
    two((rem % 60) as u32, &mut out[17..19]);
}

/// A fast JSON Lines encoder for [`Event`]s, with small caches for the parts that repeat (the run
/// id, the second of the timestamp). Produces the same JSON as the [`Serialize`] impl.
#[derive(Default)]
pub(crate) struct Encoder {
    run_id: Option<(Uuid, [u8; 36])>,
    second: Option<(i64, [u8; 19])>,
}

/// The fields of one event line, borrowed: from an [`Event`], or straight from a compact stage
/// note and its run (the JSON Lines sink's fast path), so both encode through the same code.
pub(crate) struct EventParts<'a> {
    pub(crate) kind: &'a EventKind,
    pub(crate) run_id: Uuid,
    pub(crate) parent_run_id: Option<Uuid>,
    pub(crate) root_run_id: Option<Uuid>,
    pub(crate) pipeline: &'a str,
    pub(crate) stage: Option<&'a str>,
    pub(crate) stage_kind: Option<StageKind>,
    pub(crate) timestamp: SystemTime,
    pub(crate) duration: Option<Duration>,
    pub(crate) status: Option<&'a str>,
    pub(crate) error: Option<&'a str>,
    pub(crate) allocated_bytes: Option<u64>,
    pub(crate) data: &'a Value,
}

impl Event {
    fn parts(&self) -> EventParts<'_> {
        EventParts {
            kind: &self.kind,
            run_id: self.run_id,
            parent_run_id: self.parent_run_id,
            root_run_id: self.root_run_id,
            pipeline: &self.pipeline,
            stage: self.stage.as_deref(),
            stage_kind: self.stage_kind,
            timestamp: self.timestamp,
            duration: self.duration,
            status: self.status.as_deref(),
            error: self.error.as_deref(),
            allocated_bytes: self.allocated_bytes,
            data: &self.data,
        }
    }
}

impl Encoder {
    /// Appends `event` as one JSON object (no newline) to `out`.
    pub(crate) fn encode(&mut self, event: &Event, out: &mut Vec<u8>) {
        self.encode_parts(&event.parts(), out);
    }

    /// Appends the event made of `event` as one JSON object (no newline) to `out`.
    pub(crate) fn encode_parts(&mut self, event: &EventParts<'_>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"type\":");
        match event.kind.stage_suffix() {
            Some(suffix) => {
                let stage = event.stage.unwrap_or("?");
                if is_plain(stage) {
                    out.extend_from_slice(b"\"stage.");
                    out.extend_from_slice(stage.as_bytes());
                    out.push(b'.');
                    out.extend_from_slice(suffix.as_bytes());
                    out.push(b'"');
                } else {
                    write_str(out, &format!("stage.{stage}.{suffix}"));
                }
            }
            None => write_str(out, event.kind.fixed_type().unwrap_or("unknown")),
        }
        out.extend_from_slice(b",\"run_id\":\"");
        let id = match &self.run_id {
            Some((id, text)) if *id == event.run_id => text,
            _ => {
                let mut text = [0u8; 36];
                event.run_id.hyphenated().encode_lower(&mut text);
                &self.run_id.insert((event.run_id, text)).1
            }
        };
        out.extend_from_slice(id);
        for (key, linked) in [
            (&b"\",\"parent_run_id\":\""[..], event.parent_run_id),
            (&b"\",\"root_run_id\":\""[..], event.root_run_id),
        ] {
            if let Some(linked) = linked {
                out.extend_from_slice(key);
                let mut text = [0u8; 36];
                linked.hyphenated().encode_lower(&mut text);
                out.extend_from_slice(&text);
            }
        }
        out.extend_from_slice(b"\",\"pipeline\":");
        write_str(out, event.pipeline);
        if let Some(stage) = event.stage {
            out.extend_from_slice(b",\"stage\":");
            write_str(out, stage);
        }
        if let Some(kind) = event.stage_kind {
            out.extend_from_slice(b",\"stage_kind\":\"");
            out.extend_from_slice(kind.as_str().as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"timestamp\":\"");
        let (secs, micros) = unix_parts(event.timestamp);
        let date = match &self.second {
            Some((s, text)) if *s == secs => text,
            _ => {
                let mut text = [0u8; 19];
                write_datetime(secs, &mut text);
                &self.second.insert((secs, text)).1
            }
        };
        out.extend_from_slice(date);
        out.push(b'.');
        let mut frac = [b'0'; 6];
        let mut m = micros;
        for slot in frac.iter_mut().rev() {
            *slot = b'0' + (m % 10) as u8;
            m /= 10;
        }
        out.extend_from_slice(&frac);
        out.extend_from_slice(b"Z\"");
        if let Some(d) = event.duration {
            out.extend_from_slice(b",\"duration_ms\":");
            write_ms(out, d);
        }
        if let Some(status) = event.status {
            out.extend_from_slice(b",\"status\":");
            write_str(out, status);
        }
        if let Some(error) = event.error {
            out.extend_from_slice(b",\"error\":");
            write_str(out, error);
        }
        if let Some(bytes) = event.allocated_bytes {
            out.extend_from_slice(b",\"allocated_bytes\":");
            out.extend_from_slice(itoa::Buffer::new().format(bytes).as_bytes());
        }
        if !event.data.is_null() {
            out.extend_from_slice(b",\"data\":");
            serde_json::to_writer(&mut *out, event.data).expect("a Value always serializes");
        }
        out.push(b'}');
    }
}

/// Writes a duration as fractional milliseconds, the way serde_json writes the f64 of
/// [`duration_ms`] (so both encoders agree): `12.345`, `0.001`, `3.0`.
fn write_ms(out: &mut Vec<u8>, d: Duration) {
    let ms = duration_ms(d);
    // Integral values: serde_json writes `3.0`; others go through the shortest representation.
    serde_json::to_writer(&mut *out, &ms).expect("a finite f64 always serializes");
}

/// `true` when `s` needs no JSON escaping.
fn is_plain(s: &str) -> bool {
    s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    if is_plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string always serializes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event::new(EventKind::StageCompleted, Uuid::now_v7(), "pipe \"x\"")
            .with_stage("s1", StageKind::Transform)
            .with_duration(Duration::from_micros(12_345))
            .with_status("ok")
            .with_error("line\nbreak")
            .with_data(serde_json::json!({"k": [1, 2]}))
    }

    #[test]
    fn encoder_matches_serde() {
        let mut ev = sample();
        ev.allocated_bytes = Some(4096);
        let fast: Value = serde_json::from_str(&ev.to_json_line()).unwrap();
        let slow = serde_json::to_value(&ev).unwrap();
        assert_eq!(fast, slow);
        assert_eq!(fast["type"], "stage.s1.completed");
        assert_eq!(fast["duration_ms"], 12.345);
        let ev = Event::new(EventKind::PipelineStarted, Uuid::nil(), "p");
        let fast: Value = serde_json::from_str(&ev.to_json_line()).unwrap();
        assert_eq!(fast, serde_json::to_value(&ev).unwrap());
    }

    #[test]
    fn rfc3339_known_dates() {
        let t = UNIX_EPOCH + Duration::from_micros(951_782_400_000_001); // 2000-02-29
        assert_eq!(Rfc3339(t).to_string(), "2000-02-29T00:00:00.000001Z");
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5_000);
        assert_eq!(Rfc3339(t).to_string(), "2023-11-14T22:13:20.000005Z");
        assert_eq!(
            Rfc3339(UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn type_strings() {
        let id = Uuid::nil();
        let stage = |k| Event::new(k, id, "p").with_stage("a", StageKind::Work);
        assert_eq!(
            stage(EventKind::StageSkipped).event_type(),
            "stage.a.skipped"
        );
        assert_eq!(stage(EventKind::StageWide).event_type(), "stage.wide");
        assert_eq!(
            Event::new(EventKind::Custom("cache.hit".into()), id, "p").event_type(),
            "cache.hit"
        );
        assert_eq!(
            Event::new(EventKind::PipelineCancelled, id, "p").event_type(),
            "pipeline.cancelled"
        );
    }
}
