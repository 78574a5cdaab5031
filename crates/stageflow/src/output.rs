//! What a stage returns: a [`StageStatus`] plus a small map of named, serializable values.
//!
//! Output data is kept as an ordered list of `(key, serde_json::Value)` pairs rather than a hash
//! map: stages usually emit a handful of keys, so a linear scan beats hashing, and insertion order
//! makes logs and checkpoints deterministic. Values are `serde_json::Value` so that every output can
//! be logged, diffed and checkpointed without knowing the stage's Rust types; typed access goes
//! through serde ([`OutputData::get`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DataError;

/// The outcome class of a stage, with the engine's semantics:
///
/// | status | meaning | effect on the run |
/// |---|---|---|
/// | [`Ok`](Self::Ok) | the stage did its work | dependents may start |
/// | [`Skip`](Self::Skip) | the stage chose not to act (with a reason) | dependents still run, unless *all* their inputs were skipped |
/// | [`Cancel`](Self::Cancel) | graceful stop of the whole run (with a reason) | no new stage starts; the run returns partial results |
/// | [`Fail`](Self::Fail) | the stage failed | fail-fast: running stages are cancelled, the caller gets an error |
/// | [`Retry`](Self::Retry) | a failure that is worth retrying | without a retry policy it fails the stage, marked retryable |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// The stage completed its work.
    Ok,
    /// The stage was skipped (by itself, by its condition, or because all its inputs were skipped).
    Skip,
    /// The stage asked the whole run to stop gracefully.
    Cancel,
    /// The stage failed.
    Fail,
    /// The stage failed in a way that a retry may fix.
    Retry,
}

impl StageStatus {
    /// The lowercase name used in events, logs and JSON (`"ok"`, `"skip"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Ok => "ok",
            StageStatus::Skip => "skip",
            StageStatus::Cancel => "cancel",
            StageStatus::Fail => "fail",
            StageStatus::Retry => "retry",
        }
    }

    /// `true` for [`Fail`](Self::Fail) and [`Retry`](Self::Retry): statuses that stop a fail-fast run.
    pub fn is_failure(self) -> bool {
        matches!(self, StageStatus::Fail | StageStatus::Retry)
    }
}

impl fmt::Display for StageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Key of an output value. Static keys (the common case) cost no allocation.
pub type Key = Cow<'static, str>;

/// An ordered map of named JSON values: the data part of a [`StageOutput`].
///
/// ```
/// use stageflow::OutputData;
/// let mut data = OutputData::new();
/// data.insert("rows", 42).unwrap();
/// data.insert("table", "users").unwrap();
/// assert_eq!(data.get::<u64>("rows").unwrap(), 42);
/// assert_eq!(data.get::<String>("table").unwrap(), "users");
/// assert!(data.get::<u64>("missing").is_err());
/// ```
#[derive(Clone, Default, PartialEq)]
pub struct OutputData {
    entries: Vec<(Key, Value)>,
}

impl OutputData {
    /// An empty map (no allocation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Serializes `value` and stores it under `key`, replacing an earlier value with that key.
    ///
    /// Fails only when `value` cannot be represented as JSON (for example a map with non-string keys).
    pub fn insert(
        &mut self,
        key: impl Into<Key>,
        value: impl Serialize,
    ) -> Result<(), serde_json::Error> {
        let value = serde_json::to_value(value)?;
        self.insert_value(key, value);
        Ok(())
    }

