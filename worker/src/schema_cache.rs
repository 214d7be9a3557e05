//! Compiled JSON Schema validators, cached per distinct schema.
//!
//! Plugin schemas are untrusted: the `jsonschema` crate is built without its `resolve-http`
//! and `resolve-file` features, so a `$ref` to anything outside the schema fails to compile
//! (the job ends `INVALID_REQUEST`) instead of reaching the network or the file system.

use jsonschema::Validator;
use quarry_schemas::JsonSchema;
use serde_json::Value;
use std::sync::Arc;

/// Most validation errors reported in a result's `error.details`.
pub const MAX_REPORTED_ERRORS: usize = 20;

/// Compiled schemas keyed by the schema's text as the job carried it: a job's schema is never
/// parsed into a tree after its first sight, and a lookup hashes and compares the text and
/// allocates nothing. (Keyed on the parsed tree, every job built and dropped the tree: about
/// 8% of the worker's CPU; docs/benchmarks.md, item 8.) The same schema spaced or ordered
/// differently is a separate entry; the producer SDK writes schemas one canonical way.
pub struct SchemaCache {
    cache: quick_cache::sync::Cache<JsonSchema, Arc<CompiledSchema>>,
}

/// What is derived once per distinct schema and shared by every job that carries it.
#[derive(Debug)]
pub struct CompiledSchema {
    /// The validator answers are checked with.
    pub validator: Validator,
    /// The schema parsed, for providers that rewrite it into their dialect (OpenAI strict
    /// mode, Gemini) and for the tree path of a request.
    pub tree: Value,
    /// The schema as compact JSON with sorted keys (`JsonSchema::from` the tree), however the
    /// job wrote it: providers that send the schema unchanged copy this text into the request
    /// instead of serialising the tree for every attempt, and the token estimate counts its
    /// length.
    pub text: JsonSchema,
}

/// The schema is not a usable JSON Schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("json_schema is not a valid JSON Schema: {0}")]
pub struct InvalidSchema(pub String);

/// One way an answer breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// JSON pointer into the answer.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl SchemaCache {
    /// A cache holding up to `capacity` validators.
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: quick_cache::sync::Cache::new(capacity),
        }
    }

    /// `schema` compiled, on first sight; from the cache after.
    pub fn get(&self, schema: &JsonSchema) -> Result<Arc<CompiledSchema>, InvalidSchema> {
        if let Some(compiled) = self.cache.get(schema) {
            return Ok(compiled);
        }
        let tree = schema
            .to_value()
            .map_err(|e| InvalidSchema(e.to_string()))?;
        let compiled = Arc::new(CompiledSchema {
            validator: compile(&tree)?,
            text: JsonSchema::from(&tree),
            tree,
        });
        self.cache.insert(schema.clone(), compiled.clone());
        Ok(compiled)
    }
}

fn compile(schema: &Value) -> Result<Validator, InvalidSchema> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| InvalidSchema(e.to_string()))
}

/// Every violation of `value` against `validator`, at most [`MAX_REPORTED_ERRORS`].
pub fn violations(validator: &Validator, value: &Value) -> Vec<Violation> {
    validator
        .iter_errors(value)
        .take(MAX_REPORTED_ERRORS)
        .map(|e| Violation {
            path: e.instance_path().to_string(),
            message: e.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compiles_once_and_reports_paths() {
        let cache = SchemaCache::new(8);
        let schema = json!({"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}});
        let a = cache.get(&schema.clone().into()).expect("compiles");
        let b = cache.get(&schema.clone().into()).expect("cached");
        assert!(Arc::ptr_eq(&a, &b));
        // The key is the text as the job carried it: the same schema spaced and ordered another
        // way is compiled once more (and gives the same tree and compact text); a different
        // schema is not the same entry.
        let spaced = in_message(
            r#"{"properties": {"total": {"type": "number"}}, "required": ["total"], "type": "object"}"#,
        );
        let c = cache.get(&spaced).expect("compiles");
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(Arc::ptr_eq(&c, &cache.get(&spaced).expect("cached")));
        assert_eq!(c.tree, a.tree);
        assert_eq!(c.text.as_str(), a.text.as_str());
        let other = json!({"type": "object", "required": ["total"], "properties": {"total": {"type": "integer"}}});
        assert!(!Arc::ptr_eq(
            &a,
            &cache.get(&other.into()).expect("compiles")
        ));
        // The tree is the schema, and the text is the schema, compact.
        assert_eq!(a.tree, schema);
        let text: Value = serde_json::from_str(a.text.as_str()).expect("json text");
        assert_eq!(text, schema);
        assert!(!c.text.as_str().contains(' '));
        let v = violations(&a.validator, &json!({"total": "12"}));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].path, "/total");
        assert!(violations(&a.validator, &json!({"total": 12})).is_empty());
    }

    /// A schema as a worker receives it: the text of a message's `json_schema`, kept as sent.
    fn in_message(text: &str) -> JsonSchema {
        serde_json::from_str(text).expect("json")
    }

    #[test]
    fn invalid_and_external_schemas_are_refused() {
        let cache = SchemaCache::new(8);
        assert!(cache.get(&json!({"type": "objekt"}).into()).is_err());
        assert!(
            cache
                .get(&json!({"$ref": "https://example.com/schema.json"}).into())
                .is_err()
        );
        assert!(
            cache
                .get(&json!({"$ref": "file:///etc/passwd"}).into())
                .is_err()
        );
        assert!(cache.get(&json!({"minimum": "ten"}).into()).is_err());
    }

    #[test]
    fn formats_are_checked() {
        let cache = SchemaCache::new(8);
        let v = cache
            .get(&json!({"type": "string", "format": "date"}).into())
            .expect("compiles");
        assert!(violations(&v.validator, &json!("2026-02-30x")).len() == 1);
        assert!(violations(&v.validator, &json!("2026-02-03")).is_empty());
    }
}
