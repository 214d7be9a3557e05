//! Deterministic generation of a JSON value that satisfies a JSON Schema.
//!
//! Covers what extraction schemas use: `type` (single or list), `properties`/`required`,
//! `items`/`minItems`/`maxItems`/`uniqueItems`, `enum`, `const`, `anyOf`/`oneOf`/`allOf`,
//! local `$ref` (`#/$defs/..`, `#/definitions/..`), numeric bounds, string lengths and the
//! `date`, `date-time`, `email` and `uuid` formats. `pattern` is not honoured.

use serde_json::{Map, Value, json};

/// A small deterministic PRNG (SplitMix64): same seed, same answer.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const WORDS: [&str; 16] = [
    "alpha", "harbor", "copper", "meadow", "orbit", "lantern", "quartz", "river", "summit",
    "timber", "velvet", "willow", "amber", "cobalt", "ember", "falcon",
];
const MAX_DEPTH: usize = 12;
/// Values generated for one answer before optional properties and extra array items stop: a
/// recursive schema (properties that `$ref` the root) would otherwise grow an answer
/// exponentially with the depth.
const MAX_NODES: usize = 2_000;

/// Generates a value valid against `schema`, deterministic for a given `rng` state.
pub fn generate(schema: &Value, rng: &mut Rng) -> Value {
    Generator {
        root: schema,
        rng,
        budget: MAX_NODES,
    }
    .value(schema, "value", 0)
}

struct Generator<'a, 'r> {
    root: &'a Value,
    rng: &'r mut Rng,
    /// Values left to generate beyond what the schema requires.
    budget: usize,
}

