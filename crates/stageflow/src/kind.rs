//! What a stage is for: [`StageKind`], metadata the engine carries with every stage (tooling and
//! interceptors chosen per kind use it; the run loop treats all kinds alike).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Metadata describing what a stage is for. The core engine treats all kinds alike; tooling (and
/// interceptors chosen per kind) can use it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// Reshapes data.
    Transform,
    /// Adds information from elsewhere.
    Enrich,
    /// Decides which branch runs.
    Route,
    /// Checks an upstream result.
    Guard,
    /// General work (the default).
    #[default]
    Work,
    /// An autonomous agent step.
    Agent,
}

impl StageKind {
    /// All kinds, in declaration order.
    pub const ALL: [StageKind; 6] = [
        StageKind::Transform,
        StageKind::Enrich,
        StageKind::Route,
        StageKind::Guard,
        StageKind::Work,
        StageKind::Agent,
    ];

    /// The lowercase name (`"transform"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Transform => "transform",
            StageKind::Enrich => "enrich",
            StageKind::Route => "route",
            StageKind::Guard => "guard",
            StageKind::Work => "work",
            StageKind::Agent => "agent",
        }
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StageKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StageKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown stage kind `{s}` (expected transform, enrich, route, guard, work or agent)")
            })
    }
}
