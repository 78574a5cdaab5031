//! How fast durable runs checkpoint to SQLite, and how fast a long run resumes.
//!
//! ```sh
//! cargo run --release -p stageflow-store --example durable_throughput
//! cargo run --release -p stageflow-store --example durable_throughput -- \
//!     --stages 100000 --every-stage 100000 --resume-total 1000000 --resume-at 900000
//! ```
//!
//! 1. A `--stages` chain (each stage reads its predecessor's value and adds one), run plainly
//!    and then durably with group commit (1000 stages or 100 ms) on a fresh SQLite file: stages
//!    recorded per second, counting until every record is committed.
//! 2. The same with a commit per stage, on a `--every-stage` chain.
//! 3. Resume: a `--resume-total` chain whose first `--resume-at` stages were committed (as a run
//!    that crashed there leaves the store), resumed from a freshly opened store with
//!    `Retention::Sinks`: time to load, and total time, against a plain run of the stages left.

use std::time::{Duration, Instant};

use stageflow::durable::{Checkpoint, Durability};
use stageflow::store::{RunRecord, RunStore, StageRecord};
use stageflow::{
    Graph, Pipeline, Retention, RunOptions, StageContext, StageOutput, StageSpec, StageStatus,
};
use stageflow_store::SqliteStore;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.replace('_', "").parse().expect("a number"))
        .unwrap_or(default)
}

fn chain(n: usize) -> Graph {
    Pipeline::builder("chain")
        .with_linear_chain(n, |i| {
            StageSpec::new(format!("s{i}"), move |ctx: StageContext| async move {
                let prev: u64 = if i == 0 { 0 } else { ctx.get("value")? };
                Ok::<_, stageflow::InputError>(StageOutput::ok().with("value", prev + 1))
            })
        })
        .build()
        .expect("valid chain")
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:>9.0} stages/s", n as f64 / d.as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stages = arg("--stages", 100_000);
    let every = arg("--every-stage", 100_000);
    let total = arg("--resume-total", 1_000_000);
    let at = arg("--resume-at", 900_000);
    let dir = tempfile::tempdir()?;
    let opts = || RunOptions::new().retention(Retention::Sinks);

    // 1. Group commit.
    let graph = chain(stages);
    let start = Instant::now();
    graph.run_with((), opts()).await?;
    let plain = start.elapsed();
    let store = SqliteStore::open(dir.path().join("group.db"))?;
    let cp = Checkpoint::new(store).durability(Durability::group(1000, 100));
    let start = Instant::now();
    let done = graph.run_durable((), opts(), &cp).await?;
    let durable = start.elapsed();
    println!(
        "chain of {stages}: plain run {plain:?} ({})",
        rate(stages, plain)
    );
    println!(
        "  group commit (1000 / 100 ms): {durable:?} ({}), {} records in {} transactions",
        rate(stages, durable),
        done.committed(),
        done.batches()
    );

    // 2. Commit per stage.
    let graph = chain(every);
    let store = SqliteStore::open(dir.path().join("every.db"))?;
    let cp = Checkpoint::new(store).durability(Durability::EveryStage);
    let start = Instant::now();
    let done = graph.run_durable((), opts(), &cp).await?;
    let durable = start.elapsed();
    println!(
        "chain of {every}, commit every stage: {durable:?} ({}), {} transactions",
        rate(every, durable),
        done.batches()
    );

    // 3. Resume.
    let start = Instant::now();
    let graph = chain(total);
    println!("chain of {total}: built in {:?}", start.elapsed());
    let path = dir.path().join("resume.db");
    let run_id = uuid::Uuid::now_v7();
    {
        let store = SqliteStore::open(&path)?;
        store.create_run(&RunRecord::new(
            run_id,
            graph.name(),
            graph.fingerprint().to_string(),
            serde_json::Value::Null,
        ))?;
        let start = Instant::now();
        let mut i = 0;
        while i < at {
            let end = (i + 10_000).min(at);
            let batch: Vec<StageRecord> = (i..end)
                .map(|k| {
                    StageRecord::new(run_id, format!("s{k}"), StageStatus::Ok)
                        .with_output(StageOutput::ok().with("value", k as u64 + 1))
                })
                .collect();
            store.record_stages(run_id, &batch)?;
            i = end;
        }
        println!(
            "  committed {at} records (the crashed run's) in {:?}",
            start.elapsed()
        );
        store.close()?;
    }
    let start = Instant::now();
    let store = SqliteStore::open(&path)?;
    let cp = Checkpoint::new(store).durability(Durability::group(1000, 100));
    let done = graph.resume(run_id, opts(), &cp).await?;
    let resumed = start.elapsed();
    assert_eq!(
        done.report()
            .results()
            .get_data::<u64>(&format!("s{}", total - 1), "value")?,
        total as u64
    );
    let rest = chain(total - at);
    let start = Instant::now();
    rest.run_durable(
        (),
        opts(),
        &Checkpoint::new(SqliteStore::open(dir.path().join("rest.db"))?),
    )
    .await?;
    let rest_time = start.elapsed();
    println!(
        "  resume at {at}: {resumed:?} in all; loading {} restored stages took {:?}; {} stages run and recorded",
        done.restored(),
        done.load_time(),
        done.committed()
    );
    println!(
        "  for comparison, a fresh durable run of {} stages: {rest_time:?}",
        total - at
    );
    println!(
        "  loading is {:.0}% of the resume; the remaining work the other {:.0}%",
        100.0 * done.load_time().as_secs_f64() / resumed.as_secs_f64(),
        100.0 * (1.0 - done.load_time().as_secs_f64() / resumed.as_secs_f64())
    );
    Ok(())
}
