//! OpenAI chat completions with structured outputs. The wire code is
//! [`super::openai_compatible`]'s; this module adds OpenAI's own rules:
//!
//! - `max_completion_tokens` instead of `max_tokens`;
//! - the root of a `json_schema` must be an object: other roots are wrapped in
//!   `{"value": ...}` and unwrapped from the answer;
//! - with `strict = true` the schema is made strict-compatible: every object gets
//!   `additionalProperties: false` and lists all its properties as required, the properties
//!   that were optional become nullable, `oneOf` becomes `anyOf`, and keywords strict mode
//!   rejects are dropped. The answer is mapped back: a `null` the model gave for a property
//!   that was optional (and not nullable) is removed. Quarry validates the answer against the
//!   job's *original* schema afterwards, so nothing the rewrite loosened goes unchecked.

use super::openai_compatible::{Flavor, OpenAiCompatible};
use super::{BuildError, Provider, ProviderError, ProviderRequest, ProviderResponse, SentSchema};
use crate::config::ProviderConfig;
use futures::future::BoxFuture;
use quarry_schemas::job::ImageMime;
use serde_json::{Map, Value, json};

const IMAGE_MIMES: &[ImageMime] = &[
    ImageMime::Png,
    ImageMime::Jpeg,
    ImageMime::Webp,
    ImageMime::Gif,
];
/// Keywords strict structured outputs refuse; the validator still enforces them afterwards.
const STRICT_UNSUPPORTED: &[&str] = &[
    "$schema",
    "$id",
    "minLength",
    "maxLength",
    "uniqueItems",
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "contains",
    "minContains",
    "maxContains",
    "unevaluatedProperties",
    "unevaluatedItems",
    "if",
    "then",
    "else",
    "not",
    "dependentRequired",
    "dependentSchemas",
    "default",
    "examples",
];
/// Name of the property a non-object root is wrapped in.
const WRAPPED: &str = "value";

/// `[providers.NAME]` settings of kind `openai`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `strict`: strict structured outputs (the schema is made strict-compatible).
    pub strict: bool,
}

/// OpenAI.
pub struct OpenAi {
    inner: OpenAiCompatible,
    strict: bool,
}

impl OpenAi {
    /// Builds the client once.
    pub fn new(
        name: &str,
        config: &ProviderConfig,
        settings: &Settings,
    ) -> Result<Self, BuildError> {
        let flavor = Flavor::OpenAi {
            strict: settings.strict,
        };
        Ok(Self {
            inner: OpenAiCompatible::with_flavor(name, config, flavor)?,
            strict: settings.strict,
        })
    }

    async fn call_inner(
        &self,
        request: &ProviderRequest<'_>,
    ) -> Result<ProviderResponse, ProviderError> {
        let Some((_, schema)) = request.json_schema else {
            return self.inner.complete(request, None).await;
        };
        let wrapped = !is_object_schema(schema);
        // Any object: JSON object mode, nothing to rewrite.
        if request.any_object || (!wrapped && !self.strict) {
            return self
                .inner
                .complete(request, SentSchema::unchanged(request))
                .await;
        }
        // Borrow what is sent unchanged; build only what is rewritten.
        let wrapped_tree;
        let base = if wrapped {
            wrapped_tree = json!({"type": "object", "properties": {WRAPPED: schema}, "required": [WRAPPED], "additionalProperties": false});
            &wrapped_tree
        } else {
            schema
        };
        let strict_tree;
        let sent = if self.strict {
            strict_tree = strict_schema(base);
            &strict_tree
        } else {
            base
        };
        let mut response = self
            .inner
            .complete(request, Some(SentSchema::Tree(sent)))
            .await?;
        response.text = map_back(&response.text, schema, wrapped, self.strict);
        Ok(response)
    }
}

