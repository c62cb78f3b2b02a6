//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`),
//! decoded into the JSON the rest of the server handles.
//!
//! kubectl's `create namespace|configmap|secret|deployment…` send their
//! objects this way and do not retry with JSON on 415, so the server has to
//! read them. A body is the magic `k8s\0` and a `runtime.Unknown` envelope
//! whose `typeMeta` names the kind and whose `raw` is the object's message.
//! Field numbers and types come from the table `build.rs` reads off the
//! k8s-pb crate's source; JSON field names come from the OpenAPI schemas (the
//! protobuf names lose the case of `hostIP` and the like).
//!
//! Go writes every non-pointer field, zero or not, so the decoder drops zero
//! scalars the schema does not require, except the pointer fields where a
//! zero is meaningful (`replicas: 0`): the object then reads as kubectl's
//! JSON for the same command would. The handful of messages with a custom
//! JSON form (quantities, int-or-string, times, durations, raw JSON) are
//! translated to it.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::{Map, Number, Value};

use kplex_registry::error::ApiError;

/// The media type kubectl sends protobuf bodies as.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Every protobuf body starts with this.
const MAGIC: &[u8] = b"k8s\x00";

/// Messages nest no deeper than this (the JSON depth cap is far lower).
const MAX_DEPTH: usize = 128;

/// Pointer fields whose zero (or empty) value means something, kept even
/// though Go would also write a non-pointer field's zero.
const MEANINGFUL_ZEROS: &[&str] = &[
    "replicas",
    "parallelism",
    "completions",
    "backoffLimit",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "revisionHistoryLimit",
    "terminationGracePeriodSeconds",
    "gracePeriodSeconds",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "immutable",
    "suspend",
    "optional",
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "fsGroup",
    "storageClassName",
];

mod table {
    pub(crate) struct Message {
        pub name: &'static str,
        pub fields: &'static [Field],
    }

    pub(crate) struct Field {
        pub tag: u32,
        pub name: &'static str,
        pub ty: Ty,
        pub repeated: bool,
    }

    pub(crate) enum Ty {
        String,
        Bytes,
        Bool,
        Int,
        // No message under api/ or apimachinery/ has one today.
        #[allow(dead_code)]
        Float,
        Message(&'static str),
        Map(&'static Ty),
    }

    include!(concat!(env!("OUT_DIR"), "/protobuf_schema.rs"));
}

use table::{Field, Message, Ty};

/// Decodes a protobuf body into the object's JSON, `apiVersion` and `kind`
/// included.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    decode_body(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the protobuf request body could not be decoded: {e}"
        ))
    })
}

fn decode_body(body: &[u8]) -> Result<Value, String> {
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or("it does not start with the k8s protobuf prefix")?;
    let (mut api_version, mut kind, mut raw, mut encoding) = ("", "", &[][..], "");
    let mut fields = Reader(envelope);
    while let Some((tag, value)) = fields.next_field()? {
        match (tag, value) {
            (1, Wire::Len(type_meta)) => {
                let mut meta = Reader(type_meta);
                while let Some((tag, value)) = meta.next_field()? {
                    match (tag, value) {
                        (1, Wire::Len(v)) => api_version = utf8(v)?,
                        (2, Wire::Len(v)) => kind = utf8(v)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(v)) => raw = v,
            (3, Wire::Len(v)) => encoding = utf8(v)?,
            _ => {}
        }
    }
    if !encoding.is_empty() {
        return Err(format!("content encoding {encoding:?} is not supported"));
    }
    let message = message_for(api_version, kind)
        .ok_or_else(|| format!("no protobuf message is known for {api_version}, Kind={kind}"))?;
    let Value::Object(mut object) = decode_message(message.name, raw, 0)? else {
        return Err(format!("{kind} does not decode to an object"));
    };
    object.insert("apiVersion".into(), Value::String(api_version.into()));
    object.insert("kind".into(), Value::String(kind.into()));
    Ok(Value::Object(object))
}

/// The message of a kind: the resources k8s-pb lists, and the option kinds
/// of `meta/v1` (`DeleteOptions`…) that any group's requests may carry.
fn message_for(api_version: &str, kind: &str) -> Option<&'static Message> {
    let name = table::KINDS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
        .map(|(_, _, m)| (*m).to_owned())
        .or_else(|| {
            SUBRESOURCE_KINDS
                .iter()
                .find(|(v, k, _)| *v == api_version && *k == kind)
                .map(|(_, _, m)| (*m).to_owned())
        })
        .unwrap_or_else(|| format!("apimachinery.pkg.apis.meta.v1.{kind}"));
    find_message(&name)
}

/// Kinds posted to subresources (not resources of their own, so not in
/// k8s-pb's resource list): `kubectl create token` sends its TokenRequest
/// as protobuf.
const SUBRESOURCE_KINDS: &[(&str, &str, &str)] = &[
    (
        "authentication.k8s.io/v1",
        "TokenRequest",
        "api.authentication.v1.TokenRequest",
    ),
    ("v1", "Binding", "api.core.v1.Binding"),
    ("policy/v1", "Eviction", "api.policy.v1.Eviction"),
];

fn find_message(name: &str) -> Option<&'static Message> {
    table::MESSAGES
        .binary_search_by(|m| m.name.cmp(name))
        .ok()
        .map(|i| &table::MESSAGES[i])
}

