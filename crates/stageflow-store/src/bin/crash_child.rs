//! Test support for the crash test (`tests/crash.rs`), not a tool: runs a long checkpointed
//! pipeline so the test can kill it with `SIGKILL` at random points and resume it.
//!
//! ```text
//! stageflow-crash-child <db> <log> <run-id> <start|resume> <layers> <width> <sleep-us> <group-n> <group-ms>
//! ```
//!
//! The pipeline has `layers` x `width` stages `s<l>_<w>`; stage `(l, w)` depends on `(l-1, w)`
//! and `(l-1, (w+1) % width)`, and outputs `value = (sum of its inputs' values + l * width + w)
//! mod 1_000_000_007`. Each stage appends its name and a newline to `<log>` (opened `O_APPEND`,
//! one write per line) before it sleeps `sleep-us` microseconds and returns. On completion the
//! binary prints the last layer's values as a JSON object on stdout.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use stageflow::durable::{Checkpoint, Durability};
use stageflow::{Pipeline, Retention, RunOptions, StageContext, StageOutput, StageSpec};
use stageflow_store::SqliteStore;

/// The modulus of stage values.
const MODULUS: u64 = 1_000_000_007;

fn build(layers: usize, width: usize, log: Arc<File>, sleep: Duration) -> stageflow::Graph {
    let mut builder = Pipeline::builder("crash-test");
    for l in 0..layers {
        for w in 0..width {
            let log = log.clone();
            let deps: Vec<String> = if l == 0 {
                Vec::new()
            } else {
                let mut d = vec![format!("s{}_{w}", l - 1)];
                let other = format!("s{}_{}", l - 1, (w + 1) % width);
                if !d.contains(&other) {
                    d.push(other);
                }
                d
            };
            let stage = StageSpec::new(format!("s{l}_{w}"), move |ctx: StageContext| {
                let log = log.clone();
                async move {
                    let mut sum = (l * width + w) as u64;
                    for (_, out) in ctx.inputs() {
                        sum += out.get::<u64>("value")?;
                    }
                    (&*log).write_all(format!("{}\n", ctx.stage_name()).as_bytes())?;
                    std::thread::sleep(sleep);
                    Ok::<_, stageflow::StageError>(StageOutput::ok().with("value", sum % MODULUS))
                }
            })
            .after(deps);
            builder = builder.add(stage);
        }
    }
    builder.build().expect("valid pipeline")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 9 {
        eprintln!("usage: stageflow-crash-child <db> <log> <run-id> <start|resume> <layers> <width> <sleep-us> <group-n> <group-ms>");
        std::process::exit(2);
    }
    let num = |i: usize| -> u64 { args[i].parse().expect("a number") };
    let run_id: uuid::Uuid = args[2].parse().expect("a run id");
    let (layers, width) = (num(4) as usize, num(5) as usize);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args[1])
        .expect("opening the log");
    let graph = build(layers, width, Arc::new(log), Duration::from_micros(num(6)));
    let store = SqliteStore::open(&args[0]).expect("opening the store");
    let checkpoint = Checkpoint::new(store).durability(Durability::group(num(7) as usize, num(8)));
    let options = RunOptions::new()
        .retention(Retention::Sinks)
        .identity(stageflow::RunIdentity {
            run_id,
            ..stageflow::RunIdentity::new()
        });
    let done = match args[3].as_str() {
        "start" => graph.run_durable((), options, &checkpoint).await,
        "resume" => graph.resume(run_id, options, &checkpoint).await,
        other => panic!("unknown mode {other}"),
    };
    let done = match done {
        Ok(done) => done,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(1);
        }
    };
    let results = done.report().results();
    let mut out = Map::new();
    for w in 0..width {
        let name = format!("s{}_{w}", layers - 1);
        let value: u64 = results.get_data(&name, "value").expect("a sink value");
        out.insert(name, json!(value));
    }
    println!("{}", Value::Object(out));
}
