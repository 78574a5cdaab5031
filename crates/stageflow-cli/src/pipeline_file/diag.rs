//! Diagnostics: every problem found in a pipeline file, with `file:line:column` and the offending
//! text underlined.
//!
//! Positions are kept as byte ranges into the file's text while checking and turned into lines and
//! columns only when a diagnostic is shown, so checking a huge file never pays for positions it
//! does not print.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};

/// A byte range into a [`SourceFile`]'s text.
pub type Span = Range<usize>;

/// The text of one pipeline file and where it came from.
#[derive(Debug)]
pub struct SourceFile {
    path: PathBuf,
    text: String,
    line_starts: OnceLock<Vec<usize>>,
}

impl SourceFile {
    /// A file named `path` (as it should be shown) holding `text`.
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Arc<Self> {
        Arc::new(SourceFile {
            path: path.into(),
            text: text.into(),
            line_starts: OnceLock::new(),
        })
    }

    /// The path, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole text.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn line_starts(&self) -> &[usize] {
        self.line_starts.get_or_init(|| {
            let mut starts = vec![0];
            starts.extend(
                self.text
                    .bytes()
                    .enumerate()
                    .filter(|&(_, b)| b == b'\n')
                    .map(|(i, _)| i + 1),
            );
            starts
        })
    }

    /// The 1-based line and column (in characters) of byte `offset`.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(&self.text, offset.min(self.text.len()));
        let starts = self.line_starts();
        let line = match starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let col = self.text[starts[line]..offset].chars().count() + 1;
        (line + 1, col)
    }

    /// The text of 1-based line `line`, without its line break.
    pub fn line_text(&self, line: usize) -> &str {
        let starts = self.line_starts();
        let Some(&start) = starts.get(line.wrapping_sub(1)) else {
            return "";
        };
        let end = starts.get(line).map_or(self.text.len(), |&e| e - 1);
        self.text[start..end.max(start)].trim_end_matches('\r')
    }

    /// The byte offset where 1-based line `line` starts.
    pub(crate) fn line_start(&self, line: usize) -> usize {
        self.line_starts()
            .get(line.wrapping_sub(1))
            .copied()
            .unwrap_or(self.text.len())
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Stable codes of pipeline-file problems. `SF0xx` codes are the library's own
/// ([`stageflow::ErrorCode`]); `SF1xx` are about the file.
pub mod codes {
    /// The pipeline has no stages.
    pub const EMPTY: &str = "SF001";
    /// Two stages share a name (in TOML: the same `[stages.NAME]` table twice).
    pub const DUPLICATE: &str = "SF002";
    /// A stage name is empty or uses characters other than `A-Z a-z 0-9 _ -`.
    pub const INVALID_NAME: &str = "SF003";
    /// `needs` names a stage that does not exist.
    pub const MISSING_DEPENDENCY: &str = "SF004";
    /// A stage needs itself.
    pub const SELF_DEPENDENCY: &str = "SF005";
    /// The dependencies form a cycle.
    pub const CYCLE: &str = "SF006";
    /// The file is not valid TOML (or not UTF-8).
    pub const SYNTAX: &str = "SF101";
    /// A key the format does not know.
    pub const UNKNOWN_FIELD: &str = "SF102";
    /// A value of the wrong type or out of range (a bad timeout, negative retries, ...).
    pub const BAD_VALUE: &str = "SF103";
    /// A stage has nothing to run, or more than one of `run`, `cmd`, `pipeline`.
    pub const BAD_ACTION: &str = "SF104";
    /// An `if` condition does not parse.
    pub const BAD_CONDITION: &str = "SF105";
    /// A template or condition reads the output of a stage that is not a dependency.
    pub const NOT_A_DEPENDENCY: &str = "SF106";
    /// A `matrix` is malformed.
    pub const BAD_MATRIX: &str = "SF107";
    /// A `{{ ... }}` template is malformed or refers to something that does not exist.
    pub const BAD_TEMPLATE: &str = "SF108";
    /// A child pipeline file is missing, invalid, includes itself or nests too deep.
    pub const CHILD_PIPELINE: &str = "SF109";
    /// A stage can never run (its condition is always false, or every dependency never runs).
    pub const UNREACHABLE: &str = "SF110";
    /// The file cannot be read.
    pub const IO: &str = "SF111";
}

/// One problem in a pipeline file.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    /// Stable code, see [`codes`].
    pub code: &'static str,
    /// What is wrong, with suggestions.
    pub message: String,
    /// The file the problem is in.
    pub file: Option<Arc<SourceFile>>,
    /// The offending text, when there is one.
    pub span: Option<Span>,
    /// Extra lines shown under the snippet.
    pub notes: Vec<String>,
}

