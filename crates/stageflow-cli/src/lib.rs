//! The library half of the `stageflow` command: pipeline files (`stageflow run`, `check`,
//! `graph`) and recorded runs (`stageflow runs`), usable from tests without spawning the binary.
#![warn(missing_docs)]

pub mod pipeline_file;
pub mod runs;
