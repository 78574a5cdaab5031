//! The shape of a pipeline: stage names, kinds and the dependency edges, laid out flat.
//!
//! Names live in one string arena indexed by a hash table of stage indices (no allocation per
//! name), and both the dependency and the dependent lists are compressed sparse rows (two flat
//! `u32` vectors each). A 1,000,000-stage chain therefore takes a few dozen bytes a stage, and
//! every traversal is a loop over flat arrays: nothing here recurses, so nothing overflows the
//! stack however deep the graph is.
//!
//! [`Topology`] is what everything that only needs the shape holds (a stage's context, events,
//! run summaries, results): it knows no stage code, no run and no interceptor.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::kind::StageKind;

/// The validated shape of a pipeline: names, kinds, dependencies and dependents.
pub(crate) struct Topology {
    pub(crate) name: String,
    pub(crate) names: NameTable,
    pub(crate) kinds: Vec<StageKind>,
    pub(crate) deps: Csr,
    pub(crate) dependents: Csr,
}

impl Topology {
    pub(crate) fn pipeline_name(&self) -> &str {
        &self.name
    }

    pub(crate) fn len(&self) -> usize {
        self.kinds.len()
    }

    pub(crate) fn name(&self, idx: u32) -> &str {
        self.names.get_name(idx)
    }

    pub(crate) fn kind(&self, idx: u32) -> StageKind {
        self.kinds[idx as usize]
    }

    pub(crate) fn index_of(&self, name: &str) -> Option<u32> {
        self.names.find(name)
    }

    /// Dependencies of `idx`, sorted by index.
    pub(crate) fn deps(&self, idx: u32) -> &[u32] {
        self.deps.row(idx)
    }

    /// Dependents of `idx`, sorted by index.
    pub(crate) fn dependents(&self, idx: u32) -> &[u32] {
        self.dependents.row(idx)
    }

    /// All stage indices in a topological order (ties in definition order), iteratively.
    pub(crate) fn topological_indices(&self) -> Vec<u32> {
        kahn(&self.deps, &self.dependents, self.len())
    }

    /// Heap bytes of the names and adjacency lists.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.names.heap_bytes()
            + self.deps.heap_bytes()
            + self.dependents.heap_bytes()
            + self.kinds.capacity() * std::mem::size_of::<StageKind>()
    }
}

/// Stage names: one arena, offsets, and a hash table from name to stage index.
pub(crate) struct NameTable {
    arena: String,
    ends: Vec<usize>,
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl NameTable {
    pub(crate) fn with_capacity(n: usize, bytes: usize) -> Self {
        NameTable {
            arena: String::with_capacity(bytes),
            ends: Vec::with_capacity(n),
            table: HashTable::with_capacity(n),
            hasher: DefaultHashBuilder::default(),
        }
    }

    pub(crate) fn get_name(&self, idx: u32) -> &str {
        let i = idx as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.arena[start..self.ends[i]]
    }

    pub(crate) fn find(&self, name: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(name);
        self.table
            .find(hash, |&idx| self.get_name(idx) == name)
            .copied()
    }

    /// Appends `name` as the next index; returns the earlier index if the name is taken (the name
    /// is still appended so indices stay aligned with the stage list).
    pub(crate) fn push(&mut self, name: &str) -> Result<u32, u32> {
        let idx = self.ends.len() as u32;
        self.arena.push_str(name);
        self.ends.push(self.arena.len());
        let hash = self.hasher.hash_one(name);
        if let Some(&existing) = self.table.find(hash, |&i| self.get_name(i) == name) {
            return Err(existing);
        }
        let (arena, ends, hasher) = (&self.arena, &self.ends, &self.hasher);
        let name_of = |i: u32| {
            let i = i as usize;
            let start = if i == 0 { 0 } else { ends[i - 1] };
            &arena[start..ends[i]]
        };
        self.table
            .insert_unique(hash, idx, |&i| hasher.hash_one(name_of(i)));
        Ok(idx)
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + self.ends.capacity() * std::mem::size_of::<usize>()
            + self.table.capacity() * (std::mem::size_of::<u32>() + 1)
    }
}

/// Compressed sparse rows: the neighbours of node `i` are `edges[offsets[i]..offsets[i + 1]]`.
pub(crate) struct Csr {
    pub(crate) offsets: Vec<u32>,
    pub(crate) edges: Vec<u32>,
}

impl Csr {
    pub(crate) fn row(&self, i: u32) -> &[u32] {
        let i = i as usize;
        &self.edges[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// The transpose: for every edge `i -> j` in `self`, an edge `j -> i`. Rows come out sorted
    /// because sources are visited in increasing order.
    pub(crate) fn transpose(&self, n: usize) -> Csr {
        let mut counts = vec![0u32; n + 1];
        for &j in &self.edges {
            counts[j as usize + 1] += 1;
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let mut fill = counts.clone();
        let mut edges = vec![0u32; self.edges.len()];
        for i in 0..n as u32 {
            for &j in self.row(i) {
                let slot = &mut fill[j as usize];
                edges[*slot as usize] = i;
                *slot += 1;
            }
        }
        Csr {
            offsets: counts,
            edges,
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        (self.offsets.capacity() + self.edges.capacity()) * std::mem::size_of::<u32>()
    }
}

/// Kahn's algorithm: a topological order of the nodes it can order (all of them iff acyclic).
pub(crate) fn kahn(deps: &Csr, dependents: &Csr, n: usize) -> Vec<u32> {
    let mut pending: Vec<u32> = (0..n as u32).map(|i| deps.row(i).len() as u32).collect();
    let mut order: Vec<u32> = (0..n as u32)
        .filter(|&i| pending[i as usize] == 0)
        .collect();
    let mut head = 0;
    while head < order.len() {
        let i = order[head];
        head += 1;
        for &j in dependents.row(i) {
            let p = &mut pending[j as usize];
            *p -= 1;
            if *p == 0 {
                order.push(j);
            }
        }
    }
    order
}

/// One cycle among the nodes Kahn's algorithm could not order, in execution order with the first
/// node repeated at the end. Every such node has an unordered dependency, so walking those
/// dependencies must revisit a node: O(N + E), iterative.
pub(crate) fn find_cycle(deps: &Csr, ordered: &[u32], n: usize) -> Vec<u32> {
    let mut done = vec![false; n];
    for &i in ordered {
        done[i as usize] = true;
    }
    const UNSEEN: u32 = u32::MAX;
    let mut position = vec![UNSEEN; n];
    let start = (0..n as u32)
        .find(|&i| !done[i as usize])
        .expect("an unordered node exists");
    let mut walk = vec![start];
    position[start as usize] = 0;
    loop {
        let current = *walk.last().expect("walk is never empty");
        let next = deps
            .row(current)
            .iter()
            .copied()
            .find(|&d| !done[d as usize])
            .expect("an unordered node has an unordered dependency");
        let seen = position[next as usize];
        if seen != UNSEEN {
            // walk[seen..] follows "depends on" edges; reversed it is execution order.
            let mut cycle: Vec<u32> = walk[seen as usize..].iter().rev().copied().collect();
            cycle.push(cycle[0]);
            return cycle;
        }
        position[next as usize] = walk.len() as u32;
        walk.push(next);
    }
}
