//! Objects answered as their stored bytes.
//!
//! An object is stored as JSON without `metadata.resourceVersion` (the
//! store's revision is that). A read that needs no field of the object — a
//! GET, a LIST without selectors, a watch event — writes the stored bytes
//! with the revision spliced into `metadata`, instead of decoding every
//! object and encoding it again. The scan that finds `metadata` is the
//! JSON grammar's structure only (strings, nesting); anything it does not
//! recognise falls back to decoding, so a stored value it cannot splice is
//! still answered correctly.

use bytes::Bytes;
use kplex_storage::KeyValue;
use serde_json::Value;

use crate::error::ApiError;

/// An object on its way to a client: decoded (something looked at or
/// changed it), or still as stored.
#[derive(Debug, Clone)]
pub enum Object {
    /// Decoded, with its resourceVersion.
    Decoded(Value),
    /// As stored; its revision is its resourceVersion.
    Stored(KeyValue),
}

impl Object {
    /// The object decoded.
    pub fn into_value(self) -> Result<Value, ApiError> {
        match self {
            Object::Decoded(value) => Ok(value),
            Object::Stored(kv) => decode(&kv),
        }
    }

    /// Appends the object's JSON to `out`.
    pub fn write(&self, out: &mut Vec<u8>) -> Result<(), ApiError> {
        match self {
            Object::Decoded(value) => {
                serde_json::to_writer(out, value).map_err(|e| ApiError::internal(e.to_string()))
            }
            Object::Stored(kv) => write_object(kv, out),
        }
    }
}

/// Appends the object stored in `kv` to `out`, as JSON with its
/// `metadata.resourceVersion`.
pub fn write_object(kv: &KeyValue, out: &mut Vec<u8>) -> Result<(), ApiError> {
    match metadata_insert_point(&kv.value) {
        Some((at, empty)) => {
            let rv = kv.mod_revision.get().to_string();
            out.reserve(kv.value.len() + rv.len() + 22);
            out.extend_from_slice(&kv.value[..at]);
            out.extend_from_slice(b"\"resourceVersion\":\"");
            out.extend_from_slice(rv.as_bytes());
            out.extend_from_slice(if empty { b"\"" } else { b"\"," });
            out.extend_from_slice(&kv.value[at..]);
        }
        None => {
            let object = decode(kv)?;
            serde_json::to_writer(out, &object).map_err(|e| ApiError::internal(e.to_string()))?;
        }
    }
    Ok(())
}

/// The object stored in `kv`, as JSON bytes with its resourceVersion.
pub fn object_bytes(kv: &KeyValue) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    write_object(kv, &mut out)?;
    Ok(Bytes::from(out))
}

/// The object stored in `kv`, decoded, with its resourceVersion.
pub fn decode(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("corrupt object at {}: {e}", kv.key)))?;
    match object.get_mut("metadata") {
        Some(Value::Object(meta)) => {
            meta.insert(
                "resourceVersion".into(),
                Value::String(kv.mod_revision.to_string()),
            );
        }
        _ => object["metadata"]["resourceVersion"] = Value::String(kv.mod_revision.to_string()),
    }
    Ok(object)
}

/// Where `"resourceVersion":…` goes: just inside the top-level `metadata`
/// object, and whether that object is empty. `None` if the bytes are not
/// a JSON object with a `metadata` object lacking `resourceVersion`.
fn metadata_insert_point(b: &[u8]) -> Option<(usize, bool)> {
    let mut members = Members::of(b, 0)?;
    while let Some((key, value)) = members.next_member()? {
        if key == b"metadata" {
            if b.get(value) != Some(&b'{') {
                return None;
            }
            // Stored objects carry no resourceVersion: when its quoted name
            // appears nowhere from here on, no member of metadata is named
            // so, and its members (managedFields the longest) need not be
            // read. A document cut short (its last byte not the closing
            // brace) is left to the decoder.
            let rest = &b[value..];
            let closed = rest.iter().rev().find(|c| !c.is_ascii_whitespace()) == Some(&b'}');
            if closed && memchr::memmem::find(rest, b"\"resourceVersion\"").is_none() {
                let empty = b.get(skip_ws(b, value + 1)) == Some(&b'}');
                return Some((value + 1, empty));
            }
            let mut inner = Members::of(b, value)?;
            let mut empty = true;
            while let Some((key, _)) = inner.next_member()? {
                if key == b"resourceVersion" {
                    return None;
                }
                empty = false;
            }
            return Some((value + 1, empty));
        }
    }
    None
}

/// The members of one JSON object, read without decoding their values.
struct Members<'a> {
    b: &'a [u8],
    /// Just after the `{` or after the last member's value.
    at: usize,
    first: bool,
}

