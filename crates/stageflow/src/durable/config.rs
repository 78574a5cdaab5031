//! When a durable run commits: [`Durability`].

use std::time::Duration;

/// When the records of finished stages are committed; see the [module docs](crate::durable#durability-when-records-are-committed).
///
/// ```
/// use std::time::Duration;
/// use stageflow::durable::Durability;
/// assert_eq!(
///     Durability::group(500, 20),
///     Durability::Group { max_stages: 500, max_delay: Duration::from_millis(20) }
/// );
/// assert_eq!(Durability::default(), Durability::group(1000, 100));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// One transaction per finished stage.
    EveryStage,
    /// Group commit: a transaction every `max_stages` stages or `max_delay` after the first
    /// uncommitted stage finished, whichever comes first.
    Group {
        /// Most stages per transaction (at least 1).
        max_stages: usize,
        /// Longest a finished stage waits for its commit.
        max_delay: Duration,
    },
    /// A transaction per [segment](crate::segment) (when the segment's last stage finished), and
    /// one at the end of the run. A run without segments is one segment.
    SegmentBoundaries,
}

impl Durability {
    /// [`Durability::Group`] with `max_stages` and `max_delay_ms` milliseconds.
    pub fn group(max_stages: usize, max_delay_ms: u64) -> Self {
        Durability::Group {
            max_stages: max_stages.max(1),
            max_delay: Duration::from_millis(max_delay_ms),
        }
    }
}

impl Default for Durability {
    /// Group commit of 1000 stages or 100 ms.
    fn default() -> Self {
        Durability::group(1000, 100)
    }
}
