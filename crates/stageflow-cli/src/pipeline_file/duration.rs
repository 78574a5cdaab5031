//! Durations as written in pipeline files and on the command line: `500ms`, `30s`, `5m`, `1h`,
//! `1m30s`, `1.5s`; a bare number means seconds.

use std::time::Duration;

/// The longest duration accepted (30 days): anything longer is a typo, and keeping durations small
/// keeps deadline arithmetic far from overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Parses a duration such as `"1m30s"`: `500ms`, `30s`, `5m`, `1h`, combinations, decimals, or a
/// bare number of seconds; at most 30 days.
///
/// ```
/// use std::time::Duration;
/// use stageflow_cli::pipeline_file::parse_duration;
/// assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert!(parse_duration("5 parsecs").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let expected = "expected a duration such as `500ms`, `30s`, `5m`, `1h` or `1m30s`";
    if s.is_empty() {
        return Err(format!("empty duration; {expected}"));
    }
    if let Ok(secs) = s.parse::<f64>() {
        return from_secs(secs, text, expected);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration `{text}`; {expected}"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration `{text}`; {expected}"))?;
        rest = rest[num_len..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("duration `{text}` lacks a unit; {expected}")),
            unit => {
                return Err(format!(
                    "unknown unit `{unit}` in duration `{text}`; {expected}"
                ))
            }
        };
        total += number * scale;
        rest = rest[unit_len..].trim_start();
    }
    from_secs(total, text, expected)
}

fn from_secs(secs: f64, text: &str, expected: &str) -> Result<Duration, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration `{text}`; {expected}"));
    }
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!(
            "duration `{text}` is longer than the maximum of 30 days"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration for people: `850ms`, `12.3s`, `4m05s`, `1h02m`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1h 2m").unwrap(), Duration::from_secs(3720));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "s",
            "10x",
            "-1s",
            "1e400",
            "99999999h",
            "1..2s",
            "NaN",
            "inf",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn human_forms() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_millis(12_345)), "12.35s");
        assert_eq!(human(Duration::from_secs(245)), "4m05s");
        assert_eq!(human(Duration::from_secs(3720)), "1h02m");
    }
}
