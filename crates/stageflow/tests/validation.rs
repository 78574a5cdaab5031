//! Build-time validation: every error code (SF001..SF008), its message, and how errors combine.

mod common;

use std::sync::Arc;

use common::{build_err, codes, noop};
use stageflow::{BuildError, ErrorCode, Pipeline, Stage, StageKind, StageSpec};

#[test]
fn error_codes_have_stable_strings() {
    let all = [
        (ErrorCode::EmptyPipeline, "SF001"),
        (ErrorCode::DuplicateStage, "SF002"),
        (ErrorCode::InvalidName, "SF003"),
        (ErrorCode::MissingDependency, "SF004"),
        (ErrorCode::SelfDependency, "SF005"),
        (ErrorCode::Cycle, "SF006"),
        (ErrorCode::NoCurrentStage, "SF007"),
        (ErrorCode::ComposeConflict, "SF008"),
    ];
    for (code, s) in all {
        assert_eq!(code.as_str(), s);
        assert_eq!(code.to_string(), s);
    }
}

#[test]
fn sf001_empty_pipeline() {
    let e = build_err(Pipeline::builder("nothing"));
    assert_eq!(codes(&e), [ErrorCode::EmptyPipeline]);
    assert_eq!(e.pipeline, "nothing");
    let first = e.first();
    assert_eq!(first.stage, None);
    assert!(first.message.contains("`nothing` has no stages"), "{first}");
    assert!(first.to_string().starts_with("[SF001] "), "{first}");
    assert_eq!(
        e.to_string(),
        format!("pipeline `nothing` is invalid (1 problem)\n  {first}")
    );
}

#[test]
fn sf002_duplicate_names_both_positions() {
    let e = build_err(
        Pipeline::builder("dup")
            .stage("a", noop)
            .stage("b", noop)
            .stage("a", noop),
    );
    assert_eq!(codes(&e), [ErrorCode::DuplicateStage]);
    let err = e.first();
    assert_eq!(err.stage.as_deref(), Some("a"));
    assert!(
        err.message.contains("stage `a` is defined twice")
            && err.message.contains("stage #1 and stage #3"),
        "{}",
        err.message
    );
    assert!(err.to_string().starts_with("[SF002]"));
}

#[test]
fn sf003_blank_names() {
    let e = build_err(
        Pipeline::builder("blank")
            .stage("ok", noop)
            .stage("", noop)
            .stage(" \t ", noop),
    );
    assert_eq!(codes(&e), [ErrorCode::InvalidName, ErrorCode::InvalidName]);
    assert!(
        e.errors[0]
            .message
            .contains("stage #2 has an empty or blank name"),
        "{}",
        e.errors[0].message
    );
    assert!(
        e.errors[1]
            .message
            .contains("stage #3 has an empty or blank name"),
        "{}",
        e.errors[1].message
    );
    assert!(e.errors[0].to_string().starts_with("[SF003]"));
}

