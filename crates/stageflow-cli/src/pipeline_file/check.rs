//! Semantic checks of a parsed pipeline file, in time linear in its size:
//!
//! - `needs` resolve to stages (with "did you mean"), no stage needs itself;
//! - matrix stages expand into instances `name[v1,v2]`;
//! - every `{{ stages.X... }}` template and `if` reference names a stage the stage *needs* (its
//!   output is only available then), and no reference names a whole matrix stage;
//! - `matrix.KEY` references name a key of the stage's own matrix;
//! - **unreachable stages**: a stage whose condition is always false (it reads no stage output and
//!   is false for every matrix instance), and a stage all of whose dependencies can never run (the
//!   engine skips a stage whose dependencies were all skipped), can never run: that is an error;
//! - child pipelines exist, are valid, do not include themselves and nest at most 32 deep;
//! - the library's own validation (`Pipeline::build`: cycles as a path, ...), mapped back to file
//!   positions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::diag::{codes, Diagnostic, Diagnostics, Sink, SourceFile};
use super::expr::Expr;
use super::format::{instance_name, matrix_value, Action, PipelineDef, StageDef};
use super::lower;
use super::parse::{parse_file, suggest};
use super::template::{RefPath, Reference, Template};

/// Deepest nesting of child pipelines.
pub const MAX_DEPTH: usize = 32;

/// One runnable stage: a stage of the file, or one instance of a matrix stage.
#[derive(Debug)]
pub(crate) struct Instance {
    /// Index of the stage definition in [`PipelineDef::stages`].
    pub(crate) def: u32,
    /// Stage name (`name` or `name[v1,v2]`).
    pub(crate) name: String,
    /// Matrix values of this instance.
    pub(crate) matrix: Option<Arc<Vec<(String, Value)>>>,
}

impl Instance {
    /// This instance's matrix values (`None` for a stage without a matrix).
    pub(crate) fn matrix(&self) -> Option<&[(String, Value)]> {
        self.matrix.as_deref().map(Vec::as_slice)
    }
}

/// A pipeline file that passed every check, with its stages expanded and its child pipelines
/// loaded. Build and run it with the `run` command, or export it with `graph`.
#[derive(Debug)]
pub struct LoadedPipeline {
    pub(crate) def: PipelineDef,
    pub(crate) base_dir: PathBuf,
    pub(crate) instances: Vec<Instance>,
    /// Dependencies per instance, compressed rows: `dep_edges[dep_offsets[i]..dep_offsets[i+1]]`.
    pub(crate) dep_offsets: Vec<u32>,
    pub(crate) dep_edges: Vec<u32>,
    /// Loaded child pipelines, by stage definition index.
    pub(crate) children: HashMap<u32, Arc<LoadedPipeline>>,
}

impl LoadedPipeline {
    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// The file.
    pub fn source(&self) -> &Arc<SourceFile> {
        &self.def.source
    }

    /// Number of runnable stages (matrix stages count once per instance).
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Always `false`: a pipeline without stages does not check.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Names of the runnable stages, in file order.
    pub fn stage_names(&self) -> impl Iterator<Item = &str> {
        self.instances.iter().map(|i| i.name.as_str())
    }

    /// Names of the stages that stage number `i` runs after.
    pub fn dependencies(&self, i: usize) -> impl Iterator<Item = &str> {
        self.deps(i)
            .iter()
            .map(|&d| self.instances[d as usize].name.as_str())
    }

    pub(crate) fn deps(&self, i: usize) -> &[u32] {
        &self.dep_edges[self.dep_offsets[i] as usize..self.dep_offsets[i + 1] as usize]
    }

    pub(crate) fn stage_def(&self, i: usize) -> &StageDef {
        &self.def.stages[self.instances[i].def as usize]
    }
}

/// Loads and checks the pipeline file at `path`, and the child pipelines it uses.
pub fn load(path: &Path) -> Result<Arc<LoadedPipeline>, Diagnostics> {
    let mut loader = Loader::default();
    loader.load_path(path, path, None)
}

/// Checks `text` as if it were the file at `path` (child pipelines are still read from disk,
/// relative to `path`'s directory).
pub fn load_str(path: &Path, text: &str) -> Result<Arc<LoadedPipeline>, Diagnostics> {
    let mut loader = Loader::default();
    let source = SourceFile::new(path, text);
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    loader.check_source(source, base, Vec::new())
}

