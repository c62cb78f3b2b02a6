//! Builds the field table of the Kubernetes protobuf encoding.
//!
//! kubectl sends some request bodies as `application/vnd.kubernetes.protobuf`
//! (its `create namespace|configmap|deployment…` generators, for one) and does
//! not fall back to JSON on 415. Decoding them needs each message's field
//! numbers and types, which the wire format does not carry. The k8s-pb crate
//! is prost's rendering of Kubernetes' `.proto` files; this script reads its
//! source (a build dependency, so cargo has fetched and built it) with `syn`
//! and writes
//! the table `src/protobuf.rs` decodes with: per message its fields (number,
//! name, type), and which message each `apiVersion`/`kind` is. No k8s-pb code
//! is compiled into kplex.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use syn::punctuated::Punctuated;
use syn::{Expr, Item, Lit, Meta, Token, Type};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let root = k8s_pb_source();
    let mut table = Table::default();
    for top in ["api", "apimachinery"] {
        read_dir(&root.join(top), &mut vec![top.to_owned()], &mut table);
    }
    assert!(
        table.messages.contains_key("api.core.v1.Pod")
            && table
                .messages
                .contains_key("apimachinery.pkg.runtime.Unknown"),
        "k8s-pb source at {} did not yield the expected messages",
        root.display()
    );
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("protobuf_schema.rs");
    std::fs::write(&out, table.render()).expect("write the protobuf table");
}

/// The `src` directory of the k8s-pb package cargo built for this build
/// script: its dep-info file (`<target>/<profile>/deps/k8s_pb-*.d`, beside
/// this script's `build/<pkg>/out`) lists its source files. Wherever cargo
/// put the source — registry, vendor directory, git checkout — that is
/// where it compiled it from. (`cargo metadata` would need every platform's
/// packages downloaded, which a build does not do.)
fn k8s_pb_source() -> PathBuf {
    let version = locked_version("k8s-pb");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let profile = out
        .ancestors()
        .nth(3)
        .expect("OUT_DIR is <target>/[<triple>/]<profile>/build/<pkg>/out");
    // With `--target`, build dependencies are the host's: <target>/<profile>.
    let mut dirs = vec![profile.join("deps")];
    if let (Some(name), Some(target)) = (profile.file_name(), profile.ancestors().nth(2)) {
        dirs.push(target.join(name).join("deps"));
    }
    let deps = dirs
        .iter()
        .find(|d| d.is_dir())
        .expect("a deps directory")
        .clone();
    let entries = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("k8s_pb-") && name.ends_with(".d")) {
            continue;
        }
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lib = info
            .split_whitespace()
            .find(|f| f.ends_with("/src/lib.rs") && f.contains("k8s-pb"))
            .map(|f| PathBuf::from(f.trim_end_matches(':')));
        if let Some(lib) = lib {
            let modified = entry.metadata().and_then(|m| m.modified()).ok();
            found.push((lib, modified));
        }
    }
    // The locked version if several were built, else the newest.
    found.sort_by_key(|(_, modified)| *modified);
    let pick = found
        .iter()
        .rev()
        .find(|(lib, _)| {
            version
                .as_deref()
                .is_some_and(|v| lib.to_string_lossy().contains(&format!("k8s-pb-{v}")))
        })
        .or(found.last())
        .unwrap_or_else(|| panic!("no k8s-pb dep-info in {}", deps.display()));
    pick.0.parent().expect("src directory").to_owned()
}

/// The version of `package` in the workspace's Cargo.lock.
fn locked_version(package: &str) -> Option<String> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").ok()?);
    let lock = std::fs::read_to_string(manifest_dir.parent()?.join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == format!("name = \"{package}\"") {
            let version = lines.next()?.trim().strip_prefix("version = ")?;
            return Some(version.trim_matches('"').to_owned());
        }
    }
    None
}

#[derive(Default)]
struct Table {
    /// Message name (`api.core.v1.Pod`) → fields.
    messages: BTreeMap<String, Vec<FieldRow>>,
    /// (`apiVersion`, `kind`) → message name.
    kinds: BTreeMap<(String, String), String>,
}

struct FieldRow {
    tag: u32,
    name: String,
    ty: String,
    repeated: bool,
}

impl Table {
    fn render(&self) -> String {
        let mut s = String::from("// Generated by build.rs from the k8s-pb crate's source.\n");
        s.push_str("pub(crate) static MESSAGES: &[Message] = &[\n");
        for (name, fields) in &self.messages {
            let _ = write!(s, "    Message {{ name: {name:?}, fields: &[");
            for f in fields {
                let _ = write!(
                    s,
                    "Field {{ tag: {}, name: {:?}, ty: {}, repeated: {} }}, ",
                    f.tag, f.name, f.ty, f.repeated
                );
            }
            s.push_str("] },\n");
        }
        s.push_str("];\n");
        s.push_str("pub(crate) static KINDS: &[(&str, &str, &str)] = &[\n");
        for ((api_version, kind), message) in &self.kinds {
            let _ = writeln!(s, "    ({api_version:?}, {kind:?}, {message:?}),");
        }
        s.push_str("];\n");
        s
    }
}

fn read_dir(dir: &Path, module: &mut Vec<String>, table: &mut Table) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        if path.is_dir() {
            module.push(name);
            read_dir(&path, module, table);
            module.pop();
        } else if name == "mod.rs" {
            read_file(&path, module, table);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            module.push(stem.to_owned());
            read_file(&path, module, table);
            module.pop();
        }
    }
}

fn read_file(path: &Path, module: &[String], table: &mut Table) {
    let text = std::fs::read_to_string(path).expect("read source");
    let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    read_items(&file.items, module, table);
}