#[test]
fn sf004_missing_dependency_suggests_nearest_name() {
    let e = build_err(
        Pipeline::builder("missing")
            .stage("fetch_users", noop)
            .stage("fetch_user", noop)
            .stage("fetch_orders", noop)
            .stage("report", noop)
            .after(["fetch_usr"]),
    );
    assert_eq!(codes(&e), [ErrorCode::MissingDependency]);
    let err = e.first();
    assert_eq!(err.stage.as_deref(), Some("report"));
    assert!(
        err.message
            .contains("stage `report` depends on `fetch_usr`, which does not exist"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("did you mean `fetch_user`?"),
        "{}",
        err.message
    );
    assert!(err.to_string().starts_with("[SF004]"));
}

#[test]
fn sf004_no_suggestion_when_nothing_is_close() {
    let e = build_err(
        Pipeline::builder("missing")
            .stage("extract", noop)
            .stage("load", noop)
            .after("zzzzzzzzzzzzzzzz"),
    );
    assert_eq!(codes(&e), [ErrorCode::MissingDependency]);
    assert!(
        !e.first().message.contains("did you mean"),
        "{}",
        e.first().message
    );
}

#[test]
fn sf005_self_dependency() {
    let e = build_err(
        Pipeline::builder("selfish")
            .stage("a", noop)
            .stage("b", noop)
            .after(["a", "b"]),
    );
    assert_eq!(codes(&e), [ErrorCode::SelfDependency]);
    assert_eq!(e.first().stage.as_deref(), Some("b"));
    assert!(
        e.first().message.contains("stage `b` depends on itself"),
        "{}",
        e.first().message
    );
    assert!(e.first().to_string().starts_with("[SF005]"));
}

/// The rotations of a cycle `[x0, .., xk, x0]`, each printed `x -> .. -> x`.
fn rotations(cycle: &[&str]) -> Vec<String> {
    let ring = &cycle[..cycle.len() - 1];
    (0..ring.len())
        .map(|r| {
            let mut v: Vec<&str> = ring[r..].iter().chain(&ring[..r]).copied().collect();
            v.push(v[0]);
            v.join(" -> ")
        })
        .collect()
}

#[test]
fn sf006_cycle_printed_as_path() {
    // Execution order of the cycle: a -> b -> c -> a (b after a, c after b, a after c).
    let e = build_err(
        Pipeline::builder("loop")
            .stage("start", noop)
            .stage("a", noop)
            .after(["start", "c"])
            .stage("b", noop)
            .after("a")
            .stage("c", noop)
            .after("b")
            .stage("end", noop)
            .after("c"),
    );
    assert_eq!(codes(&e), [ErrorCode::Cycle]);
    let err = e.first();
    assert_eq!(err.cycle.first(), err.cycle.last());
    assert_eq!(err.cycle.len(), 4, "{:?}", err.cycle);
    let printed = err.cycle.join(" -> ");
    assert!(
        rotations(&["a", "b", "c", "a"]).contains(&printed),
        "cycle {printed} is not a rotation of a -> b -> c -> a"
    );
    assert!(
        err.message
            .contains(&format!("dependency cycle: {printed}")),
        "{}",
        err.message
    );
    assert_eq!(err.stage.as_deref(), Some(err.cycle[0].as_str()));
    assert!(err.to_string().starts_with("[SF006]"));
}

#[test]
fn sf006_two_stage_cycle() {
    let e = build_err(
        Pipeline::builder("pair")
            .stage("x", noop)
            .after("y")
            .stage("y", noop)
            .after("x"),
    );
    assert_eq!(codes(&e), [ErrorCode::Cycle]);
    let printed = e.first().cycle.join(" -> ");
    assert!(
        printed == "x -> y -> x" || printed == "y -> x -> y",
        "{printed}"
    );
}

#[test]
fn sf007_modifier_before_any_stage() {
    let e = build_err(
        Pipeline::builder("early")
            .after("x")
            .kind(StageKind::Guard)
            .when(|_| true)
            .stage("x", noop),
    );
    assert_eq!(
        codes(&e),
        [
            ErrorCode::NoCurrentStage,
            ErrorCode::NoCurrentStage,
            ErrorCode::NoCurrentStage
        ]
    );
    for (err, what) in e.errors.iter().zip(["after", "kind", "when"]) {
        assert!(
            err.message
                .contains(&format!("`{what}` was called before any stage was added")),
            "{}",
            err.message
        );
        assert!(err.to_string().starts_with("[SF007]"));
    }
}

#[test]
fn sf008_compose_conflict() {
    let left = Pipeline::builder("left").stage("a", noop).stage("b", noop);
    let right = Pipeline::builder("right")
        .stage("b", noop) // a different stage object named like left's `b`
        .stage("c", noop);
    let e = build_err(left.compose(right));
    assert_eq!(codes(&e), [ErrorCode::ComposeConflict]);
    assert_eq!(e.pipeline, "left+right");
    let err = e.first();
    assert_eq!(err.stage.as_deref(), Some("b"));
    assert!(
        err.message
            .contains("stage `b` is defined differently in `left` and `right`"),
        "{}",
        err.message
    );
    assert!(err.to_string().starts_with("[SF008]"));
}

#[test]
fn sf008_same_stage_object_with_other_dependencies_conflicts() {
    let shared: Arc<dyn Stage> = Arc::new(noop);
    let left = Pipeline::builder("l")
        .stage("root", noop)
        .add(StageSpec::from_shared("s", shared.clone()));
    let right = Pipeline::builder("r").add(StageSpec::from_shared("s", shared).after("root"));
    let e = build_err(left.compose(right));
    assert_eq!(codes(&e), [ErrorCode::ComposeConflict]);
}

#[test]
fn compose_merges_identical_definitions() {
    let source: Arc<dyn Stage> = Arc::new(noop);
    let shared: Arc<dyn Stage> = Arc::new(noop);
    let left = Pipeline::builder("left")
        .add(StageSpec::from_shared("source", source.clone()))
        .add(
            StageSpec::from_shared("shared", shared.clone())
                .after("source")
                .kind(StageKind::Enrich),
        )
        .stage("only_left", noop)
        .after("shared");
    let right = Pipeline::builder("right")
        .add(StageSpec::from_shared("source", source))
        // Same dependency set, written differently: still identical.
        .add(
            StageSpec::from_shared("shared", shared)
                .after(["source", "source"])
                .kind(StageKind::Enrich),
        )
        .stage("only_right", noop)
        .after("shared");
    let composed = left.compose(right);
    assert_eq!(composed.name(), "left+right");
    let graph = composed.build().expect("identical definitions merge");
    assert_eq!(
        graph.stage_names().collect::<Vec<_>>(),
        ["source", "shared", "only_left", "only_right"]
    );
    assert_eq!(graph.kind_of("shared"), Some(StageKind::Enrich));
    assert_eq!(
        graph.dependents_of("shared").unwrap(),
        ["only_left", "only_right"]
    );
}

#[test]
fn multiple_errors_reported_together_in_definition_order() {
    let e = build_err(
        Pipeline::builder("messy")
            .stage("a", noop)
            .stage("", noop)
            .stage("b", noop)
            .after(["a", "nope"])
            .stage("c", noop)
            .after("c")
            .stage("a", noop),
    );
    // Names are checked first (blank, duplicate), then dependencies in definition order.
    assert_eq!(
        codes(&e),
        [
            ErrorCode::InvalidName,
            ErrorCode::DuplicateStage,
            ErrorCode::MissingDependency,
            ErrorCode::SelfDependency,
        ]
    );
    assert!(e.has(ErrorCode::MissingDependency));
    assert!(!e.has(ErrorCode::Cycle));
    let text = e.to_string();
    assert!(
        text.starts_with("pipeline `messy` is invalid (4 problems)"),
        "{text}"
    );
    for code in ["SF003", "SF002", "SF004", "SF005"] {
        assert!(text.contains(&format!("[{code}]")), "{text}");
    }
}

#[test]
fn builder_errors_and_graph_errors_combine() {
    let e = build_err(
        Pipeline::builder("both")
            .after("x")
            .stage("a", noop)
            .after("missing"),
    );
    assert_eq!(
        codes(&e),
        [ErrorCode::NoCurrentStage, ErrorCode::MissingDependency]
    );
}

#[test]
fn error_count_is_capped() {
    let p = Pipeline::builder("many").add_all(
        (0..200).map(|i| StageSpec::new(format!("stage_{i}"), noop).after(format!("ghost_{i}"))),
    );
    let e = build_err(p);
    assert_eq!(e.errors.len(), BuildError::MAX_ERRORS);
    assert!(e
        .errors
        .iter()
        .all(|err| err.code == ErrorCode::MissingDependency));
}

#[test]
fn error_count_is_capped_for_builder_errors_too() {
    // `BuildError::MAX_ERRORS` is "the most problems one build reports", whatever their source.
    let mut p = Pipeline::builder("misplaced");
    for _ in 0..(BuildError::MAX_ERRORS + 10) {
        p = p.after("x");
    }
    let e = build_err(p.stage("x", noop));
    assert!(e
        .errors
        .iter()
        .all(|err| err.code == ErrorCode::NoCurrentStage));
    assert!(
        e.errors.len() <= BuildError::MAX_ERRORS,
        "{} problems reported, more than MAX_ERRORS = {}",
        e.errors.len(),
        BuildError::MAX_ERRORS
    );
}

/// Pipeline `name` with `n` independent no-op stages `s0` .. `s{n-1}`.
fn independent_noops(name: &str, n: usize) -> Pipeline {
    Pipeline::builder(name).add_all((0..n).map(|i| StageSpec::new(format!("s{i}"), noop)))
}

#[test]
fn error_count_is_capped_for_compose_conflicts_too() {
    let n = BuildError::MAX_ERRORS + 10;
    let left = independent_noops("l", n);
    let right = independent_noops("r", n);
    let e = build_err(left.compose(right));
    assert!(e
        .errors
        .iter()
        .all(|err| err.code == ErrorCode::ComposeConflict));
    assert!(
        e.errors.len() <= BuildError::MAX_ERRORS,
        "{} problems reported, more than MAX_ERRORS = {}",
        e.errors.len(),
        BuildError::MAX_ERRORS
    );
}

#[test]
fn valid_graph_introspection() {
    let graph = Pipeline::builder("diamond")
        .stage("top", noop)
        .stage("left", noop)
        .after("top")
        .stage("right", noop)
        .after("top")
        .stage("bottom", noop)
        .after(["right", "left", "left"])
        .build()
        .unwrap();
    assert_eq!(graph.name(), "diamond");
    assert_eq!(graph.len(), 4);
    assert!(!graph.is_empty());
    assert!(graph.contains("left") && !graph.contains("middle"));
    // Duplicated dependencies are merged; lists come in definition order.
    assert_eq!(graph.dependencies_of("bottom").unwrap(), ["left", "right"]);
    assert_eq!(graph.dependents_of("top").unwrap(), ["left", "right"]);
    assert_eq!(graph.dependencies_of("nope"), None);
    assert_eq!(graph.roots().collect::<Vec<_>>(), ["top"]);
    assert_eq!(graph.sinks().collect::<Vec<_>>(), ["bottom"]);
    assert_eq!(
        graph.topological_order(),
        ["top", "left", "right", "bottom"]
    );
}