    /// Stores an already-built JSON value under `key`, replacing an earlier value with that key.
    pub fn insert_value(&mut self, key: impl Into<Key>, value: Value) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => {
                // Most outputs hold one or two keys: grow one slot at a time while small, not
                // by four; larger maps grow geometrically as usual.
                if self.entries.len() < 4 {
                    self.entries.reserve_exact(1);
                }
                self.entries.push((key, value));
            }
        }
    }

    /// The raw JSON value under `key`.
    pub fn get_value(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The value under `key`, deserialized as `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, DataError> {
        let value = self.get_value(key).ok_or_else(|| DataError::MissingKey {
            key: key.to_owned(),
            available: self.keys().map(str::to_owned).collect(),
        })?;
        T::deserialize(value).map_err(|source| DataError::WrongType {
            key: key.to_owned(),
            expected: std::any::type_name::<T>(),
            source,
        })
    }

    /// `true` if `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get_value(key).is_some()
    }

    /// Keys in insertion order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_ref())
    }

    /// `(key, value)` pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for OutputData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for OutputData {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for OutputData {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Reads the map entry by entry so that key order survives a round trip (a
        /// `serde_json::Map` would sort the keys).
        struct OrderedVisitor;

        impl<'de> serde::de::Visitor<'de> for OrderedVisitor {
            type Value = OutputData;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of output values")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<OutputData, A::Error> {
                let mut data = OutputData {
                    entries: Vec::with_capacity(access.size_hint().unwrap_or(0).min(64)),
                };
                while let Some((key, value)) = access.next_entry::<String, Value>()? {
                    data.insert_value(key, value);
                }
                Ok(data)
            }
        }

        deserializer.deserialize_map(OrderedVisitor)
    }
}

/// What a stage produced: a status, an optional message (skip/cancel reason or error text) and data.
///
/// Build one with the constructors and [`with`](Self::with):
///
/// ```
/// use stageflow::{StageOutput, StageStatus};
/// let out = StageOutput::ok().with("value", 41 + 1);
/// assert_eq!(out.status(), StageStatus::Ok);
/// assert_eq!(out.get::<i32>("value").unwrap(), 42);
///
/// let skipped = StageOutput::skip("nothing changed");
/// assert_eq!(skipped.message(), Some("nothing changed"));
/// ```
///
/// A stage may also attach custom events and artifacts ([`event`](Self::event),
/// [`artifact`](Self::artifact)); the engine forwards them to the run's event sink when the stage
/// finishes (see [`observe`](crate::observe)). They cost one pointer when unused.
#[derive(Clone, Debug)]
pub struct StageOutput {
    status: StageStatus,
    message: Option<String>,
    data: OutputData,
    extras: Option<Box<Extras>>,
}

/// The rarely used parts of an output, boxed so that outputs without them stay small.
#[derive(Clone, Debug, Default)]
struct Extras {
    events: Vec<CustomEvent>,
    artifacts: Vec<Artifact>,
    /// Executions that produced the output when more than one (0: unset, meaning 1).
    attempts: u32,
}

/// Equal status, message, data, events and artifacts. [`attempts`](StageOutput::attempts) is how
/// the value was made, not part of it: equality ignores it, as serialization does.
impl PartialEq for StageOutput {
    fn eq(&self, other: &Self) -> bool {
        self.status == other.status
            && self.message == other.message
            && self.data == other.data
            && self.events() == other.events()
            && self.artifacts() == other.artifacts()
    }
}

/// Serializes as `{"status", "message"?, "data"?, "events"?, "artifacts"?}`; empty parts are left out.
impl Serialize for StageOutput {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = serializer.serialize_struct("StageOutput", 5)?;
        st.serialize_field("status", &self.status)?;
        match &self.message {
            Some(m) => st.serialize_field("message", m)?,
            None => st.skip_field("message")?,
        }
        if self.data.is_empty() {
            st.skip_field("data")?;
        } else {
            st.serialize_field("data", &self.data)?;
        }
        match self.extras.as_deref() {
            Some(x) if !x.events.is_empty() => st.serialize_field("events", &x.events)?,
            _ => st.skip_field("events")?,
        }
        match self.extras.as_deref() {
            Some(x) if !x.artifacts.is_empty() => st.serialize_field("artifacts", &x.artifacts)?,
            _ => st.skip_field("artifacts")?,
        }
        st.end()
    }
}

impl<'de> Deserialize<'de> for StageOutput {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "StageOutput")]
        struct Repr {
            status: StageStatus,
            #[serde(default)]
            message: Option<String>,
            #[serde(default)]
            data: OutputData,
            #[serde(default)]
            events: Vec<CustomEvent>,
            #[serde(default)]
            artifacts: Vec<Artifact>,
        }
        let r = Repr::deserialize(deserializer)?;
        let extras = (!r.events.is_empty() || !r.artifacts.is_empty()).then(|| {
            Box::new(Extras {
                events: r.events,
                artifacts: r.artifacts,
                attempts: 0,
            })
        });
        Ok(StageOutput {
            status: r.status,
            message: r.message,
            data: r.data,
            extras,
        })
    }
}

