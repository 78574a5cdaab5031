//! How fast the SQLite run store records and loads stage records.
//!
//! ```sh
//! cargo run --release -p stageflow-store --example store_throughput
//! cargo run --release -p stageflow-store --example store_throughput -- \
//!     --stages 100000 --batch 1000 --single 10000 --resume 900000
//! ```
//!
//! Measures, on a fresh database in a temporary directory:
//! 1. group commit: `--stages` records of a chain (`s0`, `s1`, ..., each output `{"value": i}`),
//!    `--batch` per transaction, with `synchronous = NORMAL` and then `FULL`, and loading them back;
//! 2. commit per stage: `--single` records, one transaction each (NORMAL);
//! 3. resume: a run of `--resume` committed records, loaded from a freshly opened store (what a
//!    resume after a crash does), plus `count_stages` and the time of a `quick_check`.
//!
//! Only the store calls are timed (the records are built outside the clock).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use stageflow::StageOutput;
use stageflow_store::{
    RunRecord, RunStore, SqliteOptions, SqliteStore, StageRecord, StoreError, Synchronous,
};
use uuid::Uuid;

struct Args {
    stages: u64,
    batch: u64,
    single: u64,
    resume: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        stages: 100_000,
        batch: 1_000,
        single: 10_000,
        resume: 900_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .and_then(|v| v.replace('_', "").parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{flag} needs a number"));
        match flag.as_str() {
            "--stages" => args.stages = value,
            "--batch" => args.batch = value.max(1),
            "--single" => args.single = value,
            "--resume" => args.resume = value,
            other => panic!("unknown flag {other} (--stages, --batch, --single, --resume)"),
        }
    }
    args
}

fn chain_stage(run_id: Uuid, i: u64) -> StageRecord {
    StageRecord::new(run_id, format!("s{i}"), stageflow::StageStatus::Ok)
        .with_output(StageOutput::ok().with("value", i + 1))
        .with_duration(Duration::from_millis(i % 7))
}

/// Records `count` chain stages in batches of `batch`; returns the time spent in the store.
fn record_chain(
    store: &SqliteStore,
    run_id: Uuid,
    count: u64,
    batch: u64,
) -> Result<Duration, StoreError> {
    let mut spent = Duration::ZERO;
    let mut next = 0;
    while next < count {
        let end = (next + batch).min(count);
        let records: Vec<StageRecord> = (next..end).map(|i| chain_stage(run_id, i)).collect();
        let start = Instant::now();
        store.record_stages(run_id, &records)?;
        spent += start.elapsed();
        next = end;
    }
    Ok(spent)
}

fn new_run(store: &SqliteStore, name: &str) -> Result<Uuid, StoreError> {
    let run = RunRecord::new(Uuid::now_v7(), name, "fp", json!({"bench": name}));
    store.create_run(&run)?;
    Ok(run.run_id)
}

fn rate(count: u64, spent: Duration) -> String {
    let per_sec = count as f64 / spent.as_secs_f64().max(1e-9);
    format!(
        "{:>12.0} stages/s  ({count} in {:.3} s)",
        per_sec,
        spent.as_secs_f64()
    )
}

fn file_mib(path: &Path) -> f64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64 / (1024.0 * 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args();
    let dir = tempfile::tempdir()?;

    println!("## stageflow-store throughput (SQLite, WAL)\n");
    for sync in [Synchronous::Normal, Synchronous::Full] {
        let path = dir.path().join(format!("group-{sync:?}.db"));
        let store = SqliteStore::open_with(&path, SqliteOptions::new().synchronous(sync))?;
        let run_id = new_run(&store, "group")?;
        let spent = record_chain(&store, run_id, args.stages, args.batch)?;
        println!(
            "record, group commit of {:>5} ({sync:?}): {}",
            args.batch,
            rate(args.stages, spent)
        );
        let start = Instant::now();
        let loaded = store.load_stages(run_id)?;
        let spent = start.elapsed();
        assert_eq!(loaded.len() as u64, args.stages);
        println!(
            "load back ({sync:?}):                    {}",
            rate(args.stages, spent)
        );
    }

    let path = dir.path().join("single.db");
    let store = SqliteStore::open(&path)?;
    let run_id = new_run(&store, "single")?;
    let spent = record_chain(&store, run_id, args.single, 1)?;
    println!(
        "record, one commit per stage (Normal):    {}",
        rate(args.single, spent)
    );
    drop(store);

    if args.resume > 0 {
        let path = dir.path().join("resume.db");
        let store = SqliteStore::open(&path)?;
        let run_id = new_run(&store, "resume")?;
        let spent = record_chain(&store, run_id, args.resume, args.batch)?;
        println!(
            "record, group commit of {:>5} (Normal):   {}",
            args.batch,
            rate(args.resume, spent)
        );
        store.close()?;

        let start = Instant::now();
        let store = SqliteStore::open(&path)?;
        let opened = start.elapsed();
        let start = Instant::now();
        let loaded = store.load_stages(run_id)?;
        let load = start.elapsed();
        assert_eq!(loaded.len() as u64, args.resume);
        assert_eq!(
            loaded.last().map(|r| r.stage.as_str()),
            Some(&*format!("s{}", args.resume - 1))
        );
        let start = Instant::now();
        let count = store.count_stages(run_id)?;
        let counted = start.elapsed();
        let start = Instant::now();
        store.quick_check()?;
        let checked = start.elapsed();
        println!(
            "resume: open {:.1} ms, load_stages {}\n        count_stages {count} in {:.1} ms, quick_check {:.0} ms, file {:.0} MiB",
            opened.as_secs_f64() * 1e3,
            rate(args.resume, load),
            counted.as_secs_f64() * 1e3,
            checked.as_secs_f64() * 1e3,
            file_mib(&path),
        );
    }
    Ok(())
}
