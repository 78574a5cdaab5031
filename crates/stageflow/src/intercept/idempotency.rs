//! Idempotent stages: replay a stored output for a key that was already processed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{priority, Fnv, Interceptor, Next};
use crate::context::StageContext;
use crate::error::{BoxError, StageError};
use crate::output::StageOutput;
use crate::stage::StageResult;

/// What an [`IdempotencyStore`] keeps per key.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredOutput {
    /// Hash of the parameters the output was computed from (the run input and the stage's
    /// inputs); see [`Idempotency`].
    pub params_hash: u64,
    /// The stored output.
    pub output: StageOutput,
}

/// Where [`Idempotency`] keeps outputs. Keys are already namespaced by pipeline and stage.
#[async_trait::async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// The record under `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<StoredOutput>, BoxError>;
    /// Stores `record` under `key`.
    async fn put(&self, key: &str, record: StoredOutput) -> Result<(), BoxError>;
}

/// An in-memory [`IdempotencyStore`], with an optional time to live (tokio's clock).
///
/// ```
/// use std::time::Duration;
/// use stageflow::intercept::MemoryIdempotencyStore;
/// let store = MemoryIdempotencyStore::new().ttl(Duration::from_secs(3600));
/// assert!(store.is_empty());
/// ```
#[derive(Debug, Default)]
pub struct MemoryIdempotencyStore {
    ttl: Option<Duration>,
    records: Mutex<HashMap<String, (Instant, StoredOutput)>>,
}

impl MemoryIdempotencyStore {
    /// An empty store whose records never expire.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records expire `ttl` after they were stored.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Number of records (expired ones included until next read).
    pub fn len(&self) -> usize {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// `true` when there is no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait::async_trait]
impl IdempotencyStore for MemoryIdempotencyStore {
    async fn get(&self, key: &str) -> Result<Option<StoredOutput>, BoxError> {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let expired = match (records.get(key), self.ttl) {
            (Some((at, _)), Some(ttl)) => at.elapsed() >= ttl,
            _ => false,
        };
        if expired {
            records.remove(key);
        }
        Ok(records.get(key).map(|(_, r)| r.clone()))
    }

    async fn put(&self, key: &str, record: StoredOutput) -> Result<(), BoxError> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned(), (Instant::now(), record));
        Ok(())
    }
}

type KeyFn = dyn Fn(&Value) -> Option<String> + Send + Sync;

/// Opt-in idempotency: a stage whose key was already processed with the same parameters is not
/// executed again; its stored output is returned instead.
///
/// - The key comes from the run's input through a closure (`None`: this run is not
///   idempotent). It is namespaced per pipeline and stage (`<pipeline>/<stage>/<key>`), so two
///   stages never share a record.
/// - The parameters are the run input and the stage's inputs (its dependencies' outputs), hashed
///   (64-bit FNV-1a over their JSON). The same key with different parameters fails the stage with
///   an [`IdempotencyMismatch`]; it is never silently replayed.
/// - Only `ok` outputs are stored. Concurrent executions with the same key are serialized, so
///   the second one replays the first one's output.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use stageflow::intercept::{Idempotency, MemoryIdempotencyStore};
/// use stageflow::{Pipeline, StageContext, StageOutput};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let charges = Arc::new(AtomicU32::new(0));
/// let c = charges.clone();
/// let graph = Pipeline::builder("billing")
///     .stage("charge", move |_ctx: StageContext| {
///         c.fetch_add(1, Ordering::SeqCst);
///         async { StageOutput::ok().with("receipt", "r-1") }
///     })
///     .interceptor(Idempotency::new(Arc::new(MemoryIdempotencyStore::new()), |input| {
///         input["order_id"].as_str().map(str::to_owned)
///     }))
///     .build()
///     .unwrap();
/// let input = serde_json::json!({"order_id": "o-7", "amount": 10});
/// graph.run(input.clone()).await.unwrap();
/// let again = graph.run(input).await.unwrap();
/// assert_eq!(charges.load(Ordering::SeqCst), 1);
/// assert_eq!(again.results().get_data::<String>("charge", "receipt").unwrap(), "r-1");
/// let changed = graph.run(serde_json::json!({"order_id": "o-7", "amount": 99})).await;
/// assert!(changed.unwrap_err().to_string().contains("different parameters"));
/// # }
/// ```
#[derive(Clone)]
pub struct Idempotency {
    store: Arc<dyn IdempotencyStore>,
    key: Arc<KeyFn>,
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency").finish_non_exhaustive()
    }
}

