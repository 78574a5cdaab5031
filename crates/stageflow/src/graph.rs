//! The built, validated, immutable DAG.
//!
//! Layout is chosen for depth and size: names live in one string arena indexed by a hash table of
//! stage indices (no per-name allocation), and both dependency and dependent lists are stored in
//! compressed sparse rows (two flat `u32` vectors each). A 1,000,000-stage chain therefore takes
//! a few dozen bytes a stage plus the stage objects, and every traversal is a loop over flat
//! arrays: nothing here recurses, so nothing overflows the stack however deep the graph is.

use std::sync::Arc;

use crate::error::{BuildError, ErrorCode, ValidationError};
use crate::intercept::{self, GuardRetry, Intercepted, Registration, Scope};
use crate::kind::StageKind;
use crate::spec::{Condition, StageSpec};
use crate::stage::SharedStage;
use crate::topology::{find_cycle, kahn, Csr, NameTable, Topology};

/// What the executor needs per stage.
pub(crate) struct Node {
    pub(crate) stage: SharedStage,
    pub(crate) condition: Option<Condition>,
    /// The resolved interceptor chain, when the stage has one (then `stage` is this, wrapped).
    pub(crate) intercepted: Option<Arc<Intercepted>>,
}

/// A guard with a [`GuardRetry`] policy, resolved at build time.
pub(crate) struct GuardPlan {
    pub(crate) guard: u32,
    pub(crate) producer: u32,
    pub(crate) policy: GuardRetry,
}

/// The shared, immutable body of a [`Graph`]: its shape, and what runs at each stage.
pub(crate) struct GraphInner {
    pub(crate) topo: Arc<Topology>,
    pub(crate) nodes: Vec<Node>,
    /// Guards with a retry policy (usually none).
    pub(crate) guards: Vec<GuardPlan>,
}

impl std::ops::Deref for GraphInner {
    type Target = Topology;

    /// The graph's shape: names, kinds, dependencies.
    fn deref(&self) -> &Topology {
        &self.topo
    }
}

/// A validated pipeline, ready to run.
///
/// Cheap to clone (an `Arc`), `Send + Sync`, and immutable: every run keeps its own state, so one
/// graph can run many times, concurrently, with different inputs. Run it with
/// [`Graph::run`] or [`Graph::run_with`].
#[derive(Clone)]
pub struct Graph {
    pub(crate) inner: Arc<GraphInner>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("name", &self.inner.pipeline_name())
            .field("stages", &self.inner.len())
            .finish()
    }
}

impl Graph {
    /// The pipeline's name.
    pub fn name(&self) -> &str {
        self.inner.pipeline_name()
    }

    /// Number of stages.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Always `false`: an empty pipeline does not build.
    pub fn is_empty(&self) -> bool {
        self.inner.nodes.is_empty()
    }

    /// Stage names in definition order.
    pub fn stage_names(&self) -> impl Iterator<Item = &str> {
        (0..self.inner.len() as u32).map(|i| self.inner.name(i))
    }

