//! Interceptors: ordering, short-circuits, scopes, and every built-in, deterministically (tokio's
//! paused clock).

mod common;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use stageflow::intercept::{
    hooks, Before, BreakerState, CircuitBreaker, ConcurrencyLimit, Hooks, Idempotency, Interceptor,
    InterceptorExt, Jitter, MemoryIdempotencyStore, Next, RateLimit, Retry, RetryPolicy, Timeout,
};
use stageflow::{
    async_trait, ErrorCode, GuardRetry, Pipeline, RunOptions, StageContext, StageError, StageKind,
    StageOutput, StageResult,
};
use tokio::time::Instant;

use common::{recorded_ok, ReadyOk};

type Log = Arc<Mutex<Vec<String>>>;

struct Tag {
    name: &'static str,
    priority: i32,
    log: Log,
}

#[async_trait]
impl Interceptor for Tag {
    fn name(&self) -> &str {
        self.name
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    async fn intercept(&self, ctx: StageContext, next: Next<'_>) -> StageResult {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}>{}", self.name, ctx.stage_name()));
        let r = next.run(ctx).await;
        self.log.lock().unwrap().push(format!("<{}", self.name));
        r
    }
}

fn tag(name: &'static str, priority: i32, log: &Log) -> Tag {
    Tag {
        name,
        priority,
        log: log.clone(),
    }
}

fn logging_stage(log: &Log) -> impl Fn(StageContext) -> ReadyOk + Send + Sync {
    let log = log.clone();
    move |ctx: StageContext| {
        log.lock()
            .unwrap()
            .push(format!("run {}", ctx.stage_name()));
        ReadyOk
    }
}

fn log_of(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[tokio::test]
async fn chain_is_an_onion_ordered_by_priority_then_registration() {
    let log: Log = Arc::default();
    let graph = Pipeline::builder("p")
        .intercept(tag("inner", 10, &log))
        .intercept(tag("outer", -5, &log))
        .intercept(tag("middle_a", 0, &log))
        .intercept(tag("middle_b", 0, &log))
        .stage("s", logging_stage(&log))
        .build()
        .unwrap();
    assert_eq!(
        graph.interceptors_of("s").unwrap(),
        ["outer", "middle_a", "middle_b", "inner"]
    );
    graph.run(()).await.unwrap();
    assert_eq!(
        log_of(&log),
        [
            "outer>s",
            "middle_a>s",
            "middle_b>s",
            "inner>s",
            "run s",
            "<inner",
            "<middle_b",
            "<middle_a",
            "<outer"
        ]
    );
}

#[tokio::test]
async fn scopes_all_stages_kinds_and_stage_level_override() {
    let log: Log = Arc::default();
    let graph = Pipeline::builder("p")
        .intercept(tag("all", 0, &log))
        .intercept_stages(["b"], tag("only_b", 1, &log))
        .intercept_kind(StageKind::Guard, tag("guards", 2, &log))
        .stage("a", logging_stage(&log))
        .stage("b", logging_stage(&log))
        .stage("c", logging_stage(&log))
        .kind(StageKind::Guard)
        .interceptor(tag("all", 7, &log)) // replaces the pipeline-level "all" on c
        .build()
        .unwrap();
    assert_eq!(graph.interceptors_of("a").unwrap(), ["all"]);
    assert_eq!(graph.interceptors_of("b").unwrap(), ["all", "only_b"]);
    assert_eq!(graph.interceptors_of("c").unwrap(), ["guards", "all"]);
    assert_eq!(graph.interceptors_of("x"), None);

    // A stage without interceptors is stored unwrapped.
    let bare = Pipeline::builder("bare")
        .stage("a", logging_stage(&log))
        .build()
        .unwrap();
    assert!(bare.interceptors_of("a").unwrap().is_empty());
}

#[test]
fn interceptor_for_an_unknown_stage_does_not_build() {
    let log: Log = Arc::default();
    let err = Pipeline::builder("p")
        .intercept_stages(["lod"], tag("t", 0, &log))
        .stage("load", logging_stage(&log))
        .build()
        .unwrap_err();
    assert_eq!(err.first().code, ErrorCode::InvalidPolicy);
    assert!(err.first().message.contains("did you mean `load`"), "{err}");
}

struct Gate;

#[async_trait]
impl Hooks for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    async fn before(&self, ctx: &StageContext) -> Before {
        match ctx.stage_name() {
            "denied" => Before::Fail("denied: not allowed".into()),
            "skipped" => Before::Skip("feature off".into()),
            "answered" => Before::Respond(Ok(StageOutput::ok().with("cached", true))),
            _ => Before::Continue,
        }
    }
    async fn on_error(&self, _ctx: &StageContext, error: StageError) -> StageResult {
        Ok(StageOutput::ok().with("recovered", error.to_string()))
    }
    async fn after(&self, _ctx: &StageContext, result: StageResult) -> StageResult {
        result.map(|out| out.with("after", true))
    }
}

#[tokio::test]
async fn hooks_short_circuit_with_real_status_and_recover_errors() {
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let stage = move |ctx: StageContext| {
        r.fetch_add(1, Ordering::SeqCst);
        async move {
            if ctx.stage_name() == "erroring" {
                Err(StageError::msg("boom"))
            } else {
                Ok(StageOutput::ok())
            }
        }
    };
    let graph = Pipeline::builder("p")
        .intercept(hooks(Gate))
        .stage("skipped", stage.clone())
        .stage("answered", stage.clone())
        .stage("erroring", stage.clone())
        .build()
        .unwrap();
    let report = graph.run(()).await.unwrap();
    let results = report.results();
    let skipped = results.get("skipped").unwrap();
    assert!(skipped.is_skipped());
    assert_eq!(skipped.message(), Some("feature off"));
    assert!(results.get_data::<bool>("answered", "cached").unwrap());
    assert!(!results
        .get("answered")
        .unwrap()
        .data()
        .contains_key("after"));
    assert_eq!(
        results.get_data::<String>("erroring", "recovered").unwrap(),
        "boom"
    );
    assert!(results.get_data::<bool>("erroring", "after").unwrap());
    assert_eq!(ran.load(Ordering::SeqCst), 1, "only `erroring` ran");

    let denied = Pipeline::builder("p")
        .intercept(hooks(Gate))
        .stage("denied", stage)
        .build()
        .unwrap();
    let failure = denied.run(()).await.unwrap_err();
    assert_eq!(
        failure.to_string(),
        "stage `denied` failed: denied: not allowed"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 1, "a denied stage never runs");
}

fn sleeper(d: Duration) -> impl Fn(StageContext) -> tokio::time::Sleep + Send + Sync {
    move |_ctx: StageContext| tokio::time::sleep(d)
}

// ---------------------------------------------------------------------------------------------
// Timeout

#[tokio::test(start_paused = true)]
async fn timeout_boundaries() {
    let limit = Duration::from_millis(250);
    let run = |d: Duration| async move {
        let graph = Pipeline::builder("p")
            .stage("s", sleeper(d))
            .timeout(limit)
            .build()
            .unwrap();
        let t = Instant::now();
        (graph.run(()).await, t.elapsed())
    };
    let (ok, _) = run(Duration::from_millis(249)).await;
    assert!(ok.is_ok());
    // Finishing exactly at the limit still counts (the stage is polled before the timer).
    let (ok, _) = run(limit).await;
    assert!(ok.is_ok());
    let (err, elapsed) = run(Duration::from_millis(251)).await;
    let failure = err.unwrap_err();
    assert_eq!(
        failure.to_string(),
        "stage `s` failed: timed out after 250ms"
    );
    assert_eq!(elapsed, limit);
}

#[tokio::test(start_paused = true)]
async fn stage_timeout_overrides_pipeline_timeout_and_no_default_timeout() {
    let graph = Pipeline::builder("p")
        .intercept(Timeout::new(Duration::from_secs(1)))
        .stage("long", sleeper(Duration::from_secs(5)))
        .timeout(Duration::from_secs(10))
        .stage("short", sleeper(Duration::from_secs(2)))
        .build()
        .unwrap();
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(failure.stage(), "short");
    assert_eq!(
        failure.to_string(),
        "stage `short` failed: timed out after 1s"
    );
    // No timeout configured: an hour-long stage is fine.
    let graph = Pipeline::builder("p")
        .stage("hour", sleeper(Duration::from_secs(3600)))
        .build()
        .unwrap();
    graph.run(()).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Retry

/// A stage that records when each attempt started and fails the first `fail` attempts with
/// `make_failure`.
fn flaky(
    fail: u32,
    times: &Arc<Mutex<Vec<Instant>>>,
    make_failure: fn() -> StageResult,
) -> impl Fn(StageContext) -> std::future::Ready<StageResult> + Send + Sync {
    let times = times.clone();
    let calls = Arc::new(AtomicU32::new(0));
    move |_ctx: StageContext| {
        times.lock().unwrap().push(Instant::now());
        let n = calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if n < fail {
            make_failure()
        } else {
            Ok(StageOutput::ok().with("attempt", n + 1))
        })
    }
}

fn gaps(times: &Arc<Mutex<Vec<Instant>>>) -> Vec<Duration> {
    let t = times.lock().unwrap();
    t.windows(2).map(|w| w[1] - w[0]).collect()
}

fn no_jitter(attempts: u32) -> RetryPolicy {
    RetryPolicy::attempts(attempts)
        .initial_delay(Duration::from_millis(100))
        .multiplier(2.0)
        .jitter(Jitter::None)
}

#[tokio::test(start_paused = true)]
async fn retry_exact_attempts_and_delays_with_events() {
    let times = Arc::default();
    let graph = Pipeline::builder("p")
        .stage("flaky", flaky(2, &times, || Ok(StageOutput::retry("503"))))
        .retry(no_jitter(3))
        .build()
        .unwrap();
    let (report, sink) = recorded_ok(&graph, RunOptions::new()).await;
    assert_eq!(
        report
            .results()
            .get_data::<u32>("flaky", "attempt")
            .unwrap(),
        3
    );
    assert_eq!(
        gaps(&times),
        [Duration::from_millis(100), Duration::from_millis(200)]
    );
    let retried: Vec<_> = sink
        .events()
        .into_iter()
        .filter(|e| e.event_type() == "stage.flaky.retried")
        .map(|e| (e.data["attempt"].clone(), e.data["delay_ms"].clone()))
        .collect();
    assert_eq!(
        retried,
        [(json!(2), json!(100.0)), (json!(3), json!(200.0))]
    );
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_after_exactly_the_configured_attempts() {
    let times = Arc::default();
    let graph = Pipeline::builder("p")
        .stage(
            "down",
            flaky(u32::MAX, &times, || {
                Err(StageError::msg("connection refused").retryable())
            }),
        )
        .retry(no_jitter(3).max_delay(Duration::from_millis(150)))
        .build()
        .unwrap();
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(times.lock().unwrap().len(), 3);
    assert_eq!(
        gaps(&times),
        [Duration::from_millis(100), Duration::from_millis(150)]
    );
    assert_eq!(
        failure.to_string(),
        "stage `down` failed: connection refused (gave up after 3 attempts)"
    );
}

#[tokio::test(start_paused = true)]
async fn non_retryable_errors_and_timeouts_are_not_retried_unless_asked() {
    let times = Arc::default();
    let graph = Pipeline::builder("p")
        .stage(
            "bad",
            flaky(u32::MAX, &times, || Err(StageError::msg("bad request"))),
        )
        .retry(no_jitter(5))
        .build()
        .unwrap();
    graph.run(()).await.unwrap_err();
    assert_eq!(times.lock().unwrap().len(), 1);

    // Timeouts: not retried by default...
    let calls = Arc::new(AtomicU32::new(0));
    let slow_then_fast = |calls: Arc<AtomicU32>| {
        move |_ctx: StageContext| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                StageOutput::ok()
            }
        }
    };
    let graph = Pipeline::builder("p")
        .stage("slow", slow_then_fast(calls.clone()))
        .timeout(Duration::from_secs(1))
        .retry(no_jitter(3))
        .build()
        .unwrap();
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(
        failure.to_string(),
        "stage `slow` failed: timed out after 1s"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // ...and retried when asked, each attempt with its own timeout.
    let calls = Arc::new(AtomicU32::new(0));
    let graph = Pipeline::builder("p")
        .stage("slow", slow_then_fast(calls.clone()))
        .timeout(Duration::from_secs(1))
        .retry(no_jitter(3).retry_timeouts(true))
        .build()
        .unwrap();
    let t = Instant::now();
    graph.run(()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(t.elapsed(), Duration::from_millis(1100));
}

#[tokio::test(start_paused = true)]
async fn seeded_jitter_is_reproducible_and_bounded() {
    let policy = RetryPolicy::attempts(4)
        .initial_delay(Duration::from_millis(100))
        .jitter(Jitter::Full)
        .seed(42);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let times = Arc::default();
        let graph = Pipeline::builder("p")
            .stage("s", flaky(3, &times, || Ok(StageOutput::retry("again"))))
            .retry(policy.clone())
            .build()
            .unwrap();
        graph.run(()).await.unwrap();
        runs.push(gaps(&times));
    }
    assert_eq!(runs[0], runs[1]);
    for (i, gap) in runs[0].iter().enumerate() {
        assert!(*gap <= policy.base_delay(i as u32 + 1), "{gap:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Circuit breaker

#[tokio::test(start_paused = true)]
async fn breaker_open_half_open_closed() {
    let breaker = CircuitBreaker::new(2, Duration::from_secs(30));
    let calls = Arc::new(AtomicU32::new(0));
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (c, h) = (calls.clone(), healthy.clone());
    let graph = Pipeline::builder("p")
        .intercept(breaker.clone())
        .stage("call", move |_ctx: StageContext| {
            c.fetch_add(1, Ordering::SeqCst);
            let ok = h.load(Ordering::SeqCst);
            async move {
                if ok {
                    StageOutput::ok()
                } else {
                    StageOutput::fail("503")
                }
            }
        })
        .build()
        .unwrap();
    assert_eq!(
        breaker.state("call"),
        Some(BreakerState::Closed { failures: 0 })
    );
    graph.run(()).await.unwrap_err();
    assert_eq!(
        breaker.state("call"),
        Some(BreakerState::Closed { failures: 1 })
    );
    graph.run(()).await.unwrap_err();
    assert_eq!(
        breaker.state("call"),
        Some(BreakerState::Open {
            remaining: Duration::from_secs(30)
        })
    );
    // Open: fails at once, with a clear error, without calling the stage.
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        failure.to_string(),
        "stage `call` failed: circuit open: stage `call` failed 2 times in a row; next probe in 30s"
    );
    // Half-open after the interval; a failed probe opens it again.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(
        breaker.state("call"),
        Some(BreakerState::Open {
            remaining: Duration::ZERO
        })
    );
    graph.run(()).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(matches!(
        breaker.state("call"),
        Some(BreakerState::Open { .. })
    ));
    // A successful probe closes it.
    tokio::time::advance(Duration::from_secs(30)).await;
    healthy.store(true, Ordering::SeqCst);
    graph.run(()).await.unwrap();
    assert_eq!(
        breaker.state("call"),
        Some(BreakerState::Closed { failures: 0 })
    );
    graph.run(()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn breaker_lets_one_probe_at_a_time() {
    let breaker = CircuitBreaker::new(1, Duration::from_secs(10));
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let graph = Pipeline::builder("p")
        .intercept(breaker.clone())
        .stage("s", move |_ctx: StageContext| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    return StageOutput::fail("first call fails");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                StageOutput::ok()
            }
        })
        .build()
        .unwrap();
    graph.run(()).await.unwrap_err();
    tokio::time::advance(Duration::from_secs(10)).await;
    let (probe, other) = tokio::join!(graph.run(()), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        graph.run(()).await
    });
    probe.unwrap();
    let failure = other.unwrap_err();
    assert!(
        failure.to_string().contains("has a probe in flight"),
        "{failure}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        breaker.state("s"),
        Some(BreakerState::Closed { failures: 0 })
    );
}

#[tokio::test(start_paused = true)]
async fn breaker_counts_a_retried_failure_once_and_is_per_stage() {
    let breaker = CircuitBreaker::new(2, Duration::from_secs(10));
    let graph = Pipeline::builder("p")
        .intercept(breaker.clone())
        .intercept(Retry::new(no_jitter(3)))
        .stage("bad", |_ctx: StageContext| async {
            StageOutput::retry("flaky")
        })
        .stage("good", |_ctx: StageContext| async { StageOutput::ok() })
        .build()
        .unwrap();
    let failure = graph.run(()).await.unwrap_err();
    assert!(failure.to_string().contains("gave up after 3 attempts"));
    assert_eq!(
        breaker.state("bad"),
        Some(BreakerState::Closed { failures: 1 })
    );
    assert_eq!(
        breaker.state("good"),
        Some(BreakerState::Closed { failures: 0 })
    );
}

// ---------------------------------------------------------------------------------------------
// Concurrency and rate limits

fn tracking_stage(
    now: &Arc<AtomicUsize>,
    peak: &Arc<AtomicUsize>,
) -> impl Fn(StageContext) -> futures_util::future::BoxFuture<'static, StageOutput> + Send + Sync {
    let (now, peak) = (now.clone(), peak.clone());
    move |_ctx: StageContext| {
        let (now, peak) = (now.clone(), peak.clone());
        Box::pin(async move {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            StageOutput::ok()
        })
    }
}

