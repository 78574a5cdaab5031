//! Helpers shared by the CLI's end-to-end tests: temporary directories, runners of the
//! `stageflow` binary and readers of its output.
// Each test binary (`pipeline_files`, `runs`, ...) compiles its own copy of this module and uses
// only some of the helpers; the rest would warn as dead code in that binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// A fresh number for each call in this test binary, to name directories apart.
fn next_id() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A temporary directory, removed on drop. Named after the test binary, `tag`, the process and a
/// counter, so that no two tests share one.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "stageflow-{}-{tag}-{}-{}",
            env!("CARGO_CRATE_NAME"),
            std::process::id(),
            next_id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `text` to `name` in the directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// `stageflow ARGS` with this directory as the working directory, stdin closed and no run id
    /// inherited from the environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_stageflow"));
        cmd.args(args)
            .current_dir(&self.0)
            .stdin(Stdio::null())
            .env_remove("STAGEFLOW_RUN_ID");
        cmd
    }

    /// Runs [`cmd`](Self::cmd) to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Lines of `log.txt` (none if it does not exist).
    pub fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("log.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary, run from a fresh directory of its own so that the run store it records into
/// (`.stageflow/` in the working directory) never lands in the source tree or is shared.
pub fn bin() -> Command {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{}-{}-{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id(),
        next_id()
    ));
    std::fs::create_dir_all(&dir).expect("create the working directory");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stageflow"));
    cmd.current_dir(dir);
    cmd
}

/// The repository's `examples/` directory.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `stageflow ARGS` (from [`bin`]) with stdin closed, to completion.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).stdin(Stdio::null()).output().unwrap()
}

/// `stageflow ARGS FILE` (from [`bin`]) with stdin closed, to completion.
pub fn run_path(args: &[&str], file: &Path) -> Output {
    let mut cmd = bin();
    cmd.args(args).arg(file).stdin(Stdio::null());
    cmd.output().unwrap()
}

/// `stageflow run FILE ARGS --events EVENTS` (from [`bin`]).
fn run_command_with_events(file: &Path, args: &[&str], events: &Path) -> Command {
    let mut cmd = bin();
    cmd.arg("run")
        .arg(file)
        .args(args)
        .arg("--events")
        .arg(events);
    cmd
}

/// `stageflow run FILE ARGS --events EVENTS`, to completion.
pub fn run_with_events(file: &Path, args: &[&str], events: &Path) -> Output {
    run_command_with_events(file, args, events)
        .output()
        .unwrap()
}

/// Starts `stageflow run FILE ARGS --events EVENTS` with stdout and stderr piped.
pub fn spawn_with_events(file: &Path, args: &[&str], events: &Path) -> Child {
    run_command_with_events(file, args, events)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends SIGINT to `child`, as Ctrl-C would.
pub fn interrupt(child: &Child) {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Stdout parsed as JSON; panics with stdout and stderr if it is not.
pub fn json_of(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}
