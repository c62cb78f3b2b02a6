//! YAML request bodies (`application/yaml`, apply configurations), read
//! into JSON within a budget. YAML aliases repeat what an anchor holds, so a
//! small body could expand into billions of values ("billion laughs") and
//! take the process, and every VC with it. Every value read, and every byte
//! of every string, spends from a budget of twice the body's size: a body
//! without aliases never runs out, an expanding one is refused.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A YAML document as JSON, or why it cannot be read.
pub fn to_json(body: &[u8]) -> Result<Value, String> {
    let mut left = 2 * body.len() + 64;
    Budgeted { left: &mut left }
        .deserialize(serde_yaml_ng::Deserializer::from_slice(body))
        .map_err(|e| e.to_string())
}

struct Budgeted<'a> {
    left: &'a mut usize,
}

impl Budgeted<'_> {
    fn spend<E: de::Error>(&mut self, cost: usize) -> Result<(), E> {
        match self.left.checked_sub(cost) {
            Some(left) => {
                *self.left = left;
                Ok(())
            }
            None => Err(E::custom(
                "the document expands past its own size (YAML aliases): refused",
            )),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Budgeted<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Budgeted<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<Value, E> {
        self.spend(1)?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<Value, E> {
        self.spend(1)?;
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<Value, E> {
        self.spend(1)?;
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<Value, E> {
        self.spend(1)?;
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold (NaN or infinite)"))
    }
    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<Value, E> {
        self.spend(1 + v.len())?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(mut self, v: String) -> Result<Value, E> {
        self.spend(1 + v.len())?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(mut self) -> Result<Value, E> {
        self.spend(1)?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        self.spend(1)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Budgeted {
            left: &mut *self.left,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        self.spend(1)?;
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Budgeted {
            left: &mut *self.left,
        })? {
            let key = match key {
                Value::String(s) => s,
                // YAML allows any key; JSON objects have string keys.
                other => other.to_string(),
            };
            let value = map.next_value_seed(Budgeted {
                left: &mut *self.left,
            })?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// An apply configuration: JSON, or YAML (which JSON also is, but JSON's
/// own parser is the faster and the more precise in its errors).
pub fn parse_object(body: &[u8]) -> Result<Value, crate::error::ApiError> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(_) => to_json(body).map_err(|e| {
            crate::error::ApiError::bad_request(format!(
                "the apply configuration is not valid YAML: {e}"
            ))
        })?,
    };
    if !value.is_object() {
        return Err(crate::error::ApiError::bad_request(
            "the apply configuration must be an object",
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_reads_as_the_json_it_means() {
        let value = to_json(b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, labels: {x: '1'}}\ndata:\n  n: \"2\"\nlist: [1, true, null, 2.5]\n").unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a", "labels": {"x": "1"}},
                "data": {"n": "2"},
                "list": [1, true, null, 2.5],
            })
        );
        // A modest alias is fine.
        let shared = to_json(b"a: &x {k: v}\nb: *x\n").unwrap();
        assert_eq!(shared["b"]["k"], "v");
    }

    #[test]
    fn an_expanding_document_is_refused() {
        // Each level repeats the one before ten times: 10^8 values from a
        // few hundred bytes.
        let mut body = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            body.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = to_json(body.as_bytes()).unwrap_err();
        assert!(
            err.contains("expands past its own size") || err.contains("repetition limit"),
            "{err}"
        );
        // A long string repeated through aliases counts by its bytes.
        let long = format!(
            "s: &s \"{}\"\nt: [{}]\n",
            "y".repeat(10_000),
            vec!["*s"; 100].join(", ")
        );
        let err = to_json(long.as_bytes()).unwrap_err();
        assert!(err.contains("expands past its own size"), "{err}");
    }
}
