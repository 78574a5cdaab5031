//! Memory monitoring: process RSS sampling and an allocation-counter hook.
//!
//! - **RSS**: [`current_rss`] reads `/proc/self/status` on Linux (`None` elsewhere). With
//!   [`RunOptions::memory(true)`](crate::RunOptions::memory) the run samples it at start, every
//!   sampler tick (100 ms by default) and at the end, and reports start, end and peak in
//!   [`MemoryReport`] and in the `pipeline.*` terminal event.
//! - **Allocations**: Rust has no portable allocation counter, so the binary that owns the global
//!   allocator registers one with [`set_allocation_counter`]: a function returning the bytes
//!   allocated so far **by the calling thread** (a global counter works too, but then stages
//!   running in parallel are charged for each other's allocations). The run then reads it around
//!   every poll of every stage and reports bytes allocated per stage (in the stage's terminal
//!   event as `allocated_bytes`) and in total. [`CountingAlloc`] is a ready-made counting
//!   allocator with exactly that per-thread counter.
//!
//! ```
//! use stageflow::observe::memory;
//! // Linux: Some(bytes); elsewhere None.
//! if cfg!(target_os = "linux") {
//!     assert!(memory::current_rss().unwrap() > 0);
//! }
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use serde::Serialize;

/// Memory figures of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryReport {
    /// Resident set size when the run started, in bytes.
    pub rss_start: Option<u64>,
    /// Resident set size when the run ended.
    pub rss_end: Option<u64>,
    /// Highest resident set size sampled during the run.
    pub rss_peak: Option<u64>,
    /// Bytes allocated while the run's stages were polled (needs
    /// [`set_allocation_counter`]).
    pub allocated_bytes: Option<u64>,
}

/// Current resident set size of this process in bytes (`VmRSS`), on Linux; `None` elsewhere or
/// if it cannot be read.
pub fn current_rss() -> Option<u64> {
    read_status_kb("VmRSS:")
}

/// Highest resident set size of this process so far (`VmHWM`), on Linux.
pub fn process_peak_rss() -> Option<u64> {
    read_status_kb("VmHWM:")
}

#[cfg(target_os = "linux")]
fn read_status_kb(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kb(&status, key)
}

/// The `key` line of a `/proc/<pid>/status` text (`"VmHWM:\t 12345 kB"`), in bytes.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(not(target_os = "linux"))]
fn read_status_kb(_key: &str) -> Option<u64> {
    None
}

static COUNTER: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

/// Registers the function the run reads to attribute allocations to stages. It must return a
/// monotonic count of bytes allocated by the calling thread (or, less precisely, by the process).
/// Call it once, early in `main`; later calls replace the function.
///
/// ```
/// use stageflow::observe::memory::{self, CountingAlloc};
/// // In a binary: #[global_allocator] static ALLOC: CountingAlloc = CountingAlloc::new();
/// memory::set_allocation_counter(CountingAlloc::thread_allocated);
/// assert!(memory::allocated_bytes().is_some());
/// ```
pub fn set_allocation_counter(counter: fn() -> u64) {
    COUNTER.store(counter as *mut (), Ordering::Release);
}

/// The registered allocation counter, if any.
pub fn allocation_counter() -> Option<fn() -> u64> {
    let ptr = COUNTER.load(Ordering::Acquire);
    if ptr.is_null() {
        None
    } else {
        // SAFETY: the only non-null value ever stored is a `fn() -> u64` cast to a pointer.
        Some(unsafe { std::mem::transmute::<*mut (), fn() -> u64>(ptr) })
    }
}

/// The registered counter's current value, if one is registered.
pub fn allocated_bytes() -> Option<u64> {
    allocation_counter().map(|f| f())
}

thread_local! {
    static THREAD_ALLOCATED: Cell<u64> = const { Cell::new(0) };
}
static TOTAL_ALLOCATED: AtomicU64 = AtomicU64::new(0);

/// A global allocator that forwards to [`System`] and counts bytes allocated, per thread (a
/// thread-local cell: no atomic on the allocation path) and in total (one relaxed atomic add).
///
/// ```no_run
/// use stageflow::observe::memory::{self, CountingAlloc};
/// #[global_allocator]
/// static ALLOC: CountingAlloc = CountingAlloc::new();
/// fn main() {
///     memory::set_allocation_counter(CountingAlloc::thread_allocated);
///     // ... run pipelines with RunOptions::new().memory(true)
/// }
/// ```
#[derive(Debug, Default)]
pub struct CountingAlloc {
    _private: (),
}

impl CountingAlloc {
    /// The allocator (for a `static`).
    pub const fn new() -> Self {
        CountingAlloc { _private: () }
    }

    /// Bytes allocated by the calling thread since it started (counts only while a
    /// `CountingAlloc` is the global allocator).
    pub fn thread_allocated() -> u64 {
        THREAD_ALLOCATED.try_with(Cell::get).unwrap_or(0)
    }

    /// Bytes allocated by the whole process since it started.
    pub fn total_allocated() -> u64 {
        TOTAL_ALLOCATED.load(Ordering::Relaxed)
    }

    #[inline]
    fn count(size: usize) {
        let _ = THREAD_ALLOCATED.try_with(|c| c.set(c.get() + size as u64));
        TOTAL_ALLOCATED.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to `System` with the same arguments; counting touches only a
// const-initialized thread-local without destructor and an atomic, neither of which allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::count(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::count(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::count(new_size.saturating_sub(layout.size()));
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm() {
        let status = "Name:\tstageflow\nVmPeak:\t  200 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM:"), Some(12345 * 1024));
        assert_eq!(parse_status_kb("VmRSS: 1 kB\n", "VmHWM:"), None);
        assert_eq!(parse_status_kb("VmHWM: lots kB\n", "VmHWM:"), None);
    }
}