impl Provider for OpenAi {
    fn kind(&self) -> &'static str {
        "openai"
    }

    fn image_mimes(&self) -> &'static [ImageMime] {
        IMAGE_MIMES
    }

    fn call<'a>(
        &'a self,
        request: &'a ProviderRequest<'a>,
    ) -> BoxFuture<'a, Result<ProviderResponse, ProviderError>> {
        Box::pin(self.call_inner(request))
    }
}

fn is_object_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("object")
}

/// The strict-compatible rewrite of `schema` (see the module doc).
pub fn strict_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => Value::Object(strict_object(map)),
        other => other.clone(),
    }
}

fn strict_object(map: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, value) in map {
        if STRICT_UNSUPPORTED.contains(&key.as_str()) {
            continue;
        }
        let value = match key.as_str() {
            "properties" | "$defs" | "definitions" => match value {
                Value::Object(props) => Value::Object(
                    props
                        .iter()
                        .map(|(k, v)| (k.clone(), strict_schema(v)))
                        .collect(),
                ),
                other => other.clone(),
            },
            "items" | "additionalItems" => strict_schema(value),
            "anyOf" | "oneOf" | "allOf" | "prefixItems" => match value {
                Value::Array(items) => Value::Array(items.iter().map(strict_schema).collect()),
                other => other.clone(),
            },
            _ => value.clone(),
        };
        let key = if key == "oneOf" {
            "anyOf".to_owned()
        } else {
            key.clone()
        };
        out.insert(key, value);
    }
    if let Some(Value::Object(properties)) = out.get("properties").cloned() {
        let required: Vec<&str> = map
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut nullable_props = Map::new();
        for (name, schema) in properties {
            let schema = if required.contains(&name.as_str()) {
                schema
            } else {
                nullable(schema)
            };
            nullable_props.insert(name, schema);
        }
        let all: Vec<Value> = nullable_props
            .keys()
            .map(|k| Value::String(k.clone()))
            .collect();
        out.insert("properties".into(), Value::Object(nullable_props));
        out.insert("required".into(), Value::Array(all));
        out.insert("additionalProperties".into(), Value::Bool(false));
    } else if out.get("type").and_then(Value::as_str) == Some("object") {
        out.insert("additionalProperties".into(), Value::Bool(false));
        out.entry("properties").or_insert_with(|| json!({}));
        out.entry("required").or_insert_with(|| json!([]));
    }
    out
}

fn nullable(schema: Value) -> Value {
    if allows_null(&schema) {
        return schema;
    }
    match schema {
        Value::Object(mut map) => {
            match map.get_mut("type") {
                Some(Value::String(t)) => {
                    let t = t.clone();
                    map.insert("type".into(), json!([t, "null"]));
                }
                Some(Value::Array(types)) => types.push(json!("null")),
                _ => match map.get_mut("anyOf") {
                    Some(Value::Array(options)) => options.push(json!({"type": "null"})),
                    _ => return json!({"anyOf": [Value::Object(map), {"type": "null"}]}),
                },
            }
            if let Some(Value::Array(values)) = map.get_mut("enum") {
                values.push(Value::Null);
            }
            Value::Object(map)
        }
        other => other,
    }
}

fn allows_null(schema: &Value) -> bool {
    match schema {
        Value::Bool(b) => *b,
        Value::Object(map) => {
            if map.is_empty() {
                return true;
            }
            let by_type = match map.get("type") {
                Some(Value::String(t)) => t == "null",
                Some(Value::Array(types)) => types.iter().any(|t| t == "null"),
                _ => false,
            };
            let by_enum = map
                .get("enum")
                .and_then(Value::as_array)
                .is_some_and(|e| e.contains(&Value::Null));
            let by_const = map.get("const") == Some(&Value::Null);
            let by_union = ["anyOf", "oneOf"].iter().any(|k| {
                map.get(*k)
                    .and_then(Value::as_array)
                    .is_some_and(|options| options.iter().any(allows_null))
            });
            by_type || by_enum || by_const || by_union
        }
        _ => false,
    }
}