impl<'a> Generator<'a, '_> {
    fn resolve<'s>(&self, schema: &'s Value) -> &'s Value
    where
        'a: 's,
    {
        let mut current = schema;
        for _ in 0..16 {
            match current.get("$ref").and_then(Value::as_str) {
                Some(reference) => match reference.strip_prefix('#') {
                    Some(pointer) => match self.root.pointer(pointer) {
                        Some(target) => current = target,
                        None => return current,
                    },
                    None => return current,
                },
                None => return current,
            }
        }
        current
    }

    fn value(&mut self, schema: &Value, name: &str, depth: usize) -> Value {
        self.budget = self.budget.saturating_sub(1);
        let schema = self.resolve(schema);
        let Some(obj) = schema.as_object() else {
            // `true` or `{}`: anything goes.
            return json!(self.word());
        };
        if let Some(c) = obj.get("const") {
            return c.clone();
        }
        if let Some(Value::Array(options)) = obj.get("enum")
            && !options.is_empty()
        {
            // Prefer a non-null member so answers carry data.
            let non_null: Vec<&Value> = options.iter().filter(|v| !v.is_null()).collect();
            let pool: Vec<&Value> = if non_null.is_empty() {
                options.iter().collect()
            } else {
                non_null
            };
            return pool[self.rng.below(pool.len() as u64) as usize].clone();
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(options)) = obj.get(key)
                && let Some(first) = options
                    .iter()
                    .find(|o| !is_null_schema(self.resolve(o)))
                    .or(options.first())
            {
                return self.value(first, name, depth + 1);
            }
        }
        if let Some(Value::Array(parts)) = obj.get("allOf") {
            let merged = self.merge_all_of(obj, parts);
            return self.value_of_type(&merged, name, depth);
        }
        self.value_of_type(schema, name, depth)
    }

    fn merge_all_of(&self, base: &Map<String, Value>, parts: &[Value]) -> Value {
        let mut merged = base.clone();
        merged.remove("allOf");
        let mut properties = merged
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mut required: Vec<Value> = merged
            .get("required")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for part in parts {
            let Some(part) = self.resolve(part).as_object() else {
                continue;
            };
            for (k, v) in part {
                match k.as_str() {
                    "properties" => {
                        if let Some(p) = v.as_object() {
                            properties.extend(p.clone());
                        }
                    }
                    "required" => required.extend(v.as_array().cloned().unwrap_or_default()),
                    _ => {
                        merged.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
        if !properties.is_empty() {
            merged.insert("properties".into(), Value::Object(properties));
        }
        if !required.is_empty() {
            merged.insert("required".into(), Value::Array(required));
        }
        Value::Object(merged)
    }

    fn value_of_type(&mut self, schema: &Value, name: &str, depth: usize) -> Value {
        let ty = match schema.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Array(types)) => {
                let non_null: Vec<&str> = types
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|t| *t != "null")
                    .collect();
                match non_null.first() {
                    Some(t) if depth < MAX_DEPTH => (*t).to_owned(),
                    _ => "null".to_owned(),
                }
            }
            _ if schema.get("properties").is_some() => "object".to_owned(),
            _ if schema.get("items").is_some() => "array".to_owned(),
            _ => "string".to_owned(),
        };
        // Gemini's OpenAPI-style schemas spell types in capitals (`OBJECT`).
        match ty.to_ascii_lowercase().as_str() {
            "object" => self.object(schema, depth),
            "array" => self.array(schema, name, depth),
            "integer" => self.integer(schema),
            "number" => self.number(schema),
            "boolean" => json!(self.rng.below(2) == 1),
            "null" => Value::Null,
            _ => self.string(schema, name),
        }
    }

    fn object(&mut self, schema: &Value, depth: usize) -> Value {
        let mut out = Map::new();
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let properties = schema.get("properties").and_then(Value::as_object);
        if let Some(properties) = properties {
            for (key, sub) in properties {
                let include = required.contains(&key.as_str())
                    || (depth < MAX_DEPTH && self.rng.below(4) != 0 && self.budget > 0);
                if include {
                    let v = self.value(sub, key, depth + 1);
                    out.insert(key.clone(), v);
                }
            }
        }
        // Required names without a property schema: any string satisfies them.
        for key in required {
            if !out.contains_key(key) {
                out.insert(key.to_owned(), json!(self.word()));
            }
        }
        Value::Object(out)
    }

    fn array(&mut self, schema: &Value, name: &str, depth: usize) -> Value {
        let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(0);
        let max = schema
            .get("maxItems")
            .and_then(Value::as_u64)
            .unwrap_or(min + 3)
            .max(min);
        let upper = max.min(min + 3);
        let n = if depth >= MAX_DEPTH || self.budget == 0 {
            min
        } else {
            min + self.rng.below(upper - min + 1)
        };
        let unique = schema
            .get("uniqueItems")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let items = schema.get("items").cloned().unwrap_or(Value::Bool(true));
        let mut out: Vec<Value> = Vec::with_capacity(n as usize);
        let mut tries = 0;
        while (out.len() as u64) < n && tries < n * 8 + 8 {
            tries += 1;
            let v = self.value(&items, name, depth + 1);
            if unique && out.contains(&v) {
                continue;
            }
            out.push(v);
        }
        Value::Array(out)
    }

    fn bounds(schema: &Value) -> (f64, f64) {
        let lo = schema
            .get("minimum")
            .and_then(Value::as_f64)
            .or_else(|| {
                schema
                    .get("exclusiveMinimum")
                    .and_then(Value::as_f64)
                    .map(|x| x + 1.0)
            })
            .unwrap_or(0.0);
        let hi = schema
            .get("maximum")
            .and_then(Value::as_f64)
            .or_else(|| {
                schema
                    .get("exclusiveMaximum")
                    .and_then(Value::as_f64)
                    .map(|x| x - 1.0)
            })
            .unwrap_or(lo.max(0.0) + 1000.0);
        (lo, hi.max(lo))
    }

    fn integer(&mut self, schema: &Value) -> Value {
        let (lo, hi) = Self::bounds(schema);
        let (lo, hi) = (lo.ceil() as i64, hi.floor() as i64);
        let span = (hi - lo).max(0) as u64;
        json!(lo + self.rng.below(span + 1) as i64)
    }

    fn number(&mut self, schema: &Value) -> Value {
        let (lo, hi) = Self::bounds(schema);
        let x = lo + (hi - lo) * self.rng.unit();
        let rounded = (x * 100.0).round() / 100.0;
        json!(rounded.clamp(lo, hi))
    }

    fn string(&mut self, schema: &Value, name: &str) -> Value {
        // A format a provider cannot take may travel in the description, as `(format: date)`:
        // a model reads descriptions, and so does this fake.
        let described = schema
            .get("description")
            .and_then(Value::as_str)
            .and_then(|d| d.split("format: ").nth(1))
            .and_then(|rest| rest.split([')', ' ', ',', ';']).next());
        let format = schema.get("format").and_then(Value::as_str).or(described);
        let mut s = match format {
            Some("date") => format!(
                "20{:02}-{:02}-{:02}",
                20 + self.rng.below(7),
                1 + self.rng.below(12),
                1 + self.rng.below(28)
            ),
            Some("date-time") => format!(
                "20{:02}-{:02}-{:02}T{:02}:{:02}:00Z",
                20 + self.rng.below(7),
                1 + self.rng.below(12),
                1 + self.rng.below(28),
                self.rng.below(24),
                self.rng.below(60)
            ),
            Some("email") => format!("{}.{}@example.com", self.word(), self.rng.below(1000)),
            Some("uuid") => {
                let (a, b) = (self.rng.next_u64(), self.rng.next_u64());
                format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xfff,
                    b >> 52,
                    b & 0xffff_ffff_ffff
                )
            }
            _ => {
                let label: String = name
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .take(24)
                    .collect();
                format!("{} {} {}", label, self.word(), self.rng.below(100))
            }
        };
        let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0) as usize;
        let max = schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .map(|m| m as usize);
        while s.chars().count() < min {
            s.push('x');
        }
        if let Some(max) = max {
            s = s.chars().take(max).collect();
        }
        json!(s)
    }

    fn word(&mut self) -> &'static str {
        WORDS[self.rng.below(WORDS.len() as u64) as usize]
    }
}

