//! `{{ ... }}` templates: how upstream outputs reach a command.
//!
//! A template is a string with references in double braces:
//! - `{{ stages.build.version }}`: key `version` of dependency `build`'s output; deeper keys and
//!   array indexes follow with dots (`{{ stages.scan.report.files.0 }}`);
//! - `{{ stages.build }}`: the whole output data of `build`, as JSON;
//! - `{{ matrix.shard }}`: this matrix instance's value of `shard`;
//! - `{{ 'text' }}`: literal text (write `{{ '{{' }}` for literal braces).
//!
//! Strings are inserted as they are, other JSON values as compact JSON, `null` as nothing. A
//! template may only reference stages the stage `needs`; `check` verifies this, with positions.

use std::ops::Range;

use serde_json::Value;

use super::diag::Span;

/// Maps offsets inside a decoded TOML string back to the file. When the string has escapes (or is
/// multi-line) offsets cannot be mapped exactly, and the whole string value is used instead.
#[derive(Clone, Debug)]
pub(crate) struct StrPos {
    pub(crate) value_span: Span,
    pub(crate) content_start: Option<usize>,
}

impl StrPos {
    /// The position map of a string whose value `decoded` is written at `value_span` of `text`.
    pub(crate) fn new(text: &str, value_span: Span, decoded: &str) -> Self {
        let raw = text.get(value_span.clone()).unwrap_or("");
        let simple = raw.len() == decoded.len() + 2
            && ((raw.starts_with('"') && !raw.starts_with("\"\"\""))
                || (raw.starts_with('\'') && !raw.starts_with("'''")))
            && raw.get(1..raw.len() - 1) == Some(decoded);
        StrPos {
            content_start: simple.then_some(value_span.start + 1),
            value_span,
        }
    }

    /// The file span of `range` (offsets into the decoded string).
    pub(crate) fn span(&self, range: Range<usize>) -> Span {
        match self.content_start {
            Some(start) => start + range.start..start + range.end,
            None => self.value_span.clone(),
        }
    }
}

/// What a reference points at.
#[derive(Clone, Debug, PartialEq)]
pub enum RefPath {
    /// `stages.NAME.key.key...` (no keys: the whole output data).
    Stage {
        /// The stage (or matrix instance, `name[value]`).
        stage: String,
        /// Keys (and array indexes) into its output data.
        keys: Vec<String>,
    },
    /// `matrix.KEY`.
    Matrix(String),
}

/// A reference with where it is written.
#[derive(Clone, Debug)]
pub struct Reference {
    /// What it points at.
    pub path: RefPath,
    /// The reference as written.
    pub text: String,
    /// Where it is written.
    pub span: Span,
}

/// A piece of a template.
#[derive(Clone, Debug)]
pub enum Part {
    /// Literal text.
    Lit(String),
    /// A `{{ reference }}`.
    Ref(Reference),
}

/// A parsed template string.
#[derive(Clone, Debug)]
pub struct Template {
    /// Literal and reference parts, in order.
    pub parts: Vec<Part>,
    /// The whole string value in the file.
    pub span: Span,
}

impl Template {
    /// A template with no references.
    pub(crate) fn literal(text: &str, span: Span) -> Self {
        Template {
            parts: vec![Part::Lit(text.to_owned())],
            span,
        }
    }

    /// The references, in order.
    pub fn references(&self) -> impl Iterator<Item = &Reference> {
        self.parts.iter().filter_map(|p| match p {
            Part::Ref(r) => Some(r),
            Part::Lit(_) => None,
        })
    }

    /// The text when the template has no references.
    pub fn as_literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Renders with `resolve` giving each reference's value.
    pub fn render(
        &self,
        mut resolve: impl FnMut(&Reference) -> Result<Value, String>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Ref(r) => push_value(&mut out, &resolve(r)?),
            }
        }
        Ok(out)
    }
}

/// Appends `value` as template text: strings raw, `null` as nothing, the rest as compact JSON.
pub(crate) fn push_value(out: &mut String, value: &Value) {
    match value {
        Value::String(s) => out.push_str(s),
        Value::Null => {}
        other => out.push_str(&other.to_string()),
    }
}

/// Parses `s` (a decoded string value) as a template.
pub(crate) fn parse_template(s: &str, pos: &StrPos) -> Result<Template, (String, Span)> {
    if !s.contains("{{") {
        return Ok(Template::literal(s, pos.value_span.clone()));
    }
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while let Some(found) = s[i..].find("{{") {
        let open = i + found;
        lit.push_str(&s[i..open]);
        let Some(close_rel) = s[open + 2..].find("}}") else {
            return Err((
                "unclosed `{{` in template: add `}}`, or write `{{ '{{' }}` for literal braces"
                    .to_owned(),
                pos.span(open..s.len()),
            ));
        };
        let close = open + 2 + close_rel;
        let inner = &s[open + 2..close];
        let trimmed = inner.trim();
        let inner_start = open + 2 + (inner.len() - inner.trim_start().len());
        let range = inner_start..inner_start + trimmed.len();
        if let Some(text) = quoted_literal(trimmed) {
            lit.push_str(text);
        } else {
            if trimmed.is_empty() {
                return Err((
                    "empty `{{ }}` in template: write a reference such as `{{ stages.build.version }}`"
                        .to_owned(),
                    pos.span(open..close + 2),
                ));
            }
            let path = parse_path(trimmed).map_err(|(msg, r)| {
                (
                    msg,
                    pos.span(inner_start + r.start..inner_start + r.end.max(r.start + 1)),
                )
            })?;
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Ref(Reference {
                path,
                text: trimmed.to_owned(),
                span: pos.span(range),
            }));
        }
        i = close + 2;
    }
    lit.push_str(&s[i..]);
    if !lit.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(Template {
        parts,
        span: pos.value_span.clone(),
    })
}

