//! The sampler task of a run: throttled progress reports, the RSS peak, and stall detection. It
//! reads only what the executor publishes ([`ObsShared`]), so it never slows the run loop.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::emitter::ObsShared;
use super::event::EventKind;
use super::memory;
use super::progress::ProgressObserver;
use super::watchdog::{Stall, Watchdog};

/// What the sampler task shares with the executor. The executor never waits for the task: at the
/// end of the run it marks the state finished (under the lock the sampler publishes under, so no
/// progress report can follow the final one), takes the results, and cancels the task.
#[derive(Default)]
pub(crate) struct SamplerState {
    pub(crate) finished: bool,
    pub(crate) stalls: Vec<Stall>,
    pub(crate) rss_peak: Option<u64>,
}

pub(crate) struct Sampler {
    pub(crate) stop: CancellationToken,
    pub(crate) state: Arc<Mutex<SamplerState>>,
}

/// The sampler task: progress, RSS peak, stall detection.
pub(crate) async fn sample(
    shared: Arc<ObsShared>,
    interval: Duration,
    progress: Option<ProgressObserver>,
    watchdog: Option<Watchdog>,
    memory: bool,
    stop: CancellationToken,
    state: Arc<Mutex<SamplerState>>,
) {
    let total = shared.labels.topo.len() as u64;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate
    let started = tokio::time::Instant::now();
    let mut last_done = u64::MAX;
    let mut last_change = started;
    let mut stalled = false;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let rss = if memory { memory::current_rss() } else { None };
        let mut out = state.lock().unwrap_or_else(PoisonError::into_inner);
        if out.finished {
            break;
        }
        if let Some(observer) = &progress {
            observer.publish(&shared.progress(total, shared.start.elapsed(), false));
        }
        if let Some(rss) = rss {
            out.rss_peak = Some(out.rss_peak.map_or(rss, |p| p.max(rss)));
        }
        if let Some(watchdog) = &watchdog {
            // Any stage finishing counts as movement: invoked stages that ended (kept per
            // stage) plus skips (published by the executor; both counts only grow).
            let ended = shared.ran_ended.load(Ordering::Relaxed);
            let done = ended + shared.skipped.load(Ordering::Relaxed);
            let running = shared.ran_started.load(Ordering::Relaxed) > ended;
            if done != last_done {
                last_done = done;
                last_change = now;
                stalled = false;
            } else if !stalled && running && now - last_change >= watchdog.stall_after {
                stalled = true;
                let idle_for = now - last_change;
                let (count, names) = shared.running_stages(watchdog.max_names);
                tracing::warn!(
                    target: "stageflow",
                    run_id = %shared.labels.run_id,
                    pipeline = &*shared.labels.pipeline,
                    idle_ms = idle_for.as_millis() as u64,
                    running = count,
                    stages = ?names,
                    "stageflow: pipeline stalled: no stage finished for {idle_for:?}"
                );
                let stall = Stall {
                    at: shared.start.elapsed(),
                    idle_for,
                    running: count,
                    stages: names,
                };
                if shared.sink.is_some() {
                    let mut event = shared.event(EventKind::PipelineStalled);
                    event.status = Some(Cow::Borrowed("stalled"));
                    event.data = json!({
                        "idle_ms": idle_for.as_secs_f64() * 1e3,
                        "running": count,
                        "stages": stall.stages,
                    });
                    shared.emit_external(event);
                }
                out.stalls.push(stall);
            }
        }
    }
}