fn is_null_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_valid(schema: &Value, seeds: u64) {
        let validator = jsonschema::validator_for(schema).expect("schema compiles");
        for seed in 0..seeds {
            let v = generate(schema, &mut Rng::new(seed));
            let errors: Vec<String> = validator
                .iter_errors(&v)
                .map(|e| format!("{}: {e}", e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "seed {seed}: {v} -> {errors:?}");
        }
    }

    #[test]
    fn generated_values_satisfy_the_example_schemas() {
        for file in ["receipt", "support_ticket", "crm_note"] {
            let path = format!(
                "{}/../../schemas/examples/{file}.schema.json",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read_to_string(&path).expect("example schema");
            let schema: Value = serde_json::from_str(&text).expect("json");
            assert_valid(&schema, 200);
        }
    }

    #[test]
    fn handles_refs_combinators_and_bounds() {
        let schema = json!({
            "$defs": {"point": {"type": "object", "required": ["x", "y"],
                "properties": {"x": {"type": "integer", "minimum": -5, "maximum": 5},
                               "y": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 2}}}},
            "type": "object",
            "required": ["points", "kind", "label", "fixed", "either", "both"],
            "properties": {
                "points": {"type": "array", "minItems": 2, "maxItems": 4, "items": {"$ref": "#/$defs/point"}},
                "kind": {"enum": ["a", "b", null]},
                "label": {"type": "string", "minLength": 30, "maxLength": 31},
                "fixed": {"const": 7},
                "either": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
                "both": {"allOf": [{"type": "object", "required": ["p"], "properties": {"p": {"type": "string"}}},
                                   {"required": ["q"], "properties": {"q": {"type": "integer"}}}]}
            }
        });
        assert_valid(&schema, 200);
    }

    #[test]
    fn same_seed_same_value() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "number"}}});
        assert_eq!(
            generate(&schema, &mut Rng::new(9)),
            generate(&schema, &mut Rng::new(9))
        );
    }
}