fn quoted_literal(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    if b.len() >= 2 && (b[0] == b'\'' || b[0] == b'"') && b[b.len() - 1] == b[0] {
        let inner = &s[1..s.len() - 1];
        (!inner.contains(b[0] as char)).then_some(inner)
    } else {
        None
    }
}

pub(crate) fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Parses a reference path (`stages.build.version`, `matrix.os`). Errors carry the offending range
/// within `s`.
pub(crate) fn parse_path(s: &str) -> Result<RefPath, (String, Range<usize>)> {
    let ident_end = |from: usize| {
        s[from..]
            .find(|c: char| !is_ident_char(c))
            .map_or(s.len(), |n| from + n)
    };
    let root_end = ident_end(0);
    let root = &s[..root_end];
    let expected = "references look like `stages.NAME.KEY` or `matrix.KEY`";
    match root {
        "stages" | "matrix" => {}
        "" => {
            return Err((
                format!("expected a reference; {expected}"),
                0..s.len().max(1),
            ))
        }
        other => {
            return Err((
                format!("unknown reference root `{other}`; {expected}"),
                0..root_end,
            ))
        }
    }
    if !s[root_end..].starts_with('.') {
        return Err((
            format!("`{root}` needs a name after it; {expected}"),
            0..root_end,
        ));
    }
    let mut at = root_end + 1;
    let mut end = ident_end(at);
    if end == at {
        return Err((
            format!("missing name after `{root}.`; {expected}"),
            at..at + 1,
        ));
    }
    if root == "matrix" {
        if end != s.len() {
            return Err((
                format!(
                    "unexpected `{}` after `{}`; {expected}",
                    &s[end..],
                    &s[..end]
                ),
                end..s.len(),
            ));
        }
        return Ok(RefPath::Matrix(s[at..end].to_owned()));
    }
    if s[end..].starts_with('[') {
        match s[end..].find(']') {
            Some(n) => end += n + 1,
            None => {
                return Err((
                    "unclosed `[` in matrix instance name".to_owned(),
                    end..s.len(),
                ))
            }
        }
    }
    let stage = s[at..end].to_owned();
    let mut keys = Vec::new();
    at = end;
    while at < s.len() {
        if !s[at..].starts_with('.') {
            return Err((
                format!("unexpected `{}` in reference; {expected}", &s[at..]),
                at..s.len(),
            ));
        }
        let key_start = at + 1;
        let key_end = ident_end(key_start);
        if key_end == key_start {
            return Err((
                format!("missing key after `{}`", &s[..key_start]),
                at..key_start.min(s.len()).max(at + 1),
            ));
        }
        keys.push(s[key_start..key_end].to_owned());
        at = key_end;
    }
    Ok(RefPath::Stage { stage, keys })
}

/// Follows `keys` into `value` (object keys, or array indexes for arrays).
pub(crate) fn lookup<'v>(mut value: &'v Value, keys: &[String]) -> Option<&'v Value> {
    for key in keys {
        value = match value {
            Value::Object(map) => map.get(key)?,
            Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(s: &str) -> StrPos {
        StrPos {
            value_span: 0..s.len() + 2,
            content_start: Some(1),
        }
    }

    #[test]
    fn parses_references_and_literals() {
        let s = "tar {{ stages.build.version }}-{{matrix.os}} {{ '{{' }}";
        let t = parse_template(s, &pos(s)).unwrap();
        let refs: Vec<_> = t.references().map(|r| r.path.clone()).collect();
        assert_eq!(
            refs,
            vec![
                RefPath::Stage {
                    stage: "build".into(),
                    keys: vec!["version".into()]
                },
                RefPath::Matrix("os".into())
            ]
        );
        let first = t.references().next().unwrap();
        assert_eq!(
            &s[first.span.start - 1..first.span.end - 1],
            "stages.build.version"
        );
        let out = t
            .render(|r| {
                Ok(match &r.path {
                    RefPath::Matrix(_) => Value::from("linux"),
                    _ => Value::from("1.2"),
                })
            })
            .unwrap();
        assert_eq!(out, "tar 1.2-linux {{");
    }

    #[test]
    fn instance_names_and_errors() {
        assert_eq!(
            parse_path("stages.proc[a,1].rows").unwrap(),
            RefPath::Stage {
                stage: "proc[a,1]".into(),
                keys: vec!["rows".into()]
            }
        );
        for bad in [
            "env.HOME",
            "stages",
            "stages.",
            "stages.a..b",
            "matrix.a.b",
            "stages.a[x",
            "x y",
        ] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
        let s = "echo {{ stages.a";
        assert!(parse_template(s, &pos(s))
            .unwrap_err()
            .0
            .contains("unclosed"));
        let s = "{{ }}";
        assert!(parse_template(s, &pos(s)).is_err());
    }

    #[test]
    fn lookup_follows_keys_and_indexes() {
        let v = serde_json::json!({"a": {"b": [10, 20]}});
        assert_eq!(
            lookup(&v, &["a".into(), "b".into(), "1".into()]),
            Some(&Value::from(20))
        );
        assert_eq!(lookup(&v, &["a".into(), "x".into()]), None);
    }
}
