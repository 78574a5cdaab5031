//! The library half of the `stageflow` command: pipeline files (`stageflow run`, `check`,
//! `graph`), usable from tests without spawning the binary.
#![warn(missing_docs)]

pub mod pipeline_file;
