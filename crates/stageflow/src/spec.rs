//! One stage's definition: [`StageSpec`] (name, stage, kind, dependencies, condition, its own
//! interceptors), and the conversions the builder accepts for dependency lists and conditions.

use std::sync::Arc;

use crate::context::ConditionInputs;
use crate::error::StageError;
use crate::intercept::{GuardRetry, Interceptor, Retry, RetryPolicy, Timeout};
use crate::kind::StageKind;
use crate::stage::{SharedStage, Stage};

/// A predicate deciding whether a stage runs; see [`Pipeline::when`](crate::Pipeline::when).
pub(crate) type Condition =
    Arc<dyn Fn(&ConditionInputs<'_>) -> Result<bool, StageError> + Send + Sync>;

/// Erases a user condition (returning `bool` or `Result<bool, E>`) into a [`Condition`].
pub(crate) fn condition_from<F, R>(condition: F) -> Condition
where
    F: Fn(&ConditionInputs<'_>) -> R + Send + Sync + 'static,
    R: IntoConditionResult,
{
    Arc::new(move |inputs| condition(inputs).into_condition_result())
}

/// Values accepted as a dependency list: a name, an array or vector of names, a slice, or `()` for
/// none.
pub trait IntoDeps {
    /// The dependency names.
    fn into_deps(self) -> Vec<String>;
}

impl IntoDeps for () {
    fn into_deps(self) -> Vec<String> {
        Vec::new()
    }
}

impl IntoDeps for &str {
    fn into_deps(self) -> Vec<String> {
        vec![self.to_owned()]
    }
}

impl IntoDeps for String {
    fn into_deps(self) -> Vec<String> {
        vec![self]
    }
}

impl IntoDeps for &String {
    fn into_deps(self) -> Vec<String> {
        vec![self.clone()]
    }
}

impl<S: Into<String>, const N: usize> IntoDeps for [S; N] {
    fn into_deps(self) -> Vec<String> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<S: Into<String>> IntoDeps for Vec<S> {
    fn into_deps(self) -> Vec<String> {
        self.into_iter().map(Into::into).collect()
    }
}

impl<S: AsRef<str>> IntoDeps for &[S] {
    fn into_deps(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().to_owned()).collect()
    }
}

/// What a condition may return: `bool`, or `Result<bool, E>` so that `?` works on input reads.
pub trait IntoConditionResult {
    /// Normalizes into `Result<bool, StageError>`.
    fn into_condition_result(self) -> Result<bool, StageError>;
}

impl IntoConditionResult for bool {
    fn into_condition_result(self) -> Result<bool, StageError> {
        Ok(self)
    }
}

impl<E: Into<StageError>> IntoConditionResult for Result<bool, E> {
    fn into_condition_result(self) -> Result<bool, StageError> {
        self.map_err(Into::into)
    }
}

/// One stage's definition: name, stage, kind, dependencies and optional condition.
///
/// Use it with [`Pipeline::add`](crate::Pipeline::add) and the shape helpers; `(name, stage)` tuples convert into it.
///
/// ```
/// use stageflow::{StageContext, StageKind, StageOutput, StageSpec};
/// let spec = StageSpec::new("load", |_ctx: StageContext| async { StageOutput::ok() })
///     .after(["extract", "transform"])
///     .kind(StageKind::Work);
/// assert_eq!(spec.name(), "load");
/// assert_eq!(spec.dependencies(), ["extract", "transform"]);
/// ```
#[derive(Clone)]
pub struct StageSpec {
    pub(crate) name: String,
    pub(crate) stage: SharedStage,
    pub(crate) kind: Option<StageKind>,
    pub(crate) deps: Vec<String>,
    pub(crate) condition: Option<Condition>,
    /// Stage-level interceptors and guard retry; boxed so specs without them stay small.
    pub(crate) policy: Option<Box<SpecPolicy>>,
}

/// The stage-level interceptors and guard retry of a [`StageSpec`].
#[derive(Clone, Default)]
pub(crate) struct SpecPolicy {
    pub(crate) interceptors: Vec<Arc<dyn Interceptor>>,
    pub(crate) guard_retry: Option<GuardRetry>,
}

impl StageSpec {
    /// A stage named `name` running `stage`, with no dependencies.
    pub fn new(name: impl Into<String>, stage: impl Stage) -> Self {
        Self::from_shared(name, Arc::new(stage))
    }

    /// Like [`new`](Self::new) but reusing an already shared stage: many specs can point at one
    /// stage object without allocating per spec.
    pub fn from_shared(name: impl Into<String>, stage: Arc<dyn Stage>) -> Self {
        StageSpec {
            name: name.into(),
            stage,
            kind: None,
            deps: Vec::new(),
            condition: None,
            policy: None,
        }
    }

    pub(crate) fn policy_mut(&mut self) -> &mut SpecPolicy {
        self.policy.get_or_insert_with(Box::default)
    }

    /// Adds an interceptor around this stage only (see [`intercept`](crate::intercept)). It
    /// replaces a pipeline-level interceptor with the same [`name`](Interceptor::name).
    pub fn interceptor(mut self, interceptor: impl Interceptor) -> Self {
        self.policy_mut().interceptors.push(Arc::new(interceptor));
        self
    }

    /// Fails this stage when one execution takes longer than `limit`; see [`Timeout`].
    pub fn timeout(self, limit: std::time::Duration) -> Self {
        self.interceptor(Timeout::new(limit))
    }

    /// Retries this stage on retryable failures; see [`Retry`].
    pub fn retry(self, policy: RetryPolicy) -> Self {
        self.interceptor(Retry::new(policy))
    }

    /// Re-runs this guard's producer and then the guard when the guard fails; see
    /// [`GuardRetry`].
    pub fn guard_retry(mut self, policy: GuardRetry) -> Self {
        self.policy_mut().guard_retry = Some(policy);
        self
    }

    /// Adds dependencies: this stage starts only after all of them have finished.
    pub fn after(mut self, deps: impl IntoDeps) -> Self {
        self.deps.extend(deps.into_deps());
        self
    }

    /// Sets the kind (overriding [`Stage::kind`]).
    pub fn kind(mut self, kind: StageKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Runs the stage only when `condition` holds; otherwise it is skipped with reason
    /// `"condition not met"`. See [`Pipeline::when`](crate::Pipeline::when).
    pub fn when<F, R>(mut self, condition: F) -> Self
    where
        F: Fn(&ConditionInputs<'_>) -> R + Send + Sync + 'static,
        R: IntoConditionResult,
    {
        self.condition = Some(condition_from(condition));
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The declared dependencies, in declaration order.
    pub fn dependencies(&self) -> &[String] {
        &self.deps
    }

    /// The kind set on the spec, else the stage's own.
    pub fn effective_kind(&self) -> StageKind {
        self.kind.unwrap_or_else(|| self.stage.kind())
    }

    /// Whether two specs define the same stage: same name, the same stage object, kind,
    /// dependency set and condition object.
    pub(crate) fn same_definition(&self, other: &StageSpec) -> bool {
        let mut a = self.deps.clone();
        let mut b = other.deps.clone();
        a.sort_unstable();
        a.dedup();
        b.sort_unstable();
        b.dedup();
        let same_policy = match (&self.policy, &other.policy) {
            (None, None) => true,
            (Some(x), Some(y)) => {
                x.guard_retry == y.guard_retry
                    && x.interceptors.len() == y.interceptors.len()
                    && x.interceptors
                        .iter()
                        .zip(&y.interceptors)
                        .all(|(a, b)| Arc::ptr_eq(a, b))
            }
            _ => false,
        };
        self.name == other.name
            && same_policy
            && Arc::ptr_eq(&self.stage, &other.stage)
            && self.effective_kind() == other.effective_kind()
            && a == b
            && match (&self.condition, &other.condition) {
                (None, None) => true,
                (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                _ => false,
            }
    }
}

impl std::fmt::Debug for StageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageSpec")
            .field("name", &self.name)
            .field("kind", &self.effective_kind())
            .field("deps", &self.deps)
            .field("conditional", &self.condition.is_some())
            .field(
                "interceptors",
                &self
                    .policy
                    .as_ref()
                    .map(|p| p.interceptors.iter().map(|i| i.name()).collect::<Vec<_>>())
                    .unwrap_or_default(),
            )
            .finish()
    }
}

impl<N: Into<String>, S: Stage> From<(N, S)> for StageSpec {
    fn from((name, stage): (N, S)) -> Self {
        StageSpec::new(name, stage)
    }
}
