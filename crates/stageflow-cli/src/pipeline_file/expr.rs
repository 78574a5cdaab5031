//! `if` conditions: a tiny expression language over upstream outputs and matrix values.
//!
//! ```text
//! expr    := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | compare
//! compare := atom ( ( "==" | "!=" ) atom )?
//! atom    := "(" expr ")" | 'string' | "string" | number | true | false | null | reference
//! ```
//!
//! References are the template ones (`stages.check.changed`, `matrix.os`). A reference to a key the
//! dependency did not output is `null`. Truthiness: `null`, `false`, `0`, `""`, `[]` and `{}` are
//! false, everything else true. `==` compares JSON values (numbers by value, no other coercion).
//! Nesting is limited to 32 levels, so no input can exhaust the stack.

use serde_json::Value;

use super::diag::Span;
use super::template::{is_ident_char, parse_path, RefPath, Reference, StrPos};

/// Deepest nesting of parentheses and `!` accepted.
pub const MAX_DEPTH: usize = 32;

/// A parsed condition.
#[derive(Clone, Debug)]
pub enum Expr {
    /// A literal value.
    Lit(Value),
    /// A reference.
    Ref(Reference),
    /// `!e`.
    Not(Box<Expr>),
    /// `a == b` (`equal`) or `a != b`.
    Compare {
        /// Left side.
        left: Box<Expr>,
        /// Right side.
        right: Box<Expr>,
        /// `true` for `==`.
        equal: bool,
    },
    /// `a && b && ...`.
    And(Vec<Expr>),
    /// `a || b || ...`.
    Or(Vec<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Not,
    And,
    Or,
    Eq,
    Ne,
    Lit(Value),
    Path(RefPath, String),
}

/// Parses condition `s`; `pos` maps offsets in `s` to the file.
pub(crate) fn parse_condition(s: &str, pos: &StrPos) -> Result<Expr, (String, Span)> {
    let toks = lex(s).map_err(|(m, r)| (m, pos.span(r)))?;
    if toks.is_empty() {
        return Err((
            "empty condition; write e.g. `stages.check.changed == true`".to_owned(),
            pos.value_span.clone(),
        ));
    }
    let mut p = Parser {
        toks,
        at: 0,
        pos,
        len: s.len(),
    };
    let e = p.or(0)?;
    if p.at < p.toks.len() {
        let r = p.toks[p.at].1.clone();
        return Err((
            format!("unexpected `{}` in condition", &s[r.clone()]),
            pos.span(r),
        ));
    }
    Ok(e)
}

type Located<T> = (T, std::ops::Range<usize>);

/// The operator or bracket `rest` starts with, and its length (`!=` before `!`).
fn operator(rest: &[u8]) -> Option<(Tok, usize)> {
    Some(match rest {
        [b'&', b'&', ..] => (Tok::And, 2),
        [b'|', b'|', ..] => (Tok::Or, 2),
        [b'=', b'=', ..] => (Tok::Eq, 2),
        [b'!', b'=', ..] => (Tok::Ne, 2),
        [b'!', ..] => (Tok::Not, 1),
        [b'(', ..] => (Tok::LParen, 1),
        [b')', ..] => (Tok::RParen, 1),
        _ => return None,
    })
}

fn lex(s: &str) -> Result<Vec<Located<Tok>>, Located<String>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if let Some((tok, len)) = operator(&b[i..]) {
            i += len;
            out.push((tok, start..i));
            continue;
        }
        let tok = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'\'' | b'"' => {
                let Some(len) = s[i + 1..].find(c as char) else {
                    return Err(("unclosed string in condition".to_owned(), i..s.len()));
                };
                let text = &s[i + 1..i + 1 + len];
                i += len + 2;
                Tok::Lit(Value::String(text.to_owned()))
            }
            b'0'..=b'9' | b'-' | b'+' | b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b"+-.".contains(&b[i])) {
                    i += 1;
                }
                let text = &s[start..i];
                let number = text
                    .parse::<i64>()
                    .ok()
                    .map(Value::from)
                    .or_else(|| {
                        text.parse::<f64>()
                            .ok()
                            .and_then(serde_json::Number::from_f64)
                            .map(Value::Number)
                    })
                    .ok_or_else(|| (format!("`{text}` is not a number"), start..i))?;
                Tok::Lit(number)
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() {
                    let ch = b[i] as char;
                    if is_ident_char(ch) || ch == '.' {
                        i += 1;
                    } else if ch == '[' {
                        match s[i..].find(']') {
                            Some(n) => i += n + 1,
                            None => {
                                return Err(("unclosed `[` in condition".to_owned(), i..s.len()))
                            }
                        }
                    } else {
                        break;
                    }
                }
                let word = &s[start..i];
                match word {
                    "true" => Tok::Lit(Value::Bool(true)),
                    "false" => Tok::Lit(Value::Bool(false)),
                    "null" => Tok::Lit(Value::Null),
                    "and" | "or" | "not" => {
                        return Err((
                            format!("use `&&`, `||` and `!` instead of `{word}`"),
                            start..i,
                        ))
                    }
                    _ => {
                        let path = parse_path(word)
                            .map_err(|(m, r)| (m, start + r.start..start + r.end))?;
                        Tok::Path(path, word.to_owned())
                    }
                }
            }
            _ => {
                let ch = s[i..].chars().next().unwrap_or('?');
                let hint = match ch {
                    '=' => "; compare with `==`",
                    '<' | '>' => "; only `==` and `!=` comparisons exist",
                    '&' | '|' => "; write `&&` or `||`",
                    _ => "",
                };
                return Err((
                    format!("unexpected `{ch}` in condition{hint}"),
                    i..i + ch.len_utf8(),
                ));
            }
        };
        out.push((tok, start..i));
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<(Tok, std::ops::Range<usize>)>,
    at: usize,
    pos: &'a StrPos,
    len: usize,
}

