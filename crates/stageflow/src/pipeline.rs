//! The fluent pipeline builder.
//!
//! A [`Pipeline`] is a definition: named stages and their dependencies. [`Pipeline::build`]
//! validates it and produces an immutable [`Graph`] that can run any number of times, concurrently.
//!
//! Adding a stage pushes onto a vector (amortized O(1)); nothing is copied or validated per call.
//! All checks happen once, in [`build`](Pipeline::build), in linear time.
//!
//! Modifiers ([`after`](Pipeline::after), [`kind`](Pipeline::kind), [`when`](Pipeline::when))
//! apply to the most recently added stage, so a definition reads top to bottom:
//!
//! ```
//! use stageflow::{Pipeline, StageContext, StageKind, StageOutput};
//!
//! let graph = Pipeline::builder("etl")
//!     .stage("extract", |_ctx: StageContext| async { StageOutput::ok().with("rows", 3) })
//!     .stage("transform", |_ctx: StageContext| async { StageOutput::ok() })
//!     .after("extract")
//!     .kind(StageKind::Transform)
//!     .stage("load", |_ctx: StageContext| async { StageOutput::ok() })
//!     .after("transform")
//!     .build()
//!     .expect("valid pipeline");
//! assert_eq!(graph.len(), 3);
//! ```

use std::sync::Arc;

use crate::context::ConditionInputs;
use crate::error::{BuildError, ErrorCode, ValidationError};
use crate::graph::Graph;
use crate::intercept::{GuardRetry, Interceptor, Registration, Retry, RetryPolicy, Scope, Timeout};
use crate::kind::StageKind;
use crate::spec::{condition_from, IntoConditionResult, IntoDeps, StageSpec};
use crate::stage::Stage;

/// The output key a router stage sets to pick a branch in
/// [`Pipeline::with_conditional_branch`].
pub const ROUTE_KEY: &str = "route";

/// A pipeline definition under construction. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Pipeline {
    name: String,
    specs: Vec<StageSpec>,
    /// Problems found while building the definition (misplaced modifiers, compose conflicts);
    /// reported by [`build`](Self::build) together with the graph checks.
    errors: Vec<ValidationError>,
    /// Pipeline-level interceptors, in registration order.
    interceptors: Vec<Registration>,
}

impl Pipeline {
    /// An empty pipeline named `name`.
    pub fn builder(name: impl Into<String>) -> Self {
        Pipeline {
            name: name.into(),
            specs: Vec::new(),
            errors: Vec::new(),
            interceptors: Vec::new(),
        }
    }

    /// Same as [`builder`](Self::builder).
    pub fn new(name: impl Into<String>) -> Self {
        Self::builder(name)
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of stages defined so far.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// `true` when no stage is defined.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The stage definitions, in the order they were added.
    pub fn specs(&self) -> &[StageSpec] {
        &self.specs
    }

    /// Reserves room for `additional` more stages.
    pub fn reserve(&mut self, additional: usize) {
        self.specs.reserve(additional);
    }

    /// Adds a stage named `name`. Follow with [`after`](Self::after) to give it dependencies.
    pub fn stage(self, name: impl Into<String>, stage: impl Stage) -> Self {
        self.add(StageSpec::new(name, stage))
    }

    /// Adds a fully specified stage.
    // `add` reads as the builder verb it is; this is not arithmetic.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, spec: impl Into<StageSpec>) -> Self {
        self.specs.push(spec.into());
        self
    }

