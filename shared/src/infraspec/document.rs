//! Decoding a spec document (YAML or JSON) into a JSON value under a budget.
//!
//! A spec is someone else's input parsed inside the API process, which also
//! serves every app's traffic, so decoding is bounded: YAML aliases are
//! expanded node by node against [`MAX_NODES`] (an alias bomb of 100 KB would
//! otherwise expand to hundreds of millions of nodes), nesting stops at
//! [`MAX_DEPTH`], and values Postgres cannot store (NUL in a string,
//! non-finite numbers) are refused here with the path of the value.

use std::cell::{Cell, RefCell};
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::FieldError;

/// Nodes (scalars, sequences, mappings) after expanding aliases.
pub const MAX_NODES: usize = 10_000;
/// Levels of sequences and mappings.
pub const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

/// Decodes `text` into a JSON value, or the first problem found.
pub fn decode(text: &str, format: Format) -> Result<Value, FieldError> {
    let budget = Budget::default();
    let seed = Node {
        budget: &budget,
        path: String::new(),
        depth: 0,
    };
    let result = match format {
        Format::Yaml => seed
            .deserialize(serde_yaml::Deserializer::from_str(text))
            .map_err(|e| {
                let message = e.to_string();
                // serde_yaml has its own, looser guard against alias repetition.
                if message.contains("repetition limit") {
                    too_many_nodes()
                } else {
                    FieldError::root(format!("invalid YAML: {message}"))
                }
            }),
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            seed.deserialize(&mut de)
                .and_then(|v| de.end().map(|()| v))
                .map_err(|e| FieldError::root(format!("invalid JSON: {e}")))
        }
    };
    // The budget's own error carries the field path; the parser's wraps it
    // in a position message.
    match (result, budget.error.into_inner()) {
        (Err(_), Some(error)) => Err(error),
        (result, _) => result,
    }
}

fn too_many_nodes() -> FieldError {
    FieldError::root(format!(
        "the document has more than {MAX_NODES} nodes (after expanding YAML aliases)"
    ))
}

impl FieldError {
    fn root(message: String) -> Self {
        FieldError {
            field: String::new(),
            message,
        }
    }
}

#[derive(Default)]
struct Budget {
    nodes: Cell<usize>,
    error: RefCell<Option<FieldError>>,
}

impl Budget {
    fn fail<E: de::Error>(&self, error: FieldError) -> E {
        let message = error.to_string();
        self.error.borrow_mut().get_or_insert(error);
        E::custom(message)
    }
}

/// One value at `path`.
struct Node<'b> {
    budget: &'b Budget,
    path: String,
    depth: usize,
}

impl Node<'_> {
    fn child(&self, key: impl fmt::Display, indexed: bool) -> Node<'_> {
        let path = match (self.path.is_empty(), indexed) {
            (_, true) => format!("{}[{key}]", self.path),
            (true, false) => key.to_string(),
            (false, false) => format!("{}.{key}", self.path),
        };
        Node {
            budget: self.budget,
            path,
            depth: self.depth + 1,
        }
    }

    fn count<E: de::Error>(&self) -> Result<(), E> {
        let n = self.budget.nodes.get() + 1;
        self.budget.nodes.set(n);
        if n > MAX_NODES {
            return Err(self.budget.fail(too_many_nodes()));
        }
        Ok(())
    }

    fn error<E: de::Error>(&self, message: impl Into<String>) -> E {
        self.budget.fail(FieldError {
            field: self.path.clone(),
            message: message.into(),
        })
    }

    fn enter<E: de::Error>(&self) -> Result<(), E> {
        self.count()?;
        if self.depth >= MAX_DEPTH {
            return Err(self.error(format!("nested more than {MAX_DEPTH} levels deep")));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.count()?;
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.count()?;
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.count()?;
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| self.error("numbers must be finite"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.count()?;
        if v.contains('\0') {
            return Err(self.error("text must not contain NUL characters"));
        }
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.visit_str(&v)
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<Value, A::Error> {
        Err(self.error("YAML tags (!name) are not supported"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child(items.len(), true))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.enter()?;
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key(&self))? {
            let value = map.next_value_seed(self.child(&key, false))?;
            if out.insert(key.clone(), value).is_some() {
                return Err(self.child(&key, false).error("is given twice"));
            }
        }
        Ok(Value::Object(out))
    }
}

/// A mapping key: text only. YAML reads `8080:` or `true:` as a number or a
/// boolean; silently turning those into text would hide a typo, so they are
/// refused with a hint to quote them.
struct Key<'n, 'b>(&'n Node<'b>);

impl<'de> DeserializeSeed<'de> for Key<'_, '_> {
    type Value = String;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key<'_, '_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        self.0.count()?;
        if v.contains('\0') {
            return Err(self.0.error("keys must not contain NUL characters"));
        }
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        self.visit_str(&v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Err(self
            .0
            .error(format!("keys must be strings (quote it: \"{v}\")")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Err(self
            .0
            .error(format!("keys must be strings (quote it: \"{v}\")")))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Err(self
            .0
            .error(format!("keys must be strings (quote it: \"{v}\")")))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<String, E> {
        Err(self.0.error("keys must be strings"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Err(self.0.error("keys must be strings"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(self.0.error("keys must be strings"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(self.0.error("keys must be strings"))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<String, A::Error> {
        Err(self.0.error("keys must be strings"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wide_alias_bomb_is_refused_after_the_node_budget() {
        let items = vec!["x"; 2_000].join(",");
        let refs = vec!["*a"; 2_000].join(",");
        let text = format!("a: &a [{items}]\nb: [{refs}]\n");
        let error = decode(&text, Format::Yaml).unwrap_err();
        assert!(error.message.contains("nodes"), "{error}");
    }

    #[test]
    fn a_nested_alias_bomb_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let error = decode(&text, Format::Yaml).unwrap_err();
        assert!(error.message.contains("nodes"), "{error}");
    }

    #[test]
    fn small_aliases_still_expand() {
        let text = "base: &base {A: 1}\nenv: *base\n";
        let value = decode(text, Format::Yaml).unwrap();
        assert_eq!(value["env"]["A"], 1);
    }

    #[test]
    fn deep_nesting_is_refused_with_its_path() {
        let text = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
        let error = decode(&text, Format::Json).unwrap_err();
        assert!(error.message.contains("nested"), "{error}");
        let yaml = format!("a: {}{}", "[".repeat(100), "]".repeat(100));
        let error = decode(&yaml, Format::Yaml).unwrap_err();
        assert!(error.field.starts_with("a[0][0]"), "{error:?}");
    }

    #[test]
    fn nul_bytes_non_string_keys_duplicates_and_tags_are_refused() {
        let e = decode("{\"env\": {\"A\": \"x\\u0000y\"}}", Format::Json).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.contains("NUL")),
            ("env.A", true)
        );
        let e = decode("? [a, b]\n: c\n", Format::Yaml).unwrap_err();
        assert!(e.message.contains("keys must be strings"), "{e}");
        let e = decode("{\"a\": 1, \"a\": 2}", Format::Json).unwrap_err();
        assert_eq!(e.field, "a");
        let e = decode("a: !tag x\n", Format::Yaml).unwrap_err();
        assert!(e.message.contains("tags"), "{e}");
        let e = decode("8080: web\n", Format::Yaml).unwrap_err();
        assert!(e.message.contains("quote it"), "{e}");
        assert_eq!(
            decode("\"8080\": web\n", Format::Yaml).unwrap()["8080"],
            "web"
        );
    }
}