impl Idempotency {
    /// Idempotency keyed by `key(run input)`, stored in `store`.
    pub fn new<F>(store: Arc<dyn IdempotencyStore>, key: F) -> Self
    where
        F: Fn(&Value) -> Option<String> + Send + Sync + 'static,
    {
        Idempotency {
            store,
            key: Arc::new(key),
            locks: Arc::default(),
        }
    }

    /// The parameters hash of a stage execution: the run input and the stage's inputs, hashed
    /// as their compact JSON is written (no intermediate string).
    fn params_hash(ctx: &StageContext) -> u64 {
        let mut h = Fnv::new();
        // Writing JSON values into a hasher cannot fail.
        let _ = serde_json::to_writer(&mut h, ctx.input_value());
        for (name, output) in ctx.inputs() {
            h.bytes(&[0xff]);
            h.bytes(name.as_bytes());
            h.bytes(&[0xfe]);
            let _ = serde_json::to_writer(&mut h, output.data());
        }
        h.0
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lock) = locks.get(key) {
            return lock.clone();
        }
        locks.entry(key.to_owned()).or_default().clone()
    }
}

/// Removes a key's lock from the map when its last user is done (also when the stage's future
/// is dropped mid-way).
struct KeyLock<'a> {
    owner: &'a Idempotency,
    key: &'a str,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for KeyLock<'_> {
    fn drop(&mut self) {
        let mut locks = self
            .owner
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Ours and the map's: nobody else waits on it.
        if Arc::strong_count(&self.lock) <= 2 {
            locks.remove(self.key);
        }
    }
}

/// The same idempotency key came back with different parameters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("idempotency key `{key}` was already used for stage `{stage}` with different parameters")]
pub struct IdempotencyMismatch {
    /// The caller's key (not namespaced).
    pub key: String,
    /// The stage.
    pub stage: String,
}

#[async_trait::async_trait]
impl Interceptor for Idempotency {
    fn name(&self) -> &str {
        "idempotency"
    }

    fn priority(&self) -> i32 {
        priority::IDEMPOTENCY
    }

    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        let Some(key) = (self.key)(ctx.input_value()) else {
            return next.run(ctx).await;
        };
        let full_key = format!("{}/{}/{}", ctx.pipeline_name(), ctx.stage_name(), key);
        let params_hash = Self::params_hash(&ctx);
        let entry = KeyLock {
            owner: self,
            key: &full_key,
            lock: self.lock_for(&full_key),
        };
        // Released on every return, before `entry` drops the key's lock from the map.
        let _held = entry.lock.lock().await;
        match self.store.get(&full_key).await {
            Err(e) => return Err(store_failed("read", &full_key, &e)),
            Ok(Some(record)) if record.params_hash == params_hash => {
                ctx.emit_event("idempotency.replayed", serde_json::json!({ "key": key }));
                return Ok(record.output);
            }
            Ok(Some(_)) => {
                return Err(StageError::from(IdempotencyMismatch {
                    key,
                    stage: ctx.stage_name().to_owned(),
                }));
            }
            Ok(None) => {}
        }
        let output = match next.run(ctx).await {
            Ok(output) if output.is_ok() => output,
            other => return other,
        };
        let record = StoredOutput {
            params_hash,
            output: output.clone(),
        };
        match self.store.put(&full_key, record).await {
            Ok(()) => Ok(output),
            Err(e) => Err(store_failed("write", &full_key, &e)),
        }
    }
}

fn store_failed(op: &str, key: &str, error: &BoxError) -> StageError {
    StageError::msg(format!(
        "idempotency store {op} failed for `{key}`: {error}"
    ))
}
