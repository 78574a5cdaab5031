//! The built, validated, immutable DAG.
//!
//! Layout is chosen for depth and size: names live in one string arena indexed by a hash table of
//! stage indices (no per-name allocation), and both dependency and dependent lists are stored in
//! compressed sparse rows (two flat `u32` vectors each). A 1,000,000-stage chain therefore takes
//! a few dozen bytes a stage plus the stage objects, and every traversal is a loop over flat
//! arrays: nothing here recurses, so nothing overflows the stack however deep the graph is.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::error::{BuildError, ErrorCode, ValidationError};
use crate::intercept::{self, GuardRetry, Intercepted, Registration, Scope};
use crate::pipeline::{Condition, StageSpec};
use crate::stage::{SharedStage, StageKind};

/// Stage names: one arena, offsets, and a hash table from name to stage index.
struct NameTable {
    arena: String,
    ends: Vec<usize>,
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl NameTable {
    fn with_capacity(n: usize, bytes: usize) -> Self {
        NameTable {
            arena: String::with_capacity(bytes),
            ends: Vec::with_capacity(n),
            table: HashTable::with_capacity(n),
            hasher: DefaultHashBuilder::default(),
        }
    }

    fn get_name(&self, idx: u32) -> &str {
        let i = idx as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.arena[start..self.ends[i]]
    }

    fn find(&self, name: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(name);
        self.table
            .find(hash, |&idx| self.get_name(idx) == name)
            .copied()
    }

    /// Appends `name` as the next index; returns the earlier index if the name is taken (the name
    /// is still appended so indices stay aligned with the stage list).
    fn push(&mut self, name: &str) -> Result<u32, u32> {
        let idx = self.ends.len() as u32;
        self.arena.push_str(name);
        self.ends.push(self.arena.len());
        let hash = self.hasher.hash_one(name);
        if let Some(&existing) = self.table.find(hash, |&i| self.get_name(i) == name) {
            return Err(existing);
        }
        let (arena, ends, hasher) = (&self.arena, &self.ends, &self.hasher);
        let name_of = |i: u32| {
            let i = i as usize;
            let start = if i == 0 { 0 } else { ends[i - 1] };
            &arena[start..ends[i]]
        };
        self.table
            .insert_unique(hash, idx, |&i| hasher.hash_one(name_of(i)));
        Ok(idx)
    }

    fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + self.ends.capacity() * std::mem::size_of::<usize>()
            + self.table.capacity() * (std::mem::size_of::<u32>() + 1)
    }
}

/// Compressed sparse rows: the neighbours of node `i` are `edges[offsets[i]..offsets[i + 1]]`.
struct Csr {
    offsets: Vec<u32>,
    edges: Vec<u32>,
}

