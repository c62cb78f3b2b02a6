//! Duplicate fields in a JSON body (`{"a": 1, "a": 2}`): JSON parsers keep
//! the last, so a client's mistake would pass silently. kube-apiserver
//! refuses them under `fieldValidation=Strict` and warns under `Warn`, naming
//! each by its path (`spec.template.spec.containers[0].image`).

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::error::ApiError;
use crate::generic::FieldValidation;

/// Most duplicates reported (a body could hold a great many).
const MOST_REPORTED: usize = 100;

/// Longest path reported (keys can be long).
const LONGEST_PATH: usize = 256;

/// The paths of the fields `body` (JSON) holds more than once, in order (at
/// most [`MOST_REPORTED`]). A path is written out only for a duplicate.
pub fn find(body: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut path = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    // A body that does not parse is refused by the decoder with its own
    // error; this pass only looks for duplicates.
    let _ = Walk {
        path: &mut path,
        found: &mut found,
    }
    .deserialize(&mut de);
    found
}

/// One step of the path to a value.
enum Step {
    Field(String),
    Index(usize),
}

fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Field(f) if out.is_empty() => out.push_str(f),
            Step::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
        if out.len() > LONGEST_PATH {
            let mut end = LONGEST_PATH;
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
            out.push('…');
            break;
        }
    }
    out
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
    path: &'a mut Vec<Step>,
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
            let duplicate = !seen.insert(key.clone());
            self.path.push(Step::Field(key));
            if duplicate && self.found.len() < MOST_REPORTED {
                self.found.push(render(self.path));
            }
            let walked = map.next_value_seed(Walk {
                path: &mut *self.path,
                found: &mut *self.found,
            });
            self.path.pop();
            walked?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            self.path.push(Step::Index(i));
            let walked = seq.next_element_seed(Walk {
                path: &mut *self.path,
                found: &mut *self.found,
            });
            self.path.pop();
            if walked?.is_none() {
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
    fn many_or_long_duplicates_are_reported_within_bounds() {
        let long = "k".repeat(100_000);
        let mut body = format!("{{\"{long}\": {{");
        for _ in 0..50_000 {
            body.push_str("\"x\": 0, ");
        }
        body.push_str("\"x\": 0}}");
        let found = find(body.as_bytes());
        assert_eq!(found.len(), MOST_REPORTED);
        assert!(found.iter().all(|p| p.chars().count() <= LONGEST_PATH + 1));
        assert!(found[0].starts_with("kkk") && found[0].ends_with('…'));
    }

    #[test]
    fn strict_refuses_and_ignore_says_nothing() {
        let body = br#"{"data": {"a": "1", "a": "2"}}"#;
        let err = check(body, FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, http::StatusCode::BAD_REQUEST);
        assert_eq!(
            err.message,
            r#"strict decoding error: duplicate field "data.a""#
        );
        check(body, FieldValidation::Ignore).unwrap();
        check(body, FieldValidation::Warn).unwrap();
        check(br#"{"data": {"a": "1"}}"#, FieldValidation::Strict).unwrap();
    }
}
