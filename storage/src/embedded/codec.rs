//! On-disk record formats of the embedded backend. Little-endian, length-
//! prefixed; every decoder checks bounds and reports corruption as an error.

use bytes::Bytes;

use crate::error::{StoreError, StoreResult};
use crate::keyspace::Key;
use crate::store::{Event, KeyValue, Revision};

/// A current-state record: `create_rev | mod_rev | value`.
pub(super) fn encode_kv(create: u64, modified: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&modified.to_le_bytes());
    out.extend_from_slice(value);
    out
}

pub(super) fn decode_kv(key: &str, raw: &[u8]) -> StoreResult<KeyValue> {
    let mut r = Reader(raw);
    let create = r.u64()?;
    let modified = r.u64()?;
    Ok(KeyValue {
        key: Key::from_backend(key.as_bytes())?,
        value: Bytes::copy_from_slice(r.0),
        create_revision: Revision::new(create),
        mod_revision: Revision::new(modified),
    })
}

const PUT: u8 = 0;
const DELETE: u8 = 1;

/// A history record: `kind | key | prev? | (put: create_rev | value)`.
/// The event's revision is the record's table key.
pub(super) fn encode_event(event: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    let (kind, prev) = match event {
        Event::Put { prev, .. } => (PUT, prev.as_ref()),
        Event::Delete { prev, .. } => (DELETE, Some(prev)),
    };
    out.push(kind);
    put_bytes(&mut out, event.key().as_str().as_bytes());
    match prev {
        Some(p) => {
            out.push(1);
            out.extend_from_slice(&p.create_revision.get().to_le_bytes());
            out.extend_from_slice(&p.mod_revision.get().to_le_bytes());
            put_bytes(&mut out, &p.value);
        }
        None => out.push(0),
    }
    if let Event::Put { kv, .. } = event {
        out.extend_from_slice(&kv.create_revision.get().to_le_bytes());
        out.extend_from_slice(&kv.value);
    }
    out
}

/// The key of a history record, without decoding the rest.
pub(super) fn event_key(raw: &[u8]) -> StoreResult<&str> {
    let mut r = Reader(raw);
    r.u8()?;
    let key = r.bytes()?;
    std::str::from_utf8(key).map_err(|_| corrupt())
}

/// Decodes a history record; `prev` is what the key held before the event.
pub(super) fn decode_event(revision: u64, raw: &[u8]) -> StoreResult<Event> {
    let mut r = Reader(raw);
    let kind = r.u8()?;
    let key = Key::from_backend(r.bytes()?)?;
    let prev = match r.u8()? {
        0 => None,
        _ => {
            let create = r.u64()?;
            let modified = r.u64()?;
            Some(KeyValue {
                key: key.clone(),
                create_revision: Revision::new(create),
                mod_revision: Revision::new(modified),
                value: Bytes::copy_from_slice(r.bytes()?),
            })
        }
    };
    match kind {
        PUT => {
            let create = r.u64()?;
            let kv = KeyValue {
                key,
                value: Bytes::copy_from_slice(r.0),
                create_revision: Revision::new(create),
                mod_revision: Revision::new(revision),
            };
            Ok(Event::Put { kv, prev })
        }
        DELETE => Ok(Event::Delete {
            prev: prev.ok_or_else(corrupt)?,
            revision: Revision::new(revision),
        }),
        _ => Err(corrupt()),
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Values are capped far below 4 GiB before they get here.
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn corrupt() -> StoreError {
    StoreError::Internal("corrupt record in embedded store".into())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> StoreResult<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> StoreResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> StoreResult<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> StoreResult<&'a [u8]> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
        self.take(len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::SystemKeyspace;

    fn kv(value: &str, create: u64, modified: u64) -> KeyValue {
        KeyValue {
            key: SystemKeyspace::key(&["k"]).unwrap(),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: Revision::new(create),
            mod_revision: Revision::new(modified),
        }
    }

    #[test]
    fn events_round_trip() {
        let events = [
            Event::Put {
                kv: kv("new", 3, 7),
                prev: Some(kv("old", 3, 5)),
            },
            Event::Put {
                kv: kv("", 7, 7),
                prev: None,
            },
            Event::Delete {
                prev: kv("gone", 2, 4),
                revision: Revision::new(7),
            },
        ];
        for e in events {
            let raw = encode_event(&e);
            assert_eq!(event_key(&raw).unwrap(), "/kplex/system/k");
            assert_eq!(decode_event(7, &raw).unwrap(), e);
        }
    }

    #[test]
    fn truncated_records_are_errors_not_panics() {
        let raw = encode_event(&Event::Put {
            kv: kv("v", 1, 2),
            prev: Some(kv("p", 1, 1)),
        });
        for n in 0..raw.len() - 1 {
            // Every strict prefix that cuts a fixed-size field must fail cleanly.
            let _ = decode_event(2, &raw[..n]);
        }
        assert!(decode_kv("/kplex/system/k", &[1, 2, 3]).is_err());
        assert!(decode_event(2, &[9, 0, 0, 0, 0, 0]).is_err());
    }
}
