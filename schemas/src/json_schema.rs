//! A job's JSON Schema, carried as the JSON text it travels as.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The JSON Schema a job's answer must satisfy, kept as JSON text rather than as a tree.
///
/// A plugin sends many jobs with one schema, and a worker sees the same few schemas again and
/// again. Kept as text, the schema is written into each message by copying it, cloning a job
/// shares it (an `Arc`), and a worker finds its compiled validator by the text without building
/// and dropping a tree for every job (`docs/benchmarks.md`, item 8).
///
/// Build one from a [`serde_json::Value`] (`json!({...}).into()`) or from text
/// ([`JsonSchema::from_json`]); both write the schema compactly with its keys sorted, so the
/// same schema built twice is the same text. A schema that arrives in a message keeps the text
/// it came with: equality and hashing compare texts, so the same schema spaced or ordered
/// differently is a different value (and a different entry in a worker's validator cache).
#[derive(Clone)]
pub struct JsonSchema(Arc<Box<RawValue>>);

impl JsonSchema {
    /// The schema in `text`, which must be JSON; see [`JsonSchema`] for how it is written.
    /// Whether it is a *valid JSON Schema* is left to the worker, which compiles it.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<Value>(text).map(Self::from)
    }

    /// The schema's JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The schema's JSON text as a `serde_json` raw value, to embed in another message as it is.
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// The schema parsed into a tree.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(self.as_str())
    }

    /// Whether the schema is a JSON object, as the wire contract requires. The text never
    /// starts with whitespace: JSON parsing (`serde_json`'s `RawValue`) leaves it out.
    pub fn is_object(&self) -> bool {
        self.as_str().starts_with('{')
    }
}

impl From<Value> for JsonSchema {
    fn from(value: Value) -> Self {
        Self::from(&value)
    }
}

impl From<&Value> for JsonSchema {
    #[allow(
        clippy::expect_used,
        reason = "a Value always serialises: its map keys are strings and its numbers finite"
    )]
    fn from(value: &Value) -> Self {
        let text = serde_json::value::to_raw_value(value).expect("a Value serialises");
        Self(Arc::new(text))
    }
}

impl PartialEq for JsonSchema {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for JsonSchema {}

impl Hash for JsonSchema {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for JsonSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JsonSchema").field(&self.as_str()).finish()
    }
}

impl Serialize for JsonSchema {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JsonSchema {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(|text| Self(Arc::new(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn built_schemas_are_compact_and_sorted_and_arrived_ones_keep_their_text() {
        let tree = json!({"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}});
        let built = JsonSchema::from(&tree);
        assert_eq!(
            built.as_str(),
            r#"{"properties":{"total":{"type":"number"}},"required":["total"],"type":"object"}"#
        );
        let from_text = JsonSchema::from_json(
            "\n  { \"type\": \"object\",\n \"properties\": {\"total\": {\"type\": \"number\"}}, \"required\": [\"total\"] }",
        )
        .unwrap();
        assert_eq!(from_text, built);
        assert_eq!(built.to_value().unwrap(), tree);
        assert!(built.is_object());
        assert!(JsonSchema::from_json("not json").is_err());

        // In a message: the text is kept as it came, less the whitespace around it.
        #[derive(Deserialize, Serialize)]
        struct Carrier {
            schema: JsonSchema,
        }
        let arrived: Carrier =
            serde_json::from_str(r#"{"schema":   { "type" : "object" } }"#).unwrap();
        assert_eq!(arrived.schema.as_str(), r#"{ "type" : "object" }"#);
        assert!(arrived.schema.is_object());
        assert_ne!(arrived.schema, JsonSchema::from(json!({"type": "object"})));
        assert_eq!(
            serde_json::to_string(&arrived).unwrap(),
            r#"{"schema":{ "type" : "object" }}"#
        );
        // Through a tree and back, as `serde_json::from_value` and `to_value` do.
        let through: Carrier = serde_json::from_value(json!({"schema": [1, {"a": true}]})).unwrap();
        assert_eq!(through.schema.as_str(), r#"[1,{"a":true}]"#);
        assert!(!through.schema.is_object());
        assert_eq!(
            serde_json::to_value(&through).unwrap(),
            json!({"schema": [1, {"a": true}]})
        );
        let shared = through.schema.clone();
        assert!(Arc::ptr_eq(&shared.0, &through.schema.0));
    }
}
