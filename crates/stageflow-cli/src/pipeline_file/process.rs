//! Running one command: its own process group, stdout captured, stderr forwarded line by line,
//! a deadline (SIGTERM, then SIGKILL after the grace period), and interrupts.
//!
//! If the future is dropped while the command runs (the run was cancelled hard), the command's
//! whole process group is SIGKILLed.

use std::collections::VecDeque;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{sleep_until, Instant};

use super::control::{signal_group, Control};

/// Most stdout bytes kept as a stage's output; the rest is read and dropped.
pub(crate) const STDOUT_LIMIT: usize = 16 * 1024 * 1024;
/// How long to keep reading a command's pipes after it exited (a background grandchild may hold
/// them open).
const DRAIN: Duration = Duration::from_millis(300);
const TAIL_LINES: usize = 10;

/// What to run.
#[derive(Clone, Debug)]
pub(crate) struct ProcSpec {
    pub(crate) program: String,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) dir: PathBuf,
}

impl ProcSpec {
    /// The command as a person would type it.
    pub(crate) fn display(&self) -> String {
        if self.program == "sh" && self.args.len() == 2 && self.args[0] == "-c" {
            return self.args[1].clone();
        }
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| {
                if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
                    format!("'{}'", a.replace('\'', "'\\''"))
                } else {
                    a.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How a command ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// It exited by itself.
    Exited,
    /// It ran past its deadline and was terminated.
    TimedOut,
    /// The run was interrupted and the command was terminated.
    Interrupted,
}

/// The outcome of [`run`].
#[derive(Debug)]
pub(crate) struct ProcResult {
    pub(crate) ending: Ending,
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stdout_truncated: bool,
    pub(crate) stderr_tail: VecDeque<String>,
}

impl ProcResult {
    /// `exit code 3`, `killed by signal 9`.
    pub(crate) fn describe_status(&self) -> String {
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "ended abnormally".to_owned(),
        }
    }

    /// The last non-empty stderr line, if any.
    pub(crate) fn last_stderr_line(&self) -> Option<&str> {
        self.stderr_tail
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
    }
}

/// Options of one [`run`].
pub(crate) struct RunOpts<'a> {
    pub(crate) deadline: Option<Instant>,
    pub(crate) grace: Duration,
    /// Whether an interrupt terminates this command (cleanup commands keep running).
    pub(crate) interruptible: bool,
    /// Called with each complete stderr line.
    pub(crate) on_stderr: &'a mut (dyn FnMut(&str) + Send),
}

/// SIGKILLs the process group if dropped before the command was reaped.
struct GroupGuard<'c> {
    control: &'c Control,
    pgid: Option<i32>,
    id: Option<u64>,
}

impl GroupGuard<'_> {
    fn reaped(&mut self) {
        self.pgid = None;
        if let Some(id) = self.id.take() {
            self.control.unregister(id);
        }
    }
}

impl Drop for GroupGuard<'_> {
    fn drop(&mut self) {
        if let Some(pgid) = self.pgid {
            signal_group(pgid, libc::SIGKILL);
        }
        if let Some(id) = self.id.take() {
            self.control.unregister(id);
        }
    }
}

async fn read_some<R: AsyncRead + Unpin>(r: &mut Option<R>, buf: &mut [u8]) -> io::Result<usize> {
    match r {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Runs `spec` to completion. Errors only when the command cannot be started.
pub(crate) async fn run(
    spec: &ProcSpec,
    control: &Control,
    opts: RunOpts<'_>,
) -> io::Result<ProcResult> {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|p| p as i32);
    let mut guard = GroupGuard {
        control,
        pgid,
        id: pgid.map(|p| control.register(p, opts.interruptible)),
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut out = Vec::new();
    let mut truncated = false;
    let mut err_line: Vec<u8> = Vec::new();
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut obuf = vec![0u8; 16 * 1024];
    let mut ebuf = vec![0u8; 8 * 1024];
    let mut status: Option<ExitStatus> = None;
    let mut ending = Ending::Exited;
    let mut terminating = false;
    let mut kill_at: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let on_stderr = opts.on_stderr;
    let mut emit_line = |line: &[u8], tail: &mut VecDeque<String>| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\n', '\r']);
        on_stderr(text);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(text.chars().take(500).collect());
    };
    loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        tokio::select! {
            r = read_some(&mut stdout, &mut obuf), if stdout.is_some() => match r {
                Ok(0) | Err(_) => stdout = None,
                Ok(n) => {
                    let room = STDOUT_LIMIT.saturating_sub(out.len());
                    out.extend_from_slice(&obuf[..n.min(room)]);
                    truncated |= n > room;
                }
            },
            r = read_some(&mut stderr, &mut ebuf), if stderr.is_some() => match r {
                Ok(0) | Err(_) => {
                    stderr = None;
                    if !err_line.is_empty() {
                        emit_line(&err_line, &mut tail);
                        err_line.clear();
                    }
                }
                Ok(n) => {
                    for chunk in ebuf[..n].split_inclusive(|&b| b == b'\n') {
                        err_line.extend_from_slice(chunk);
                        if chunk.ends_with(b"\n") || err_line.len() > 64 * 1024 {
                            emit_line(&err_line, &mut tail);
                            err_line.clear();
                        }
                    }
                }
            },
            s = child.wait(), if status.is_none() => {
                let s = s?;
                status = Some(s);
                if terminating {
                    // Take down whatever the command left behind in its group.
                    if let Some(p) = pgid {
                        signal_group(p, libc::SIGKILL);
                    }
                }
                guard.reaped();
                drain_until = Some(Instant::now() + DRAIN);
            },
            () = sleep_until(opts.deadline.unwrap_or_else(far_future)), if opts.deadline.is_some() && status.is_none() && !terminating => {
                ending = Ending::TimedOut;
                terminating = true;
                if let Some(p) = pgid {
                    signal_group(p, libc::SIGTERM);
                }
                kill_at = Some(Instant::now() + opts.grace);
            },
            () = control.interrupted(), if opts.interruptible && status.is_none() && !terminating => {
                ending = Ending::Interrupted;
                terminating = true;
                if let Some(p) = pgid {
                    signal_group(p, libc::SIGTERM);
                }
                kill_at = Some(Instant::now() + opts.grace);
            },
            () = sleep_until(kill_at.unwrap_or_else(far_future)), if kill_at.is_some() && status.is_none() => {
                if let Some(p) = pgid {
                    signal_group(p, libc::SIGKILL);
                }
                kill_at = None;
            },
            () = sleep_until(drain_until.unwrap_or_else(far_future)), if drain_until.is_some() => break,
        }
    }
    Ok(ProcResult {
        ending,
        status: status.unwrap_or_else(|| ExitStatus::from_raw(0)),
        stdout: out,
        stdout_truncated: truncated,
        stderr_tail: tail,
    })
}