type PResult = Result<Expr, (String, Span)>;

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(t, _)| t)
    }

    fn err_here(&self, msg: &str) -> (String, Span) {
        let r = self
            .toks
            .get(self.at)
            .map_or(self.len..self.len + 1, |(_, r)| r.clone());
        (msg.to_owned(), self.pos.span(r))
    }

    fn deeper(&self, depth: usize) -> Result<usize, (String, Span)> {
        if depth >= MAX_DEPTH {
            Err(self.err_here(&format!("condition nests deeper than {MAX_DEPTH} levels")))
        } else {
            Ok(depth + 1)
        }
    }

    fn or(&mut self, depth: usize) -> PResult {
        self.list(depth, &Tok::Or, Self::and, Expr::Or)
    }

    fn and(&mut self, depth: usize) -> PResult {
        self.list(depth, &Tok::And, Self::unary, Expr::And)
    }

    /// `item ( sep item )*`: the item alone, or `join` of all of them.
    fn list(
        &mut self,
        depth: usize,
        sep: &Tok,
        mut item: impl FnMut(&mut Self, usize) -> PResult,
        join: fn(Vec<Expr>) -> Expr,
    ) -> PResult {
        let mut items = vec![item(self, depth)?];
        while self.peek() == Some(sep) {
            self.at += 1;
            items.push(item(self, depth)?);
        }
        Ok(if items.len() == 1 {
            items.pop().expect("one item")
        } else {
            join(items)
        })
    }

    fn unary(&mut self, depth: usize) -> PResult {
        if self.peek() == Some(&Tok::Not) {
            let depth = self.deeper(depth)?;
            self.at += 1;
            return Ok(Expr::Not(Box::new(self.unary(depth)?)));
        }
        let left = self.atom(depth)?;
        let equal = match self.peek() {
            Some(Tok::Eq) => true,
            Some(Tok::Ne) => false,
            _ => return Ok(left),
        };
        self.at += 1;
        let right = self.atom(depth)?;
        if matches!(self.peek(), Some(Tok::Eq | Tok::Ne)) {
            return Err(self.err_here("chained comparison; use `&&` between comparisons"));
        }
        Ok(Expr::Compare {
            left: Box::new(left),
            right: Box::new(right),
            equal,
        })
    }

    fn atom(&mut self, depth: usize) -> PResult {
        let Some((tok, range)) = self.toks.get(self.at).cloned() else {
            return Err(self.err_here("condition ends too early: expected a value or reference"));
        };
        match tok {
            Tok::LParen => {
                let depth = self.deeper(depth)?;
                self.at += 1;
                let e = self.or(depth)?;
                if self.peek() != Some(&Tok::RParen) {
                    return Err(self.err_here("expected `)`"));
                }
                self.at += 1;
                Ok(e)
            }
            Tok::Lit(v) => {
                self.at += 1;
                Ok(Expr::Lit(v))
            }
            Tok::Path(path, text) => {
                self.at += 1;
                Ok(Expr::Ref(Reference {
                    path,
                    text,
                    span: self.pos.span(range),
                }))
            }
            _ => Err(self.err_here("expected a value or reference")),
        }
    }
}