/// Where a diagnostic points: file, 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file, as given on the command line (or resolved for child pipelines).
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

impl Diagnostic {
    /// A diagnostic at `span` of `file`.
    pub fn new(
        code: &'static str,
        file: &Arc<SourceFile>,
        span: Option<Span>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            code,
            message: message.into(),
            file: Some(file.clone()),
            span,
            notes: Vec::new(),
        }
    }

    /// Adds a note line.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// `file:line:column` of the start of the offending text.
    pub fn location(&self) -> Option<Location> {
        let file = self.file.as_ref()?;
        let (line, column) = match &self.span {
            Some(span) => file.line_col(span.start),
            None => (1, 1),
        };
        Some(Location {
            path: file.path().to_path_buf(),
            line,
            column,
        })
    }

    /// The offending text itself (at most 200 bytes of it).
    pub fn offending_text(&self) -> Option<&str> {
        let file = self.file.as_ref()?;
        let span = self.span.as_ref()?;
        let text = file.text();
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let end = floor_char_boundary(text, span.end.min(text.len()).min(start + 200));
        Some(&text[start..end.max(start)])
    }

    /// Human-readable form: `file:line:col: error[CODE]: message`, then the line with the offending
    /// text underlined, then the notes.
    pub fn render(&self) -> String {
        let mut out = format!("{self}\n");
        if let (Some(file), Some(span)) = (&self.file, &self.span) {
            let (line, col) = file.line_col(span.start);
            let text = file.line_text(line);
            let width = line.to_string().len();
            // Long lines (generated files) are cut around the offending text.
            let chars: Vec<char> = text.chars().collect();
            let first = col.saturating_sub(1);
            let window_start = first.saturating_sub(60);
            let window_end = (first + 100).min(chars.len());
            let shown: String = chars[window_start.min(chars.len())..window_end]
                .iter()
                .collect();
            let prefix = if window_start > 0 { "..." } else { "" };
            let suffix = if window_end < chars.len() { "..." } else { "" };
            let line_end_offset = file.line_start(line) + text.len();
            let span_chars = if span.end > span.start {
                let end = floor_char_boundary(file.text(), span.end.min(line_end_offset));
                let start = floor_char_boundary(file.text(), span.start.min(end));
                file.text()[start..end].chars().count().max(1)
            } else {
                1
            };
            let underline_at = prefix.len() + first - window_start.min(first);
            let underline_len = span_chars.min(window_end.saturating_sub(first).max(1));
            out.push_str(&format!("{:width$} |\n", ""));
            out.push_str(&format!("{line:width$} | {prefix}{shown}{suffix}\n"));
            out.push_str(&format!(
                "{:width$} | {}{}\n",
                "",
                " ".repeat(underline_at),
                "^".repeat(underline_len)
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("  = note: {note}\n"));
        }
        out
    }

    /// Machine-readable form: `{code, message, file, line, column, text, notes}`.
    pub fn to_json(&self) -> Value {
        let loc = self.location();
        json!({
            "code": self.code,
            "message": self.message,
            "file": loc.as_ref().map(|l| l.path.display().to_string()),
            "line": loc.as_ref().map(|l| l.line),
            "column": loc.as_ref().map(|l| l.column),
            "text": self.offending_text(),
            "notes": self.notes,
        })
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location() {
            Some(loc) => write!(f, "{loc}: error[{}]: {}", self.code, self.message),
            None => write!(f, "error[{}]: {}", self.code, self.message),
        }
    }
}