/// Maps an answer to the strict (and/or wrapped) schema back to the job's schema. Text that is
/// not JSON is returned unchanged: the pipeline reports it.
pub fn map_back(text: &str, original: &Value, wrapped: bool, strict: bool) -> String {
    let Ok(mut value) = serde_json::from_str::<Value>(text) else {
        return text.to_owned();
    };
    if wrapped {
        match value {
            Value::Object(mut map) if map.contains_key(WRAPPED) => {
                value = map.remove(WRAPPED).unwrap_or(Value::Null);
            }
            _ => return text.to_owned(),
        }
    }
    if strict {
        drop_optional_nulls(&mut value, original, original, 0);
    }
    value.to_string()
}

fn drop_optional_nulls(value: &mut Value, schema: &Value, root: &Value, depth: usize) {
    if depth > 32 {
        return;
    }
    let schema = resolve(schema, root);
    match value {
        Value::Object(map) => {
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                return;
            };
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            map.retain(|key, v| {
                let optional = !required.contains(&key.as_str());
                let nullable = properties
                    .get(key)
                    .is_none_or(|p| allows_null(resolve(p, root)));
                !(v.is_null() && optional && !nullable)
            });
            for (key, v) in map.iter_mut() {
                if let Some(sub) = properties.get(key) {
                    drop_optional_nulls(v, sub, root, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    drop_optional_nulls(item, item_schema, root, depth + 1);
                }
            }
        }
        _ => {}
    }
}

fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    match schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
    {
        Some(pointer) => root.pointer(pointer).unwrap_or(schema),
        None => schema,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_rewrite_requires_everything_and_nulls_the_optional() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["a"],
            "properties": {
                "a": {"type": "string", "minLength": 1},
                "b": {"type": "integer"},
                "c": {"enum": ["x", "y"], "type": "string"},
                "d": {"$ref": "#/$defs/d"},
                "e": {"type": "array", "items": {"type": "object", "properties": {"f": {"type": "number"}}}},
                "g": {"oneOf": [{"type": "string"}, {"type": "number"}]}
            },
            "$defs": {"d": {"type": "object", "properties": {}}}
        });
        let strict = strict_schema(&schema);
        assert_eq!(strict["additionalProperties"], false);
        assert_eq!(strict["required"], json!(["a", "b", "c", "d", "e", "g"]));
        assert!(strict.get("$schema").is_none());
        assert_eq!(strict["properties"]["a"], json!({"type": "string"}));
        assert_eq!(
            strict["properties"]["b"]["type"],
            json!(["integer", "null"])
        );
        assert_eq!(strict["properties"]["c"]["enum"], json!(["x", "y", null]));
        assert_eq!(
            strict["properties"]["d"],
            json!({"anyOf": [{"$ref": "#/$defs/d"}, {"type": "null"}]})
        );
        assert_eq!(
            strict["properties"]["e"]["items"]["additionalProperties"],
            false
        );
        assert_eq!(strict["properties"]["e"]["items"]["required"], json!(["f"]));
        assert_eq!(
            strict["properties"]["g"],
            json!({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "null"}]})
        );
        assert_eq!(strict["$defs"]["d"]["additionalProperties"], false);
    }

    #[test]
    fn answers_are_mapped_back() {
        let schema = json!({
            "type": "object", "required": ["a"],
            "properties": {"a": {"type": "string"}, "b": {"type": "integer"}, "n": {"type": ["string", "null"]},
                           "list": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "number"}}}}}
        });
        let text = r#"{"a":"hi","b":null,"n":null,"list":[{"x":null},{"x":1}]}"#;
        let back: Value = serde_json::from_str(&map_back(text, &schema, false, true)).unwrap();
        assert_eq!(back, json!({"a": "hi", "n": null, "list": [{}, {"x": 1}]}));

        let array_schema = json!({"type": "array", "items": {"type": "string"}});
        assert_eq!(
            map_back(r#"{"value":["a","b"]}"#, &array_schema, true, false),
            r#"["a","b"]"#
        );
        assert_eq!(map_back("not json", &array_schema, true, true), "not json");
    }
}
