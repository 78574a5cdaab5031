//! Observability: lifecycle event sequences, sinks, spans, progress, memory, watchdog, summary,
//! wide events.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use stageflow::observe::memory::{self, CountingAlloc};
use stageflow::observe::{
    ChannelSink, EventKind, FanOut, JsonlSink, MemorySink, NoopSink, Progress, ProgressObserver,
    SummaryOptions, Watchdog, WhenFull, WideEvents,
};
use stageflow::{
    CancellationToken, Graph, Pipeline, RunOptions, Stage, StageContext, StageOutput, StageSpec,
    StageStatus,
};

use common::{recorded_err, recorded_ok, ReadyOk};

// Counts allocations per thread so per-stage allocation figures can be checked.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

/// A stage that succeeds on its first poll.
fn ok_stage() -> impl Fn(StageContext) -> ReadyOk + Send + Sync + 'static {
    |_ctx| ReadyOk
}

/// A stage that sleeps `ms` milliseconds, then succeeds.
fn sleepy(ms: u64) -> impl Stage {
    move |_ctx: StageContext| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        StageOutput::ok()
    }
}

/// `pipeline`: `names[0] -> names[1] -> names[2]`, where the middle stage is `middle` and the
/// others succeed at once.
fn chain_around(pipeline: &str, names: [&str; 3], middle: impl Stage) -> Graph {
    Pipeline::builder(pipeline)
        .stage(names[0], ok_stage())
        .stage(names[1], middle)
        .after(names[0])
        .stage(names[2], ok_stage())
        .after(names[1])
        .build()
        .unwrap()
}

/// A watchdog reporting a stall after `idle_ms` milliseconds without progress, checking every
/// 10 ms.
fn fast_watchdog(idle_ms: u64) -> Watchdog {
    Watchdog::new(Duration::from_millis(idle_ms)).check_every(Duration::from_millis(10))
}

/// A scratch directory `stageflow-obs-{tag}-{pid}` under the system temp directory, created.
fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stageflow-obs-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Installs a [`capture::Capture`] layer as this thread's default subscriber, for as long as the
/// returned guard lives.
fn capture_tracing() -> (capture::Capture, tracing::subscriber::DefaultGuard) {
    use tracing_subscriber::layer::SubscriberExt;
    let capture = capture::Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let guard = tracing::subscriber::set_default(subscriber);
    (capture, guard)
}

/// Checks `actual` against `groups`: each group must appear as a contiguous block, in order;
/// inside a group the order is free (parallel siblings), except that each stage's `started` must
/// come before its other events.
fn assert_groups(actual: &[String], groups: &[&[&str]]) {
    let mut pos = 0;
    for group in groups {
        let end = pos + group.len();
        assert!(
            end <= actual.len(),
            "too few events: expected group {group:?} at {pos}, got {actual:#?}"
        );
        let mut got: Vec<&str> = actual[pos..end].iter().map(String::as_str).collect();
        let mut want: Vec<&str> = group.to_vec();
        // Within a group, `stage.x.started` precedes other `stage.x.*` events.
        for (i, ev) in got.iter().enumerate() {
            if let Some(stage) = ev
                .strip_prefix("stage.")
                .and_then(|r| r.rsplit_once('.'))
                .map(|p| p.0)
            {
                if !ev.ends_with(".started") {
                    let started = format!("stage.{stage}.started");
                    if let Some(j) = got.iter().position(|e| *e == started) {
                        assert!(j < i, "{started} after {ev} in {actual:#?}");
                    }
                }
            }
        }
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "group at {pos} differs; all events: {actual:#?}");
        pos = end;
    }
    assert_eq!(
        pos,
        actual.len(),
        "unexpected extra events: {:#?}",
        &actual[pos..]
    );
}

