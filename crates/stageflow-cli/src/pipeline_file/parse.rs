//! TOML text -> [`PipelineDef`], collecting every problem with its position.
//!
//! The file is parsed with `toml`'s span-keeping document parser (`toml::de::DeTable`), then walked
//! by hand rather than through serde, so that one pass reports *all* unknown keys, wrong types and
//! bad values (each at its own position, with suggestions), instead of stopping at the first.
//! Everything here is linear in the size of the file.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

use super::diag::{codes, Diagnostic, Diagnostics, Sink, SourceFile, Span};
use super::duration::parse_duration;
use super::expr::parse_condition;
use super::format::{Action, CommandLine, Condition, EnvVar, Matrix, PipelineDef, StageDef};
use super::template::{is_ident_char, parse_template, StrPos, Template};

/// Most combinations one matrix may expand to.
pub const MAX_MATRIX: usize = 10_000;
/// Most retries a stage may ask for.
pub const MAX_RETRIES: i64 = 100;

const ROOT_KEYS: &[&str] = &["pipeline", "stages"];
const PIPELINE_KEYS: &[&str] = &[
    "name",
    "description",
    "max_parallel",
    "env",
    "cleanup",
    "cleanup_timeout",
];
const STAGE_KEYS: &[&str] = &[
    "run",
    "cmd",
    "pipeline",
    "needs",
    "env",
    "dir",
    "timeout",
    "retries",
    "retry_delay",
    "if",
    "matrix",
    "cleanup",
    "kind",
    "description",
];

type Val<'i> = Spanned<DeValue<'i>>;
type Key<'i> = Spanned<DeString<'i>>;

/// Parses the text of `source` into a [`PipelineDef`]. TOML syntax errors stop here; problems
/// with keys and values are returned next to the definition (the stages are kept, so that the
/// semantic checks can still run and report their problems too).
pub(crate) fn parse_file(source: &Arc<SourceFile>) -> Result<(PipelineDef, Sink), Diagnostics> {
    let (doc, errors) = DeTable::parse_recoverable(source.text());
    if !errors.is_empty() {
        return Err(syntax_diagnostics(source, errors));
    }
    let mut p = Walker {
        src: source,
        sink: Sink::default(),
    };
    let def = p.root(doc.get_ref());
    Ok((def, p.sink))
}

struct Walker<'s> {
    src: &'s Arc<SourceFile>,
    sink: Sink,
}

