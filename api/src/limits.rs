//! A VC's limits (`VirtualCluster.spec.limits`): what one tenant may take
//! of what every tenant shares. Each field the admin leaves out is the
//! platform's default (`kplex serve`'s flags), so a platform can change
//! its defaults for every VC that does not say otherwise.

use serde_json::{json, Map, Value};

use crate::isolation::FieldError;

/// The fields of `spec.limits`, each `None` where the default applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `storedBytes`: keys and values the VC may store (a quantity).
    pub stored_bytes: Option<u64>,
    /// `objects`: how many objects it may store.
    pub objects: Option<u64>,
    /// `requestsPerSecond`: its tenants' sustained request rate.
    pub requests_per_second: Option<u32>,
    /// `requestBurst`: requests above the rate it may make at once.
    pub request_burst: Option<u32>,
    /// `watches`: watches it may hold open.
    pub watches: Option<u32>,
}

/// The smallest `objects` limit: a VC's four namespaces and their default
/// ServiceAccounts and root CA ConfigMaps, with room to work.
pub const MIN_OBJECTS: u64 = 64;
/// The smallest `storedBytes` limit.
pub const MIN_STORED_BYTES: u64 = 256 * 1024;

const FIELDS: &[&str] = &[
    "storedBytes",
    "objects",
    "requestsPerSecond",
    "requestBurst",
    "watches",
];

impl Limits {
    /// The limits of a VC's `spec`; every field that is wrong is reported,
    /// with its path.
    pub fn from_spec(spec: &Value) -> Result<Limits, Vec<FieldError>> {
        const AT: &str = "spec.limits";
        let map = match &spec["limits"] {
            Value::Null => return Ok(Limits::default()),
            Value::Object(map) => map,
            _ => return Err(vec![error(AT, "Invalid value: must be an object")]),
        };
        let mut errors = Vec::new();
        for key in map.keys().filter(|k| !FIELDS.contains(&k.as_str())) {
            errors.push(error(
                &format!("{AT}.{key}"),
                "Unsupported value: unknown field",
            ));
        }
        let limits = Limits {
            stored_bytes: stored_bytes(map, &mut errors),
            objects: integer(map, "objects", MIN_OBJECTS, &mut errors),
            requests_per_second: integer(map, "requestsPerSecond", 1, &mut errors)
                .map(|n| n.min(u32::MAX as u64) as u32),
            request_burst: integer(map, "requestBurst", 1, &mut errors)
                .map(|n| n.min(u32::MAX as u64) as u32),
            watches: integer(map, "watches", 1, &mut errors).map(|n| n.min(u32::MAX as u64) as u32),
        };
        if errors.is_empty() {
            Ok(limits)
        } else {
            Err(errors)
        }
    }

    /// `spec.limits` as stored: the fields set, `storedBytes` in bytes.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        let mut put = |name: &str, value: Option<u64>| {
            if let Some(v) = value {
                map.insert(name.into(), json!(v));
            }
        };
        put("storedBytes", self.stored_bytes);
        put("objects", self.objects);
        put("requestsPerSecond", self.requests_per_second.map(u64::from));
        put("requestBurst", self.request_burst.map(u64::from));
        put("watches", self.watches.map(u64::from));
        Value::Object(map)
    }
}

fn error(field: &str, message: &str) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

/// `storedBytes`: a whole number of bytes, as an integer or a quantity
/// (`512Mi`, `2G`).
fn stored_bytes(map: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<u64> {
    let at = "spec.limits.storedBytes";
    let bytes = match map.get("storedBytes")? {
        Value::Null => return None,
        Value::Number(n) => n.as_u64(),
        Value::String(s) => crate::quantity::parse(s)
            .filter(|q| q.0 >= 0 && q.0 % 1000 == 0)
            .and_then(|q| u64::try_from(q.0 / 1000).ok()),
        _ => None,
    };
    match bytes {
        Some(b) if b >= MIN_STORED_BYTES => Some(b),
        Some(b) => {
            errors.push(error(
                at,
                &format!("Invalid value: {b}: must be at least {MIN_STORED_BYTES} bytes"),
            ));
            None
        }
        None => {
            errors.push(error(
                at,
                &format!(
                    "Invalid value: {}: must be a whole number of bytes, as an integer or a quantity such as 512Mi",
                    map["storedBytes"]
                ),
            ));
            None
        }
    }
}

fn integer(
    map: &Map<String, Value>,
    name: &str,
    min: u64,
    errors: &mut Vec<FieldError>,
) -> Option<u64> {
    let value = map.get(name)?;
    if value.is_null() {
        return None;
    }
    match value.as_u64() {
        Some(n) if n >= min => Some(n),
        _ => {
            errors.push(error(
                &format!("spec.limits.{name}"),
                &format!("Invalid value: {value}: must be an integer of at least {min}"),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_quantities_and_integers_and_name_each_bad_field() {
        let spec = json!({"limits": {"storedBytes": "512Mi", "objects": 1000, "watches": 10}});
        let limits = Limits::from_spec(&spec).unwrap();
        assert_eq!(limits.stored_bytes, Some(512 << 20));
        assert_eq!(limits.objects, Some(1000));
        assert_eq!(limits.watches, Some(10));
        assert_eq!(limits.requests_per_second, None);
        assert_eq!(
            limits.to_value(),
            json!({"storedBytes": 536870912u64, "objects": 1000, "watches": 10})
        );
        assert_eq!(Limits::from_spec(&json!({})).unwrap(), Limits::default());
        assert_eq!(
            Limits::from_spec(&json!({"limits": {"storedBytes": 1048576}}))
                .unwrap()
                .stored_bytes,
            Some(1 << 20)
        );

        let bad = json!({"limits": {"storedBytes": "1.5", "objects": 3, "requestsPerSecond": -1,
            "requestBurst": "x", "bogus": 1}});
        let fields: Vec<String> = Limits::from_spec(&bad)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.limits.bogus",
                "spec.limits.storedBytes",
                "spec.limits.objects",
                "spec.limits.requestsPerSecond",
                "spec.limits.requestBurst"
            ]
        );
        assert!(Limits::from_spec(&json!({"limits": "big"})).is_err());
        assert!(Limits::from_spec(&json!({"limits": {"storedBytes": "1Ki"}})).is_err());
    }
}