impl StageOutput {
    fn new(status: StageStatus, message: Option<String>) -> Self {
        StageOutput {
            status,
            message,
            data: OutputData::new(),
            extras: None,
        }
    }

    /// A successful output with no data yet.
    pub fn ok() -> Self {
        Self::new(StageStatus::Ok, None)
    }

    /// A successful output carrying `data`.
    pub fn ok_with(data: OutputData) -> Self {
        StageOutput { data, ..Self::ok() }
    }

    /// The stage chose not to act, for `reason`.
    pub fn skip(reason: impl Into<String>) -> Self {
        Self::new(StageStatus::Skip, Some(reason.into()))
    }

    /// Stop the whole run gracefully, for `reason`. The run returns partial results.
    pub fn cancel(reason: impl Into<String>) -> Self {
        Self::new(StageStatus::Cancel, Some(reason.into()))
    }

    /// The stage failed with `error`.
    pub fn fail(error: impl Into<String>) -> Self {
        Self::new(StageStatus::Fail, Some(error.into()))
    }

    /// The stage failed with `error`, and trying again may succeed.
    pub fn retry(error: impl Into<String>) -> Self {
        Self::new(StageStatus::Retry, Some(error.into()))
    }

    /// Adds `key = value` to the data.
    ///
    /// If `value` cannot be serialized, the output turns into a [`StageStatus::Fail`] that names the
    /// key, so a bad value is never dropped silently.
    pub fn with(mut self, key: impl Into<Key>, value: impl Serialize) -> Self {
        let key = key.into();
        match serde_json::to_value(value) {
            Ok(value) => self.data.insert_value(key, value),
            Err(err) => self.unserializable(format_args!("output key `{key}`"), err),
        }
        self
    }

    /// Turns the output into a failure saying that `what` could not be serialized, so a bad
    /// value is never dropped silently.
    fn unserializable(&mut self, what: fmt::Arguments<'_>, err: serde_json::Error) {
        self.status = StageStatus::Fail;
        self.message = Some(format!("{what} could not be serialized: {err}"));
    }

    /// Attaches a custom event, forwarded to the run's event sink (as type `event_type`, with the
    /// run id and stage name filled in) when the stage finishes, and kept in the output.
    ///
    /// If `data` cannot be serialized, the output turns into a [`StageStatus::Fail`], as with
    /// [`with`](Self::with).
    ///
    /// ```
    /// use stageflow::StageOutput;
    /// let out = StageOutput::ok().event("cache.hit", serde_json::json!({"key": "users/7"}));
    /// assert_eq!(out.events()[0].event_type, "cache.hit");
    /// ```
    pub fn event(mut self, event_type: impl Into<String>, data: impl Serialize) -> Self {
        let event_type = event_type.into();
        match serde_json::to_value(data) {
            Ok(data) => self
                .extras_mut()
                .events
                .push(CustomEvent { event_type, data }),
            Err(err) => self.unserializable(format_args!("event `{event_type}`"), err),
        }
        self
    }

    /// Attaches an artifact (something the stage produced: a file, a report, a URL), forwarded
    /// to the run's event sink as a `stage.<name>.artifact` event when the stage finishes, and
    /// kept in the output.
    ///
    /// ```
    /// use stageflow::StageOutput;
    /// let out = StageOutput::ok().artifact("file", serde_json::json!({"path": "/tmp/report.csv"}));
    /// assert_eq!(out.artifacts()[0].kind, "file");
    /// ```
    pub fn artifact(mut self, kind: impl Into<String>, payload: impl Serialize) -> Self {
        let kind = kind.into();
        match serde_json::to_value(payload) {
            Ok(payload) => self.extras_mut().artifacts.push(Artifact { kind, payload }),
            Err(err) => self.unserializable(format_args!("artifact `{kind}`"), err),
        }
        self
    }

    /// The custom events attached with [`event`](Self::event).
    pub fn events(&self) -> &[CustomEvent] {
        self.extras.as_deref().map_or(&[], |x| &x.events)
    }

