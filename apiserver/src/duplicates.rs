//! Duplicate fields in a JSON body (`{"a": 1, "a": 2}`): JSON parsers keep
//! the last, so a client's mistake would pass silently. kube-apiserver
//! refuses them under `fieldValidation=Strict` and warns under `Warn`, naming
//! each by its path (`spec.template.spec.containers[0].image`).

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::generic::FieldValidation;
use crate::status::ApiError;

/// The paths of the fields `body` (JSON) holds more than once, in order.
pub fn find(body: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    // A body that does not parse is refused by the decoder with its own
    // error; this pass only looks for duplicates.
    let _ = Walk {
        path: String::new(),
        found: &mut found,
    }
    .deserialize(&mut de);
    found
}

/// Refuses (`Strict`) or warns about (`Warn`) a JSON body's duplicate fields.
pub fn check(body: &[u8], mode: FieldValidation) -> Result<(), ApiError> {
    if mode == FieldValidation::Ignore {
        return Ok(());
    }
    let found = find(body);
    let described = found.iter().map(|f| format!("duplicate field \"{f}\""));
    match mode {
        FieldValidation::Strict if !found.is_empty() => {
            let all: Vec<String> = described.collect();
            Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                all.join(", ")
            )))
        }
        FieldValidation::Warn => {
            described.for_each(crate::warnings::add);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Walks one JSON value at `path`, noting duplicate keys of its maps.
struct Walk<'a> {
    path: String,
    found: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) {
                self.found.push(path.clone());
            }
            map.next_value_seed(Walk {
                path,
                found: &mut *self.found,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let seed = Walk {
                path: format!("{}[{i}]", self.path),
                found: &mut *self.found,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_named_by_their_path() {
        let body = br#"{"metadata": {"name": "a", "name": "b"},
            "spec": {"containers": [{"name": "c", "image": "x", "image": "y"}], "paused": true, "paused": false},
            "data": {"k": "v"}}"#;
        assert_eq!(
            find(body),
            ["metadata.name", "spec.containers[0].image", "spec.paused"]
        );
        assert!(find(br#"{"a": {"b": 1}, "c": {"b": 2}, "d": [{"b": 1}, {"b": 2}]}"#).is_empty());
    }

    #[test]
    fn strict_refuses_and_ignore_says_nothing() {
        let body = br#"{"data": {"a": "1", "a": "2"}}"#;
        let err = check(body, FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, hyper::StatusCode::BAD_REQUEST);
        assert_eq!(
            err.message,
            r#"strict decoding error: duplicate field "data.a""#
        );
        check(body, FieldValidation::Ignore).unwrap();
        check(body, FieldValidation::Warn).unwrap();
        check(br#"{"data": {"a": "1"}}"#, FieldValidation::Strict).unwrap();
    }
}
