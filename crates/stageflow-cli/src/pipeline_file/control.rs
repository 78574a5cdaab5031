//! Interrupt state and the registry of running process groups, shared by a run and its nested
//! runs.
//!
//! Every command runs in its own process group (so a terminal's Ctrl-C reaches only `stageflow`,
//! and a signal to the group reaches the command's own children too). On the first interrupt the
//! run SIGTERMs every registered group; on a second one, SIGKILLs them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use stageflow::CancellationToken;
use tokio::sync::Notify;

/// Sends `signal` to process group `pgid`. Errors (the group is gone) are expected and ignored.
pub(crate) fn signal_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; it has no memory effects.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

struct Entry {
    pgid: i32,
    /// Cleanup commands keep running through the first interrupt.
    terminate_on_interrupt: bool,
}

/// See the [module docs](self).
pub(crate) struct Control {
    interrupted: CancellationToken,
    groups: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    changed: Notify,
}

impl Control {
    pub(crate) fn new() -> Self {
        Control {
            interrupted: CancellationToken::new(),
            groups: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// First interrupt: remember it and SIGTERM every running command's group.
    pub(crate) fn interrupt(&self) {
        if self.interrupted.is_cancelled() {
            return;
        }
        self.interrupted.cancel();
        for entry in self.groups().values() {
            if entry.terminate_on_interrupt {
                signal_group(entry.pgid, libc::SIGTERM);
            }
        }
    }

    /// SIGKILLs every registered group.
    pub(crate) fn kill_all(&self) {
        for entry in self.groups().values() {
            signal_group(entry.pgid, libc::SIGKILL);
        }
    }

    pub(crate) fn is_interrupted(&self) -> bool {
        self.interrupted.is_cancelled()
    }

    /// Completes on the first interrupt.
    pub(crate) async fn interrupted(&self) {
        self.interrupted.cancelled().await
    }

    /// Registers a running group; if an interrupt already happened, the group is told at once.
    pub(crate) fn register(&self, pgid: i32, terminate_on_interrupt: bool) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.groups().insert(
            id,
            Entry {
                pgid,
                terminate_on_interrupt,
            },
        );
        if terminate_on_interrupt && self.is_interrupted() {
            signal_group(pgid, libc::SIGTERM);
        }
        id
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.groups().remove(&id);
        self.changed.notify_waiters();
    }

    /// Completes once no interruptible command is running.
    pub(crate) async fn wait_until_idle(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.groups().values().any(|e| e.terminate_on_interrupt) {
                return;
            }
            notified.await;
        }
    }
}