fn decode_message(name: &str, bytes: &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("messages nest too deeply".into());
    }
    if let Some(value) = special(name, bytes)? {
        return Ok(value);
    }
    let message = find_message(name).ok_or_else(|| format!("unknown message {name}"))?;
    let mut object = Map::new();
    let mut reader = Reader(bytes);
    while let Some((tag, wire)) = reader.next_field()? {
        let Ok(i) = message.fields.binary_search_by_key(&tag, |f| f.tag) else {
            continue; // a field newer than the table: ignored, as protobuf does
        };
        let field = &message.fields[i];
        let Some((key, keep_zero)) = json_name(message, field) else {
            // A Go struct embedded with `json:",inline"` (an ingress rule's
            // value, a volume's source): its fields are the parent's.
            if let (Ty::Message(name), Wire::Len(bytes)) = (&field.ty, wire) {
                if let Value::Object(inner) = decode_message(name, bytes, depth + 1)? {
                    object.extend(inner);
                }
            }
            continue;
        };
        match field.ty {
            Ty::Map(value_ty) => {
                let Wire::Len(entry) = wire else {
                    return Err(format!("{}: map entry is not length-delimited", field.name));
                };
                let (k, v) = map_entry(entry, value_ty, depth)?;
                let map = object
                    .entry(key)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = map {
                    map.insert(k, v);
                }
            }
            _ if field.repeated => {
                let items = object
                    .entry(key)
                    .or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(items) = items else {
                    unreachable!("repeated fields hold arrays")
                };
                match (&field.ty, wire) {
                    // A packed run of numbers.
                    (Ty::Int | Ty::Bool | Ty::Float, Wire::Len(run)) => {
                        let mut run = Reader(run);
                        while !run.0.is_empty() {
                            let wire = match field.ty {
                                Ty::Float => Wire::Fixed64(run.fixed::<8>()?),
                                _ => Wire::Varint(run.varint()?),
                            };
                            items.push(scalar(field, wire, depth)?.unwrap_or(Value::Null));
                        }
                    }
                    (_, wire) => items.push(scalar(field, wire, depth)?.unwrap_or(Value::Null)),
                }
            }
            _ => match scalar(field, wire, depth)? {
                Some(value) if keep_zero || !is_zero(&value) => {
                    object.insert(key, value);
                }
                _ => {
                    object.remove(&key);
                }
            },
        }
    }
    Ok(Value::Object(object))
}

/// One value of `field`'s type; `None` for a value JSON leaves out (a zero
/// time).
fn scalar(field: &Field, wire: Wire<'_>, depth: usize) -> Result<Option<Value>, String> {
    value_of(&field.ty, wire, depth).map_err(|e| format!("{}: {e}", field.name))
}