/// Observed runs must stay spawnable: the run future is `Send`.
#[test]
fn observed_run_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let graph = chain(1);
    let (progress, _rx) = ProgressObserver::watch();
    let fut = graph.run_with(
        (),
        RunOptions::new()
            .events(MemorySink::new())
            .progress(progress)
            .watchdog(Watchdog::new(Duration::from_secs(1)))
            .memory(true)
            .summary(SummaryOptions::default()),
    );
    assert_send(&fut);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_success_sequence() {
    let graph = Pipeline::builder("diamond")
        .stage("a", ok_stage())
        .stage("b", sleepy(5))
        .after("a")
        .stage("c", sleepy(1))
        .after("a")
        .stage("d", ok_stage())
        .after(["b", "c"])
        .build()
        .unwrap();
    let (report, sink) = recorded_ok(&graph, RunOptions::new()).await;
    assert_groups(
        &sink.event_types(),
        &[
            &["pipeline.created"],
            &["pipeline.started"],
            &["stage.a.started"],
            &["stage.a.completed"],
            &[
                "stage.b.started",
                "stage.c.started",
                "stage.b.completed",
                "stage.c.completed",
            ],
            &["stage.d.started"],
            &["stage.d.completed"],
            &["pipeline.completed"],
        ],
    );
    let events = sink.events();
    let obs = report.observability().unwrap();
    assert_eq!(obs.events_emitted, events.len() as u64);
    assert_eq!(obs.events_dropped, 0);
    // Every event carries the run id and pipeline; stage events their stage, kind and status.
    for e in &events {
        assert_eq!(e.run_id, report.identity().run_id);
        assert_eq!(&*e.pipeline, "diamond");
    }
    let b_done = events
        .iter()
        .find(|e| e.event_type() == "stage.b.completed")
        .unwrap();
    assert_eq!(b_done.stage_name(), Some("b"));
    assert_eq!(b_done.stage_kind, Some(stageflow::StageKind::Work));
    assert_eq!(b_done.status.as_deref(), Some("ok"));
    assert!(b_done.duration.unwrap() >= Duration::from_millis(5));
    let end = events.last().unwrap();
    assert_eq!(end.status.as_deref(), Some("completed"));
    assert_eq!(end.data["stage_counts"]["succeeded"], 4);
    // Timestamps never go backwards.
    for w in events.windows(2) {
        assert!(w[0].timestamp <= w[1].timestamp, "{} after {}", w[0], w[1]);
    }
}

#[tokio::test]
async fn failure_in_the_middle_of_a_chain() {
    let graph = chain_around("chain", ["s0", "s1", "s2"], |_ctx: StageContext| async {
        StageOutput::fail("disk full")
    });
    let (failure, sink) = recorded_err(&graph, RunOptions::new()).await;
    assert_eq!(
        sink.event_types(),
        [
            "pipeline.created",
            "pipeline.started",
            "stage.s0.started",
            "stage.s0.completed",
            "stage.s1.started",
            "stage.s1.failed",
            "pipeline.failed",
        ]
    );
    let events = sink.events();
    let failed = &events[5];
    assert_eq!(failed.status.as_deref(), Some("fail"));
    assert_eq!(failed.error.as_deref(), Some("disk full"));
    let end = &events[6];
    assert_eq!(end.kind, EventKind::PipelineFailed);
    assert_eq!(end.error.as_deref(), Some("stage `s1` failed: disk full"));
    assert_eq!(end.data["failed_stage"], "s1");
    assert_eq!(failure.observability().unwrap().events_emitted, 7);
}

#[tokio::test]
async fn errors_panics_and_condition_errors_are_failed_events() {
    let graph = Pipeline::builder("p")
        .stage("boom", |_ctx: StageContext| async {
            if true {
                panic!("kaboom");
            }
            StageOutput::ok()
        })
        .build()
        .unwrap();
    let (_, sink) = recorded_err(&graph, RunOptions::new()).await;
    let events = sink.events();
    let failed = events
        .iter()
        .find(|e| e.kind == EventKind::StageFailed)
        .unwrap();
    assert_eq!(failed.status.as_deref(), Some("panic"));
    assert!(failed.error.as_deref().unwrap().contains("kaboom"));

    let graph = Pipeline::builder("p")
        .stage("a", ok_stage())
        .stage("b", ok_stage())
        .after("a")
        .when(|_| Err::<bool, _>(stageflow::StageError::msg("bad input")))
        .build()
        .unwrap();
    let (_, sink) = recorded_err(&graph, RunOptions::new()).await;
    assert_eq!(
        sink.event_types(),
        [
            "pipeline.created",
            "pipeline.started",
            "stage.a.started",
            "stage.a.completed",
            "stage.b.failed",
            "pipeline.failed",
        ]
    );
    assert_eq!(sink.events()[4].status.as_deref(), Some("condition_error"));
}

#[tokio::test]
async fn cancel_by_stage_sequence() {
    let graph = chain_around("chain", ["a", "b", "c"], |_ctx: StageContext| async {
        StageOutput::cancel("enough")
    });
    let (report, sink) = recorded_ok(&graph, RunOptions::new()).await;
    assert!(!report.is_completed());
    assert_eq!(
        sink.event_types(),
        [
            "pipeline.created",
            "pipeline.started",
            "stage.a.started",
            "stage.a.completed",
            "stage.b.started",
            "stage.b.cancelled",
            "pipeline.cancelled",
        ]
    );
    let events = sink.events();
    assert_eq!(events[5].status.as_deref(), Some("cancel"));
    assert_eq!(events[5].error.as_deref(), Some("enough"));
    assert_eq!(events[6].status.as_deref(), Some("cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_by_caller_reports_running_stages_cancelled() {
    let graph = Pipeline::builder("p")
        .stage("root", ok_stage())
        .stage("slow1", |ctx: StageContext| async move {
            ctx.cancelled().await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            StageOutput::ok()
        })
        .after("root")
        .stage("slow2", |_ctx: StageContext| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StageOutput::ok()
        })
        .after("root")
        .stage("never", ok_stage())
        .after(["slow1", "slow2"])
        .build()
        .unwrap();
    let token = CancellationToken::new();
    let canceller = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        canceller.cancel();
    });
    let (report, sink) = recorded_ok(&graph, RunOptions::new().cancel_token(token)).await;
    assert!(!report.is_completed());
    assert_groups(
        &sink.event_types(),
        &[
            &["pipeline.created"],
            &["pipeline.started"],
            &["stage.root.started"],
            &["stage.root.completed"],
            &["stage.slow1.started", "stage.slow2.started"],
            &["stage.slow1.cancelled", "stage.slow2.cancelled"],
            &["pipeline.cancelled"],
        ],
    );
    let aborted: Vec<_> = sink
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::StageCancelled)
        .collect();
    assert!(aborted
        .iter()
        .all(|e| e.status.as_deref() == Some("aborted") && e.duration.is_some()));
}