/// Loads files, caching by canonical path so a child used twice is read once.
#[derive(Default)]
struct Loader {
    cache: HashMap<PathBuf, Arc<LoadedPipeline>>,
}

impl Loader {
    /// `shown` is the path as it should appear in messages; `via` is the chain of files including
    /// this one, for loop detection.
    fn load_path(
        &mut self,
        path: &Path,
        shown: &Path,
        via: Option<Vec<PathBuf>>,
    ) -> Result<Arc<LoadedPipeline>, Diagnostics> {
        let io_error = |msg: String| {
            let file = SourceFile::new(shown, "");
            Diagnostics {
                items: vec![Diagnostic::new(codes::IO, &file, None, msg)],
                omitted: 0,
            }
        };
        let bytes = std::fs::read(path)
            .map_err(|e| io_error(format!("cannot read `{}`: {e}", shown.display())))?;
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let file =
                    SourceFile::new(shown, String::from_utf8_lossy(e.as_bytes()).into_owned());
                return Err(Diagnostics {
                    items: vec![Diagnostic::new(
                        codes::SYNTAX,
                        &file,
                        Some(at..at + 1),
                        "the file is not valid UTF-8 (TOML files must be UTF-8)",
                    )],
                    omitted: 0,
                });
            }
        };
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let mut chain = via.unwrap_or_default();
        chain.push(canonical.clone());
        let base = canonical
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let loaded = self.check_source(SourceFile::new(shown, text), base, chain)?;
        self.cache.insert(canonical, loaded.clone());
        Ok(loaded)
    }

    fn check_source(
        &mut self,
        source: Arc<SourceFile>,
        base_dir: PathBuf,
        chain: Vec<PathBuf>,
    ) -> Result<Arc<LoadedPipeline>, Diagnostics> {
        let (def, mut sink) = parse_file(&source)?;
        let mut loaded = expand_and_resolve(def, base_dir, &mut sink);
        check_references(&loaded, &mut sink);
        check_unreachable(&loaded, &mut sink);
        self.load_children(&mut loaded, &chain, &mut sink);
        if !loaded.instances.is_empty() {
            if let Err(errors) = lower::build_shape(&loaded) {
                sink.extend(errors);
            }
        }
        sink.finish(Arc::new(loaded))
    }

    fn load_children(&mut self, loaded: &mut LoadedPipeline, chain: &[PathBuf], sink: &mut Sink) {
        let src = loaded.def.source.clone();
        for (i, stage) in loaded.def.stages.iter().enumerate() {
            let Action::Pipeline { path, span } = &stage.action else {
                continue;
            };
            let full = loaded.base_dir.join(path);
            let canonical = match std::fs::canonicalize(&full) {
                Ok(c) => c,
                Err(e) => {
                    sink.push(Diagnostic::new(
                        codes::CHILD_PIPELINE,
                        &src,
                        Some(span.clone()),
                        format!(
                            "child pipeline `{path}` of stage `{}` cannot be read ({}): {e}",
                            stage.name,
                            full.display()
                        ),
                    ));
                    continue;
                }
            };
            if let Some(at) = chain.iter().position(|p| *p == canonical) {
                let names: Vec<String> = chain[at..]
                    .iter()
                    .chain(std::iter::once(&canonical))
                    .map(|p| {
                        p.file_name().map_or_else(
                            || p.display().to_string(),
                            |n| n.to_string_lossy().into_owned(),
                        )
                    })
                    .collect();
                sink.push(Diagnostic::new(
                    codes::CHILD_PIPELINE,
                    &src,
                    Some(span.clone()),
                    format!(
                        "child pipeline loop: {} (a pipeline cannot run itself)",
                        names.join(" -> ")
                    ),
                ));
                continue;
            }
            if chain.len() >= MAX_DEPTH {
                sink.push(Diagnostic::new(
                    codes::CHILD_PIPELINE,
                    &src,
                    Some(span.clone()),
                    format!("child pipelines nest deeper than {MAX_DEPTH} levels"),
                ));
                continue;
            }
            if let Some(child) = self.cache.get(&canonical) {
                loaded.children.insert(i as u32, child.clone());
                continue;
            }
            let shown = relative_display(&src, path);
            match self.load_path(&canonical, &shown, Some(chain.to_vec())) {
                Ok(child) => {
                    loaded.children.insert(i as u32, child);
                }
                Err(errors) => {
                    sink.push(Diagnostic::new(
                        codes::CHILD_PIPELINE,
                        &src,
                        Some(span.clone()),
                        format!(
                            "child pipeline `{path}` of stage `{}` is invalid (see below)",
                            stage.name
                        ),
                    ));
                    sink.extend(errors);
                }
            }
        }
    }
}