impl Walker<'_> {
    fn err(&mut self, code: &'static str, span: Span, msg: impl Into<String>) {
        self.sink
            .push(Diagnostic::new(code, self.src, Some(span), msg));
    }

    fn unknown_key(&mut self, key: &Key<'_>, known: &[&str], context: &str) {
        let name: &str = key.get_ref();
        let hint = suggest(name, known.iter().copied())
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_else(|| format!(" (known keys: {})", known.join(", ")));
        self.err(
            codes::UNKNOWN_FIELD,
            key.span(),
            format!("unknown key `{name}` in {context}{hint}"),
        );
    }

    fn type_err(&mut self, what: &str, expected: &str, v: &Val<'_>) {
        self.err(
            codes::BAD_VALUE,
            v.span(),
            format!("{what} must be {expected}, not {}", describe(v.get_ref())),
        );
    }

    fn string<'v>(&mut self, what: &str, v: &'v Val<'_>) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s),
            _ => {
                self.type_err(what, "a string", v);
                None
            }
        }
    }

    fn template(&mut self, text: &str, v: &Val<'_>) -> Option<Template> {
        let pos = StrPos::new(self.src.text(), v.span(), text);
        match parse_template(text, &pos) {
            Ok(t) => Some(t),
            Err((msg, span)) => {
                self.err(codes::BAD_TEMPLATE, span, msg);
                None
            }
        }
    }

    fn template_value(&mut self, what: &str, v: &Val<'_>) -> Option<Template> {
        let text = self.string(what, v)?;
        self.template(text, v)
    }

    fn integer(&mut self, what: &str, v: &Val<'_>, min: i64, max: i64) -> Option<i64> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.type_err(what, "an integer", v);
            return None;
        };
        match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.err(
                    codes::BAD_VALUE,
                    v.span(),
                    format!("{what} must be between {min} and {max}, not {}", i.as_str()),
                );
                None
            }
        }
    }

    fn duration(&mut self, what: &str, v: &Val<'_>, allow_zero: bool) -> Option<Duration> {
        let parsed = match v.get_ref() {
            DeValue::String(s) => parse_duration(s),
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| format!("`{}` is not a number of seconds", i.as_str()))
                .and_then(|n| parse_duration(&n.to_string())),
            DeValue::Float(f) => parse_duration(f.as_str()),
            _ => {
                self.type_err(what, "a duration such as \"30s\" or \"5m\"", v);
                return None;
            }
        };
        match parsed {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.err(
                    codes::BAD_VALUE,
                    v.span(),
                    format!("{what} must be longer than zero"),
                );
                None
            }
            Ok(d) => Some(d),
            Err(msg) => {
                self.err(codes::BAD_VALUE, v.span(), format!("bad {what}: {msg}"));
                None
            }
        }
    }

    fn table<'v, 'i>(&mut self, what: &str, v: &'v Val<'i>) -> Option<&'v DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.type_err(what, "a table", v);
                None
            }
        }
    }

    fn root(&mut self, doc: &DeTable<'_>) -> PipelineDef {
        let mut def = PipelineDef {
            source: self.src.clone(),
            name: self.src.path().file_stem().map_or_else(
                || "pipeline".to_owned(),
                |s| s.to_string_lossy().into_owned(),
            ),
            description: None,
            max_parallel: None,
            env: Vec::new(),
            cleanup: Vec::new(),
            cleanup_timeout: Duration::from_secs(60),
            stages: Vec::new(),
            stages_span: 0..0,
        };
        let mut saw_stages = false;
        for (key, value) in doc.iter() {
            match key.get_ref().as_ref() {
                "pipeline" => {
                    if let Some(t) = self.table("`[pipeline]`", value) {
                        self.pipeline_table(t, &mut def);
                    }
                }
                "stages" => {
                    saw_stages = true;
                    def.stages_span = key.span();
                    match value.get_ref() {
                        DeValue::Table(t) => self.stages(t, &mut def),
                        DeValue::Array(_) => self.err(
                            codes::BAD_VALUE,
                            value.span(),
                            "`[[stages]]` arrays are not supported: write each stage as a named table, `[stages.NAME]`",
                        ),
                        _ => self.type_err("`stages`", "a table of `[stages.NAME]` tables", value),
                    }
                }
                _ => self.unknown_key(key, ROOT_KEYS, "the top level"),
            }
        }
        if def.stages.is_empty() && self.sink.is_empty() {
            let span = if saw_stages {
                def.stages_span.clone()
            } else {
                0..0
            };
            self.err(
                codes::EMPTY,
                span,
                "the pipeline has no stages; add one, e.g. `[stages.hello]` with `run = \"echo hello\"`",
            );
        }
        def
    }

    fn pipeline_table(&mut self, t: &DeTable<'_>, def: &mut PipelineDef) {
        for (key, value) in t.iter() {
            match key.get_ref().as_ref() {
                "name" => {
                    if let Some(s) = self.string("`name`", value) {
                        if s.trim().is_empty() {
                            self.err(codes::BAD_VALUE, value.span(), "`name` must not be empty");
                        } else {
                            def.name = s.to_owned();
                        }
                    }
                }
                "description" => {
                    def.description = self.string("`description`", value).map(str::to_owned)
                }
                "max_parallel" => {
                    def.max_parallel = self
                        .integer("`max_parallel`", value, 1, 65_536)
                        .map(|n| n as usize)
                }
                "env" => def.env = self.env(value),
                "cleanup" => {
                    // A list of commands, each a shell line or an argument list; or one shell line.
                    def.cleanup = match value.get_ref() {
                        DeValue::Array(items) => items
                            .iter()
                            .filter_map(|i| self.command_line("each `cleanup` command", i))
                            .collect(),
                        _ => self.command_line("`cleanup`", value).into_iter().collect(),
                    }
                }
                "cleanup_timeout" => {
                    if let Some(d) = self.duration("`cleanup_timeout`", value, false) {
                        def.cleanup_timeout = d;
                    }
                }
                _ => self.unknown_key(key, PIPELINE_KEYS, "`[pipeline]`"),
            }
        }
    }

    /// A command given as a shell line (string) or an argument list (array of strings).
    fn command_line(&mut self, what: &str, v: &Val<'_>) -> Option<CommandLine> {
        match v.get_ref() {
            DeValue::String(s) => {
                if s.trim().is_empty() {
                    self.err(
                        codes::BAD_VALUE,
                        v.span(),
                        format!("{what} is an empty command"),
                    );
                    return None;
                }
                self.template(s, v).map(CommandLine::Shell)
            }
            DeValue::Array(items) => self.argv(what, v, items).map(CommandLine::Argv),
            _ => {
                self.type_err(
                    what,
                    "a shell line (string) or an argument list (array of strings)",
                    v,
                );
                None
            }
        }
    }

    fn argv(&mut self, what: &str, v: &Val<'_>, items: &[Val<'_>]) -> Option<Vec<Template>> {
        if items.is_empty() {
            self.err(
                codes::BAD_VALUE,
                v.span(),
                format!("{what} is an empty argument list; give at least the program"),
            );
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            let text = match item.get_ref() {
                DeValue::String(s) => s,
                _ => {
                    self.type_err(&format!("each argument of {what}"), "a string", item);
                    ok = false;
                    continue;
                }
            };
            match self.template(text, item) {
                Some(t) => out.push(t),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn env(&mut self, v: &Val<'_>) -> Vec<EnvVar> {
        let Some(t) = self.table("`env`", v) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(t.len());
        for (key, value) in t.iter() {
            let name: &str = key.get_ref();
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                self.err(
                    codes::BAD_VALUE,
                    key.span(),
                    format!("`{name}` is not a valid environment variable name"),
                );
                continue;
            }
            let text = match value.get_ref() {
                DeValue::String(s) => s.to_string(),
                DeValue::Integer(i) => i.to_string(),
                DeValue::Float(f) => f.as_str().to_owned(),
                DeValue::Boolean(b) => b.to_string(),
                _ => {
                    self.type_err(&format!("environment variable `{name}`"), "a string", value);
                    continue;
                }
            };
            if text.contains('\0') {
                self.err(
                    codes::BAD_VALUE,
                    value.span(),
                    "environment values cannot contain NUL bytes",
                );
                continue;
            }
            if let Some(value) = self.template(&text, value) {
                out.push(EnvVar {
                    name: name.to_owned(),
                    value,
                });
            }
        }
        out
    }

    fn stages(&mut self, t: &DeTable<'_>, def: &mut PipelineDef) {
        def.stages.reserve(t.len());
        for (key, value) in t.iter() {
            let name: &str = key.get_ref();
            if !valid_stage_name(name) {
                self.err(
                    codes::INVALID_NAME,
                    key.span(),
                    format!(
                        "invalid stage name `{name}`: use 1 to 200 letters, digits, `_` or `-`"
                    ),
                );
            }
            let Some(table) = self.table(&format!("stage `{name}`"), value) else {
                continue;
            };
            def.stages.push(self.stage(name, key.span(), table));
        }
    }

    fn stage(&mut self, name: &str, name_span: Span, t: &DeTable<'_>) -> StageDef {
        let mut stage = StageDef {
            name: name.to_owned(),
            name_span: name_span.clone(),
            description: None,
            kind: None,
            needs: Vec::new(),
            action: Action::Command(CommandLine::Argv(Vec::new())),
            env: Vec::new(),
            dir: None,
            timeout: None,
            retries: 0,
            retry_delay: Duration::ZERO,
            condition: None,
            matrix: None,
            matrix_invalid: false,
            cleanup: None,
        };
        let mut action: Option<(Action, &str)> = None;
        for (key, value) in t.iter() {
            let k: &str = key.get_ref();
            match k {
                "run" | "cmd" | "pipeline" => {
                    let parsed = match k {
                        "run" => self.string("`run`", value).and_then(|s| {
                            if s.trim().is_empty() {
                                self.err(
                                    codes::BAD_VALUE,
                                    value.span(),
                                    "`run` is an empty shell line",
                                );
                                None
                            } else {
                                self.template(s, value)
                                    .map(|t| Action::Command(CommandLine::Shell(t)))
                            }
                        }),
                        "cmd" => match value.get_ref() {
                            DeValue::Array(items) => self
                                .argv("`cmd`", value, items)
                                .map(|a| Action::Command(CommandLine::Argv(a))),
                            DeValue::String(_) => {
                                self.err(
                                    codes::BAD_VALUE,
                                    value.span(),
                                    "`cmd` is an argument list such as [\"make\", \"build\"]; for a shell line use `run`",
                                );
                                None
                            }
                            _ => {
                                self.type_err("`cmd`", "an array of strings", value);
                                None
                            }
                        },
                        _ => self.string("`pipeline`", value).and_then(|s| {
                            if s.trim().is_empty() {
                                self.err(
                                    codes::BAD_VALUE,
                                    value.span(),
                                    "`pipeline` is an empty path",
                                );
                                None
                            } else {
                                Some(Action::Pipeline {
                                    path: s.to_owned(),
                                    span: value.span(),
                                })
                            }
                        }),
                    };
                    if let Some((_, first)) = &action {
                        self.err(
                            codes::BAD_ACTION,
                            key.span(),
                            format!("stage `{name}` sets both `{first}` and `{k}`; a stage runs exactly one of `run`, `cmd` or `pipeline`"),
                        );
                    } else {
                        // An invalid action was reported already: no "nothing to run" follows.
                        let a = parsed.unwrap_or(Action::Command(CommandLine::Argv(Vec::new())));
                        action = Some((a, k));
                    }
                }
                "needs" => stage.needs = self.needs(value),
                "env" => stage.env = self.env(value),
                "dir" => stage.dir = self.template_value("`dir`", value),
                "timeout" => stage.timeout = self.duration("`timeout`", value, false),
                "retries" => {
                    stage.retries = self
                        .integer("`retries`", value, 0, MAX_RETRIES)
                        .unwrap_or(0) as u32
                }
                "retry_delay" => {
                    stage.retry_delay = self
                        .duration("`retry_delay`", value, true)
                        .unwrap_or_default()
                }
                "if" => stage.condition = self.condition(value),
                "matrix" => {
                    stage.matrix = self.matrix(value);
                    stage.matrix_invalid = stage.matrix.is_none();
                }
                "cleanup" => stage.cleanup = self.command_line("`cleanup`", value),
                "kind" => {
                    if let Some(s) = self.string("`kind`", value) {
                        match s.parse() {
                            Ok(kind) => stage.kind = Some(kind),
                            Err(msg) => self.err(codes::BAD_VALUE, value.span(), msg),
                        }
                    }
                }
                "description" => {
                    stage.description = self.string("`description`", value).map(str::to_owned)
                }
                _ => self.unknown_key(key, STAGE_KEYS, &format!("stage `{name}`")),
            }
        }
        match action {
            Some((a, _)) => stage.action = a,
            None => {
                self.err(
                    codes::BAD_ACTION,
                    name_span,
                    format!("stage `{name}` has nothing to run: set `run` (a shell line), `cmd` (an argument list) or `pipeline` (a child pipeline file)"),
                );
            }
        }
        if let (Action::Pipeline { .. }, Some(dir)) = (&stage.action, &stage.dir) {
            self.err(
                codes::BAD_VALUE,
                dir.span.clone(),
                "`dir` does not apply to a `pipeline` stage: a child pipeline runs in its own file's directory",
            );
        }
        stage
    }

    fn needs(&mut self, v: &Val<'_>) -> Vec<(String, Span)> {
        let one = |p: &mut Self, item: &Val<'_>| -> Option<(String, Span)> {
            let s = p.string("each entry of `needs`", item)?;
            if s.is_empty() {
                p.err(codes::BAD_VALUE, item.span(), "empty stage name in `needs`");
                return None;
            }
            Some((s.to_owned(), item.span()))
        };
        match v.get_ref() {
            DeValue::Array(items) => items.iter().filter_map(|i| one(self, i)).collect(),
            DeValue::String(_) => one(self, v).into_iter().collect(),
            _ => {
                self.type_err("`needs`", "an array of stage names", v);
                Vec::new()
            }
        }
    }

    fn condition(&mut self, v: &Val<'_>) -> Option<Condition> {
        let text = self.string("`if`", v)?;
        let pos = StrPos::new(self.src.text(), v.span(), text);
        match parse_condition(text, &pos) {
            Ok(expr) => Some(Condition {
                text: text.to_owned(),
                span: v.span(),
                expr,
            }),
            Err((msg, span)) => {
                self.err(
                    codes::BAD_CONDITION,
                    span,
                    format!("invalid condition `{text}`: {msg}"),
                );
                None
            }
        }
    }

    fn matrix(&mut self, v: &Val<'_>) -> Option<Matrix> {
        let DeValue::Table(t) = v.get_ref() else {
            self.err(
                codes::BAD_MATRIX,
                v.span(),
                format!(
                    "`matrix` must be a table of value lists, e.g. `matrix = {{ os = [\"linux\", \"mac\"] }}`, not {}",
                    describe(v.get_ref())
                ),
            );
            return None;
        };
        if t.is_empty() {
            self.err(
                codes::BAD_MATRIX,
                v.span(),
                "`matrix` is empty; give at least one key with a list of values",
            );
            return None;
        }
        let mut axes = Vec::with_capacity(t.len());
        let mut ok = true;
        let mut combinations = 1usize;
        for (key, value) in t.iter() {
            let k: &str = key.get_ref();
            match self.matrix_axis(key, value) {
                Some(values) => {
                    combinations = combinations.saturating_mul(values.len());
                    axes.push((k.to_owned(), values));
                }
                None => ok = false,
            }
        }
        if ok && combinations > MAX_MATRIX {
            self.err(
                codes::BAD_MATRIX,
                v.span(),
                format!("matrix expands to {combinations} stages; the limit is {MAX_MATRIX}"),
            );
            ok = false;
        }
        ok.then_some(Matrix { axes })
    }

    /// One `KEY = [values]` of a matrix; `None` (every problem reported) when it is invalid.
    fn matrix_axis(&mut self, key: &Key<'_>, value: &Val<'_>) -> Option<Vec<Value>> {
        let k: &str = key.get_ref();
        if k.is_empty() || !k.chars().all(is_ident_char) {
            self.err(
                codes::BAD_MATRIX,
                key.span(),
                format!("matrix key `{k}` must use only letters, digits, `_` or `-` (it is referenced as `matrix.{k}`)"),
            );
            return None;
        }
        let DeValue::Array(items) = value.get_ref() else {
            self.err(
                codes::BAD_MATRIX,
                value.span(),
                format!(
                    "matrix key `{k}` must list its values, e.g. `{k} = [\"a\", \"b\"]`, not {}",
                    describe(value.get_ref())
                ),
            );
            return None;
        };
        if items.is_empty() {
            self.err(
                codes::BAD_MATRIX,
                value.span(),
                format!("matrix key `{k}` has no values"),
            );
            return None;
        }
        let mut values: Vec<Value> = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            let v = match matrix_item(item.get_ref()) {
                Ok(v) => v,
                Err(msg) => {
                    self.err(codes::BAD_MATRIX, item.span(), msg);
                    ok = false;
                    continue;
                }
            };
            if values.contains(&v) {
                self.err(
                    codes::BAD_MATRIX,
                    item.span(),
                    format!("duplicate value {v} in matrix key `{k}`"),
                );
                ok = false;
                continue;
            }
            values.push(v);
        }
        ok.then_some(values)
    }
}