#[tokio::test]
async fn skip_sequences() {
    // b is skipped by its condition (never invoked: no `started`), c because all its inputs were
    // skipped. Below, x runs and returns skip (so it has `started`), and y, whose only input was
    // skipped, is skipped without running.
    let graph = Pipeline::builder("p")
        .stage("a", ok_stage())
        .stage("b", ok_stage())
        .after("a")
        .when(|_| false)
        .stage("c", ok_stage())
        .after("b")
        .build()
        .unwrap();
    let (report, sink) = recorded_ok(&graph, RunOptions::new()).await;
    assert!(report.is_completed());
    assert_eq!(
        sink.event_types(),
        [
            "pipeline.created",
            "pipeline.started",
            "stage.a.started",
            "stage.a.completed",
            "stage.b.skipped",
            "stage.c.skipped",
            "pipeline.completed",
        ]
    );
    let events = sink.events();
    assert_eq!(
        events[4].error.as_deref(),
        Some(stageflow::run::CONDITION_NOT_MET)
    );
    assert_eq!(
        events[5].error.as_deref(),
        Some(stageflow::run::UPSTREAM_SKIPPED)
    );
    assert_eq!(events[4].duration, None);

    let graph = Pipeline::builder("p")
        .stage("x", |_ctx: StageContext| async {
            StageOutput::skip("nothing new")
        })
        .stage("y", ok_stage())
        .after("x")
        .build()
        .unwrap();
    let (_, sink) = recorded_ok(&graph, RunOptions::new()).await;
    assert_eq!(
        sink.event_types(),
        [
            "pipeline.created",
            "pipeline.started",
            "stage.x.started",
            "stage.x.skipped",
            "stage.y.skipped",
            "pipeline.completed",
        ]
    );
    assert_eq!(sink.events()[3].status.as_deref(), Some("skip"));
}

#[tokio::test]
async fn custom_events_and_artifacts_are_forwarded_and_serialized() {
    let graph = Pipeline::builder("p")
        .stage("a", |ctx: StageContext| async move {
            assert!(ctx.emit_event("note", json!({"at": "start"})));
            StageOutput::ok()
                .with("n", 1)
                .event("cache.hit", json!({"key": "k1"}))
                .artifact("file", json!({"path": "/tmp/out.csv"}))
        })
        .build()
        .unwrap();
    let (report, sink) = recorded_ok(&graph, RunOptions::new()).await;
    assert_eq!(
        sink.event_types(),
        [
            "pipeline.created",
            "pipeline.started",
            "stage.a.started",
            "note",
            "cache.hit",
            "stage.a.artifact",
            "stage.a.completed",
            "pipeline.completed",
        ]
    );
    let events = sink.events();
    assert_eq!(events[4].stage_name(), Some("a"));
    assert_eq!(events[4].data, json!({"key": "k1"}));
    assert_eq!(
        events[5].data,
        json!({"type": "file", "payload": {"path": "/tmp/out.csv"}})
    );
    assert_eq!(report.observability().unwrap().events_emitted, 8);

    // The output keeps them and round-trips through serde.
    let out = report.results().get("a").unwrap();
    let text = serde_json::to_string(out).unwrap();
    assert_eq!(
        text,
        r#"{"status":"ok","data":{"n":1},"events":[{"type":"cache.hit","data":{"key":"k1"}}],"artifacts":[{"type":"file","payload":{"path":"/tmp/out.csv"}}]}"#
    );
    let back: StageOutput = serde_json::from_str(&text).unwrap();
    assert_eq!(&back, out);
    // Without extras, the format is unchanged.
    assert_eq!(
        serde_json::to_string(&StageOutput::ok()).unwrap(),
        r#"{"status":"ok"}"#
    );
    assert!(std::mem::size_of::<StageOutput>() <= 64);
}