/// The child path as shown in messages: next to the parent's shown path.
fn relative_display(parent: &SourceFile, child: &str) -> PathBuf {
    match parent.path().parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(child),
        _ => PathBuf::from(child),
    }
}

/// Expands matrices and resolves `needs` into instance indices.
fn expand_and_resolve(def: PipelineDef, base_dir: PathBuf, sink: &mut Sink) -> LoadedPipeline {
    let src = def.source.clone();
    let by_name: HashMap<&str, u32> = def
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i as u32))
        .collect();
    // Instances, and each definition's range of them.
    let mut instances = Vec::with_capacity(def.stages.len());
    let mut first = Vec::with_capacity(def.stages.len() + 1);
    for (d, stage) in def.stages.iter().enumerate() {
        first.push(instances.len() as u32);
        match &stage.matrix {
            None => instances.push(Instance {
                def: d as u32,
                name: stage.name.clone(),
                matrix: None,
            }),
            Some(m) => {
                for c in 0..m.combinations() {
                    let combo = m.combination(c);
                    instances.push(Instance {
                        def: d as u32,
                        name: instance_name(&stage.name, &combo),
                        matrix: Some(Arc::new(combo)),
                    });
                }
            }
        }
    }
    first.push(instances.len() as u32);

    let mut dep_offsets = Vec::with_capacity(instances.len() + 1);
    dep_offsets.push(0u32);
    let mut dep_edges: Vec<u32> = Vec::with_capacity(instances.len());
    let mut suggestions_left = 5;
    let mut resolved: Vec<u32> = Vec::new();
    for (d, stage) in def.stages.iter().enumerate() {
        resolved.clear();
        for (need, span) in &stage.needs {
            let (base, instance) = match need.find('[') {
                Some(at) => (&need[..at], Some(need.as_str())),
                None => (need.as_str(), None),
            };
            let Some(&target) = by_name.get(base) else {
                let hint = if suggestions_left > 0 {
                    suggestions_left -= 1;
                    suggest(base, def.stages.iter().map(|s| s.name.as_str()))
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                sink.push(Diagnostic::new(
                    codes::MISSING_DEPENDENCY,
                    &src,
                    Some(span.clone()),
                    format!(
                        "stage `{}` needs `{need}`, which does not exist{hint}",
                        stage.name
                    ),
                ));
                continue;
            };
            if target as usize == d {
                sink.push(Diagnostic::new(
                    codes::SELF_DEPENDENCY,
                    &src,
                    Some(span.clone()),
                    format!("stage `{}` needs itself", stage.name),
                ));
                continue;
            }
            let range = first[target as usize]..first[target as usize + 1];
            match instance {
                None => resolved.extend(range),
                Some(exact) => match range.clone().find(|&i| instances[i as usize].name == exact) {
                    Some(i) => resolved.push(i),
                    None => {
                        let examples: Vec<&str> = range
                            .take(3)
                            .map(|i| instances[i as usize].name.as_str())
                            .collect();
                        let msg = if def.stages[target as usize].matrix.is_some() {
                            format!("`{exact}` is not an instance of matrix stage `{base}` (instances: {}{})", examples.join(", "), if first[target as usize + 1] - first[target as usize] > 3 { ", ..." } else { "" })
                        } else {
                            format!("stage `{base}` has no matrix; write `{base}`")
                        };
                        sink.push(Diagnostic::new(
                            codes::MISSING_DEPENDENCY,
                            &src,
                            Some(span.clone()),
                            msg,
                        ));
                    }
                },
            }
        }
        resolved.sort_unstable();
        resolved.dedup();
        for _ in first[d]..first[d + 1] {
            dep_edges.extend_from_slice(&resolved);
            dep_offsets.push(dep_edges.len() as u32);
        }
    }
    drop(by_name);
    LoadedPipeline {
        def,
        base_dir,
        instances,
        dep_offsets,
        dep_edges,
        children: HashMap::new(),
    }
}