impl Csr {
    fn row(&self, i: u32) -> &[u32] {
        let i = i as usize;
        &self.edges[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// The transpose: for every edge `i -> j` in `self`, an edge `j -> i`. Rows come out sorted
    /// because sources are visited in increasing order.
    fn transpose(&self, n: usize) -> Csr {
        let mut counts = vec![0u32; n + 1];
        for &j in &self.edges {
            counts[j as usize + 1] += 1;
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let mut fill = counts.clone();
        let mut edges = vec![0u32; self.edges.len()];
        for i in 0..n as u32 {
            for &j in self.row(i) {
                let slot = &mut fill[j as usize];
                edges[*slot as usize] = i;
                *slot += 1;
            }
        }
        Csr {
            offsets: counts,
            edges,
        }
    }

    fn heap_bytes(&self) -> usize {
        (self.offsets.capacity() + self.edges.capacity()) * std::mem::size_of::<u32>()
    }
}

/// What the executor needs per stage.
pub(crate) struct Node {
    pub(crate) stage: SharedStage,
    pub(crate) kind: StageKind,
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

/// The shared, immutable body of a [`Graph`].
pub(crate) struct GraphInner {
    name: String,
    names: NameTable,
    pub(crate) nodes: Vec<Node>,
    deps: Csr,
    dependents: Csr,
    /// Guards with a retry policy (usually none).
    pub(crate) guards: Vec<GuardPlan>,
}

impl GraphInner {
    pub(crate) fn pipeline_name(&self) -> &str {
        &self.name
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn name(&self, idx: u32) -> &str {
        self.names.get_name(idx)
    }

    pub(crate) fn kind(&self, idx: u32) -> StageKind {
        self.nodes[idx as usize].kind
    }

    pub(crate) fn index_of(&self, name: &str) -> Option<u32> {
        self.names.find(name)
    }

    /// Dependencies of `idx`, sorted by index.
    pub(crate) fn deps(&self, idx: u32) -> &[u32] {
        self.deps.row(idx)
    }

    /// Dependents of `idx`, sorted by index.
    pub(crate) fn dependents(&self, idx: u32) -> &[u32] {
        self.dependents.row(idx)
    }

    /// All stage indices in a topological order (ties in definition order), iteratively.
    pub(crate) fn topological_indices(&self) -> Vec<u32> {
        kahn(&self.deps, &self.dependents, self.len())
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
            .field("name", &self.inner.name)
            .field("stages", &self.inner.len())
            .finish()
    }
}

impl Graph {
    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.inner.name
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
        self.inner.names.heap_bytes()
            + self.inner.deps.heap_bytes()
            + self.inner.dependents.heap_bytes()
            + self.inner.nodes.capacity() * std::mem::size_of::<Node>()
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
        let too_many = |errors: &Vec<ValidationError>| errors.len() >= BuildError::MAX_ERRORS;

        // Names: invalid and duplicate.
        let bytes: usize = specs.iter().map(|s| s.name.len()).sum();
        let mut names = NameTable::with_capacity(specs.len(), bytes);
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
        for (i, spec) in specs.iter().enumerate() {
            if spec.name.trim().is_empty() && !too_many(&errors) {
                errors.push(ValidationError::new(
                    ErrorCode::InvalidName,
                    Some(&spec.name),
                    format!("stage #{} has an empty or blank name", i + 1),
                ));
            }
            if let Err(first) = names.push(&spec.name) {
                if !too_many(&errors) {
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

        // Dependencies: resolve names to indices, sorted and deduplicated per stage.
        let mut offsets = Vec::with_capacity(specs.len() + 1);
        offsets.push(0u32);
        let mut edges: Vec<u32> = Vec::with_capacity(specs.len());
        let mut suggestions_left = 5usize;
        for (i, spec) in specs.iter().enumerate() {
            let row_start = edges.len();
            for dep in &spec.deps {
                match names.find(dep) {
                    Some(d) if d as usize == i => {
                        if !too_many(&errors) {
                            errors.push(ValidationError::new(
                                ErrorCode::SelfDependency,
                                Some(&spec.name),
                                format!("stage `{}` depends on itself", spec.name),
                            ));
                        }
                    }
                    Some(d) => edges.push(d),
                    None => {
                        if !too_many(&errors) {
                            let hint = if suggestions_left > 0 {
                                suggestions_left -= 1;
                                did_you_mean(&specs, dep)
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
            }
            let row = &mut edges[row_start..];
            if row.len() > 1 {
                row.sort_unstable();
                let mut w = 1;
                for r in 1..row.len() {
                    if row[r] != row[w - 1] {
                        row[w] = row[r];
                        w += 1;
                    }
                }
                edges.truncate(row_start + w);
            }
            if edges.len() > u32::MAX as usize {
                errors.push(ValidationError::new(
                    ErrorCode::InvalidName,
                    Some(&spec.name),
                    "more than 4,294,967,295 dependency edges".to_owned(),
                ));
                return fail(errors, name);
            }
            offsets.push(edges.len() as u32);
        }
        // Interceptors scoped to stages that do not exist.
        for reg in interceptors {
            if let Scope::Stages(stages) = &reg.scope {
                for stage in stages {
                    if names.find(stage).is_none() && !too_many(&errors) {
                        let hint = did_you_mean(&specs, stage);
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
        let guards = guard_plans(&specs, &names, &offsets, &edges, &mut errors);
        if !errors.is_empty() {
            return fail(errors, name);
        }

        let n = specs.len();
        let deps = Csr { offsets, edges };
        let dependents = deps.transpose(n);

        // Cycles: Kahn's algorithm; whatever it cannot order contains a cycle.
        let order = kahn(&deps, &dependents, n);
        if order.len() < n {
            let cycle = find_cycle(&deps, &order, n);
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
            return fail(vec![error], name);
        }
        drop(order);

        let nodes = specs
            .into_iter()
            .enumerate()
            .map(|(i, spec)| {
                let kind = spec.kind.unwrap_or_else(|| spec.stage.kind());
                let own = spec
                    .policy
                    .as_deref()
                    .map_or(&[][..], |p| &p.interceptors[..]);
                let intercepted = intercept::resolve(
                    &spec.stage,
                    names.get_name(i as u32),
                    kind,
                    interceptors,
                    own,
                );
                Node {
                    kind,
                    stage: match &intercepted {
                        Some(wrapped) => wrapped.clone(),
                        None => spec.stage,
                    },
                    condition: spec.condition,
                    intercepted,
                }
            })
            .collect();
        Ok(Graph {
            inner: Arc::new(GraphInner {
                name,
                names,
                nodes,
                deps,
                dependents,
                guards,
            }),
        })
    }
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

/// Kahn's algorithm: a topological order of the nodes it can order (all of them iff acyclic).
fn kahn(deps: &Csr, dependents: &Csr, n: usize) -> Vec<u32> {
    let mut pending: Vec<u32> = (0..n as u32).map(|i| deps.row(i).len() as u32).collect();
    let mut order: Vec<u32> = (0..n as u32)
        .filter(|&i| pending[i as usize] == 0)
        .collect();
    let mut head = 0;
    while head < order.len() {
        let i = order[head];
        head += 1;
        for &j in dependents.row(i) {
            let p = &mut pending[j as usize];
            *p -= 1;
            if *p == 0 {
                order.push(j);
            }
        }
    }
    order
}

/// One cycle among the nodes Kahn's algorithm could not order, in execution order with the first
/// node repeated at the end. Every such node has an unordered dependency, so walking those
/// dependencies must revisit a node: O(N + E), iterative.
fn find_cycle(deps: &Csr, ordered: &[u32], n: usize) -> Vec<u32> {
    let mut done = vec![false; n];
    for &i in ordered {
        done[i as usize] = true;
    }
    const UNSEEN: u32 = u32::MAX;
    let mut position = vec![UNSEEN; n];
    let start = (0..n as u32)
        .find(|&i| !done[i as usize])
        .expect("an unordered node exists");
    let mut walk = vec![start];
    position[start as usize] = 0;
    loop {
        let current = *walk.last().expect("walk is never empty");
        let next = deps
            .row(current)
            .iter()
            .copied()
            .find(|&d| !done[d as usize])
            .expect("an unordered node has an unordered dependency");
        let seen = position[next as usize];
        if seen != UNSEEN {
            // walk[seen..] follows "depends on" edges; reversed it is execution order.
            let mut cycle: Vec<u32> = walk[seen as usize..].iter().rev().copied().collect();
            cycle.push(cycle[0]);
            return cycle;
        }
        position[next as usize] = walk.len() as u32;
        walk.push(next);
    }
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