fn read_items(items: &[Item], module: &[String], table: &mut Table) {
    for item in items {
        match item {
            Item::Struct(s) => {
                let fields: Vec<FieldRow> = s
                    .fields
                    .iter()
                    .filter_map(|f| field_row(f, module))
                    .collect();
                if !fields.is_empty() || is_prost_message(&s.attrs) {
                    let mut fields = fields;
                    fields.sort_by_key(|f| f.tag);
                    table
                        .messages
                        .insert(dotted(module, &s.ident.to_string()), fields);
                }
            }
            Item::Impl(i) => {
                let is_resource = i
                    .trait_
                    .as_ref()
                    .and_then(|(_, path, _)| path.segments.last())
                    .is_some_and(|seg| seg.ident == "Resource");
                let Type::Path(self_ty) = &*i.self_ty else {
                    continue;
                };
                if !is_resource {
                    continue;
                }
                let ident = self_ty
                    .path
                    .segments
                    .last()
                    .expect("type")
                    .ident
                    .to_string();
                let mut api_version = None;
                let mut kind = None;
                for item in &i.items {
                    if let syn::ImplItem::Const(c) = item {
                        if let Expr::Lit(syn::ExprLit {
                            lit: Lit::Str(v), ..
                        }) = &c.expr
                        {
                            match c.ident.to_string().as_str() {
                                "API_VERSION" => api_version = Some(v.value()),
                                "KIND" => kind = Some(v.value()),
                                _ => {}
                            }
                        }
                    }
                }
                if let (Some(api_version), Some(kind)) = (api_version, kind) {
                    table
                        .kinds
                        .insert((api_version, kind), dotted(module, &ident));
                }
            }
            Item::Mod(m) => {
                if let Some((_, items)) = &m.content {
                    let mut inner = module.to_vec();
                    inner.push(m.ident.to_string());
                    read_items(items, &inner, table);
                }
            }
            _ => {}
        }
    }
}

fn is_prost_message(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("derive")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.to_string().contains("Message"))
    })
}

fn dotted(module: &[String], ident: &str) -> String {
    let mut parts = module.to_vec();
    parts.push(ident.to_owned());
    parts.join(".")
}

/// One `#[prost(...)]` field as a table row.
fn field_row(field: &syn::Field, module: &[String]) -> Option<FieldRow> {
    let attr = field.attrs.iter().find(|a| a.path().is_ident("prost"))?;
    let metas = attr
        .parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
        .expect("prost attribute");
    let mut scalar = None;
    let mut map = None;
    let mut tag = None;
    let mut repeated = false;
    for meta in &metas {
        match meta {
            Meta::Path(p) => {
                let word = p.get_ident().map(|i| i.to_string()).unwrap_or_default();
                match word.as_str() {
                    "repeated" => repeated = true,
                    "optional" | "required" | "boxed" => {}
                    other => scalar = Some(other.to_owned()),
                }
            }
            Meta::NameValue(nv) => {
                let key = nv
                    .path
                    .get_ident()
                    .map(|i| i.to_string())
                    .unwrap_or_default();
                let value = match &nv.value {
                    Expr::Lit(syn::ExprLit {
                        lit: Lit::Str(v), ..
                    }) => v.value(),
                    _ => continue,
                };
                match key.as_str() {
                    "tag" => tag = Some(value.parse::<u32>().expect("numeric tag")),
                    "bytes" => scalar = Some("bytes".into()),
                    "map" | "btree_map" | "hash_map" => map = Some(value),
                    _ => {}
                }
            }
            Meta::List(_) => {}
        }
    }
    let message = || message_path(&field.ty, module);
    let ty = if let Some(map) = map {
        let value = map.split(',').nth(1).expect("map value type").trim();
        format!("Ty::Map(&{})", scalar_ty(value, message))
    } else {
        scalar_ty(scalar.as_deref().expect("field type"), message)
    };
    Some(FieldRow {
        tag: tag.expect("tag"),
        name: field
            .ident
            .as_ref()
            .expect("named field")
            .to_string()
            .trim_start_matches("r#")
            .to_owned(),
        ty,
        repeated,
    })
}

fn scalar_ty(word: &str, message: impl Fn() -> String) -> String {
    match word {
        "string" => "Ty::String".into(),
        "bytes" => "Ty::Bytes".into(),
        "bool" => "Ty::Bool".into(),
        "int32" | "int64" | "uint32" | "uint64" | "enumeration" => "Ty::Int".into(),
        "double" | "float" => "Ty::Float".into(),
        "message" => format!("Ty::Message({:?})", message()),
        other => panic!("unhandled protobuf field type {other}"),
    }
}

/// The message a field's Rust type names, resolved against `module`:
/// `Option<super::super::meta::v1::ObjectMeta>` → `…meta.v1.ObjectMeta`.
fn message_path(ty: &Type, module: &[String]) -> String {
    let Type::Path(path) = ty else {
        panic!("unexpected field type")
    };
    let last = path.path.segments.last().expect("segment");
    if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
        if let Some(syn::GenericArgument::Type(inner)) = args
            .args
            .iter()
            .rev()
            .find(|a| matches!(a, syn::GenericArgument::Type(_)))
        {
            return message_path(inner, module);
        }
    }
    let mut resolved = module.to_vec();
    for segment in &path.path.segments {
        match segment.ident.to_string().as_str() {
            "super" => {
                resolved.pop();
            }
            "crate" => resolved.clear(),
            other => resolved.push(other.to_owned()),
        }
    }
    resolved.join(".")
}
