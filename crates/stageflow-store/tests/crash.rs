//! The crash test: a long checkpointed pipeline runs in a child process (the
//! `stageflow-crash-child` test-support binary), is killed with `SIGKILL` at random points and
//! resumed each time. Checks the golden outputs, that every stage is recorded exactly once, and,
//! from the store and the stages' side log, that no stage committed before a kill ran again.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use stageflow::store::{RunState, RunStore, StoreError};
use stageflow_store::SqliteStore;
use uuid::Uuid;

const LAYERS: usize = 1500;
const WIDTH: usize = 4;
const SLEEP_US: u64 = 300;
const MODULUS: u64 = 1_000_000_007;

/// The last layer's values, computed directly.
fn golden() -> Value {
    let mut prev: Vec<u64> = Vec::new();
    for l in 0..LAYERS {
        let row: Vec<u64> = (0..WIDTH)
            .map(|w| {
                let mut sum = (l * WIDTH + w) as u64;
                if l > 0 {
                    sum += prev[w];
                    let other = (w + 1) % WIDTH;
                    if other != w {
                        sum += prev[other];
                    }
                }
                sum % MODULUS
            })
            .collect();
        prev = row;
    }
    let map = (0..WIDTH)
        .map(|w| (format!("s{}_{w}", LAYERS - 1), Value::from(prev[w])))
        .collect();
    Value::Object(map)
}

/// xorshift, seeded from the clock (printed, so a failure can be replayed by hand).
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn child(db: &Path, log: &Path, run_id: Uuid, mode: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stageflow-crash-child"));
    cmd.arg(db)
        .arg(log)
        .arg(run_id.to_string())
        .arg(mode)
        .args([LAYERS, WIDTH].map(|n| n.to_string()))
        .args([SLEEP_US.to_string(), "16".to_owned(), "5".to_owned()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn log_lines(log: &Path) -> Vec<String> {
    match std::fs::read_to_string(log) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

fn committed(db: &Path, run_id: Uuid) -> Option<HashSet<String>> {
    let store = SqliteStore::open(db).unwrap();
    let mut names = HashSet::new();
    match store.for_each_stage_state(run_id, &mut |name, _| {
        names.insert(name.to_owned());
    }) {
        Ok(()) => Some(names),
        Err(StoreError::RunNotFound(_)) => None,
        Err(e) => panic!("reading the store after a kill: {e}"),
    }
}

#[test]
fn sigkill_at_random_points_then_resume_never_reruns_a_committed_stage() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let log = dir.path().join("stages.log");
    let run_id = Uuid::now_v7();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed: {seed:#x}");
    let mut rng = Rng(seed);

    let mut kills = 0;
    let mut finished_early = None;
    for _ in 0..5 {
        let before = committed(&db, run_id);
        let mode = if before.is_some() { "resume" } else { "start" };
        let log_at_start = log_lines(&log).len();
        let mut process = child(&db, &log, run_id, mode).spawn().unwrap();
        let wait = Duration::from_millis(60 + rng.next(200));
        let started = Instant::now();
        while started.elapsed() < wait {
            if process.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let exited = process.try_wait().unwrap();
        if exited.is_none() {
            process.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let output = process.wait_with_output().unwrap();
        // No stage committed before this process started ran in it.
        if let Some(before) = &before {
            let lines = log_lines(&log);
            for stage in &lines[log_at_start..] {
                assert!(
                    !before.contains(stage),
                    "stage {stage} was committed before the process started, and ran again (seed {seed:#x})"
                );
            }
        }
        if exited.is_some() {
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            finished_early = Some(output.stdout);
            break;
        }
    }

    let stdout = match finished_early {
        Some(stdout) => stdout,
        None => {
            let before = committed(&db, run_id);
            let mode = if before.is_some() { "resume" } else { "start" };
            let log_at_start = log_lines(&log).len();
            let output = child(&db, &log, run_id, mode).output().unwrap();
            assert!(
                output.status.success(),
                "final resume failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            if let Some(before) = before {
                for stage in &log_lines(&log)[log_at_start..] {
                    assert!(
                        !before.contains(stage),
                        "stage {stage} ran again (seed {seed:#x})"
                    );
                }
            }
            output.stdout
        }
    };
    eprintln!("killed {kills} times");
    assert!(
        kills >= 3,
        "the run should outlast at least three kills (seed {seed:#x})"
    );

    let results: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(results, golden(), "seed {seed:#x}");

    let store = SqliteStore::open(&db).unwrap();
    let run = store.get_run(run_id).unwrap();
    assert_eq!(run.status, RunState::Completed);
    let mut states = Vec::new();
    store
        .for_each_stage_state(run_id, &mut |name, _| states.push(name.to_owned()))
        .unwrap();
    assert_eq!(states.len(), LAYERS * WIDTH);
    let unique: HashSet<&str> = states.iter().map(String::as_str).collect();
    assert_eq!(
        unique.len(),
        LAYERS * WIDTH,
        "every stage recorded exactly once"
    );
    // Every stage ran at least once.
    let ran: HashSet<String> = log_lines(&log).into_iter().collect();
    assert_eq!(ran.len(), LAYERS * WIDTH);
}