    /// `true` if a stage is called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.index_of(name).is_some()
    }

    /// The kind of stage `name`.
    pub fn kind_of(&self, name: &str) -> Option<StageKind> {
        self.inner.index_of(name).map(|i| self.inner.kind(i))
    }

    /// Names of the stages `name` depends on (definition order).
    pub fn dependencies_of(&self, name: &str) -> Option<Vec<&str>> {
        let idx = self.inner.index_of(name)?;
        Some(
            self.inner
                .deps(idx)
                .iter()
                .map(|&d| self.inner.name(d))
                .collect(),
        )
    }

    /// Names of the stages that depend on `name` (definition order).
    pub fn dependents_of(&self, name: &str) -> Option<Vec<&str>> {
        let idx = self.inner.index_of(name)?;
        Some(
            self.inner
                .dependents(idx)
                .iter()
                .map(|&d| self.inner.name(d))
                .collect(),
        )
    }

    /// Stages with no dependencies.
    pub fn roots(&self) -> impl Iterator<Item = &str> {
        (0..self.inner.len() as u32)
            .filter(|&i| self.inner.deps(i).is_empty())
            .map(|i| self.inner.name(i))
    }

    /// Stages no other stage depends on: the ones kept by
    /// [`Retention::Sinks`](crate::Retention::Sinks).
    pub fn sinks(&self) -> impl Iterator<Item = &str> {
        (0..self.inner.len() as u32)
            .filter(|&i| self.inner.dependents(i).is_empty())
            .map(|i| self.inner.name(i))
    }

    /// Stage names in a topological order (every stage after all its dependencies; ties in
    /// definition order).
    pub fn topological_order(&self) -> Vec<&str> {
        let order = self.inner.topological_indices();
        order.iter().map(|&i| self.inner.name(i)).collect()
    }

    /// Names of the interceptors around stage `name`, outermost first (empty when none), or
    /// `None` if there is no such stage. See [`intercept`](mod@crate::intercept).
    pub fn interceptors_of(&self, name: &str) -> Option<Vec<&str>> {
        let idx = self.inner.index_of(name)?;
        Some(
            self.inner.nodes[idx as usize]
                .intercepted
                .as_deref()
                .map(|i| i.names().collect())
                .unwrap_or_default(),
        )
    }

    /// Approximate heap bytes used by the graph structure itself (names, adjacency, node table),
    /// not counting the stage objects it points to.
    pub fn structure_bytes(&self) -> usize {
        self.inner.topo.heap_bytes() + self.inner.nodes.capacity() * std::mem::size_of::<Node>()
    }

    /// Validates `specs` and lays out the graph. See [`Pipeline::build`](crate::Pipeline::build).
    pub(crate) fn from_definition(
        name: String,
        specs: Vec<StageSpec>,
        mut errors: Vec<ValidationError>,
        interceptors: &[Registration],
    ) -> Result<Graph, BuildError> {
        let fail = |mut errors: Vec<ValidationError>, name: String| {
            errors.truncate(BuildError::MAX_ERRORS);
            Err(BuildError {
                pipeline: name,
                errors,
            })
        };
        if specs.is_empty() {
            errors.push(ValidationError::new(
                ErrorCode::EmptyPipeline,
                None,
                format!("pipeline `{name}` has no stages; add one with `stage`"),
            ));
        }
        if specs.len() > u32::MAX as usize - 1 {
            errors.push(ValidationError::new(
                ErrorCode::InvalidName,
                None,
                format!(
                    "{} stages is more than the supported {}",
                    specs.len(),
                    u32::MAX - 1
                ),
            ));
            return fail(errors, name);
        }
        let names = check_names(&specs, &mut errors);
        let Some(deps) = resolve_dependencies(&specs, &names, &mut errors) else {
            return fail(errors, name);
        };
        check_scopes(&specs, &names, interceptors, &mut errors);
        let guards = guard_plans(&specs, &names, &deps.offsets, &deps.edges, &mut errors);
        if !errors.is_empty() {
            return fail(errors, name);
        }
        let n = specs.len();
        let dependents = deps.transpose(n);
        if let Err(cycle) = check_acyclic(&deps, &dependents, &names, n) {
            return fail(vec![cycle], name);
        }
        let kinds: Vec<StageKind> = specs.iter().map(StageSpec::effective_kind).collect();
        let nodes = build_nodes(specs, &names, &kinds, interceptors);
        Ok(Graph {
            inner: Arc::new(GraphInner {
                topo: Arc::new(Topology {
                    name,
                    names,
                    kinds,
                    deps,
                    dependents,
                }),
                nodes,
                guards,
            }),
        })
    }
}

fn too_many(errors: &[ValidationError]) -> bool {
    errors.len() >= BuildError::MAX_ERRORS
}

