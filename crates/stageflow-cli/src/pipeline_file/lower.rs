//! A checked pipeline file -> a `stageflow::Pipeline` -> a validated `Graph`, with the library's
//! validation errors mapped back to file positions.

use std::collections::HashMap;
use std::sync::Arc;

use stageflow::{
    BuildError, ConditionInputs, ErrorCode, Graph, Pipeline, Stage, StageContext, StageError,
    StageOutput, StageSpec,
};

use super::check::LoadedPipeline;
use super::diag::{Diagnostic, Diagnostics, Sink};

/// A stage's condition as the library takes it.
pub(crate) type ConditionFn =
    Box<dyn Fn(&ConditionInputs<'_>) -> Result<bool, StageError> + Send + Sync>;

/// Builds the graph with `make(i)` giving stage `i`'s implementation and condition.
pub(crate) fn build(
    loaded: &LoadedPipeline,
    mut make: impl FnMut(usize) -> (Arc<dyn Stage>, Option<ConditionFn>),
) -> Result<Graph, Diagnostics> {
    let mut pipeline = Pipeline::builder(loaded.name());
    pipeline.reserve(loaded.len());
    let specs = (0..loaded.len()).map(|i| {
        let inst = &loaded.instances[i];
        let (stage, condition) = make(i);
        let deps: Vec<String> = loaded.dependencies(i).map(str::to_owned).collect();
        let mut spec = StageSpec::from_shared(inst.name.clone(), stage).after(deps);
        if let Some(kind) = loaded.stage_def(i).kind {
            spec = spec.kind(kind);
        }
        if let Some(condition) = condition {
            spec = spec.when(condition);
        }
        spec
    });
    pipeline
        .add_all(specs)
        .build()
        .map_err(|e| map_build_error(loaded, e))
}

/// Builds the graph with no-op stages: validation only.
pub(crate) fn build_shape(loaded: &LoadedPipeline) -> Result<Graph, Diagnostics> {
    let noop: Arc<dyn Stage> = Arc::new(|_ctx: StageContext| async { StageOutput::ok() });
    build(loaded, |_| (noop.clone(), None))
}

fn map_build_error(loaded: &LoadedPipeline, error: BuildError) -> Diagnostics {
    let src = loaded.source();
    // Built once (a cycle path can name every stage); the first stage of a name wins.
    let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(loaded.len());
    for (i, name) in loaded.stage_names().enumerate() {
        by_name.entry(name).or_insert(i);
    }
    let index_of = |name: &str| by_name.get(name).copied();
    let mut sink = Sink::default();
    for e in error.errors {
        // The file's `SF0xx` codes are the library's own.
        let code = e.code.as_str();
        if e.code == ErrorCode::Cycle && e.cycle.len() >= 2 {
            // `a -> b` in execution order: `b` needs `a`. Point at each such `needs` entry.
            let mut spans = Vec::new();
            for pair in e.cycle.windows(2) {
                let (before, after) = (&pair[0], &pair[1]);
                let Some(i) = index_of(after) else { continue };
                let stage = loaded.stage_def(i);
                let base = before.split('[').next().unwrap_or(before);
                if let Some((need, span)) =
                    stage.needs.iter().find(|(n, _)| n == before || n == base)
                {
                    spans.push((span.clone(), format!("`{}` needs `{need}`", stage.name)));
                }
            }
            let mut d = Diagnostic::new(
                code,
                src,
                spans.first().map(|(s, _)| s.clone()),
                e.message.clone(),
            );
            for (span, what) in spans.iter().skip(1) {
                let (line, col) = src.line_col(span.start);
                d = d.note(format!("{what} at {}:{line}:{col}", src.path().display()));
            }
            sink.push(d);
            continue;
        }
        let span = e
            .stage
            .as_deref()
            .and_then(index_of)
            .map(|i| loaded.stage_def(i).name_span.clone());
        sink.push(Diagnostic::new(code, src, span, e.message.clone()));
    }
    sink.finish(())
        .expect_err("a build error has at least one problem")
}