fn value_of(ty: &Ty, wire: Wire<'_>, depth: usize) -> Result<Option<Value>, String> {
    Ok(Some(match (ty, wire) {
        (Ty::String, Wire::Len(v)) => Value::String(utf8(v)?.to_owned()),
        (Ty::Bytes, Wire::Len(v)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(v))
        }
        (Ty::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        (Ty::Int, Wire::Varint(v)) => Value::Number((v as i64).into()),
        (Ty::Float, Wire::Fixed64(v)) => float(f64::from_bits(u64::from_le_bytes(v)))?,
        (Ty::Float, Wire::Fixed32(v)) => float(f32::from_bits(u32::from_le_bytes(v)) as f64)?,
        (Ty::Message(name), Wire::Len(v)) => {
            let value = decode_message(name, v, depth + 1)?;
            if value.is_null() {
                return Ok(None);
            }
            value
        }
        _ => return Err("wire type does not match the field's type".into()),
    }))
}

fn float(f: f64) -> Result<Value, String> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| "not a finite number".into())
}

fn map_entry(entry: &[u8], value_ty: &Ty, depth: usize) -> Result<(String, Value), String> {
    let (mut key, mut value) = (String::new(), None);
    let mut reader = Reader(entry);
    while let Some((tag, wire)) = reader.next_field()? {
        match (tag, wire) {
            (1, Wire::Len(k)) => key = utf8(k)?.to_owned(),
            (2, wire) => value = value_of(value_ty, wire, depth + 1)?,
            _ => {}
        }
    }
    let value = value.unwrap_or_else(|| match value_ty {
        Ty::String | Ty::Bytes => Value::String(String::new()),
        _ => Value::Null,
    });
    Ok((key, value))
}

/// The messages whose JSON is not an object of their fields.
fn special(name: &str, bytes: &[u8]) -> Result<Option<Value>, String> {
    let name = name.strip_prefix("apimachinery.pkg.").unwrap_or("");
    if !matches!(
        name,
        "util.intstr.IntOrString"
            | "api.resource.Quantity"
            | "apis.meta.v1.Time"
            | "apis.meta.v1.MicroTime"
            | "apis.meta.v1.Duration"
            | "runtime.RawExtension"
            | "apis.meta.v1.FieldsV1"
    ) {
        return Ok(None);
    }
    // Every one of these has at most three fields: read them by number.
    let mut ints = [0i64; 4];
    let mut texts: [&[u8]; 4] = [&[]; 4];
    let mut reader = Reader(bytes);
    while let Some((tag, wire)) = reader.next_field()? {
        let slot = (tag as usize).min(3);
        match wire {
            Wire::Varint(v) => ints[slot] = v as i64,
            Wire::Len(v) => texts[slot] = v,
            _ => {}
        }
    }
    Ok(Some(match name {
        "util.intstr.IntOrString" if ints[1] == 1 => Value::String(utf8(texts[3])?.into()),
        "util.intstr.IntOrString" => Value::Number(ints[2].into()),
        "api.resource.Quantity" => Value::String(utf8(texts[1])?.into()),
        // Go writes a zero time as an empty message; JSON has null.
        "apis.meta.v1.Time" | "apis.meta.v1.MicroTime" if bytes.is_empty() => Value::Null,
        "apis.meta.v1.Time" => Value::String(rfc3339(ints[1], None)?),
        "apis.meta.v1.MicroTime" => Value::String(rfc3339(ints[1], Some(ints[2]))?),
        "apis.meta.v1.Duration" => Value::String(go_duration(ints[1])),
        // runtime.RawExtension and meta/v1.FieldsV1 carry JSON.
        _ if texts[1].is_empty() => Value::Null,
        _ => serde_json::from_slice(texts[1]).map_err(|e| format!("embedded JSON: {e}"))?,
    }))
}

/// `seconds` since the epoch as kube-apiserver writes times: whole seconds,
/// or microseconds for a `MicroTime`.
fn rfc3339(seconds: i64, nanos: Option<i64>) -> Result<String, String> {
    let t = time::OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| e.to_string())?;
    let date = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    Ok(match nanos {
        Some(nanos) => format!("{date}.{:06}Z", nanos.clamp(0, 999_999_999) / 1000),
        None => format!("{date}Z"),
    })
}