/// One value of a matrix key, or why it cannot be one.
fn matrix_item(item: &DeValue<'_>) -> Result<Value, String> {
    match item {
        DeValue::String(s) => {
            if s.is_empty()
                || s.len() > 64
                || s.chars()
                    .any(|c| c.is_control() || matches!(c, '[' | ']' | ','))
            {
                Err("matrix values must be 1 to 64 characters without `[`, `]`, `,` or control characters (they become part of stage names)".to_owned())
            } else {
                Ok(Value::String(s.to_string()))
            }
        }
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map(Value::from)
            .map_err(|_| "matrix integer out of range".to_owned()),
        DeValue::Float(f) => f
            .as_str()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| "matrix numbers must be finite".to_owned()),
        DeValue::Boolean(b) => Ok(Value::Bool(*b)),
        other => Err(format!(
            "matrix values must be strings, numbers or booleans, not {}",
            describe(other)
        )),
    }
}

fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("the string \"{}\"", truncate(s, 40)),
        DeValue::Integer(i) => format!("the integer {}", i.as_str()),
        DeValue::Float(f) => format!("the number {}", f.as_str()),
        DeValue::Boolean(b) => format!("the boolean {b}"),
        other => format!(
            "a{} {}",
            if other.type_str().starts_with(['a', 'e', 'i', 'o', 'u']) {
                "n"
            } else {
                ""
            },
            other.type_str()
        ),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push_str("...");
        t
    }
}

