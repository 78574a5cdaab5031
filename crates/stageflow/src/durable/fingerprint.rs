//! The pipeline fingerprint: what a resume compares to refuse continuing a run whose pipeline
//! changed.

use std::fmt;

use crate::graph::Graph;

/// A stable hash of a pipeline's shape: its name, and its stages' names, kinds and dependency
/// edges, in definition order. Two builds of the same definition have the same fingerprint, in any
/// process, on any machine and with any Rust version (the hash is specified here: FNV-1a with a
/// 128-bit state over 64-bit little-endian words; not the standard library's hasher); renaming, adding, removing or re-kinding a stage, or adding or
/// removing an edge, changes it.
///
/// It does not see code: changing what a stage *does*, or its condition, keeps the fingerprint.
/// Computed in one pass over the names and edges (linear time, no allocation but the result).
///
/// Rendered as `sfp1:` and 32 hex digits.
///
/// ```
/// use stageflow::{Pipeline, StageContext, StageOutput};
/// let build = |dep: &str| {
///     Pipeline::builder("p")
///         .stage("a", |_c: StageContext| async { StageOutput::ok() })
///         .stage("b", |_c: StageContext| async { StageOutput::ok() })
///         .stage("c", |_c: StageContext| async { StageOutput::ok() })
///         .after(dep)
///         .build()
///         .unwrap()
/// };
/// assert_eq!(build("a").fingerprint(), build("a").fingerprint());
/// assert_ne!(build("a").fingerprint(), build("b").fingerprint());
/// assert!(build("a").fingerprint().to_string().starts_with("sfp1:"));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub u128);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sfp1:{:032x}", self.0)
    }
}

/// FNV-1a with a 128-bit state, over 64-bit words instead of bytes (eight times fewer
/// multiplications; a million-stage pipeline hashes in a few milliseconds).
struct Fnv(u128);

impl Fnv {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

    fn u64(&mut self, v: u64) {
        self.0 ^= u128::from(v);
        self.0 = self.0.wrapping_mul(Self::PRIME);
    }

    /// Length first, so that field boundaries are part of the hash; then 8-byte little-endian
    /// words, the last one zero-padded.
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        let mut chunks = s.as_bytes().chunks_exact(8);
        for chunk in &mut chunks {
            self.u64(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.u64(u64::from_le_bytes(last));
        }
    }
}

impl Graph {
    /// This pipeline's [`Fingerprint`]: a stable hash of its name and its stages' names, kinds and
    /// edges, in definition order. See [`Fingerprint`].
    pub fn fingerprint(&self) -> Fingerprint {
        let g = &*self.inner;
        let mut h = Fnv(Fnv::OFFSET);
        h.str("stageflow-pipeline-v1");
        h.str(g.pipeline_name());
        h.u64(g.len() as u64);
        for i in 0..g.len() as u32 {
            h.str(g.name(i));
            h.str(g.kind(i).as_str());
            let deps = g.deps(i);
            h.u64(deps.len() as u64);
            for &d in deps {
                h.u64(u64::from(d));
            }
        }
        Fingerprint(h.0)
    }
}