/// A duration in nanoseconds the way Go prints one (`1h2m3.5s`, `250ms`).
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let fraction = |value: u64, unit: u64| {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            whole.to_string()
        } else {
            let digits = unit.ilog10() as usize;
            let text = format!("{whole}.{rest:0digits$}");
            text.trim_end_matches('0').to_owned()
        }
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", fraction(n, 1_000));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", fraction(n, 1_000_000));
    }
    let seconds = fraction(n % 60_000_000_000, 1_000_000_000);
    let minutes = n / 60_000_000_000 % 60;
    let hours = n / 3_600_000_000_000;
    match (hours, minutes) {
        (0, 0) => format!("{sign}{seconds}s"),
        (0, m) => format!("{sign}{m}m{seconds}s"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}s"),
    }
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "a string is not UTF-8".to_owned())
}

/// The JSON name of `field` and whether its zero value is kept; `None` for
/// a message the schema inlines into its parent.
fn json_name(message: &Message, field: &Field) -> Option<(String, bool)> {
    let Some(schema) = schemas().get(&message.name.to_ascii_lowercase()) else {
        let name = lower_camel(field.name);
        let keep = MEANINGFUL_ZEROS.contains(&name.as_str());
        return Some((name, keep));
    };
    let name = match schema
        .properties
        .get(&field.name.replace('_', "").to_ascii_lowercase())
    {
        Some(name) => name.clone(),
        None if matches!(field.ty, Ty::Message(_)) => return None,
        None => lower_camel(field.name),
    };
    let keep = schema.required.contains(&name) || MEANINGFUL_ZEROS.contains(&name.as_str());
    Some((name, keep))
}

fn lower_camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// What the decoder needs of one OpenAPI schema.
struct Schema {
    /// Lowercased name without underscores → the JSON property name.
    properties: HashMap<String, String>,
    required: HashSet<String>,
}

/// The built-in kinds' schemas (and those they refer to) by lowercased
/// message name (`api.core.v1.httpgetaction`), built once.
fn schemas() -> &'static HashMap<String, Schema> {
    static SCHEMAS: OnceLock<HashMap<String, Schema>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let mut definitions = serde_json::Map::new();
        for info in crate::catalog::builtin() {
            info.strategy.openapi_schema(&mut definitions);
        }
        let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
        definitions.extend(generator.take_definitions(true));
        definitions
            .into_iter()
            .map(|(name, schema)| {
                let key = name
                    .strip_prefix("io.k8s.")
                    .unwrap_or(&name)
                    .to_ascii_lowercase();
                let properties = schema["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(p, _)| (p.to_ascii_lowercase(), p.clone()))
                    .collect();
                let required = schema["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect();
                (
                    key,
                    Schema {
                        properties,
                        required,
                    },
                )
            })
            .collect()
    })
}

/// A field's wire value.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Len(&'a [u8]),
}