/// The name table; blank and duplicate names are reported (SF003, SF002).
fn check_names(specs: &[StageSpec], errors: &mut Vec<ValidationError>) -> NameTable {
    let bytes: usize = specs.iter().map(|s| s.name.len()).sum();
    let mut names = NameTable::with_capacity(specs.len(), bytes);
    for (i, spec) in specs.iter().enumerate() {
        if spec.name.trim().is_empty() && !too_many(errors) {
            errors.push(ValidationError::new(
                ErrorCode::InvalidName,
                Some(&spec.name),
                format!("stage #{} has an empty or blank name", i + 1),
            ));
        }
        if let Err(first) = names.push(&spec.name) {
            if !too_many(errors) {
                errors.push(ValidationError::new(
                    ErrorCode::DuplicateStage,
                    Some(&spec.name),
                    format!(
                        "stage `{}` is defined twice (stage #{} and stage #{}); stage names must be unique",
                        spec.name,
                        first + 1,
                        i + 1
                    ),
                ));
            }
        }
    }
    names
}

/// Dependencies resolved to indices, sorted and deduplicated per stage; missing (SF004, with the
/// nearest existing name) and self-dependencies (SF005) reported. `None` when the edge count does
/// not fit the layout.
fn resolve_dependencies(
    specs: &[StageSpec],
    names: &NameTable,
    errors: &mut Vec<ValidationError>,
) -> Option<Csr> {
    let mut offsets = Vec::with_capacity(specs.len() + 1);
    offsets.push(0u32);
    let mut edges: Vec<u32> = Vec::with_capacity(specs.len());
    let mut suggestions_left = 5usize;
    for (i, spec) in specs.iter().enumerate() {
        let row_start = edges.len();
        for dep in &spec.deps {
            match names.find(dep) {
                Some(d) if d as usize == i => {
                    if !too_many(errors) {
                        errors.push(ValidationError::new(
                            ErrorCode::SelfDependency,
                            Some(&spec.name),
                            format!("stage `{}` depends on itself", spec.name),
                        ));
                    }
                }
                Some(d) => edges.push(d),
                None if too_many(errors) => {}
                None => {
                    let hint = if suggestions_left > 0 {
                        suggestions_left -= 1;
                        did_you_mean(specs, dep)
                    } else {
                        String::new()
                    };
                    errors.push(ValidationError::new(
                        ErrorCode::MissingDependency,
                        Some(&spec.name),
                        format!(
                            "stage `{}` depends on `{dep}`, which does not exist{hint}",
                            spec.name
                        ),
                    ));
                }
            }
        }
        let row = &mut edges[row_start..];
        row.sort_unstable();
        let mut w = usize::from(!row.is_empty());
        for r in 1..row.len() {
            if row[r] != row[w - 1] {
                row[w] = row[r];
                w += 1;
            }
        }
        edges.truncate(row_start + w);
        if edges.len() > u32::MAX as usize {
            errors.push(ValidationError::new(
                ErrorCode::InvalidName,
                Some(&spec.name),
                "more than 4,294,967,295 dependency edges".to_owned(),
            ));
            return None;
        }
        offsets.push(edges.len() as u32);
    }
    Some(Csr { offsets, edges })
}

/// Interceptors scoped to stages that do not exist (SF009).
fn check_scopes(
    specs: &[StageSpec],
    names: &NameTable,
    interceptors: &[Registration],
    errors: &mut Vec<ValidationError>,
) {
    for reg in interceptors {
        let Scope::Stages(stages) = &reg.scope else {
            continue;
        };
        for stage in stages {
            if names.find(stage).is_none() && !too_many(errors) {
                let hint = did_you_mean(specs, stage);
                errors.push(ValidationError::new(
                    ErrorCode::InvalidPolicy,
                    Some(stage),
                    format!(
                        "interceptor `{}` is registered for stage `{stage}`, which does not exist{hint}",
                        reg.interceptor.name()
                    ),
                ));
            }
        }
    }
}

