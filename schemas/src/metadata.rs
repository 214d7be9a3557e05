//! [`Metadata`]: a job's opaque value, echoed on its result byte for byte.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
use std::fmt;

/// A job's `metadata`: any JSON value, kept as the JSON text it came as, so its result carries
/// it back exactly: large integers, exponents, key order and spacing inside it included
/// (a parsed tree would turn 2^70 into `1.1805916207174113e+21` and `1E2` into `100.0`).
#[derive(Clone)]
pub struct Metadata(Box<RawValue>);

impl Metadata {
    /// The value written as `text`, which must be JSON, kept exactly (less the whitespace
    /// around it).
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<Box<RawValue>>(text).map(Self)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The value parsed into a tree (numbers beyond `f64` lose their exactness there).
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.as_str())
    }
}

impl From<Value> for Metadata {
    #[allow(
        clippy::expect_used,
        reason = "a Value always serialises: its map keys are strings and its numbers finite"
    )]
    fn from(value: Value) -> Self {
        Self(serde_json::value::to_raw_value(&value).expect("a Value serialises"))
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Metadata").field(&self.as_str()).finish()
    }
}

impl Serialize for Metadata {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_comes_back_as_the_text_it_came_as() {
        let text = r#"{"z": 1180591620717411303424, "e": 1E2, "a": [0.10000000000000000001]}"#;
        #[derive(Deserialize, Serialize)]
        struct Carrier {
            metadata: Metadata,
        }
        let arrived: Carrier =
            serde_json::from_str(&format!(r#"{{"metadata": {text}}}"#)).expect("a carrier");
        assert_eq!(arrived.metadata.as_str(), text);
        assert_eq!(
            serde_json::to_string(&arrived).expect("serialise"),
            format!(r#"{{"metadata":{text}}}"#)
        );
        assert_eq!(Metadata::from_json(text).expect("json"), arrived.metadata);
        assert!(Metadata::from_json("{not json").is_err());
        assert_eq!(
            Metadata::from(serde_json::json!({"row": 1})).as_str(),
            r#"{"row":1}"#
        );
    }
}
