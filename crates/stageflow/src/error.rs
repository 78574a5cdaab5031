//! Error types, one per place things can go wrong:
//!
//! - [`BuildError`] / [`ValidationError`]: the pipeline definition is wrong (found at build time);
//! - [`StageError`]: a stage's own error, returned with `?` from inside a stage;
//! - [`InputError`] / [`DataError`]: a stage read an input it may not read, or a value of the wrong type;
//! - [`RunFailure`](crate::RunFailure) (in [`run`](crate::run)): a run stopped on a failed stage.

use std::any::Any;
use std::fmt;
use std::time::Duration;

/// A boxed error that can cross threads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Reading a value out of [`OutputData`](crate::OutputData) failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The key is not in the data.
    #[error("no key `{key}` in output data (available: {})", list(available))]
    MissingKey {
        /// The key asked for.
        key: String,
        /// The keys that are present.
        available: Vec<String>,
    },
    /// The key is there but does not deserialize as the requested type.
    #[error("key `{key}` does not hold a {expected}: {source}")]
    WrongType {
        /// The key asked for.
        key: String,
        /// The Rust type asked for.
        expected: &'static str,
        /// serde's explanation.
        source: serde_json::Error,
    },
}

/// A stage read its inputs wrongly.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The stage asked for the output of a stage it does not depend on.
    #[error("stage `{stage}` read the output of `{requested}`, which is not one of its dependencies (declared: {})", list(declared))]
    Undeclared {
        /// The reading stage.
        stage: String,
        /// The stage whose output was requested.
        requested: String,
        /// The stage's declared dependencies.
        declared: Vec<String>,
    },
    /// A key searched across all inputs is present in more than one dependency.
    #[error("stage `{stage}`: key `{key}` is present in several dependencies ({}); use get_from to pick one", list(sources))]
    Ambiguous {
        /// The reading stage.
        stage: String,
        /// The key.
        key: String,
        /// The dependencies that hold it.
        sources: Vec<String>,
    },
    /// A key searched across all inputs is in none of them.
    #[error("stage `{stage}`: no dependency output has key `{key}`")]
    NotFound {
        /// The reading stage.
        stage: String,
        /// The key.
        key: String,
    },
    /// The dependency's output is there but the key or type is wrong.
    #[error("stage `{stage}` reading `{dependency}`: {source}")]
    Data {
        /// The reading stage.
        stage: String,
        /// The dependency read.
        dependency: String,
        /// What was wrong with the data.
        source: DataError,
    },
    /// The run input does not deserialize as the requested type.
    #[error("stage `{stage}`: the run input is not a {expected}: {source}")]
    RunInput {
        /// The reading stage.
        stage: String,
        /// The Rust type asked for.
        expected: &'static str,
        /// serde's explanation.
        source: serde_json::Error,
    },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// An error returned by a stage.
///
/// Any `std::error::Error` converts into it, so `?` works inside stages. Use
/// [`StageError::msg`] for a plain message and [`StageError::retryable`] to mark a failure that a
/// retry may fix.
///
/// ```
/// use stageflow::StageError;
/// let e = StageError::msg("upstream returned 503").retryable();
/// assert!(e.is_retryable());
/// assert_eq!(e.to_string(), "upstream returned 503");
/// let io: StageError = std::io::Error::other("disk full").into();
/// assert_eq!(io.to_string(), "disk full");
/// ```
pub struct StageError {
    source: BoxError,
    retryable: bool,
}

impl StageError {
    /// An error from a plain message.
    pub fn msg(message: impl Into<String>) -> Self {
        StageError {
            source: message.into().into(),
            retryable: false,
        }
    }

    /// An error from any boxed error.
    pub fn from_boxed(source: BoxError) -> Self {
        StageError {
            source,
            retryable: false,
        }
    }

    /// Marks the error as retryable.
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    /// `true` if a retry may fix it.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StageError {
    fn from(e: E) -> Self {
        StageError::from_boxed(Box::new(e))
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)?;
        // Include the cause chain: "reading config: file not found".
        let mut cause = self.source.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl fmt::Debug for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageError")
            .field("source", &self.source)
            .field("retryable", &self.retryable)
            .finish()
    }
}

/// Stable identifiers of validation errors. The string form (`SF001`...) never changes meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `SF001`: the pipeline has no stages.
    EmptyPipeline,
    /// `SF002`: two stages share a name.
    DuplicateStage,
    /// `SF003`: a stage name is empty or only whitespace.
    InvalidName,
    /// `SF004`: a dependency names a stage that does not exist.
    MissingDependency,
    /// `SF005`: a stage depends on itself.
    SelfDependency,
    /// `SF006`: the dependencies form a cycle.
    Cycle,
    /// `SF007`: a stage modifier (`after`, `kind`, `when`...) was called before any stage was added.
    NoCurrentStage,
    /// `SF008`: two composed pipelines define the same stage differently.
    ComposeConflict,
    /// `SF009`: an interceptor or guard retry does not fit the pipeline (it names a stage that
    /// does not exist, or a guard retry is set on a stage that is not a guard or names a producer
    /// that is not one of its dependencies).
    InvalidPolicy,
}

impl ErrorCode {
    /// The stable code, e.g. `"SF004"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::EmptyPipeline => "SF001",
            ErrorCode::DuplicateStage => "SF002",
            ErrorCode::InvalidName => "SF003",
            ErrorCode::MissingDependency => "SF004",
            ErrorCode::SelfDependency => "SF005",
            ErrorCode::Cycle => "SF006",
            ErrorCode::NoCurrentStage => "SF007",
            ErrorCode::ComposeConflict => "SF008",
            ErrorCode::InvalidPolicy => "SF009",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem found in a pipeline definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    /// Stable code.
    pub code: ErrorCode,
    /// The stage the problem is attached to, when there is one.
    pub stage: Option<String>,
    /// Human-readable explanation, including suggestions.
    pub message: String,
    /// For [`ErrorCode::Cycle`]: the stages of one cycle, in execution order, first repeated last.
    pub cycle: Vec<String>,
}

impl ValidationError {
    pub(crate) fn new(code: ErrorCode, stage: Option<&str>, message: String) -> Self {
        ValidationError {
            code,
            stage: stage.map(str::to_owned),
            message,
            cycle: Vec::new(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.code, self.message)
    }
}

impl std::error::Error for ValidationError {}

/// A pipeline could not be built: every problem found, in definition order.
///
/// Validation stops collecting after [`BuildError::MAX_ERRORS`] problems so that a generated
/// pipeline with a million bad references still fails fast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError {
    /// Name of the pipeline.
    pub pipeline: String,
    /// The problems, at least one.
    pub errors: Vec<ValidationError>,
}

impl BuildError {
    /// The most problems one build reports.
    pub const MAX_ERRORS: usize = 50;

    /// `true` if any problem has `code`.
    pub fn has(&self, code: ErrorCode) -> bool {
        self.errors.iter().any(|e| e.code == code)
    }

    /// The first problem.
    pub fn first(&self) -> &ValidationError {
        &self.errors[0]
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "pipeline `{}` is invalid ({n} problem{})",
            self.pipeline,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BuildError {}

/// A stage (or a cleanup action) ran longer than its time limit: a
/// [`Timeout`](crate::intercept::Timeout), or [`RunOptions::cleanup_timeout`](crate::RunOptions::cleanup_timeout). Find it in a [`StageError`] with
/// `error.source().downcast_ref::<TimeoutError>()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {limit:?}")]
pub struct TimeoutError {
    /// The limit that was exceeded.
    pub limit: Duration,
}

/// The message of a caught panic's payload (`panic!("...")` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