/// Kahn's algorithm orders the stages; whatever it cannot order is on or behind a cycle, and one
/// cycle is reported as a path (SF006).
fn check_acyclic(
    deps: &Csr,
    dependents: &Csr,
    names: &NameTable,
    n: usize,
) -> Result<(), ValidationError> {
    let order = kahn(deps, dependents, n);
    if order.len() == n {
        return Ok(());
    }
    let cycle = find_cycle(deps, &order, n);
    let path: Vec<String> = cycle
        .iter()
        .map(|&i| names.get_name(i).to_owned())
        .collect();
    let mut error = ValidationError::new(
        ErrorCode::Cycle,
        Some(&path[0]),
        format!(
            "dependency cycle: {} (each stage would have to run after the one before it); {} stages are on or behind a cycle",
            path.join(" -> "),
            n - order.len()
        ),
    );
    error.cycle = path;
    Err(error)
}

/// The executor's nodes: each stage wrapped in its resolved interceptor chain, if any.
fn build_nodes(
    specs: Vec<StageSpec>,
    names: &NameTable,
    kinds: &[StageKind],
    interceptors: &[Registration],
) -> Vec<Node> {
    specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            let own = spec
                .policy
                .as_deref()
                .map_or(&[][..], |p| &p.interceptors[..]);
            let intercepted = intercept::resolve(
                &spec.stage,
                names.get_name(i as u32),
                kinds[i],
                interceptors,
                own,
            );
            Node {
                stage: match &intercepted {
                    Some(wrapped) => wrapped.clone(),
                    None => spec.stage,
                },
                condition: spec.condition,
                intercepted,
            }
        })
        .collect()
}

/// Validates and resolves the guard retry policies: the stage must be a guard, and the producer
/// a direct dependency (the single one, unless named), guarded by no other policy.
fn guard_plans(
    specs: &[StageSpec],
    names: &NameTable,
    offsets: &[u32],
    edges: &[u32],
    errors: &mut Vec<ValidationError>,
) -> Vec<GuardPlan> {
    let mut plans: Vec<GuardPlan> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let Some(policy) = spec.policy.as_deref().and_then(|p| p.guard_retry.as_ref()) else {
            continue;
        };
        let mut problem = |message: String| {
            if errors.len() < BuildError::MAX_ERRORS {
                errors.push(ValidationError::new(
                    ErrorCode::InvalidPolicy,
                    Some(&spec.name),
                    message,
                ));
            }
        };
        if spec.effective_kind() != StageKind::Guard {
            problem(format!(
                "stage `{}` has a guard retry policy but is of kind `{}`; guard retry needs kind `guard`",
                spec.name,
                spec.effective_kind()
            ));
            continue;
        }
        let deps = &edges[offsets[i] as usize..offsets[i + 1] as usize];
        let producer = match &policy.producer {
            Some(p) => match names.find(p) {
                Some(d) if deps.contains(&d) => Some(d),
                _ => {
                    problem(format!(
                        "guard `{}` retries `{p}`, which is not one of its dependencies",
                        spec.name
                    ));
                    None
                }
            },
            None if deps.len() == 1 => Some(deps[0]),
            None => {
                problem(format!(
                    "guard `{}` has {} dependencies; name the one to re-run with `GuardRetry::producer`",
                    spec.name,
                    deps.len()
                ));
                None
            }
        };
        let Some(producer) = producer else { continue };
        if let Some(other) = plans.iter().find(|p| p.producer == producer) {
            problem(format!(
                "stage `{}` is already re-run by guard `{}`; a stage can be retried by one guard only",
                names.get_name(producer),
                names.get_name(other.guard)
            ));
            continue;
        }
        plans.push(GuardPlan {
            guard: i as u32,
            producer,
            policy: policy.clone(),
        });
    }
    plans
}

/// `"; did you mean `x`?"` for the existing name closest to `missing`, or nothing.
fn did_you_mean(specs: &[StageSpec], missing: &str) -> String {
    nearest_name(specs, missing)
        .map(|n| format!("; did you mean `{n}`?"))
        .unwrap_or_default()
}

/// The existing stage name closest to `missing` (Levenshtein), if any is reasonably close.
fn nearest_name<'a>(specs: &'a [StageSpec], missing: &str) -> Option<&'a str> {
    let limit = (missing.chars().count() / 2).max(2);
    specs
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| n.len().abs_diff(missing.len()) <= limit)
        .map(|n| (strsim::levenshtein(n, missing), n))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, n)| n)
}