/// `true` for 1 to 200 characters of `A-Z a-z 0-9 _ -`.
pub fn valid_stage_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 200 && name.chars().all(is_ident_char)
}

/// The candidate closest to `word` (edit distance), if reasonably close.
pub(crate) fn suggest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .filter(|c| c.len().abs_diff(word.len()) <= limit)
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// TOML syntax errors -> diagnostics. Duplicate tables get a message that names the stage and its
/// first definition; errors that only follow from a duplicate table are dropped.
fn syntax_diagnostics(src: &Arc<SourceFile>, mut errors: Vec<toml::de::Error>) -> Diagnostics {
    errors.sort_by_key(|e| e.span().map_or(0, |s| s.start));
    let mut sink = Sink::default();
    let mut cascade_until_line = 0usize;
    let mut shown = 0;
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        let (line, _) = src.line_col(span.start);
        let line_text = src.line_text(line).trim();
        let message = e.message().trim().to_owned();
        if message.starts_with("duplicate key") {
            if line <= cascade_until_line && !line_text.starts_with('[') {
                continue;
            }
            if line_text.starts_with('[') {
                let path = header_path(line_text);
                let first = (1..line).find(|&l| {
                    let t = src.line_text(l).trim();
                    t.starts_with('[') && header_path(t) == path
                });
                cascade_until_line = (line + 1..)
                    .take_while(|&l| src.line_start(l) < src.text().len())
                    .find(|&l| src.line_text(l).trim().starts_with('['))
                    .unwrap_or(usize::MAX);
                let at = first
                    .map(|l| format!(" (first defined at line {l})"))
                    .unwrap_or_default();
                let d = if path.len() == 2 && path[0] == "stages" {
                    Diagnostic::new(
                        codes::DUPLICATE,
                        src,
                        Some(span),
                        format!("stage `{}` is defined twice{at}; stage names must be unique (TOML does not allow the same table twice)", path[1]),
                    )
                } else {
                    Diagnostic::new(
                        codes::DUPLICATE,
                        src,
                        Some(span),
                        format!("table `[{}]` is defined twice{at}", path.join(".")),
                    )
                };
                sink.push(d);
            } else {
                let key = src
                    .text()
                    .get(span.clone())
                    .unwrap_or("")
                    .trim_matches(['"', '\'']);
                let first = (1..line)
                    .rev()
                    .take_while(|&l| !src.line_text(l).trim().starts_with('['))
                    .find(|&l| {
                        let t = src.line_text(l).trim_start();
                        t.strip_prefix(key)
                            .is_some_and(|r| r.trim_start().starts_with(['=', '.']))
                    });
                let at = first
                    .map(|l| format!(" (first set at line {l})"))
                    .unwrap_or_default();
                sink.push(Diagnostic::new(
                    codes::DUPLICATE,
                    src,
                    Some(span),
                    format!("key `{key}` is set twice in the same table{at}"),
                ));
            }
        } else {
            sink.push(Diagnostic::new(
                codes::SYNTAX,
                src,
                Some(span),
                format!("invalid TOML: {message}"),
            ));
        }
        shown += 1;
        if shown == 10 {
            break;
        }
    }
    sink.finish(()).expect_err("at least one syntax error")
}

