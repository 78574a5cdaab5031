//! `stageflow graph`: the expanded DAG as Graphviz `dot` or Mermaid text.
//!
//! Conditional stages are drawn dashed (dot) or as hexagons (Mermaid); stages that run a child
//! pipeline as 3-D boxes (dot) or subroutines (Mermaid). Output is linear in the graph's size.

use std::fmt::Write;

use super::check::LoadedPipeline;
use super::format::Action;

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    /// Graphviz: `dot -Tsvg`.
    Dot,
    /// Mermaid flowchart (GitHub renders it in Markdown).
    Mermaid,
}

/// `s` in double quotes, each character replaced by `escape` where it gives a replacement.
fn quoted(s: &str, escape: fn(char) -> Option<&'static str>) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match escape(c) {
            Some(replacement) => out.push_str(replacement),
            None => out.push(c),
        }
    }
    out.push('"');
    out
}

fn dot_quote(s: &str) -> String {
    quoted(s, |c| match c {
        '"' => Some("\\\""),
        '\\' => Some("\\\\"),
        '\n' => Some("\\n"),
        _ => None,
    })
}

fn mermaid_label(s: &str) -> String {
    quoted(s, |c| match c {
        '"' => Some("#quot;"),
        '<' => Some("#lt;"),
        '>' => Some("#gt;"),
        '\n' => Some(" "),
        _ => None,
    })
}

/// Renders `p` in `format`.
pub fn render(p: &LoadedPipeline, format: GraphFormat) -> String {
    match format {
        GraphFormat::Dot => to_dot(p),
        GraphFormat::Mermaid => to_mermaid(p),
    }
}

/// Graphviz `dot` text.
pub fn to_dot(p: &LoadedPipeline) -> String {
    let mut out = String::with_capacity(p.len() * 32 + 64);
    let _ = writeln!(out, "digraph {} {{", dot_quote(p.name()));
    out.push_str("  rankdir=LR;\n  node [shape=box, fontname=\"Helvetica\"];\n");
    for (i, inst) in p.instances.iter().enumerate() {
        let stage = p.stage_def(i);
        let mut attrs = Vec::new();
        if let Some(c) = &stage.condition {
            attrs.push(format!(
                "style=dashed, tooltip={}",
                dot_quote(&format!("if {}", c.text))
            ));
        }
        if let Action::Pipeline { path, .. } = &stage.action {
            attrs.push(format!(
                "shape=box3d, tooltip={}",
                dot_quote(&format!("pipeline {path}"))
            ));
        }
        if attrs.is_empty() {
            let _ = writeln!(out, "  {};", dot_quote(&inst.name));
        } else {
            let _ = writeln!(out, "  {} [{}];", dot_quote(&inst.name), attrs.join(", "));
        }
    }
    for (i, inst) in p.instances.iter().enumerate() {
        for dep in p.dependencies(i) {
            let _ = writeln!(out, "  {} -> {};", dot_quote(dep), dot_quote(&inst.name));
        }
    }
    out.push_str("}\n");
    out
}

/// Mermaid flowchart text. Node ids are `s0`, `s1`, ... with the stage names as labels.
pub fn to_mermaid(p: &LoadedPipeline) -> String {
    let mut out = String::with_capacity(p.len() * 32 + 64);
    out.push_str("flowchart LR\n");
    for (i, inst) in p.instances.iter().enumerate() {
        let stage = p.stage_def(i);
        let label = mermaid_label(&inst.name);
        let _ = match (&stage.action, stage.condition.is_some()) {
            (Action::Pipeline { .. }, _) => writeln!(out, "  s{i}[[{label}]]"),
            (_, true) => writeln!(out, "  s{i}{{{{{label}}}}}"),
            _ => writeln!(out, "  s{i}[{label}]"),
        };
    }
    for i in 0..p.len() {
        for &d in p.deps(i) {
            let _ = writeln!(out, "  s{d} --> s{i}");
        }
    }
    out
}
