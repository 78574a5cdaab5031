//! The outputs a run kept ([`Results`]), by stage name.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::DataError;
use crate::output::StageOutput;
use crate::topology::Topology;

/// Outputs of a run's stages, by stage name, in definition order.
#[derive(Clone)]
pub struct Results {
    pub(crate) graph: Arc<Topology>,
    /// `(stage index, output)`, sorted by index.
    pub(crate) entries: Vec<(u32, Arc<StageOutput>)>,
}

impl Results {
    /// The output of stage `name`, if it finished and was retained.
    pub fn get(&self, name: &str) -> Option<&StageOutput> {
        let idx = self.graph.index_of(name)?;
        self.entries
            .binary_search_by_key(&idx, |(i, _)| *i)
            .ok()
            .map(|pos| &*self.entries[pos].1)
    }

    /// The output of stage `name`, or an error naming the stages that do have results.
    pub fn require(&self, name: &str) -> Result<&StageOutput, DataError> {
        self.get(name).ok_or_else(|| DataError::MissingKey {
            key: name.to_owned(),
            available: self.names().take(20).map(str::to_owned).collect(),
        })
    }

    /// The value `key` of stage `name`'s output.
    pub fn get_data<T: DeserializeOwned>(&self, name: &str, key: &str) -> Result<T, DataError> {
        self.require(name)?.get(key)
    }

    /// `true` if stage `name` has a retained output.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Names of the stages with a retained output.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(i, _)| self.graph.name(*i))
    }

    /// `(stage name, output)` in definition order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &StageOutput)> {
        self.entries
            .iter()
            .map(|(i, o)| (self.graph.name(*i), &**o))
    }

    /// Number of retained outputs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` when no output is retained.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All retained outputs as a JSON object `{stage: output}`.
    pub fn to_json(&self) -> Value {
        let map = self
            .iter()
            .map(|(name, out)| {
                (
                    name.to_owned(),
                    serde_json::to_value(out).unwrap_or(Value::Null),
                )
            })
            .collect();
        Value::Object(map)
    }
}

impl fmt::Debug for Results {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}
