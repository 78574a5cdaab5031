//! A counting global allocator.
//!
//! "How much does the engine allocate per stage?" is a question about every thread of the process
//! (stages may run on any tokio worker), so it is answered at the one place all allocations pass
//! through: the global allocator. [`CountingAllocator`] forwards to [`System`] and adds the
//! requested size to a process-wide counter. Callers take a [`snapshot`] before and after the code
//! they measure and subtract.
//!
//! Counters use relaxed atomics: they are statistics, not synchronization, and a relaxed add is
//! about as cheap as an atomic can be. A `realloc` counts its full new size (as if it were a fresh
//! allocation plus a copy), which is the usual "total bytes allocated" convention.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Bytes requested from the allocator since the process started.
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Allocation calls (alloc, alloc_zeroed, realloc) since the process started.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// [`System`] plus two counters; install it with `#[global_allocator]`.
pub struct CountingAllocator;

fn record(size: usize) {
    BYTES.fetch_add(size as u64, Relaxed);
    CALLS.fetch_add(1, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting does
// not touch the memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The allocation counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocSnapshot {
    /// Bytes allocated.
    pub bytes: u64,
    /// Allocation calls.
    pub calls: u64,
}

impl AllocSnapshot {
    /// What was allocated between `earlier` and `self`.
    pub fn since(self, earlier: AllocSnapshot) -> AllocSnapshot {
        AllocSnapshot {
            bytes: self.bytes.wrapping_sub(earlier.bytes),
            calls: self.calls.wrapping_sub(earlier.calls),
        }
    }
}

/// The counters now.
pub fn snapshot() -> AllocSnapshot {
    AllocSnapshot {
        bytes: BYTES.load(Relaxed),
        calls: CALLS.load(Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_known_allocation() {
        let before = snapshot();
        let v: Vec<u8> = Vec::with_capacity(4096);
        let delta = snapshot().since(before);
        drop(v);
        // Other test threads may allocate concurrently, so only a lower bound holds.
        assert!(delta.bytes >= 4096, "{delta:?}");
        assert!(delta.calls >= 1, "{delta:?}");
    }
}
