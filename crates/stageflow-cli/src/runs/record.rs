//! What `stageflow run` writes into a run's record so that `stageflow runs resume` can find and
//! check the pipeline file again, the run lock that tells a live run from a crashed one, and
//! opening the store with messages a person can act on.
//!
//! A run's input (`RunRecord::input`) is `{"stageflow_cli": {...}}` ([`RunInfo`]): the pipeline
//! file's canonical path, a hash of its content, a hash of what its stages run (commands, `env`,
//! `dir`, `cleanup`, child pipelines, recursively), and the number of stages. The library's
//! pipeline fingerprint (stored next to it) covers the DAG's shape.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stageflow::store::{RunRecord, RunStore, StoreError};
use stageflow_store::{SqliteOptions, SqliteStore};
use uuid::Uuid;

use crate::pipeline_file::format::{Action, CommandLine, PipelineDef};
use crate::pipeline_file::LoadedPipeline;

/// The key of [`RunInfo`] in a run's input.
const INPUT_KEY: &str = "stageflow_cli";

/// What a run recorded by `stageflow run` keeps about its pipeline file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The pipeline file, canonical and absolute.
    pub file: PathBuf,
    /// Hash of the file's bytes.
    pub file_hash: String,
    /// Hash of what the stages run (see the module docs).
    pub commands_hash: String,
    /// Number of (top-level) stages, matrix instances included.
    pub stages: usize,
}

impl RunInfo {
    /// The info of `loaded`, whose file is `file`.
    pub fn of(loaded: &LoadedPipeline) -> Self {
        let path = loaded.source().path();
        RunInfo {
            file: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            file_hash: hash_hex(loaded.source().text().as_bytes()),
            commands_hash: commands_hash(loaded),
            stages: loaded.len(),
        }
    }

    /// The run's input document.
    pub fn to_input(&self) -> Value {
        json!({ INPUT_KEY: self })
    }

    /// The info in a run's input, if `stageflow run` recorded it.
    pub fn from_input(input: &Value) -> Option<Self> {
        serde_json::from_value(input.get(INPUT_KEY)?.clone()).ok()
    }
}

/// FNV-1a with a 128-bit state: a change detector, not a cryptographic hash.
struct Fnv(u128);

impl Fnv {
    fn new() -> Self {
        Fnv(0x6c62_272e_07bb_0142_62b8_2175_6295_c58d)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u128::from(b);
            self.0 = self
                .0
                .wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
        }
    }

    /// A length-prefixed field, so that field boundaries are part of the hash.
    fn field(&mut self, text: &str) {
        self.bytes(&(text.len() as u64).to_le_bytes());
        self.bytes(text.as_bytes());
    }

    fn hex(&self) -> String {
        format!("fnv128:{:032x}", self.0)
    }
}

fn hash_hex(bytes: &[u8]) -> String {
    let mut h = Fnv::new();
    h.bytes(bytes);
    h.hex()
}

/// Hash of what the pipeline's stages run: the text as written of every command, `env` value,
/// `dir` and `cleanup`, and the same of child pipelines. Comments, descriptions, timeouts or
/// formatting do not change it.
pub fn commands_hash(loaded: &LoadedPipeline) -> String {
    let mut h = Fnv::new();
    hash_pipeline(&mut h, loaded, 0);
    h.hex()
}

fn hash_pipeline(h: &mut Fnv, loaded: &LoadedPipeline, depth: usize) {
    let def: &PipelineDef = &loaded.def;
    let text = loaded.source().text();
    let at = |span: &std::ops::Range<usize>| text.get(span.clone()).unwrap_or("");
    let command = |h: &mut Fnv, c: &CommandLine| {
        let (tag, templates) = match c {
            CommandLine::Shell(t) => ("run", vec![t]),
            CommandLine::Argv(args) => ("cmd", args.iter().collect()),
        };
        h.field(tag);
        h.field(&templates.len().to_string());
        for t in templates {
            h.field(at(&t.span));
        }
    };
    h.field("pipeline");
    for var in &def.env {
        h.field(&var.name);
        h.field(at(&var.value.span));
    }
    for c in &def.cleanup {
        command(h, c);
    }
    for (index, stage) in def.stages.iter().enumerate() {
        h.field("stage");
        h.field(&stage.name);
        match &stage.action {
            Action::Command(c) => command(h, c),
            Action::Pipeline { path, .. } => {
                h.field("pipeline");
                h.field(path);
                // A child used by itself is refused by `check`; the depth bound is a backstop.
                if let Some(child) = loaded.children.get(&(index as u32)).filter(|_| depth < 64) {
                    hash_pipeline(h, child, depth + 1);
                }
            }
        }
        for var in &stage.env {
            h.field(&var.name);
            h.field(at(&var.value.span));
        }
        h.field(stage.dir.as_ref().map_or("", |d| at(&d.span)));
        if let Some(c) = &stage.cleanup {
            command(h, c);
        }
    }
}

/// Opens (creating it and its directory if missing) the store at `path` for a run or a resume.
///
/// Several processes opening a store that does not exist yet at the same moment (parallel
/// `stageflow run`s in a fresh directory) need no retry here: `SqliteStore::open` waits out the
/// `SQLITE_BUSY` of a concurrent switch to WAL mode within its busy timeout.
pub fn open_store(path: &Path) -> Result<SqliteStore, String> {
    SqliteStore::open(path).map_err(|e| describe_open_error(path, &e))
}