/// `[ stages . "build" ]` -> `["stages", "build"]`.
fn header_path(line: &str) -> Vec<String> {
    let inner = line.trim_start_matches('[');
    let inner = inner.split(']').next().unwrap_or("");
    inner
        .split('.')
        .map(|s| s.trim().trim_matches(['"', '\'']).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PipelineDef, Diagnostics> {
        let (def, sink) = parse_file(&SourceFile::new("t.toml", text))?;
        sink.finish(def)
    }

    #[test]
    fn parses_a_stage() {
        let def = parse(
            r#"
[pipeline]
name = "demo"
[stages.build]
run = "echo {{ matrix.os }}"
needs = ["a", "b"]
timeout = "2s"
retries = 2
if = "matrix.os == 'linux'"
matrix = { os = ["linux", "mac"] }
env = { A = "1", N = 2 }
"#,
        )
        .unwrap();
        assert_eq!(def.name, "demo");
        let s = &def.stages[0];
        assert_eq!(s.needs.len(), 2);
        assert_eq!(s.timeout, Some(Duration::from_secs(2)));
        assert_eq!(s.retries, 2);
        assert_eq!(s.matrix.as_ref().unwrap().combinations(), 2);
        assert_eq!(s.env.len(), 2);
    }

    #[test]
    fn collects_all_problems() {
        let err = parse(
            r#"
[stages.a]
run = "x"
neds = ["b"]
timeout = "10 parsecs"
retries = -1
[stages.b]
cmd = []
"#,
        )
        .unwrap_err();
        let codes: Vec<_> = err.items.iter().map(|d| d.code).collect();
        assert_eq!(codes, ["SF102", "SF103", "SF103", "SF103"], "{err}");
        assert!(err.items[0].message.contains("did you mean `needs`"));
    }

    #[test]
    fn duplicate_table_is_explained() {
        let err = parse("[stages.a]\nrun = \"x\"\n\n[stages.a]\nrun = \"y\"\n").unwrap_err();
        assert_eq!(err.items.len(), 1, "{err}");
        let d = &err.items[0];
        assert_eq!(d.code, "SF002");
        assert!(
            d.message
                .contains("stage `a` is defined twice (first defined at line 1)"),
            "{}",
            d.message
        );
        assert_eq!(d.location().unwrap().line, 4);
    }
}