/// Where a reference may point.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    /// Outputs of dependencies and the stage's matrix values.
    Stage,
    /// Only the stage's matrix values (cleanup commands run after the run).
    MatrixOnly,
    /// Nothing (pipeline-level settings).
    Nothing,
}

fn check_references(loaded: &LoadedPipeline, sink: &mut Sink) {
    let def = &loaded.def;
    let src = &def.source;
    let by_name: HashMap<&str, &StageDef> =
        def.stages.iter().map(|s| (s.name.as_str(), s)).collect();
    let matrix_instances: std::collections::HashSet<&str> = loaded
        .instances
        .iter()
        .filter(|i| i.matrix.is_some())
        .map(|i| i.name.as_str())
        .collect();
    let budget = std::cell::Cell::new(5usize);
    let check = |sink: &mut Sink,
                 stage: Option<&StageDef>,
                 r: &Reference,
                 scope: Scope,
                 what: &str| {
        match &r.path {
            RefPath::Matrix(key) => {
                if scope == Scope::Nothing {
                    sink.push(Diagnostic::new(
                        codes::BAD_TEMPLATE,
                        src,
                        Some(r.span.clone()),
                        format!("`{}` cannot be used in {what}", r.text),
                    ));
                    return;
                }
                let stage = stage.expect("stage scopes have a stage");
                match &stage.matrix {
                    None if stage.matrix_invalid => {}
                    None => sink.push(Diagnostic::new(
                        codes::BAD_TEMPLATE,
                        src,
                        Some(r.span.clone()),
                        format!("`{}`: stage `{}` has no matrix", r.text, stage.name),
                    )),
                    Some(m) if !m.axes.iter().any(|(k, _)| k == key) => {
                        let keys: Vec<&str> = m.axes.iter().map(|(k, _)| k.as_str()).collect();
                        let hint = suggest(key, keys.iter().copied())
                            .map(|s| format!("; did you mean `matrix.{s}`?"))
                            .unwrap_or_default();
                        sink.push(Diagnostic::new(
                            codes::BAD_TEMPLATE,
                            src,
                            Some(r.span.clone()),
                            format!("`{}`: the matrix of stage `{}` has no key `{key}` (keys: {}){hint}", r.text, stage.name, keys.join(", ")),
                        ));
                    }
                    Some(_) => {}
                }
            }
            RefPath::Stage { stage: target, .. } => {
                if scope != Scope::Stage {
                    sink.push(Diagnostic::new(
                        codes::NOT_A_DEPENDENCY,
                        src,
                        Some(r.span.clone()),
                        format!("`{}`: {what} cannot read stage outputs", r.text),
                    ));
                    return;
                }
                let stage = stage.expect("stage scope has a stage");
                let base = target.split('[').next().unwrap_or("");
                let Some(target_def) = by_name.get(base) else {
                    let hint = suggest(base, stage.needs.iter().map(|(n, _)| n.as_str()))
                        .or_else(|| {
                            // Searching every name is linear: do it for the first few only.
                            let left = budget.get();
                            budget.set(left.saturating_sub(1));
                            (left > 0)
                                .then(|| suggest(base, def.stages.iter().map(|s| s.name.as_str())))
                                .flatten()
                        })
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    sink.push(Diagnostic::new(
                        codes::NOT_A_DEPENDENCY,
                        src,
                        Some(r.span.clone()),
                        format!(
                            "`{}` refers to stage `{target}`, which does not exist{hint}",
                            r.text
                        ),
                    ));
                    return;
                };
                if let (Some(matrix), false) = (&target_def.matrix, target.contains('[')) {
                    sink.push(Diagnostic::new(
                        codes::NOT_A_DEPENDENCY,
                        src,
                        Some(r.span.clone()),
                        format!("`{}`: `{target}` is a matrix stage; name one instance (e.g. `stages.{}`), or read every instance's output from the $STAGEFLOW_INPUTS file", r.text, instance_name(target, &matrix.combination(0))),
                    ));
                    return;
                }
                if target.contains('[') && !matrix_instances.contains(target.as_str()) {
                    let msg = if target_def.matrix.is_some() {
                        format!(
                            "`{}`: `{target}` is not an instance of matrix stage `{base}`",
                            r.text
                        )
                    } else {
                        format!(
                            "`{}`: stage `{base}` has no matrix; write `stages.{base}`",
                            r.text
                        )
                    };
                    sink.push(Diagnostic::new(
                        codes::NOT_A_DEPENDENCY,
                        src,
                        Some(r.span.clone()),
                        msg,
                    ));
                    return;
                }
                let needed = stage.needs.iter().any(|(n, _)| n == target || n == base);
                if !needed {
                    sink.push(Diagnostic::new(
                        codes::NOT_A_DEPENDENCY,
                        src,
                        Some(r.span.clone()),
                        format!("`{}` reads the output of `{target}`, which is not a dependency of stage `{}`; add it to `needs`: needs = [{}]", r.text, stage.name,
                            stage.needs.iter().map(|(n, _)| format!("\"{n}\"")).chain(std::iter::once(format!("\"{target}\""))).collect::<Vec<_>>().join(", ")),
                    ));
                }
            }
        }
    };
    let templates = |t: &Template| t.references().cloned().collect::<Vec<_>>();
    for e in &def.env {
        for r in e.value.references() {
            check(sink, None, r, Scope::Nothing, "pipeline-level `env`");
        }
    }
    for c in &def.cleanup {
        for t in c.templates() {
            for r in t.references() {
                check(sink, None, r, Scope::Nothing, "pipeline-level `cleanup`");
            }
        }
    }
    for stage in &def.stages {
        let mut refs: Vec<Reference> = Vec::new();
        if let Action::Command(c) = &stage.action {
            for t in c.templates() {
                refs.extend(templates(t));
            }
        }
        for e in &stage.env {
            refs.extend(templates(&e.value));
        }
        if let Some(d) = &stage.dir {
            refs.extend(templates(d));
        }
        if let Some(c) = &stage.condition {
            refs.extend(c.expr.references().into_iter().cloned());
        }
        for r in &refs {
            check(sink, Some(stage), r, Scope::Stage, "");
        }
        if let Some(c) = &stage.cleanup {
            for t in c.templates() {
                for r in t.references() {
                    check(
                        sink,
                        Some(stage),
                        r,
                        Scope::MatrixOnly,
                        "a `cleanup` command (it runs after the run)",
                    );
                }
            }
        }
    }
}