impl<'a> Members<'a> {
    /// The object whose `{` is at `start`.
    fn of(b: &'a [u8], start: usize) -> Option<Members<'a>> {
        let start = skip_ws(b, start);
        (b.get(start) == Some(&b'{')).then_some(Members {
            b,
            at: start + 1,
            first: true,
        })
    }

    /// The next member's raw key (between its quotes) and where its value
    /// starts; `Ok(None)` at the closing brace. The outer `Option` is
    /// `None` for bytes that are not JSON.
    #[allow(clippy::type_complexity)]
    fn next_member(&mut self) -> Option<Option<(&'a [u8], usize)>> {
        let b = self.b;
        let mut i = skip_ws(b, self.at);
        if !self.first {
            // Skip the previous value.
            i = skip_ws(b, value_end(b, i)?);
            match b.get(i)? {
                b',' => i = skip_ws(b, i + 1),
                b'}' => return Some(None),
                _ => return None,
            }
        } else if b.get(i)? == &b'}' {
            return Some(None);
        }
        self.first = false;
        if b.get(i)? != &b'"' {
            return None;
        }
        let end = string_end(b, i)?;
        let key = &b[i + 1..end - 1];
        i = skip_ws(b, end);
        if b.get(i)? != &b':' {
            return None;
        }
        let value = skip_ws(b, i + 1);
        self.at = value;
        Some(Some((key, value)))
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
        i += 1;
    }
    i
}

/// Just past the string whose opening quote is at `i`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        j += memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[j] == b'\\' {
            j += 2;
        } else {
            return Some(j + 1);
        }
    }
}

/// Just past the value starting at `i`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        // A number, true, false or null.
        _ => {
            let mut j = i;
            while !matches!(
                b.get(j),
                None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')
            ) {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kplex_storage::{Revision, TenantKeyspace};
    use proptest::prelude::*;

    fn kv(value: &str) -> KeyValue {
        KeyValue {
            key: TenantKeyspace::for_vc("vc")
                .unwrap()
                .object_key("", "configmaps", Some("ns"), "a")
                .unwrap(),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: Revision::new(3),
            mod_revision: Revision::new(42),
        }
    }

    fn answered(value: &str) -> Value {
        let bytes = object_bytes(&kv(value)).unwrap();
        serde_json::from_slice(&bytes).expect("the answer is JSON")
    }

    #[test]
    fn the_revision_is_spliced_into_metadata_wherever_it_stands() {
        for stored in [
            r#"{"apiVersion":"v1","data":{"metadata":"x","k":"}{\"\\"},"kind":"ConfigMap","metadata":{"name":"a"}}"#,
            r#"{"metadata":{"name":"a","labels":{"x":"y"}},"list":[1,{"a":[]},"]"],"n":-1.5e3,"t":true,"z":null}"#,
            r#" { "kind" : "X" , "metadata" : { } } "#,
            // The name before metadata (an Event's involvedObject) or
            // escaped in a value: spliced without reading metadata's
            // members; the name as a value within metadata: they are read.
            r#"{"involvedObject":{"resourceVersion":"5"},"metadata":{"name":"a"},"x":"\"resourceVersion\""}"#,
            r#"{"metadata":{"name":"a","note":"resourceVersion"},"spec":{"resourceVersion":1}}"#,
        ] {
            let spliced = object_bytes(&kv(stored)).unwrap();
            assert!(
                spliced.windows(18).any(|w| w == b"\"resourceVersion\":"),
                "{stored} was decoded, not spliced"
            );
            assert_eq!(answered(stored), decode(&kv(stored)).unwrap(), "{stored}");
        }
        assert_eq!(
            answered(r#"{"metadata":{}}"#)["metadata"]["resourceVersion"],
            "42"
        );
    }

    #[test]
    fn what_cannot_be_spliced_is_decoded() {
        // metadata that is not an object, missing, or already holding a
        // resourceVersion; a key spelled with an escape.
        for stored in [
            r#"{"metadata":null,"a":1}"#,
            r#"{"kind":"X"}"#,
            r#"{"metadata":{"resourceVersion":"7","name":"a"}}"#,
            r#"{"metad\u0061ta":{"name":"a"}}"#,
        ] {
            let value = answered(stored);
            assert_eq!(value["metadata"]["resourceVersion"], "42", "{stored}");
        }
        assert!(object_bytes(&kv("{\"metadata\":{")).is_err());
        assert!(object_bytes(&kv("{\"metadata\":{\"name\":\"a\"")).is_err());
        assert!(object_bytes(&kv("not json")).is_err());
    }

    proptest! {
        #[test]
        fn splicing_answers_what_decoding_answers(
            labels in proptest::collection::btree_map("[a-z\"\\\\{}\\[\\] ]{0,6}", "[a-z\"\\\\{}:,]{0,6}", 0..4),
            data in proptest::collection::btree_map("[a-z\"{}]{0,6}", "\\PC{0,12}", 0..4),
            n in proptest::num::i64::ANY,
        ) {
            let stored = serde_json::json!({
                "apiVersion": "v1",
                "data": data,
                "list": [n, {"metadata": {"x": n}}, [[]], {}],
                "metadata": {"name": "a", "labels": labels},
            });
            let text = serde_json::to_string(&stored).unwrap();
            let spliced = answered(&text);
            prop_assert_eq!(spliced, decode(&kv(&text)).unwrap());
        }
    }
}