/// `null`, `false`, `0`, `""`, `[]` and `{}` are false; everything else is true.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        _ => a == b,
    }
}

impl Expr {
    /// Evaluates with `resolve` giving reference values (`null` when absent).
    pub fn eval(&self, resolve: &mut dyn FnMut(&Reference) -> Value) -> Value {
        match self {
            Expr::Lit(v) => v.clone(),
            Expr::Ref(r) => resolve(r),
            Expr::Not(e) => Value::Bool(!truthy(&e.eval(resolve))),
            Expr::Compare { left, right, equal } => {
                let l = left.eval(resolve);
                let r = right.eval(resolve);
                Value::Bool(values_equal(&l, &r) == *equal)
            }
            Expr::And(items) => Value::Bool(items.iter().all(|e| truthy(&e.eval(resolve)))),
            Expr::Or(items) => Value::Bool(items.iter().any(|e| truthy(&e.eval(resolve)))),
        }
    }

    /// Evaluates to a boolean.
    pub fn holds(&self, resolve: &mut dyn FnMut(&Reference) -> Value) -> bool {
        truthy(&self.eval(resolve))
    }

    /// Every reference in the expression.
    pub fn references(&self) -> Vec<&Reference> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            match e {
                Expr::Lit(_) => {}
                Expr::Ref(r) => out.push(r),
                Expr::Not(e) => stack.push(e),
                Expr::Compare { left, right, .. } => {
                    stack.push(right);
                    stack.push(left);
                }
                Expr::And(items) | Expr::Or(items) => stack.extend(items.iter().rev()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Expr, (String, Span)> {
        parse_condition(
            s,
            &StrPos {
                value_span: 0..s.len() + 2,
                content_start: Some(1),
            },
        )
    }

    fn eval(s: &str, vars: &[(&str, Value)]) -> bool {
        parse(s).unwrap().holds(&mut |r| {
            vars.iter()
                .find(|(k, _)| *k == r.text)
                .map_or(Value::Null, |(_, v)| v.clone())
        })
    }

    #[test]
    fn evaluates() {
        let vars = [
            ("stages.check.changed", Value::Bool(true)),
            ("stages.detect.lang", Value::from("rust")),
            ("stages.count.n", Value::from(3)),
            ("matrix.os", Value::from("linux")),
        ];
        assert!(eval("stages.check.changed == true", &vars));
        assert!(eval("stages.check.changed", &vars));
        assert!(eval("stages.detect.lang == 'rust'", &vars));
        assert!(eval("stages.detect.lang != \"go\"", &vars));
        assert!(eval("stages.count.n == 3.0", &vars));
        assert!(!eval("!stages.check.changed", &vars));
        assert!(!eval("stages.missing.key", &vars));
        assert!(eval("stages.missing.key == null", &vars));
        assert!(eval(
            "(matrix.os == 'linux' || matrix.os == 'mac') && !false",
            &vars
        ));
        assert!(!eval("matrix.os == 'linux' && stages.count.n == 4", &vars));
    }

    #[test]
    fn rejects_with_positions() {
        let cases = [
            ("stages.a.b = 1", "compare with `==`"),
            ("stages.a.b ==", "ends too early"),
            ("(stages.a.b", "expected `)`"),
            ("stages.a.b and true", "instead of `and`"),
            ("'open", "unclosed string"),
            ("a == 1 == 2", "unknown reference root"),
            ("stages.a.b == 1 == 2", "chained comparison"),
            ("1x == 2", "not a number"),
            ("", "empty condition"),
            ("stages.a.b < 3", "only `==` and `!=`"),
        ];
        for (src, want) in cases {
            let (msg, _) = parse(src).unwrap_err();
            assert!(msg.contains(want), "{src}: {msg}");
        }
        let (_, span) = parse("stages.a.b = 1").unwrap_err();
        assert_eq!(span, 12..13);
    }

    #[test]
    fn depth_is_limited() {
        let deep = format!("{}true{}", "(".repeat(1000), ")".repeat(1000));
        assert!(parse(&deep).unwrap_err().0.contains("deeper"));
        let nots = format!("{}true", "!".repeat(1000));
        assert!(parse(&nots).is_err());
        let long = vec!["true"; 10_000].join(" && ");
        assert!(parse(&long).is_ok());
    }
}