    /// Adds many stages at once.
    pub fn add_all<I>(mut self, specs: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<StageSpec>,
    {
        let specs = specs.into_iter();
        self.specs.reserve(specs.size_hint().0);
        self.specs.extend(specs.map(Into::into));
        self
    }

    fn modify_last(mut self, what: &str, f: impl FnOnce(&mut StageSpec)) -> Self {
        match self.specs.last_mut() {
            Some(spec) => f(spec),
            None if self.errors.len() >= BuildError::MAX_ERRORS => {}
            None => self.errors.push(ValidationError::new(
                ErrorCode::NoCurrentStage,
                None,
                format!("`{what}` was called before any stage was added; call `stage` first"),
            )),
        }
        self
    }

    /// Makes the most recently added stage depend on `deps`.
    pub fn after(self, deps: impl IntoDeps) -> Self {
        let deps = deps.into_deps();
        self.modify_last("after", |spec| spec.deps.extend(deps))
    }

    /// Sets the kind of the most recently added stage.
    pub fn kind(self, kind: StageKind) -> Self {
        self.modify_last("kind", |spec| spec.kind = Some(kind))
    }

    /// Makes the most recently added stage conditional: it runs only if `condition` returns true
    /// when its dependencies are done; otherwise it is skipped with reason `"condition not met"`.
    /// A condition that returns an error fails the stage.
    ///
    /// **How skips propagate:** a skipped stage counts as finished, and its dependents still run,
    /// unless *every* dependency of a stage was skipped, in which case that stage is skipped too
    /// (reason `"all upstream stages skipped"`). So a skipped branch disappears as a whole, and a
    /// merge stage after several branches runs as long as one branch ran.
    ///
    /// ```
    /// use stageflow::{Pipeline, StageContext, StageOutput};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let graph = Pipeline::builder("cond")
    ///     .stage("check", |_ctx: StageContext| async { StageOutput::ok().with("changed", false) })
    ///     .stage("rebuild", |_ctx: StageContext| async { StageOutput::ok() })
    ///     .after("check")
    ///     .when(|inputs| inputs.get_from::<bool>("check", "changed"))
    ///     .build()
    ///     .unwrap();
    /// let report = graph.run(()).await.unwrap();
    /// assert!(report.results().get("rebuild").unwrap().is_skipped());
    /// # }
    /// ```
    pub fn when<F, R>(self, condition: F) -> Self
    where
        F: Fn(&ConditionInputs<'_>) -> R + Send + Sync + 'static,
        R: IntoConditionResult,
    {
        let condition = condition_from(condition);
        self.modify_last("when", |spec| spec.condition = Some(condition))
    }

    /// Runs `interceptor` around every stage of the pipeline (also stages added later). See
    /// [`intercept`](crate::intercept) for ordering and cost.
    ///
    /// ```
    /// use std::time::Duration;
    /// use stageflow::intercept::{CircuitBreaker, RetryPolicy, Retry, Timeout};
    /// use stageflow::{Pipeline, StageContext, StageOutput};
    /// let graph = Pipeline::builder("p")
    ///     .intercept(Timeout::new(Duration::from_secs(30)))
    ///     .intercept(Retry::new(RetryPolicy::attempts(3)))
    ///     .intercept(CircuitBreaker::new(5, Duration::from_secs(60)))
    ///     .stage("a", |_ctx: StageContext| async { StageOutput::ok() })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(graph.interceptors_of("a").unwrap(), ["circuit_breaker", "retry", "timeout"]);
    /// ```
    pub fn intercept(mut self, interceptor: impl Interceptor) -> Self {
        self.interceptors.push(Registration {
            scope: Scope::All,
            interceptor: Arc::new(interceptor),
        });
        self
    }

    /// Runs `interceptor` around the named stages only. Naming a stage that does not exist is an
    /// [`InvalidPolicy`](ErrorCode::InvalidPolicy) error at build time.
    pub fn intercept_stages(
        mut self,
        stages: impl IntoDeps,
        interceptor: impl Interceptor,
    ) -> Self {
        self.interceptors.push(Registration {
            scope: Scope::Stages(stages.into_deps()),
            interceptor: Arc::new(interceptor),
        });
        self
    }

    /// Runs `interceptor` around every stage of kind `kind`.
    pub fn intercept_kind(mut self, kind: StageKind, interceptor: impl Interceptor) -> Self {
        self.interceptors.push(Registration {
            scope: Scope::Kind(kind),
            interceptor: Arc::new(interceptor),
        });
        self
    }

    /// Runs `interceptor` around the most recently added stage only; it replaces a
    /// pipeline-level interceptor with the same [`name`](Interceptor::name).
    pub fn interceptor(self, interceptor: impl Interceptor) -> Self {
        let interceptor: Arc<dyn Interceptor> = Arc::new(interceptor);
        self.modify_last("interceptor", |spec| {
            spec.policy_mut().interceptors.push(interceptor)
        })
    }

    /// Fails the most recently added stage when one execution takes longer than `limit`, with
    /// `"timed out after <limit>"`; see [`Timeout`]. Overrides a pipeline-wide timeout.
    pub fn timeout(self, limit: std::time::Duration) -> Self {
        self.interceptor(Timeout::new(limit))
    }

    /// Retries the most recently added stage on retryable failures; see [`Retry`]. Overrides a
    /// pipeline-wide retry.
    pub fn retry(self, policy: RetryPolicy) -> Self {
        self.interceptor(Retry::new(policy))
    }

    /// Makes the most recently added stage (a [`StageKind::Guard`]) re-run its producer and then
    /// itself when it fails; see [`GuardRetry`].
    pub fn guard_retry(self, policy: GuardRetry) -> Self {
        self.modify_last("guard_retry", |spec| {
            spec.policy_mut().guard_retry = Some(policy)
        })
    }

    /// Adds `count` stages from `factory(0..count)`, each depending on the one before. The first
    /// stage keeps only the dependencies its spec declares, so a chain can hang off an existing
    /// stage with `StageSpec::new(..).after("x")` at `i == 0`.
    ///
    /// ```
    /// use stageflow::{Pipeline, StageContext, StageOutput, StageSpec};
    /// let graph = Pipeline::builder("chain")
    ///     .with_linear_chain(1000, |i| {
    ///         StageSpec::new(format!("step_{i}"), |_ctx: StageContext| async { StageOutput::ok() })
    ///     })
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(graph.dependencies_of("step_999").unwrap(), ["step_998"]);
    /// ```
    pub fn with_linear_chain<F, S>(mut self, count: usize, mut factory: F) -> Self
    where
        F: FnMut(usize) -> S,
        S: Into<StageSpec>,
    {
        self.specs.reserve(count);
        let mut previous: Option<usize> = None;
        for i in 0..count {
            let mut spec = factory(i).into();
            if let Some(p) = previous {
                spec.deps.push(self.specs[p].name.clone());
            }
            previous = Some(self.specs.len());
            self.specs.push(spec);
        }
        self
    }

    /// Adds `count` independent stages from `factory(0..count)`, each depending on `after`
    /// (plus whatever its spec declares). They run in parallel.
    pub fn with_parallel<F, S>(mut self, after: impl IntoDeps, count: usize, mut factory: F) -> Self
    where
        F: FnMut(usize) -> S,
        S: Into<StageSpec>,
    {
        let after = after.into_deps();
        self.specs.reserve(count);
        for i in 0..count {
            let mut spec = factory(i).into();
            spec.deps.extend(after.iter().cloned());
            self.specs.push(spec);
        }
        self
    }

    /// Adds a fan-out/fan-in: `source`, then `count` parallel stages from `factory` that each
    /// depend on `source`, then `sink`, which depends on all of them.
    ///
    /// ```
    /// use stageflow::{Pipeline, StageContext, StageOutput, StageSpec};
    /// let noop = |_ctx: StageContext| async { StageOutput::ok() };
    /// let graph = Pipeline::builder("fan")
    ///     .with_fan_out_fan_in(
    ///         StageSpec::new("split", noop),
    ///         8,
    ///         |i| StageSpec::new(format!("work_{i}"), noop),
    ///         StageSpec::new("join", noop),
    ///     )
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(graph.dependencies_of("join").unwrap().len(), 8);
    /// ```
    pub fn with_fan_out_fan_in<F, S>(
        mut self,
        source: impl Into<StageSpec>,
        count: usize,
        mut factory: F,
        sink: impl Into<StageSpec>,
    ) -> Self
    where
        F: FnMut(usize) -> S,
        S: Into<StageSpec>,
    {
        let source = source.into();
        let source_name = source.name.clone();
        let mut sink = sink.into();
        self.specs.reserve(count + 2);
        self.specs.push(source);
        for i in 0..count {
            let mut spec = factory(i).into();
            spec.deps.push(source_name.clone());
            sink.deps.push(spec.name.clone());
            self.specs.push(spec);
        }
        self.specs.push(sink);
        self
    }

    /// Adds a router, one branch per route, and a merge stage.
    ///
    /// The router sets the output key [`ROUTE_KEY`] (`"route"`) to the name of the route to take.
    /// Each branch runs only if the router chose its route; the others are skipped. `merge`
    /// depends on every branch and runs as long as one branch ran (see [`when`](Self::when)).
    ///
    /// ```
    /// use stageflow::{Pipeline, StageContext, StageOutput, StageSpec};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let graph = Pipeline::builder("routing")
    ///     .with_conditional_branch(
    ///         StageSpec::new("router", |_ctx: StageContext| async { StageOutput::ok().with("route", "fast") }),
    ///         [
    ///             ("fast", StageSpec::new("fast_path", |_ctx: StageContext| async { StageOutput::ok() })),
    ///             ("slow", StageSpec::new("slow_path", |_ctx: StageContext| async { StageOutput::ok() })),
    ///         ],
    ///         StageSpec::new("merge", |_ctx: StageContext| async { StageOutput::ok() }),
    ///     )
    ///     .build()
    ///     .unwrap();
    /// let report = graph.run(()).await.unwrap();
    /// assert!(report.results().get("fast_path").unwrap().is_ok());
    /// assert!(report.results().get("slow_path").unwrap().is_skipped());
    /// assert!(report.results().get("merge").unwrap().is_ok());
    /// # }
    /// ```
    pub fn with_conditional_branch<R, S>(
        mut self,
        router: impl Into<StageSpec>,
        branches: impl IntoIterator<Item = (R, S)>,
        merge: impl Into<StageSpec>,
    ) -> Self
    where
        R: Into<String>,
        S: Into<StageSpec>,
    {
        let router = router.into();
        let router_name: Arc<str> = router.name.as_str().into();
        let mut merge = merge.into();
        self.specs.push(router);
        for (route, spec) in branches {
            let route: String = route.into();
            let router_name = router_name.clone();
            let mut spec = spec.into().after(router_name.to_string());
            // The route must match, and then the branch's own condition (if any) must hold.
            let own = spec.condition.take();
            let spec = spec.when(move |inputs| {
                let chosen: String = inputs.get_from(&router_name, ROUTE_KEY)?;
                match &own {
                    Some(own) if chosen == route => own(inputs),
                    _ => Ok(chosen == route),
                }
            });
            merge.deps.push(spec.name.clone());
            self.specs.push(spec);
        }
        self.specs.push(merge);
        self
    }

    /// Merges `other` into this pipeline. Stages defined identically in both (same stage object,
    /// kind, dependencies, condition and stage-level interceptors) appear once; a name defined
    /// differently in each is a
    /// [`ComposeConflict`](ErrorCode::ComposeConflict) reported by [`build`](Self::build). The
    /// result is named `"<self>+<other>"`. `other`'s pipeline-level interceptors are added after
    /// this pipeline's, and apply to the whole composed pipeline in their scope.
    pub fn compose(mut self, other: Pipeline) -> Self {
        let mut index: hashbrown::HashMap<&str, usize> =
            hashbrown::HashMap::with_capacity(self.specs.len());
        for (i, spec) in self.specs.iter().enumerate() {
            index.entry(spec.name.as_str()).or_insert(i);
        }
        let mut added = Vec::with_capacity(other.specs.len());
        let mut errors = Vec::new();
        for spec in other.specs {
            match index.get(spec.name.as_str()) {
                Some(&i) if self.specs[i].same_definition(&spec) => {}
                Some(_) if self.errors.len() + errors.len() >= BuildError::MAX_ERRORS => {}
                Some(_) => errors.push(ValidationError::new(
                    ErrorCode::ComposeConflict,
                    Some(&spec.name),
                    format!(
                        "stage `{}` is defined differently in `{}` and `{}`",
                        spec.name, self.name, other.name
                    ),
                )),
                None => added.push(spec),
            }
        }
        drop(index);
        self.specs.extend(added);
        self.errors.extend(errors);
        self.errors.extend(other.errors);
        self.errors.truncate(BuildError::MAX_ERRORS);
        self.interceptors.extend(other.interceptors);
        self.name = format!("{}+{}", self.name, other.name);
        self
    }

    /// Validates the definition and builds the immutable [`Graph`].
    ///
    /// Checks, in linear time and without recursion: empty pipeline, invalid and duplicate names,
    /// missing dependencies (with the nearest existing name), self-dependencies and cycles (one
    /// cycle printed as a path). All problems are reported together.
    pub fn build(self) -> Result<Graph, BuildError> {
        Graph::from_definition(self.name, self.specs, self.errors, &self.interceptors)
    }
}
