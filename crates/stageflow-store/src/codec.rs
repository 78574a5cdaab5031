//! Decoding stored [`StageOutput`] JSON without losing the order of its data keys.
//!
//! `StageOutput` serializes its data in insertion order, but deserializes it through a
//! `serde_json::Map`, which (without serde_json's `preserve_order` feature) sorts the keys. A
//! resumed run must see exactly the outputs the original run produced, so when an output has more
//! than one data key, the data is decoded a second time, in document order, and put back.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use stageflow::{OutputData, StageOutput};

/// `StageOutput` from its stored JSON, data keys in their stored order.
pub(crate) fn decode_output(json: &[u8]) -> Result<StageOutput, serde_json::Error> {
    let mut output: StageOutput = serde_json::from_slice(json)?;
    if output.data().len() > 1 {
        let ordered: DataOnly = serde_json::from_slice(json)?;
        if let Some(OrderedData(data)) = ordered.data {
            *output.data_mut() = data;
        }
    }
    Ok(output)
}

#[derive(Deserialize)]
struct DataOnly {
    #[serde(default)]
    data: Option<OrderedData>,
}

struct OrderedData(OutputData);

impl<'de> Deserialize<'de> for OrderedData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = OrderedData;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of output data")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedData, A::Error> {
                let mut data = OutputData::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    data.insert_value(key, value);
                }
                Ok(OrderedData(data))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keys_keep_their_order() {
        let out = StageOutput::skip("why")
            .with("z", 1)
            .with("a", 2)
            .with("m", [3]);
        let json = serde_json::to_vec(&out).unwrap();
        let back = decode_output(&json).unwrap();
        assert_eq!(back, out);
        assert_eq!(back.data().keys().collect::<Vec<_>>(), ["z", "a", "m"]);
    }
}