    /// The artifacts attached with [`artifact`](Self::artifact).
    pub fn artifacts(&self) -> &[Artifact] {
        self.extras.as_deref().map_or(&[], |x| &x.artifacts)
    }

    /// How many executions produced this output: 1, unless a [`Retry`](crate::intercept::Retry)
    /// interceptor or a [guard retry](crate::GuardRetry) ran the stage again (then every
    /// execution counts). Stores record it as the stage's attempt count. It is metadata about how
    /// the value was made: serialization and equality ignore it.
    ///
    /// ```
    /// use stageflow::StageOutput;
    /// assert_eq!(StageOutput::ok().attempts(), 1);
    /// ```
    pub fn attempts(&self) -> u32 {
        self.extras.as_deref().map_or(1, |x| x.attempts.max(1))
    }

    /// Counts `more` executions in [`attempts`](Self::attempts) (a retry's, or a guard
    /// retry's re-runs); nothing for 0, so an output without them stays without extras.
    pub(crate) fn add_attempts(&mut self, more: u32) {
        if more > 0 {
            let attempts = self.attempts() + more;
            self.extras_mut().attempts = attempts;
        }
    }

    fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// The status.
    pub fn status(&self) -> StageStatus {
        self.status
    }

    /// The skip/cancel reason or the error text, if any.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The data map.
    pub fn data(&self) -> &OutputData {
        &self.data
    }

    /// Mutable access to the data map.
    pub fn data_mut(&mut self) -> &mut OutputData {
        &mut self.data
    }

    /// Shorthand for `self.data().get(key)`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, DataError> {
        self.data.get(key)
    }

    /// `true` when the status is [`StageStatus::Ok`].
    pub fn is_ok(&self) -> bool {
        self.status == StageStatus::Ok
    }

    /// `true` when the status is [`StageStatus::Skip`].
    pub fn is_skipped(&self) -> bool {
        self.status == StageStatus::Skip
    }
}

impl Default for StageOutput {
    fn default() -> Self {
        Self::ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unserializable_value_turns_into_failure() {
        let mut bad = std::collections::HashMap::new();
        bad.insert(vec![1u8], 1);
        let out = StageOutput::ok().with("bad", bad);
        assert_eq!(out.status(), StageStatus::Fail);
        assert!(out.message().unwrap().contains("`bad`"));
    }

    #[test]
    fn insert_replaces_and_serde_round_trips() {
        let out = StageOutput::ok().with("a", 1).with("b", "x").with("a", 2);
        assert_eq!(out.data().len(), 2);
        let json = serde_json::to_string(&out).unwrap();
        assert_eq!(json, r#"{"status":"ok","data":{"a":2,"b":"x"}}"#);
        let back: StageOutput = serde_json::from_str(&json).unwrap();
        assert_eq!(back, out);
        // Key order survives, even when it is not sorted.
        let out = StageOutput::ok().with("z", 1).with("a", 2);
        let back: StageOutput =
            serde_json::from_str(&serde_json::to_string(&out).unwrap()).unwrap();
        assert_eq!(back.data().keys().collect::<Vec<_>>(), ["z", "a"]);
    }

    #[test]
    fn wrong_type_names_key_and_type() {
        let out = StageOutput::ok().with("n", "text");
        let err = out.get::<u32>("n").unwrap_err().to_string();
        assert!(err.contains("`n`") && err.contains("u32"), "{err}");
    }
}

/// A custom event a stage attaches to its output with [`StageOutput::event`](crate::StageOutput::event).
/// The engine forwards it to the run's sink (as [`EventKind::Custom`](crate::observe::EventKind::Custom), with the run id and stage
/// name filled in) when the stage finishes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CustomEvent {
    /// The event type, e.g. `cache.hit`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Its payload.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

/// An artifact a stage attaches to its output with
/// [`StageOutput::artifact`](crate::StageOutput::artifact): something it produced that is worth
/// pointing at (a file, a report, a URL). Forwarded as a `stage.<name>.artifact` event whose data
/// is `{"type": kind, "payload": payload}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// What sort of artifact (`file`, `report`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Where it is or what it holds.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub payload: Value,
}