/// Every problem found in a pipeline file (and the child pipelines it uses). Never empty.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    /// The problems, in file order.
    pub items: Vec<Diagnostic>,
    /// Problems found beyond [`Diagnostics::MAX`], not kept.
    pub omitted: usize,
}

impl Diagnostics {
    /// The most problems kept; a generated file with a million mistakes still checks fast.
    pub const MAX: usize = 100;

    /// `true` if any problem has `code`.
    pub fn has(&self, code: &str) -> bool {
        self.items.iter().any(|d| d.code == code)
    }

    /// All diagnostics rendered, with a closing count line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for d in &self.items {
            out.push_str(&d.render());
            out.push('\n');
        }
        if self.omitted > 0 {
            out.push_str(&format!(
                "... and {} more problems not shown\n",
                self.omitted
            ));
        }
        let n = self.items.len() + self.omitted;
        out.push_str(&format!(
            "{n} problem{} found",
            if n == 1 { "" } else { "s" }
        ));
        out
    }

    /// `{"valid": false, "errors": [...]}`.
    pub fn to_json(&self) -> Value {
        json!({
            "valid": false,
            "errors": self.items.iter().map(Diagnostic::to_json).collect::<Vec<_>>(),
            "omitted": self.omitted,
        })
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

impl std::error::Error for Diagnostics {}

/// Collects diagnostics up to [`Diagnostics::MAX`].
#[derive(Debug, Default)]
pub(crate) struct Sink {
    items: Vec<Diagnostic>,
    omitted: usize,
}

impl Sink {
    pub(crate) fn push(&mut self, d: Diagnostic) {
        if self.items.len() < Diagnostics::MAX {
            self.items.push(d);
        } else {
            self.omitted += 1;
        }
    }

    pub(crate) fn extend(&mut self, other: Diagnostics) {
        for d in other.items {
            self.push(d);
        }
        self.omitted += other.omitted;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty() && self.omitted == 0
    }

    /// `Err` with the collected problems sorted by file position, or `Ok(value)` when none.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, Diagnostics> {
        if self.is_empty() {
            return Ok(value);
        }
        // By file (in order of first appearance), then by position.
        let mut files: Vec<*const SourceFile> = Vec::new();
        for d in &self.items {
            let f = d.file.as_ref().map_or(std::ptr::null(), Arc::as_ptr);
            if !files.contains(&f) {
                files.push(f);
            }
        }
        let mut items = self.items;
        items.sort_by_key(|d| {
            let f = d.file.as_ref().map_or(std::ptr::null(), Arc::as_ptr);
            let rank = files.iter().position(|&x| x == f).unwrap_or(0);
            (rank, d.span.as_ref().map_or(0, |s| s.start))
        });
        Err(Diagnostics {
            items,
            omitted: self.omitted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let f = SourceFile::new("p.toml", "a = 1\nbé = 2\n\nc");
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(6), (2, 1));
        assert_eq!(f.line_col(9), (2, 3)); // after "bé" (é is two bytes)
        assert_eq!(f.line_col(14), (3, 1));
        assert_eq!(f.line_col(15), (4, 1));
        assert_eq!(f.line_col(999), (4, 2));
        assert_eq!(f.line_text(2), "bé = 2");
        assert_eq!(f.line_text(9), "");
    }

    #[test]
    fn render_underlines_offending_text() {
        let f = SourceFile::new("p.toml", "[stages.a]\nneds = []\n");
        let d = Diagnostic::new(
            codes::UNKNOWN_FIELD,
            &f,
            Some(11..15),
            "unknown field `neds`",
        );
        let r = d.render();
        assert!(
            r.starts_with("p.toml:2:1: error[SF102]: unknown field `neds`"),
            "{r}"
        );
        assert!(r.contains("2 | neds = []"), "{r}");
        assert!(r.contains("  | ^^^^\n"), "{r}");
        assert_eq!(d.offending_text(), Some("neds"));
    }
}
