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
    cache: quick_cache::sync::Cache<JsonSchema, Arc<CompiledSchema>, Weight>,
    max_nodes: usize,
}

/// Memory an entry is charged: [`WEIGHT_PER_BYTE`] per byte of its text, plus
/// [`WEIGHT_PER_ENTRY`]. An estimate (the text twice, the parsed tree, the validator's
/// nodes), not a measurement: it bounds the cache in proportion to what plugins send.
#[derive(Debug, Clone, Copy)]
pub struct Weight;

/// Bytes an entry is charged per byte of its schema's text.
pub const WEIGHT_PER_BYTE: u64 = 24;
/// Bytes an entry is charged besides its text.
pub const WEIGHT_PER_ENTRY: u64 = 4096;

impl quick_cache::Weighter<JsonSchema, Arc<CompiledSchema>> for Weight {
    fn weight(&self, key: &JsonSchema, _: &Arc<CompiledSchema>) -> u64 {
        (key.as_str().len() as u64)
            .saturating_mul(WEIGHT_PER_BYTE)
            .saturating_add(WEIGHT_PER_ENTRY)
    }
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
    /// A cache of about `capacity` validators and at most `bytes` of estimated memory
    /// ([`Weight`]), for schemas of at most `max_nodes` nodes.
    pub fn new(capacity: usize, bytes: u64, max_nodes: usize) -> Self {
        Self {
            cache: quick_cache::sync::Cache::with_weighter(capacity, bytes, Weight),
            max_nodes,
        }
    }

    /// `schema` compiled, on first sight; from the cache after. Compiles on the calling
    /// thread: see [`SchemaCache::get_off_thread`] on an async one.
    pub fn get(&self, schema: &JsonSchema) -> Result<Arc<CompiledSchema>, InvalidSchema> {
        if let Some(compiled) = self.cache.get(schema) {
            return Ok(compiled);
        }
        let compiled = Arc::new(CompiledSchema::build(schema, self.max_nodes)?);
        self.cache.insert(schema.clone(), compiled.clone());
        Ok(compiled)
    }

    /// Like [`SchemaCache::get`], compiling on tokio's blocking pool: a plugin's schema
    /// may take long to compile, and the async threads serve every other job meanwhile.
    pub async fn get_off_thread(
        &self,
        schema: &JsonSchema,
    ) -> Result<Arc<CompiledSchema>, InvalidSchema> {
        if let Some(compiled) = self.cache.get(schema) {
            return Ok(compiled);
        }
        let (text, max_nodes) = (schema.clone(), self.max_nodes);
        let compiled = tokio::task::spawn_blocking(move || CompiledSchema::build(&text, max_nodes))
            .await
            .map_err(|e| InvalidSchema(format!("compiling it failed: {e}")))??;
        let compiled = Arc::new(compiled);
        self.cache.insert(schema.clone(), compiled.clone());
        Ok(compiled)
    }
}

impl CompiledSchema {
    fn build(schema: &JsonSchema, max_nodes: usize) -> Result<Self, InvalidSchema> {
        let tree = schema
            .to_value()
            .map_err(|e| InvalidSchema(e.to_string()))?;
        if !within_nodes(&tree, max_nodes) {
            return Err(InvalidSchema(format!(
                "it has more than {max_nodes} nodes (worker.max_schema_nodes)"
            )));
        }
        Ok(Self {
            validator: compile(&tree)?,
            text: JsonSchema::from(&tree),
            tree,
        })
    }
}

/// Whether `value` has at most `max` nodes (objects, arrays and scalars), counted without
/// recursion so that a deep value cannot overflow the stack.
pub fn within_nodes(value: &Value, max: usize) -> bool {
    let mut stack = vec![value];
    let mut seen = 0usize;
    while let Some(node) = stack.pop() {
        seen += 1;
        if seen > max {
            return false;
        }
        match node {
            Value::Object(map) => stack.extend(map.values()),
            Value::Array(items) => stack.extend(items.iter()),
            _ => {}
        }
    }
    true
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
        let cache = SchemaCache::new(8, 1 << 20, 1000);
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
        let cache = SchemaCache::new(8, 1 << 20, 1000);
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
        let cache = SchemaCache::new(8, 1 << 20, 1000);
        let v = cache
            .get(&json!({"type": "string", "format": "date"}).into())
            .expect("compiles");
        assert!(violations(&v.validator, &json!("2026-02-30x")).len() == 1);
        assert!(violations(&v.validator, &json!("2026-02-03")).is_empty());
    }
}