#[tokio::test(start_paused = true)]
async fn per_stage_concurrency_limit_holds_across_runs() {
    let (now, peak) = (Arc::default(), Arc::default());
    let graph = Pipeline::builder("p")
        .stage("s", tracking_stage(&now, &peak))
        .interceptor(ConcurrencyLimit::per_stage(2))
        .build()
        .unwrap();
    let t = Instant::now();
    let runs = futures_util::future::join_all((0..5).map(|_| graph.run(()))).await;
    assert!(runs.iter().all(|r| r.is_ok()));
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    assert_eq!(t.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn shared_kind_limit_spans_stages() {
    let (now, peak) = (Arc::default(), Arc::default());
    let limit = ConcurrencyLimit::shared(3);
    let graph = Pipeline::builder("p")
        .intercept_kind(StageKind::Agent, limit.clone())
        .with_parallel((), 9, |i| {
            stageflow::StageSpec::new(format!("agent_{i}"), tracking_stage(&now, &peak))
                .kind(StageKind::Agent)
        })
        .build()
        .unwrap();
    let t = Instant::now();
    graph.run(()).await.unwrap();
    assert_eq!(peak.load(Ordering::SeqCst), 3);
    assert_eq!(t.elapsed(), Duration::from_secs(3));
    assert_eq!(limit.available(), Some(3));
}

#[tokio::test(start_paused = true)]
async fn rate_limit_spaces_executions() {
    let times = Arc::new(Mutex::new(Vec::new()));
    let t2 = times.clone();
    let graph = Pipeline::builder("p")
        .intercept(RateLimit::shared(10, Duration::from_secs(1)).burst(2))
        .with_parallel((), 5, move |i| {
            let times = t2.clone();
            stageflow::StageSpec::new(format!("call_{i}"), move |_ctx: StageContext| {
                times.lock().unwrap().push(Instant::now());
                async { StageOutput::ok() }
            })
        })
        .build()
        .unwrap();
    let t = Instant::now();
    graph.run(()).await.unwrap();
    let mut offsets: Vec<u128> = times
        .lock()
        .unwrap()
        .iter()
        .map(|x| (*x - t).as_millis())
        .collect();
    offsets.sort_unstable();
    // A burst of 2, then one every 100 ms.
    assert_eq!(offsets, [0, 0, 100, 200, 300]);
}

// ---------------------------------------------------------------------------------------------
// Idempotency

#[tokio::test(start_paused = true)]
async fn idempotent_replay_per_stage_and_parameter_mismatch() {
    let store = Arc::new(MemoryIdempotencyStore::new());
    let calls = Arc::new(AtomicU32::new(0));
    let counting = |label: &'static str| {
        let calls = calls.clone();
        move |ctx: StageContext| {
            calls.fetch_add(1, Ordering::SeqCst);
            let amount: u32 = ctx.input_value()["amount"].as_u64().unwrap() as u32;
            async move {
                StageOutput::ok()
                    .with("label", label)
                    .with("amount", amount)
            }
        }
    };
    let graph = Pipeline::builder("billing")
        .intercept(Idempotency::new(store.clone(), |input| {
            input["order"].as_str().map(str::to_owned)
        }))
        .stage("charge", counting("charge"))
        .stage("email", counting("email"))
        .after("charge")
        .build()
        .unwrap();
    let input = json!({"order": "o-1", "amount": 10});
    let first = graph.run(input.clone()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(store.len(), 2, "one record per stage");
    let again = graph.run(input).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "replayed, not executed");
    // Each stage gets its own output back (keys are per stage).
    for stage in ["charge", "email"] {
        assert_eq!(
            again.results().get_data::<String>(stage, "label").unwrap(),
            stage
        );
        assert_eq!(again.results().get(stage), first.results().get(stage));
    }
    // Same key, different parameters: a clear error, nothing executed.
    let failure = graph
        .run(json!({"order": "o-1", "amount": 11}))
        .await
        .unwrap_err();
    assert_eq!(
        failure.to_string(),
        "stage `charge` failed: idempotency key `o-1` was already used for stage `charge` with different parameters"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // No key: not idempotent, runs every time.
    graph.run(json!({"amount": 1})).await.unwrap();
    graph.run(json!({"amount": 1})).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}

// ---------------------------------------------------------------------------------------------
// Guard retry

struct GuardCase {
    producer_runs: Arc<AtomicU32>,
    guard_runs: Arc<AtomicU32>,
}

/// `draft` outputs `value(n)` on its n-th run (0-based); `check` passes when `value >= pass_at`;
/// `publish` also depends on `draft`.
fn guarded(
    value: fn(u32) -> u32,
    pass_at: u32,
    policy: GuardRetry,
) -> (stageflow::Graph, GuardCase) {
    let case = GuardCase {
        producer_runs: Arc::default(),
        guard_runs: Arc::default(),
    };
    let (p, g) = (case.producer_runs.clone(), case.guard_runs.clone());
    let graph = Pipeline::builder("g")
        .stage("draft", move |_ctx: StageContext| {
            let n = p.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                StageOutput::ok().with("value", value(n))
            }
        })
        .stage("check", move |ctx: StageContext| {
            g.fetch_add(1, Ordering::SeqCst);
            async move {
                let v: u32 = ctx.get_from("draft", "value")?;
                Ok::<_, StageError>(if v >= pass_at {
                    StageOutput::ok()
                } else {
                    StageOutput::fail(format!("value {v} too low"))
                })
            }
        })
        .after("draft")
        .kind(StageKind::Guard)
        .guard_retry(policy)
        .stage("publish", |ctx: StageContext| async move {
            let v: u32 = ctx.get_from("draft", "value")?;
            Ok::<_, StageError>(StageOutput::ok().with("published", v))
        })
        .after("draft")
        .build()
        .unwrap();
    (graph, case)
}

#[tokio::test(start_paused = true)]
async fn guard_retry_recovers_and_dependents_see_the_accepted_output() {
    let (graph, case) = guarded(|n| n, 2, GuardRetry::attempts(5));
    let (report, sink) = recorded_ok(&graph, RunOptions::new()).await;
    assert_eq!(case.producer_runs.load(Ordering::SeqCst), 3);
    assert_eq!(case.guard_runs.load(Ordering::SeqCst), 3);
    assert_eq!(
        report.results().get_data::<u32>("draft", "value").unwrap(),
        2
    );
    assert_eq!(
        report
            .results()
            .get_data::<u32>("publish", "published")
            .unwrap(),
        2
    );
    assert_eq!(report.stats().succeeded, 3);
    let retried = sink
        .event_types()
        .into_iter()
        .filter(|t| t.ends_with(".retried"))
        .count();
    assert_eq!(
        retried, 4,
        "two attempts, each announced for producer and guard"
    );
}

#[tokio::test(start_paused = true)]
async fn guard_retry_attempt_limit() {
    let (graph, case) = guarded(
        |n| n,
        100,
        GuardRetry::attempts(3).stop_on_stagnation(false),
    );
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(case.guard_runs.load(Ordering::SeqCst), 3);
    assert_eq!(case.producer_runs.load(Ordering::SeqCst), 3);
    assert_eq!(
        failure.to_string(),
        "stage `check` failed: value 2 too low (guard retry exhausted after 3 attempts)"
    );
    assert!(!failure.partial_results().contains("publish"));
}

#[tokio::test(start_paused = true)]
async fn guard_retry_stops_on_stagnation() {
    let (graph, case) = guarded(|_| 1, 100, GuardRetry::attempts(10));
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(case.producer_runs.load(Ordering::SeqCst), 2);
    assert_eq!(case.guard_runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        failure.to_string(),
        "stage `check` failed: value 1 too low (guard retry stopped: `draft` produced the same output again)"
    );
}

#[tokio::test(start_paused = true)]
async fn guard_retry_time_limit() {
    // Each producer run takes 100 ms; the limit of 250 ms from the first failure (t=100ms)
    // cuts the third re-run short.
    let (graph, case) = guarded(
        |n| n,
        100,
        GuardRetry::attempts(10).time_limit(Duration::from_millis(250)),
    );
    let t = Instant::now();
    let failure = graph.run(()).await.unwrap_err();
    assert_eq!(t.elapsed(), Duration::from_millis(350));
    assert_eq!(case.producer_runs.load(Ordering::SeqCst), 4);
    assert_eq!(case.guard_runs.load(Ordering::SeqCst), 3);
    assert_eq!(
        failure.to_string(),
        "stage `check` failed: value 2 too low (guard retry time limit of 250ms reached)"
    );
}

#[test]
fn guard_retry_is_validated() {
    let noop = |_ctx: StageContext| async { StageOutput::ok() };
    let err = Pipeline::builder("p")
        .stage("a", noop)
        .stage("b", noop)
        .after("a")
        .guard_retry(GuardRetry::default())
        .build()
        .unwrap_err();
    assert_eq!(err.first().code, ErrorCode::InvalidPolicy);
    assert!(err.first().message.contains("kind `work`"), "{err}");
    let err = Pipeline::builder("p")
        .stage("a", noop)
        .stage("x", noop)
        .stage("g", noop)
        .after(["a", "x"])
        .kind(StageKind::Guard)
        .guard_retry(GuardRetry::default())
        .build()
        .unwrap_err();
    assert!(err.first().message.contains("name the one"), "{err}");
    let err = Pipeline::builder("p")
        .stage("a", noop)
        .stage("z", noop)
        .stage("g", noop)
        .after("a")
        .kind(StageKind::Guard)
        .guard_retry(GuardRetry::default().producer("z"))
        .build()
        .unwrap_err();
    assert!(
        err.first().message.contains("not one of its dependencies"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Full stack

#[tokio::test(start_paused = true)]
async fn full_stack_orders_sensibly() {
    let graph = Pipeline::builder("p")
        .intercept(Timeout::new(Duration::from_secs(1)))
        .intercept(RateLimit::per_stage(100, Duration::from_secs(1)))
        .intercept(ConcurrencyLimit::per_stage(4))
        .intercept(Retry::new(RetryPolicy::attempts(2)))
        .intercept(CircuitBreaker::new(3, Duration::from_secs(5)))
        .intercept(Idempotency::new(
            Arc::new(MemoryIdempotencyStore::new()),
            |_| None,
        ))
        .intercept(Timeout::new(Duration::from_secs(60)).with_priority(-1))
        .stage("s", |_ctx: StageContext| async { StageOutput::ok() })
        .build()
        .unwrap();
    // The second timeout has the same name, so it is a second layer only because both are
    // pipeline-level; the stage-level override rule applies to stage-level ones.
    assert_eq!(
        graph.interceptors_of("s").unwrap(),
        [
            "timeout",
            "idempotency",
            "circuit_breaker",
            "retry",
            "rate_limit",
            "concurrency_limit",
            "timeout"
        ]
    );
    graph.run(()).await.unwrap();
}