fn chain(n: usize) -> Graph {
    Pipeline::builder("chain")
        .with_linear_chain(n, |i| StageSpec::new(format!("s{i}"), ok_stage()))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_100k_stages_nothing_lost() {
    const N: usize = 100_000;
    let graph = chain(N);
    let dir = scratch_dir("100k");
    let path = dir.join("run.jsonl");
    let sink = JsonlSink::builder()
        .capacity(8192)
        .when_full(WhenFull::Block)
        .create(&path)
        .unwrap();
    let report = graph
        .run_with(
            (),
            RunOptions::new()
                .events(sink.clone())
                .retention(stageflow::Retention::Sinks),
        )
        .await
        .unwrap();
    let obs = report.observability().unwrap();
    assert_eq!(obs.events_dropped, 0);
    let expected = 2 + 2 * N + 1;
    assert_eq!(obs.events_emitted, expected as u64);
    // The run returned only after the file was flushed: read it right away.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut count = 0;
    let run_id = report.identity().run_id.to_string();
    for (i, line) in text.lines().enumerate() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {i}: {e}: {line}"));
        assert_eq!(v["run_id"], run_id.as_str());
        let ty = v["type"].as_str().unwrap();
        let want = match i {
            0 => "pipeline.created".to_owned(),
            1 => "pipeline.started".to_owned(),
            _ if i == expected - 1 => "pipeline.completed".to_owned(),
            _ => {
                let k = (i - 2) / 2;
                let phase = if (i - 2) % 2 == 0 {
                    "started"
                } else {
                    "completed"
                };
                format!("stage.s{k}.{phase}")
            }
        };
        assert_eq!(ty, want, "line {i}");
        count += 1;
    }
    assert_eq!(count, expected);
    assert_eq!(sink.written(), expected as u64);
    sink.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_drop_mode_counts_drops_and_flushes_the_rest() {
    let graph = chain(20_000);
    let dir = scratch_dir("drop");
    let path = dir.join("run.jsonl");
    // A tiny buffer and a long linger: the writer cannot keep up, so events are dropped.
    let sink = JsonlSink::builder()
        .capacity(16)
        .linger(Duration::from_millis(50))
        .fsync(false)
        .create(&path)
        .unwrap();
    let report = graph
        .run_with((), RunOptions::new().events(sink.clone()))
        .await
        .unwrap();
    let obs = report.observability().unwrap();
    assert_eq!(obs.events_emitted + obs.events_dropped, 2 + 2 * 20_000 + 1);
    assert!(obs.events_dropped > 0);
    let lines = std::fs::read_to_string(&path).unwrap().lines().count() as u64;
    assert_eq!(lines, obs.events_emitted);
    sink.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_awaitable_emit_waits_for_room() {
    use stageflow::observe::{Event, EventSink};
    let dir = scratch_dir("emit");
    let path = dir.join("emit.jsonl");
    let sink = JsonlSink::builder()
        .capacity(16)
        .fsync(false)
        .create(&path)
        .unwrap();
    for i in 0..2_000 {
        let event = Event::new(EventKind::Custom("tick".into()), uuid::Uuid::nil(), "p")
            .with_data(json!({ "i": i }));
        assert!(sink.emit(event).await);
    }
    sink.flush().await.unwrap();
    assert_eq!(sink.dropped(), 0);
    let text = std::fs::read_to_string(&path).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(text.lines().count(), 2_000);
    assert_eq!(last["data"]["i"], 1_999);
    sink.close().await.unwrap();
    // Closed: refused and counted.
    assert!(!sink.try_emit(Event::new(
        EventKind::PipelineStarted,
        uuid::Uuid::nil(),
        "p"
    )));
    assert_eq!(sink.dropped(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bounded_channel_drops_are_counted() {
    let graph = chain(100);
    let (sink, mut rx) = ChannelSink::bounded(10);
    let report = graph
        .run_with((), RunOptions::new().events(sink))
        .await
        .unwrap();
    let obs = report.observability().unwrap();
    assert_eq!(obs.events_emitted, 10);
    assert_eq!(obs.events_dropped, 2 + 200 + 1 - 10);
    assert_eq!(rx.recv().await.unwrap().event_type(), "pipeline.created");
}

#[tokio::test]
async fn fan_out_and_noop() {
    let graph = chain(3);
    let a = MemorySink::new();
    let b = MemorySink::new();
    graph
        .run_with(
            (),
            RunOptions::new().events(FanOut::new().with(a.clone()).with(b.clone()).with(NoopSink)),
        )
        .await
        .unwrap();
    assert_eq!(a.event_types(), b.event_types());
    assert_eq!(a.len(), 2 + 6 + 1);

    // A no-op sink is the same as no sink: nothing observed, no report.
    let report = graph
        .run_with((), RunOptions::new().events(NoopSink))
        .await
        .unwrap();
    assert!(report.observability().is_none());
    let report = graph.run(()).await.unwrap();
    assert!(report.observability().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reaches_total_and_never_goes_backwards() {
    const N: usize = 300;
    let graph = Pipeline::builder("p")
        .with_linear_chain(N, |i| {
            StageSpec::new(format!("s{i}"), move |_ctx: StageContext| async move {
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                StageOutput::ok()
            })
        })
        .build()
        .unwrap();
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let sink = seen.clone();
    let (observer, mut rx) = ProgressObserver::watch();
    let observer = observer
        .every(Duration::from_millis(5))
        .with_callback(move |p| sink.lock().unwrap().push(*p));
    let watcher = tokio::spawn(async move {
        let mut last = 0;
        let mut updates = 0;
        while rx.changed().await.is_ok() {
            let p = *rx.borrow_and_update();
            assert!(p.completed >= last, "watch went backwards");
            last = p.completed;
            updates += 1;
            if p.done {
                break;
            }
        }
        (last, updates)
    });
    let report = graph
        .run_with((), RunOptions::new().progress(observer))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 3, "sampled only {} times", seen.len());
    for w in seen.windows(2) {
        assert!(
            w[1].completed >= w[0].completed,
            "{:?} then {:?}",
            w[0],
            w[1]
        );
        assert!(w[1].succeeded >= w[0].succeeded);
        assert!(w[1].elapsed >= w[0].elapsed);
    }
    let last = seen.last().unwrap();
    assert!(last.done);
    assert_eq!(
        (last.completed, last.total, last.running),
        (N as u64, N as u64, 0)
    );
    assert_eq!(last.eta, Some(Duration::ZERO));
    assert!(last.throughput > 0.0);
    assert!(seen[..seen.len() - 1].iter().all(|p| !p.done));
    assert_eq!(report.observability().unwrap().progress, Some(*last));
    let (watched, updates) = watcher.await.unwrap();
    assert_eq!(watched, N as u64);
    assert!(updates >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_fires_on_a_stall() {
    let graph = chain_around("p", ["quick", "stuck", "after"], sleepy(400));
    let (report, sink) = recorded_ok(&graph, RunOptions::new().watchdog(fast_watchdog(100))).await;
    let stalls = &report.observability().unwrap().stalls;
    assert_eq!(stalls.len(), 1, "{stalls:?}");
    assert_eq!(stalls[0].stages, ["stuck"]);
    assert_eq!(stalls[0].running, 1);
    assert!(stalls[0].idle_for >= Duration::from_millis(100));
    let types = sink.event_types();
    let at = types.iter().position(|t| t == "pipeline.stalled").unwrap();
    assert!(
        at > types
            .iter()
            .position(|t| t == "stage.stuck.started")
            .unwrap()
    );
    assert!(
        at < types
            .iter()
            .position(|t| t == "stage.stuck.completed")
            .unwrap()
    );
    let stalled = &sink.events()[at];
    assert_eq!(stalled.data["stages"], json!(["stuck"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_stays_quiet_when_stages_keep_finishing() {
    let graph = Pipeline::builder("p")
        .with_linear_chain(8, |i| {
            StageSpec::new(format!("s{i}"), |_ctx: StageContext| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                StageOutput::ok()
            })
        })
        .build()
        .unwrap();
    let (report, sink) = recorded_ok(&graph, RunOptions::new().watchdog(fast_watchdog(150))).await;
    assert!(report.observability().unwrap().stalls.is_empty());
    assert!(!sink.event_types().iter().any(|t| t == "pipeline.stalled"));
}

#[tokio::test(start_paused = true)]
async fn watchdog_with_paused_clock() {
    let graph = Pipeline::builder("p")
        .stage("waits", |_ctx: StageContext| async {
            tokio::time::sleep(Duration::from_secs(120)).await;
            StageOutput::ok()
        })
        .build()
        .unwrap();
    let report = graph
        .run_with(
            (),
            RunOptions::new().watchdog(Watchdog::new(Duration::from_secs(60))),
        )
        .await
        .unwrap();
    let stalls = &report.observability().unwrap().stalls;
    assert_eq!(stalls.len(), 1);
    assert_eq!(stalls[0].stages, ["waits"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_critical_path_and_percentiles() {
    let graph = Pipeline::builder("p")
        .stage("a", sleepy(10))
        .stage("b", sleepy(2))
        .after("a")
        .stage("c", sleepy(60))
        .after("a")
        .stage("d", sleepy(10))
        .after(["b", "c"])
        .build()
        .unwrap();
    let report = graph
        .run_with((), RunOptions::new().summary(SummaryOptions::new().top(2)))
        .await
        .unwrap();
    let summary = report.observability().unwrap().summary.as_ref().unwrap();
    assert_eq!(summary.timed, 4);
    assert_eq!(summary.critical_path.stages, ["a", "c", "d"]);
    assert_eq!(summary.critical_path.len, 3);
    assert!(summary.critical_path.duration >= Duration::from_millis(80));
    assert!(summary.critical_path.duration <= report.duration());
    assert_eq!(summary.slowest.len(), 2);
    assert_eq!(summary.slowest[0].stage, "c");
    let p = summary.percentiles;
    assert!(p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.max);
    assert_eq!(p.max, summary.slowest[0].duration);
}

#[tokio::test]
async fn summary_of_a_deep_chain_elides_names() {
    let graph = chain(50_000);
    let report = graph
        .run_with(
            (),
            RunOptions::new().summary(SummaryOptions::new().max_path_names(10)),
        )
        .await
        .unwrap();
    let path = &report
        .observability()
        .unwrap()
        .summary
        .as_ref()
        .unwrap()
        .critical_path;
    assert_eq!(path.len, 50_000);
    assert!(path.elided);
    assert_eq!(path.stages.len(), 10);
    assert_eq!(path.stages[0], "s0");
    assert_eq!(path.stages[9], "s49999");
}

#[tokio::test]
async fn wide_events() {
    let graph = Pipeline::builder("p")
        .stage("a", |_ctx: StageContext| async {
            StageOutput::ok().with("rows", 3)
        })
        .stage("b", |_ctx: StageContext| async {
            StageOutput::skip("no rows")
        })
        .after("a")
        .build()
        .unwrap();
    let (_, sink) = recorded_ok(
        &graph,
        RunOptions::new()
            .wide_events(WideEvents::all())
            .summary(SummaryOptions::default()),
    )
    .await;
    let events = sink.events();
    let wide: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::StageWide)
        .collect();
    assert_eq!(wide.len(), 2);
    assert_eq!(wide[0].event_type(), "stage.wide");
    assert_eq!(wide[0].stage_name(), Some("a"));
    assert_eq!(wide[0].status.as_deref(), Some("ok"));
    assert_eq!(wide[0].data["data_keys"], json!(["rows"]));
    assert!(wide[0].data["started_at"].is_string() && wide[0].data["ended_at"].is_string());
    assert_eq!(wide[1].status.as_deref(), Some("skip"));
    assert_eq!(wide[1].error.as_deref(), Some("no rows"));
    let last = events.last().unwrap();
    assert_eq!(last.event_type(), "pipeline.wide");
    assert_eq!(last.status.as_deref(), Some("completed"));
    assert_eq!(last.data["stage_counts"]["skipped"], 1);
    assert_eq!(last.data["summary"]["critical_path"]["len"], 2);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::PipelineWide)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_report_and_allocations_per_stage() {
    memory::set_allocation_counter(CountingAlloc::thread_allocated);
    let graph = Pipeline::builder("p")
        .stage("small", ok_stage())
        .stage("big", |_ctx: StageContext| async {
            let v = vec![1u8; 4 << 20];
            tokio::task::yield_now().await;
            let v2 = vec![2u8; 1 << 20];
            StageOutput::ok().with("len", v.len() + v2.len())
        })
        .after("small")
        .build()
        .unwrap();
    let (report, sink) = recorded_ok(&graph, RunOptions::new().memory(true)).await;
    let mem = report.observability().unwrap().memory.unwrap();
    if cfg!(target_os = "linux") {
        assert!(mem.rss_start.unwrap() > 0);
        assert!(mem.rss_peak.unwrap() >= mem.rss_start.unwrap());
        assert!(mem.rss_end.unwrap() > 0);
    }
    let allocated: HashMap<String, u64> = sink
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::StageCompleted)
        .map(|e| {
            (
                e.stage_name().unwrap().to_owned(),
                e.allocated_bytes.unwrap(),
            )
        })
        .collect();
    assert!(allocated["big"] >= 5 << 20, "{allocated:?}");
    assert!(allocated["small"] < 1 << 20, "{allocated:?}");
    assert!(mem.allocated_bytes.unwrap() >= allocated["big"]);
    let end = sink.events().last().unwrap().clone();
    assert!(end.data["memory"]["allocated_bytes"].as_u64().unwrap() >= 5 << 20);
}

/// A minimal tracing layer recording spans (name, parent, fields) and which span each event was
/// logged in. Span ids are reused by the registry once a span closes, so spans are numbered in
/// creation order instead.
mod capture {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Subscriber};
    use tracing_subscriber::layer::Context;
    use tracing_subscriber::registry::LookupSpan;
    use tracing_subscriber::Layer;

    #[derive(Clone, Debug, Default)]
    pub struct SpanInfo {
        pub name: String,
        /// Index of the parent in `spans`.
        pub parent: Option<usize>,
        pub fields: HashMap<String, String>,
        pub closed: bool,
    }

    #[derive(Default)]
    pub struct State {
        pub spans: Vec<SpanInfo>,
        /// Live span id -> index in `spans`.
        live: HashMap<u64, usize>,
        /// (message, index of the current span)
        pub events: Vec<(String, Option<usize>)>,
    }

    #[derive(Clone, Default)]
    pub struct Capture(pub Arc<Mutex<State>>);

    struct Fields<'a>(&'a mut HashMap<String, String>);
    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut st = self.0.lock().unwrap();
            let parent = ctx
                .span(id)
                .and_then(|s| s.parent())
                .and_then(|p| st.live.get(&p.id().into_u64()).copied());
            let mut info = SpanInfo {
                name: attrs.metadata().name().to_owned(),
                parent,
                ..SpanInfo::default()
            };
            attrs.record(&mut Fields(&mut info.fields));
            st.spans.push(info);
            let idx = st.spans.len() - 1;
            st.live.insert(id.into_u64(), idx);
        }
        fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
            let mut st = self.0.lock().unwrap();
            if let Some(&idx) = st.live.get(&id.into_u64()) {
                values.record(&mut Fields(&mut st.spans[idx].fields));
            }
        }
        fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
            let mut fields = HashMap::new();
            event.record(&mut Fields(&mut fields));
            let mut st = self.0.lock().unwrap();
            let current = ctx
                .lookup_current()
                .and_then(|s| st.live.get(&s.id().into_u64()).copied());
            st.events
                .push((fields.remove("message").unwrap_or_default(), current));
        }
        fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
            let mut st = self.0.lock().unwrap();
            if let Some(idx) = st.live.remove(&id.into_u64()) {
                st.spans[idx].closed = true;
            }
        }
    }
}

#[tokio::test]
async fn tracing_spans_run_parent_of_stages_and_stages_polled_inside() {
    let (capture, _guard) = capture_tracing();

    let graph = Pipeline::builder("traced")
        .stage("a", |_ctx: StageContext| async {
            tracing::info!("inside a");
            StageOutput::ok()
        })
        .stage("b", |_ctx: StageContext| async {
            tokio::task::yield_now().await; // not ready on the first poll: spawned
            tracing::info!("inside b");
            StageOutput::fail("nope")
        })
        .after("a")
        .build()
        .unwrap();
    graph.run(()).await.unwrap_err();

    let (spans, events) = {
        let st = capture.0.lock().unwrap();
        (st.spans.clone(), st.events.clone())
    };
    let runs: Vec<usize> = (0..spans.len())
        .filter(|&i| spans[i].name == "stageflow.run")
        .collect();
    assert_eq!(runs.len(), 1, "{spans:#?}");
    let run = &spans[runs[0]];
    assert_eq!(run.fields["pipeline"], "traced");
    assert_eq!(run.fields["status"], "failed");
    assert!(run.closed);
    let stages: HashMap<String, usize> = (0..spans.len())
        .filter(|&i| spans[i].name == "stageflow.stage")
        .map(|i| (spans[i].fields["stage"].clone(), i))
        .collect();
    assert_eq!(stages.len(), 2, "{spans:#?}");
    for &i in stages.values() {
        let s = &spans[i];
        assert_eq!(s.parent, Some(runs[0]), "stage span {s:?}");
        assert_eq!(s.fields["run_id"], run.fields["run_id"]);
        assert_eq!(s.fields["kind"], "work");
        assert!(s.closed);
    }
    assert_eq!(spans[stages["a"]].fields["status"], "ok");
    assert_eq!(spans[stages["b"]].fields["status"], "fail");
    let in_span = |msg: &str| events.iter().find(|(m, _)| m == msg).unwrap().1;
    assert_eq!(in_span("inside a"), Some(stages["a"]));
    assert_eq!(in_span("inside b"), Some(stages["b"]));

    // tracing(false) turns spans off even with a subscriber.
    capture.0.lock().unwrap().spans.clear();
    graph
        .run_with((), RunOptions::new().tracing(false))
        .await
        .unwrap_err();
    assert!(capture.0.lock().unwrap().spans.is_empty());
}

#[tokio::test]
async fn tracing_sink_logs_events() {
    let (capture, _guard) = capture_tracing();
    let graph = chain(2);
    graph
        .run_with(
            (),
            RunOptions::new()
                .events(stageflow::observe::TracingSink::new())
                .tracing(false),
        )
        .await
        .unwrap();
    let messages: Vec<String> = capture
        .0
        .lock()
        .unwrap()
        .events
        .iter()
        .map(|(m, _)| m.clone())
        .collect();
    assert_eq!(
        messages,
        [
            "pipeline.created",
            "pipeline.started",
            "stage.s0.started",
            "stage.s0.completed",
            "stage.s1.started",
            "stage.s1.completed",
            "pipeline.completed"
        ]
    );
}

#[tokio::test]
async fn stage_status_strings_match_output_statuses() {
    // Sanity: the status vocabulary used in events is the output status vocabulary.
    assert_eq!(StageStatus::Skip.as_str(), "skip");
    assert_eq!(StageStatus::Cancel.as_str(), "cancel");
}

#[cfg(feature = "otel")]
#[tokio::test]
async fn otel_span_tree() {
    use stageflow::observe::otel::{self, InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry().with(otel::layer(&provider));
    let _guard = tracing::subscriber::set_default(subscriber);

    let graph = Pipeline::builder("otel")
        .stage("a", ok_stage())
        .stage("b", |_ctx: StageContext| async {
            tokio::task::yield_now().await;
            StageOutput::ok()
        })
        .after("a")
        .stage("c", ok_stage())
        .after("a")
        .build()
        .unwrap();
    graph.run(()).await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 4);
    let run = spans.iter().find(|s| s.name == "stageflow.run").unwrap();
    let stages: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "stageflow.stage")
        .collect();
    assert_eq!(stages.len(), 3);
    let attr = |s: &otel::opentelemetry_sdk::trace::SpanData, key: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    let mut names = Vec::new();
    for s in &stages {
        assert_eq!(s.parent_span_id, run.span_context.span_id());
        assert_eq!(s.span_context.trace_id(), run.span_context.trace_id());
        assert_eq!(attr(s, "status").as_deref(), Some("ok"));
        names.push(attr(s, "stage").unwrap());
    }
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(attr(run, "status").as_deref(), Some("completed"));
}

/// Everything but what differs between two runs of the same pipeline: ids, times, sizes.
fn normalized(line: &str) -> Value {
    let mut v: Value = serde_json::from_str(line).unwrap();
    let obj = v.as_object_mut().unwrap();
    for key in ["run_id", "timestamp", "duration_ms", "allocated_bytes"] {
        if obj.contains_key(key) {
            obj.insert(key.to_owned(), json!("*"));
        }
    }
    if let Some(data) = obj.get_mut("data").and_then(Value::as_object_mut) {
        data.remove("memory");
    }
    v
}

/// The JSON Lines sink takes stage events in a compact form its writer expands; the file must
/// hold exactly the events any other sink gets: same types, stages, kinds, statuses, errors,
/// custom events and artifacts, in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jsonl_file_holds_the_same_events_as_other_sinks_get() {
    memory::set_allocation_counter(CountingAlloc::thread_allocated);
    let graph = Pipeline::builder("same")
        .stage("load", |_c: StageContext| async {
            StageOutput::ok()
                .with("rows", 3)
                .event("load.progress", json!({"done": 3}))
                .artifact("table", json!({"rows": 3}))
        })
        .stage("skipped", ok_stage())
        .after("load")
        .when(|_: &stageflow::ConditionInputs<'_>| false)
        .stage("broken", |_c: StageContext| async {
            StageOutput::fail("no luck")
        })
        .after("load")
        .stage("after_broken", ok_stage())
        .after("broken")
        .stage("last", ok_stage())
        .after("load")
        .build()
        .unwrap();
    let options = || {
        RunOptions::new()
            .failure_policy(stageflow::FailurePolicy::Continue)
            .max_concurrency(1)
            .memory(true)
            .wide_events(WideEvents::none())
    };
    let memory_sink = MemorySink::new();
    let _ = graph
        .run_with((), options().events(memory_sink.clone()))
        .await;
    let want: Vec<Value> = memory_sink
        .events()
        .iter()
        .map(|e| normalized(&e.to_json_line()))
        .collect();

    let dir = scratch_dir("same");
    let path = dir.join("run.jsonl");
    let sink = JsonlSink::create(&path).unwrap();
    let _ = graph.run_with((), options().events(sink.clone())).await;
    sink.close().await.unwrap();
    let got: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(normalized)
        .collect();
    assert_eq!(got, want);
    assert!(got.iter().any(|v| v["type"] == "load.progress"));
    assert!(got.iter().any(|v| v["type"] == "stage.broken.failed"));
    assert!(got.iter().any(|v| v["allocated_bytes"] == "*"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Events reach the file while the run goes on (within the writer's linger), not only when it
/// ends: `tail -f` on a long run shows which stage is running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_events_are_in_the_file_while_the_run_goes_on() {
    let dir = scratch_dir("live");
    let path = dir.join("run.jsonl");
    let sink = JsonlSink::create(&path).unwrap();
    let graph = chain_around("live", ["first", "slow", "last"], sleepy(2_000));
    let run = tokio::spawn({
        let sink = sink.clone();
        async move { graph.run_with((), RunOptions::new().events(sink)).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_millis(1_500);
    let mut seen = false;
    while !seen && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .any(|l| l.contains("\"stage.slow.started\""));
    }
    assert!(
        seen,
        "stage.slow.started is not in the file while `slow` runs"
    );
    assert!(
        !run.is_finished(),
        "the run ended early: the check proved nothing"
    );
    run.await.unwrap().unwrap();
    sink.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
