//! Peak resident memory, per measured size.
//!
//! The question `stress` answers is "does memory follow the graph's width or its size?", so what
//! matters is the *peak* resident set while a size is built and run, not the RSS afterwards. Linux
//! keeps that high-water mark as `VmHWM` in `/proc/self/status`, and lets a process reset it to the
//! current RSS by writing `5` to `/proc/self/clear_refs`. Resetting before each size makes every
//! row's number its own peak instead of the largest size so far.
//!
//! Everything here degrades quietly: off Linux (or without permission) the peak is `None` and the
//! reset reports `false`; the harness then prints `n/a` or notes that peaks are cumulative.

/// Hands freed heap memory back to the kernel, then resets the peak-RSS high-water mark to the
/// current RSS. Returns `false` when the reset is not possible (not Linux, or
/// `/proc/self/clear_refs` not writable).
///
/// Without the trim, memory the previous size freed but glibc kept cached would still be resident,
/// and the next (smaller) size would inherit the larger peak.
pub fn reset_peak() -> bool {
    trim_heap();
    cfg!(target_os = "linux") && std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Returns free heap pages to the kernel (glibc's `malloc_trim`); a no-op elsewhere.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            /// glibc: release free memory from the top of the heap and from free chunks.
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: `malloc_trim` takes no pointers and may be called at any time from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// The peak resident set size since the last successful [`reset_peak`] (or process start), in MiB;
/// `None` when it cannot be read. The high-water mark is the library's
/// [`process_peak_rss`](stageflow::observe::memory::process_peak_rss) (`VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    stageflow::observe::memory::process_peak_rss().map(|bytes| bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_peak_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mb().is_some_and(|mb| mb > 0.0));
        } else {
            assert_eq!(peak_rss_mb(), None);
        }
    }
}