/// Opens an existing store to read it; a missing file is an error.
pub fn open_store_read(path: &Path) -> Result<SqliteStore, String> {
    if !path.exists() {
        return Err(format!(
            "no run store at {} (runs are recorded there by `stageflow run`; use --store PATH for another one)",
            path.display()
        ));
    }
    // Read-only first: never creates or changes anything. Reading a WAL database read-only
    // needs its `-shm` file; if that is impossible, open it normally (opening never rewrites
    // a file that is not a valid store).
    SqliteStore::open_with(path, SqliteOptions::new().read_only(true))
        .or_else(|first| match first {
            StoreError::NotADatabase { .. }
            | StoreError::Corrupt { .. }
            | StoreError::ForeignDatabase { .. }
            | StoreError::SchemaTooNew { .. } => Err(first),
            _ => SqliteStore::open(path),
        })
        .map_err(|e| describe_open_error(path, &e))
}

fn describe_open_error(path: &Path, e: &StoreError) -> String {
    let what = match e {
        StoreError::NotADatabase { .. } => "it is not a SQLite database (it was left untouched)",
        StoreError::Corrupt { .. } => "the database is damaged (it was left untouched)",
        StoreError::ForeignDatabase { .. } => {
            "it is a database of another application (it was left untouched)"
        }
        StoreError::SchemaTooNew { .. } => "it was written by a newer version of stageflow",
        _ => "",
    };
    if what.is_empty() {
        format!("cannot open the run store {}: {e}", path.display())
    } else {
        format!(
            "cannot open the run store {}: {what}\n  cause: {e}\n  hint: use --store PATH to use another file",
            path.display()
        )
    }
}

/// The run whose id is `id` or starts with `id` (an unambiguous prefix, hyphens optional).
/// Otherwise the message to show: nothing matches (with the most recent runs), several runs match,
/// or the store failed.
pub fn resolve(store: &dyn RunStore, store_path: &Path, id: &str) -> Result<RunRecord, String> {
    let wanted: String = id
        .trim()
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    let store_err = |e: StoreError| format!("{}: {e}", store_path.display());
    if let Ok(uuid) = Uuid::parse_str(id.trim()) {
        match store.get_run(uuid) {
            Ok(run) => return Ok(run),
            Err(StoreError::RunNotFound(_)) => {}
            Err(e) => return Err(store_err(e)),
        }
    }
    let runs = store.list_runs(usize::MAX).map_err(store_err)?;
    let matches: Vec<&RunRecord> =
        if wanted.is_empty() || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
            Vec::new()
        } else {
            runs.iter()
                .filter(|r| r.run_id.simple().to_string().starts_with(&wanted))
                .collect()
        };
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => {
            let mut msg = format!("no run `{id}` in the run store {}", store_path.display());
            if runs.is_empty() {
                msg.push_str(" (it holds no runs)");
            } else {
                msg.push_str("; the most recent runs:");
                for r in runs.iter().take(5) {
                    msg.push_str(&format!("\n  {}  {}  {}", r.run_id, r.pipeline, r.status));
                }
            }
            Err(msg)
        }
        many => {
            let mut msg = format!(
                "run id prefix `{id}` is ambiguous: {} runs match; give more characters:",
                many.len()
            );
            for r in many.iter().take(10) {
                msg.push_str(&format!("\n  {}  {}  {}", r.run_id, r.pipeline, r.status));
            }
            if many.len() > 10 {
                msg.push_str(&format!("\n  ... and {} more", many.len() - 10));
            }
            Err(msg)
        }
    }
}

/// The lock a process holds while it executes a run: an advisory `flock` on
/// `<store dir>/locks/<run id>.lock`, released by the kernel when the process ends however it
/// ends (SIGKILL included). A run marked `running` whose lock is free crashed.
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

/// Where run `run_id`'s lock lives.
pub fn lock_path(store_path: &Path, run_id: Uuid) -> PathBuf {
    let dir = store_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    dir.join("locks").join(format!("{run_id}.lock"))
}

fn flock(file: &File, op: i32) -> bool {
    // SAFETY: flock(2) on a file descriptor we own; no memory is shared.
    unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) == 0 }
}

impl RunLock {
    /// Takes the lock; `Ok(None)` when another process holds it.
    pub fn acquire(store_path: &Path, run_id: Uuid) -> std::io::Result<Option<RunLock>> {
        let path = lock_path(store_path, run_id);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        if flock(&file, libc::LOCK_EX) {
            Ok(Some(RunLock { _file: file, path }))
        } else {
            Ok(None)
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process holds run `run_id`'s lock (it is executing the run).
pub fn is_locked(store_path: &Path, run_id: Uuid) -> bool {
    match File::open(lock_path(store_path, run_id)) {
        Ok(file) => {
            if flock(&file, libc::LOCK_SH) {
                // SAFETY: as in `flock`.
                unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
                false
            } else {
                true
            }
        }
        Err(_) => false,
    }
}