/// Reads protobuf fields off a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// The next field number and value, `None` at the end.
    fn next_field(&mut self) -> Result<Option<(u32, Wire<'a>)>, String> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(self.fixed::<8>()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
                if len > self.0.len() {
                    return Err("a length runs past the end of the body".into());
                }
                let (value, rest) = self.0.split_at(len);
                self.0 = rest;
                Wire::Len(value)
            }
            5 => Wire::Fixed32(self.fixed::<4>()?),
            other => return Err(format!("unsupported wire type {other}")),
        };
        Ok(Some((tag, wire)))
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for (i, byte) in self.0.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(value);
            }
        }
        Err("a varint is truncated or too long".into())
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], String> {
        if self.0.len() < N {
            return Err("a fixed-width value is truncated".into());
        }
        let (value, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(value.try_into().expect("N bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Encodes one message, field numbers looked up in the table by name.
    struct Enc(&'static str, Vec<u8>);

    impl Enc {
        fn new(message: &'static str) -> Enc {
            assert!(find_message(message).is_some(), "{message}");
            Enc(message, Vec::new())
        }

        fn key(&mut self, field: &str, wire: u64) {
            let message = find_message(self.0).unwrap();
            let tag = message
                .fields
                .iter()
                .find(|f| f.name == field)
                .unwrap_or_else(|| panic!("{} has no {field}", self.0))
                .tag;
            varint(&mut self.1, u64::from(tag) << 3 | wire);
        }

        fn int(mut self, field: &str, v: i64) -> Enc {
            self.key(field, 0);
            varint(&mut self.1, v as u64);
            self
        }

        fn bytes(mut self, field: &str, v: &[u8]) -> Enc {
            self.key(field, 2);
            varint(&mut self.1, v.len() as u64);
            self.1.extend_from_slice(v);
            self
        }

        fn str(self, field: &str, v: &str) -> Enc {
            self.bytes(field, v.as_bytes())
        }

        fn msg(self, field: &str, inner: Enc) -> Enc {
            self.bytes(field, &inner.1)
        }

        /// A map entry: key 1, value 2.
        fn entry(self, field: &str, key: &str, value: &[u8]) -> Enc {
            let mut entry = Vec::new();
            entry.push(1 << 3 | 2);
            varint(&mut entry, key.len() as u64);
            entry.extend_from_slice(key.as_bytes());
            entry.push(2 << 3 | 2);
            varint(&mut entry, value.len() as u64);
            entry.extend_from_slice(value);
            self.bytes(field, &entry)
        }
    }

    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn body(api_version: &str, kind: &str, object: Enc) -> Vec<u8> {
        let type_meta = Enc::new("apimachinery.pkg.runtime.TypeMeta")
            .str("api_version", api_version)
            .str("kind", kind);
        let unknown = Enc::new("apimachinery.pkg.runtime.Unknown")
            .msg("type_meta", type_meta)
            .bytes("raw", &object.1);
        [MAGIC, &unknown.1].concat()
    }

    fn meta(name: &str) -> Enc {
        // As Go writes it: every string, zero or not, and a zero time as an
        // empty message.
        Enc::new("apimachinery.pkg.apis.meta.v1.ObjectMeta")
            .str("name", name)
            .str("generate_name", "")
            .str("namespace", "")
            .int("generation", 0)
            .msg(
                "creation_timestamp",
                Enc::new("apimachinery.pkg.apis.meta.v1.Time"),
            )
            .entry("labels", "app", b"web")
    }

    #[test]
    fn a_deployment_decodes_to_the_json_kubectl_would_send() {
        let quantity = Enc::new("apimachinery.pkg.api.resource.Quantity").str("string", "1500m");
        let port = Enc::new("api.core.v1.ContainerPort")
            .int("container_port", 80)
            .str("host_ip", "10.0.0.1")
            .int("host_port", 0)
            .str("protocol", "TCP");
        let container = Enc::new("api.core.v1.Container")
            .str("name", "web")
            .str("image", "nginx")
            .msg("ports", port)
            .msg(
                "resources",
                Enc::new("api.core.v1.ResourceRequirements").entry("limits", "cpu", &quantity.1),
            )
            .str("args", "-v")
            .str("args", "")
            .int("stdin", 0);
        let surge = Enc::new("apimachinery.pkg.util.intstr.IntOrString")
            .int("type", 1)
            .int("int_val", 0)
            .str("str_val", "25%");
        let unavailable = Enc::new("apimachinery.pkg.util.intstr.IntOrString")
            .int("type", 0)
            .int("int_val", 2)
            .str("str_val", "");
        let spec = Enc::new("api.apps.v1.DeploymentSpec")
            .int("replicas", 0)
            .msg(
                "strategy",
                Enc::new("api.apps.v1.DeploymentStrategy").msg(
                    "rolling_update",
                    Enc::new("api.apps.v1.RollingUpdateDeployment")
                        .msg("max_surge", surge)
                        .msg("max_unavailable", unavailable),
                ),
            )
            .msg(
                "template",
                Enc::new("api.core.v1.PodTemplateSpec")
                    .msg("metadata", meta(""))
                    .msg(
                        "spec",
                        Enc::new("api.core.v1.PodSpec").msg("containers", container),
                    ),
            );
        let deployment = Enc::new("api.apps.v1.Deployment")
            .msg("metadata", meta("web"))
            .msg("spec", spec)
            .msg("status", Enc::new("api.apps.v1.DeploymentStatus"));
        let value = decode(&body("apps/v1", "Deployment", deployment)).unwrap();
        assert_eq!(
            value,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {
                    "replicas": 0,
                    "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 2}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{
                            "name": "web",
                            "image": "nginx",
                            "ports": [{"containerPort": 80, "hostIP": "10.0.0.1", "protocol": "TCP"}],
                            "resources": {"limits": {"cpu": "1500m"}},
                            "args": ["-v", ""],
                        }]},
                    },
                },
                "status": {},
            })
        );
    }

    #[test]
    fn bytes_times_and_inlined_structs_take_their_json_forms() {
        let secret = Enc::new("api.core.v1.Secret")
            .msg("metadata", meta("s"))
            .entry("data", "key", &[0, 159, 146, 150])
            .str("type", "Opaque");
        assert_eq!(
            decode(&body("v1", "Secret", secret)).unwrap()["data"],
            json!({"key": "AJ+Slg=="})
        );

        let renew = Enc::new("apimachinery.pkg.apis.meta.v1.MicroTime")
            .int("seconds", 1_700_000_000)
            .int("nanos", 123_456_789);
        let lease = Enc::new("api.coordination.v1.Lease")
            .msg("metadata", meta("l"))
            .msg(
                "spec",
                Enc::new("api.coordination.v1.LeaseSpec").msg("renew_time", renew),
            );
        assert_eq!(
            decode(&body("coordination.k8s.io/v1", "Lease", lease)).unwrap()["spec"],
            json!({"renewTime": "2023-11-14T22:13:20.123456Z"})
        );

        // An ingress rule's value is a Go struct embedded inline.
        let rule = Enc::new("api.networking.v1.IngressRule")
            .str("host", "example.com")
            .msg(
                "ingress_rule_value",
                Enc::new("api.networking.v1.IngressRuleValue")
                    .msg("http", Enc::new("api.networking.v1.HttpIngressRuleValue")),
            );
        let ingress = Enc::new("api.networking.v1.Ingress")
            .msg("metadata", meta("i"))
            .msg(
                "spec",
                Enc::new("api.networking.v1.IngressSpec").msg("rules", rule),
            );
        assert_eq!(
            decode(&body("networking.k8s.io/v1", "Ingress", ingress)).unwrap()["spec"],
            json!({"rules": [{"host": "example.com", "http": {}}]})
        );

        let options = Enc::new("apimachinery.pkg.apis.meta.v1.DeleteOptions")
            .int("grace_period_seconds", 0)
            .str("propagation_policy", "Foreground");
        assert_eq!(
            decode(&body("meta.k8s.io/v1", "DeleteOptions", options)).unwrap(),
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions",
                   "gracePeriodSeconds": 0, "propagationPolicy": "Foreground"})
        );
    }

    #[test]
    fn go_durations_print_as_go_prints_them() {
        for (nanos, text) in [
            (0, "0s"),
            (999, "999ns"),
            (1_500, "1.5µs"),
            (250_000_000, "250ms"),
            (90_000_000_000, "1m30s"),
            (3_723_500_000_000, "1h2m3.5s"),
            (-2_000_000_000, "-2s"),
        ] {
            assert_eq!(go_duration(nanos), text);
        }
    }

    #[test]
    fn malformed_bodies_are_bad_requests() {
        let good = body(
            "v1",
            "ConfigMap",
            Enc::new("api.core.v1.ConfigMap").msg("metadata", meta("c")),
        );
        assert!(decode(&good).is_ok());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("no magic", good[4..].to_vec()),
            ("truncated", good[..good.len() - 3].to_vec()),
            (
                "unknown kind",
                body("v1", "Gadget", Enc::new("api.core.v1.ConfigMap")),
            ),
            (
                "bad utf-8",
                body(
                    "v1",
                    "ConfigMap",
                    Enc::new("api.core.v1.ConfigMap").msg(
                        "metadata",
                        Enc::new("apimachinery.pkg.apis.meta.v1.ObjectMeta").bytes("name", &[0xff]),
                    ),
                ),
            ),
            (
                "wrong wire type",
                body(
                    "v1",
                    "ConfigMap",
                    Enc::new("api.core.v1.ConfigMap").int("metadata", 3),
                ),
            ),
            (
                "endless varint",
                [
                    MAGIC,
                    &[
                        0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                    ],
                ]
                .concat(),
            ),
        ];
        for (what, bytes) in cases {
            let err = decode(&bytes).expect_err(what);
            assert_eq!(err.code, kplex_registry::StatusCode::BAD_REQUEST, "{what}");
        }
        // The table has no recursive message, so nesting is bounded by it;
        // the depth guard stands behind that anyway.
        assert!(decode_message("api.core.v1.ConfigMap", &[], MAX_DEPTH + 1).is_err());
    }
}