/// Whether `expr` reads no stage output (so it can be decided at check time).
fn is_static(expr: &Expr) -> bool {
    expr.references()
        .iter()
        .all(|r| matches!(r.path, RefPath::Matrix(_)))
}

/// Evaluates a static condition for one instance.
fn static_holds(expr: &Expr, matrix: Option<&[(String, Value)]>) -> bool {
    expr.holds(&mut |r| match &r.path {
        RefPath::Matrix(k) => matrix_value(matrix, k).cloned().unwrap_or(Value::Null),
        RefPath::Stage { .. } => Value::Null,
    })
}

fn check_unreachable(loaded: &LoadedPipeline, sink: &mut Sink) {
    let def = &loaded.def;
    let n = loaded.instances.len();
    let mut dead = vec![false; n];
    let mut any = false;
    for (i, inst) in loaded.instances.iter().enumerate() {
        let stage = &def.stages[inst.def as usize];
        if let Some(c) = &stage.condition {
            if is_static(&c.expr) && !static_holds(&c.expr, inst.matrix()) {
                dead[i] = true;
                any = true;
            }
        }
    }
    if !any {
        return;
    }
    // Skips propagate: a stage whose dependencies never run never runs. Count per stage.
    let mut dependents: Vec<Vec<u32>> = vec![Vec::new(); n];
    for i in 0..n {
        for &d in loaded.deps(i) {
            dependents[d as usize].push(i as u32);
        }
    }
    let by_condition = dead.clone();
    let mut dead_deps = vec![0u32; n];
    let mut work: Vec<u32> = (0..n as u32).filter(|&i| dead[i as usize]).collect();
    while let Some(i) = work.pop() {
        for &j in &dependents[i as usize] {
            let j = j as usize;
            dead_deps[j] += 1;
            if !dead[j] && dead_deps[j] as usize == loaded.deps(j).len() {
                dead[j] = true;
                work.push(j as u32);
            }
        }
    }
    let src = &def.source;
    let mut at = 0;
    for (d, stage) in def.stages.iter().enumerate() {
        let start = at;
        while at < n && loaded.instances[at].def as usize == d {
            at += 1;
        }
        if start == at || !(start..at).all(|i| dead[i]) {
            continue;
        }
        if (start..at).all(|i| by_condition[i]) {
            let c = stage.condition.as_ref().expect("dead by condition");
            sink.push(Diagnostic::new(
                codes::UNREACHABLE,
                src,
                Some(c.span.clone()),
                format!("stage `{}` can never run: its condition `{}` is always false (it reads no stage output)", stage.name, c.text),
            ));
        } else {
            let never: Vec<&str> = stage
                .needs
                .iter()
                .map(|(n, _)| n.as_str())
                .take(5)
                .collect();
            sink.push(Diagnostic::new(
                codes::UNREACHABLE,
                src,
                Some(stage.name_span.clone()),
                format!("stage `{}` can never run: none of the stages it needs ({}) can run, and a stage whose dependencies were all skipped is skipped", stage.name, never.join(", ")),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Arc<LoadedPipeline>, Diagnostics> {
        load_str(Path::new("t.toml"), text)
    }

    #[test]
    fn expands_matrix_and_resolves_needs() {
        let p = check(
            r#"
[stages.split]
run = "true"
[stages.work]
needs = ["split"]
matrix = { shard = ["a", "b"], n = [1, 2] }
run = "echo {{ matrix.shard }}"
[stages.merge]
needs = ["work"]
run = "true"
[stages.one]
needs = ["work[b,2]"]
run = "echo {{ stages.work[b,2].stdout }}"
"#,
        )
        .unwrap();
        let names: Vec<_> = p.stage_names().collect();
        assert_eq!(
            names,
            [
                "split",
                "work[a,1]",
                "work[a,2]",
                "work[b,1]",
                "work[b,2]",
                "merge",
                "one"
            ]
        );
        assert_eq!(p.dependencies(5).count(), 4);
        assert_eq!(p.dependencies(6).collect::<Vec<_>>(), ["work[b,2]"]);
    }

    #[test]
    fn reports_reference_problems() {
        let err = check(
            r#"
[stages.a]
run = "echo 1"
[stages.b]
run = "echo {{ stages.a.x }} {{ matrix.k }}"
if = "stages.c.ok"
[stages.c]
run = "true"
needs = ["a"]
"#,
        )
        .unwrap_err();
        let msgs: Vec<_> = err
            .items
            .iter()
            .map(|d| (d.code, d.message.as_str()))
            .collect();
        assert_eq!(msgs.len(), 3, "{err}");
        assert!(msgs[0].1.contains("not a dependency of stage `b`"), "{err}");
        assert_eq!(msgs[1].0, "SF108");
        assert!(msgs[2].1.contains("`c`"));
    }

    #[test]
    fn finds_unreachable_stages() {
        let err = check(
            r#"
[stages.a]
run = "true"
if = "1 == 2"
[stages.b]
run = "true"
needs = ["a"]
[stages.m]
run = "true"
matrix = { os = ["linux", "mac"] }
if = "matrix.os == 'linux'"
"#,
        )
        .unwrap_err();
        assert_eq!(err.items.len(), 2, "{err}");
        assert!(err.items.iter().all(|d| d.code == "SF110"));
    }

    #[test]
    fn cycles_come_from_the_library_with_positions() {
        let err = check(
            "[stages.a]\nrun = \"x\"\nneeds = [\"c\"]\n[stages.b]\nrun = \"x\"\nneeds = [\"a\"]\n[stages.c]\nrun = \"x\"\nneeds = [\"b\"]\n",
        )
        .unwrap_err();
        let d = &err.items[0];
        assert_eq!(d.code, "SF006", "{err}");
        assert!(d.message.contains("->"), "{}", d.message);
        assert!(d.location().is_some());
    }
}
