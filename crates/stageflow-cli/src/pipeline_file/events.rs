//! `--events FILE.jsonl`: one JSON object per line, flushed as it happens.
//!
//! Every event has `event`, `run_id`, `pipeline` and `ts` (RFC 3339, UTC, milliseconds). Stage
//! events add `stage`; completed, failed, skipped and cancelled ones add `started_at`,
//! `duration_ms` and `status`, failures add `error`, skips add `reason`. Event names:
//! `pipeline_started`, `stage_started`, `stage_retrying`, `stage_completed`, `stage_failed`,
//! `stage_skipped`, `stage_cancelled`, `cleanup_completed`, `cleanup_failed`, and one of
//! `pipeline_completed`, `pipeline_failed`, `pipeline_cancelled` last. Stages of a child
//! pipeline appear as `parent_stage/child_stage`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// `2024-05-01T12:00:00.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The events file.
pub(crate) struct EventLog {
    out: Mutex<Option<BufWriter<File>>>,
    error: Mutex<Option<String>>,
    run_id: String,
}

impl EventLog {
    pub(crate) fn create(path: &Path, run_id: String) -> std::io::Result<Self> {
        let file = File::create(path)?;
        Ok(EventLog {
            out: Mutex::new(Some(BufWriter::new(file))),
            error: Mutex::new(None),
            run_id,
        })
    }

    /// Writes one event. `fields` must be a JSON object; `event`, `run_id` and `ts` are added.
    pub(crate) fn emit(&self, event: &str, fields: Value) {
        let mut map = Map::new();
        map.insert("event".into(), event.into());
        map.insert("run_id".into(), self.run_id.clone().into());
        map.insert("ts".into(), rfc3339(SystemTime::now()).into());
        if let Value::Object(extra) = fields {
            map.extend(extra.into_iter().filter(|(_, v)| !v.is_null()));
        }
        let mut line = Value::Object(map).to_string();
        line.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = out.as_mut() {
            if let Err(e) = w.write_all(line.as_bytes()).and_then(|()| w.flush()) {
                *self.error.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(format!("writing the events file failed: {e}"));
                *out = None;
            }
        }
    }

    /// The first write error, if any: reported at the end of the run, never swallowed.
    pub(crate) fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123); // 2024-02-29T23:59:59.123Z
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
    }
}
