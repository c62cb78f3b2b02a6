//! Key construction. [`TenantKeyspace`] and [`SystemKeyspace`] are the only
//! constructors of [`Key`] and [`KeyPrefix`]: every segment is validated
//! before it is joined, so no input can produce a key outside the keyspace
//! that built it.
//!
//! Layout:
//! ```text
//! /kplex/clusters/<vc-uid>/<group|core>/<resource>/[<namespace>/]<name>
//! /kplex/system/<segment>/…
//! /kplex/system/cluster/<group|core>/<resource>/[<namespace>/]<name>   (the system cluster)
//! ```

use std::fmt;

use crate::error::{StoreError, StoreResult};

/// The longest segment accepted (a DNS-1123 subdomain's limit).
pub const MAX_SEGMENT_LEN: usize = 253;

const ROOT: &str = "/kplex/";
const CLUSTERS: &str = "/kplex/clusters/";
const SYSTEM: &str = "/kplex/system/";
/// The system cluster's segment under `/kplex/system/`.
const SYSTEM_CLUSTER: &str = "cluster";
/// The group segment used for the core ("") API group.
const CORE_GROUP: &str = "core";

/// A validated storage key. Only this module can make one.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Rebuilds a key read back from a backend. Backends only hold keys that
    /// were validated on the way in, and everything they return lies under a
    /// prefix we asked for; keys outside `/kplex/` are refused all the same.
    pub(crate) fn from_backend(raw: &[u8]) -> StoreResult<Key> {
        let s = std::str::from_utf8(raw)
            .map_err(|_| StoreError::Internal("backend returned a non-UTF-8 key".into()))?;
        if !s.starts_with(ROOT) {
            return Err(StoreError::Internal(format!(
                "backend returned a key outside {ROOT}: {}",
                escape(s)
            )));
        }
        Ok(Key(s.to_owned()))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", self.0)
    }
}

/// A validated key prefix; always ends with `/`, so `…/ns1/` never matches
/// keys of `…/ns10/`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// Everything kplex stores (`/kplex/`): what the apiserver's watch cache watches.
    pub fn root() -> KeyPrefix {
        KeyPrefix(ROOT.to_owned())
    }

    /// The prefix as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `key` lies under this prefix.
    pub fn contains(&self, key: &Key) -> bool {
        key.0.starts_with(&self.0)
    }

    /// The exclusive upper bound of the prefix's key range: the prefix with its
    /// trailing `/` replaced by the next byte, `0`.
    pub(crate) fn range_end(&self) -> String {
        let mut end = self.0.clone();
        end.pop();
        end.push('0');
        end
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPrefix({:?})", self.0)
    }
}

/// The keys of one virtual cluster. Holding a `TenantKeyspace` is the only way
/// to name that VC's keys, and it cannot name any other.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct TenantKeyspace {
    prefix: KeyPrefix,
    /// Where the VC's UID (or `cluster` for the system cluster) sits in
    /// `prefix`.
    uid_start: usize,
    uid_len: usize,
}

/// The parts of a tenant object key, as parsed back by [`TenantKeyspace::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeyParts<'a> {
    /// The VC's UID.
    pub vc_uid: &'a str,
    /// The API group; `""` for the core group.
    pub group: &'a str,
    /// The resource (plural), e.g. `pods`.
    pub resource: &'a str,
    /// The namespace, for namespaced resources.
    pub namespace: Option<&'a str>,
    /// The object name.
    pub name: &'a str,
}

impl TenantKeyspace {
    /// The keyspace of the VC with this UID.
    pub fn for_vc(vc_uid: &str) -> StoreResult<TenantKeyspace> {
        validate_segment(vc_uid)?;
        Ok(TenantKeyspace {
            prefix: KeyPrefix(joined(&[CLUSTERS, vc_uid, "/"])),
            uid_start: CLUSTERS.len(),
            uid_len: vc_uid.len(),
        })
    }

    /// The keyspace of the system cluster (`/kplex/system/cluster/`): the
    /// objects kplex's own components share, laid out as a VC's. Its keys
    /// are system keys, never a tenant's: [`TenantKeyspace::parse`] does not
    /// read them and no cross-VC reader sees them.
    pub fn system_cluster() -> TenantKeyspace {
        TenantKeyspace {
            prefix: KeyPrefix(format!("{SYSTEM}{SYSTEM_CLUSTER}/")),
            uid_start: SYSTEM.len(),
            uid_len: SYSTEM_CLUSTER.len(),
        }
    }

    /// The prefix of every VC's keys (`/kplex/clusters/`), for wildcard
    /// readers such as the watch cache and the syncer's endpoint.
    pub fn all_clusters() -> KeyPrefix {
        KeyPrefix(CLUSTERS.to_owned())
    }

    /// The VC's UID.
    pub fn vc_uid(&self) -> &str {
        &self.prefix.0[self.uid_start..self.uid_start + self.uid_len]
    }

    /// Every key of this VC: what deleting the VC removes.
    pub fn prefix(&self) -> &KeyPrefix {
        &self.prefix
    }

    /// All objects of one resource, across namespaces. `group` is `""` for core.
    pub fn resource_prefix(&self, group: &str, resource: &str) -> StoreResult<KeyPrefix> {
        Ok(KeyPrefix(self.path(group, resource, None, None)?))
    }

    /// All objects of one namespaced resource in one namespace.
    pub fn namespace_prefix(
        &self,
        group: &str,
        resource: &str,
        namespace: &str,
    ) -> StoreResult<KeyPrefix> {
        Ok(KeyPrefix(self.path(
            group,
            resource,
            Some(namespace),
            None,
        )?))
    }

    /// The key of one object. `namespace` is `None` for cluster-scoped resources.
    pub fn object_key(
        &self,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> StoreResult<Key> {
        Ok(Key(self.path(group, resource, namespace, Some(name))?))
    }

    /// `<prefix><group>/<resource>/[<namespace>/][<name>]`, each segment
    /// validated in that order, in one allocation (keys are built on every
    /// request).
    fn path(
        &self,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> StoreResult<String> {
        let group = group_segment(group)?;
        validate_segment(resource)?;
        namespace.map(validate_segment).transpose()?;
        name.map(validate_segment).transpose()?;
        let (namespace, slash) = namespace.map_or(("", ""), |ns| (ns, "/"));
        Ok(joined(&[
            &self.prefix.0,
            group,
            "/",
            resource,
            "/",
            namespace,
            slash,
            name.unwrap_or(""),
        ]))
    }

    /// Splits a tenant object key (of any VC) into its parts; `None` for keys
    /// that are not tenant object keys.
    pub fn parse(key: &Key) -> Option<TenantKeyParts<'_>> {
        let rest = key.0.strip_prefix(CLUSTERS)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let (vc_uid, group, resource, namespace, name) = match parts.as_slice() {
            [uid, group, resource, name] => (*uid, *group, *resource, None, *name),
            [uid, group, resource, ns, name] => (*uid, *group, *resource, Some(*ns), *name),
            _ => return None,
        };
        let group = if group == CORE_GROUP { "" } else { group };
        Some(TenantKeyParts {
            vc_uid,
            group,
            resource,
            namespace,
            name,
        })
    }
}

/// One resource in every VC at once: the keys
/// `/kplex/clusters/<any uid>/<group>/<resource>/…`, for the cross-VC
/// readers of kplex's system components. It names no key itself: it only
/// tells whether a tenant key is one of its.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct AcrossClusters {
    /// `<group|core>/<resource>/`: what follows a VC's prefix.
    suffix: String,
}

impl AcrossClusters {
    /// One resource (`group` is `""` for core) in every VC.
    pub fn resource(group: &str, resource: &str) -> StoreResult<AcrossClusters> {
        let group = group_segment(group)?;
        validate_segment(resource)?;
        Ok(AcrossClusters {
            suffix: format!("{group}/{resource}/"),
        })
    }

    /// What identifies this resource among all: the same string for every
    /// key it matches (see [`AcrossClusters::index_of`]).
    pub fn index(&self) -> &str {
        &self.suffix
    }

    /// The [`AcrossClusters::index`] of the resource a tenant key belongs
    /// to; `None` for keys that are not tenant object keys.
    pub fn index_of(key: &Key) -> Option<&str> {
        let rest = key.0.strip_prefix(CLUSTERS)?;
        let (_uid, rest) = rest.split_once('/')?;
        let (_group, after_group) = rest.split_once('/')?;
        let (_resource, tail) = after_group.split_once('/')?;
        if tail.is_empty() {
            return None;
        }
        Some(&rest[..rest.len() - tail.len()])
    }

    /// Whether `key` is an object of this resource in some VC.
    pub fn contains(&self, key: &Key) -> bool {
        Self::index_of(key) == Some(self.suffix.as_str())
    }

    /// The same resource in one VC.
    pub fn in_vc(&self, keyspace: &TenantKeyspace) -> KeyPrefix {
        KeyPrefix(format!("{}{}", keyspace.prefix.0, self.suffix))
    }
}

/// kplex's own records (`/kplex/system/…`): VC records, host clusters, keys.
#[derive(Debug, Clone, Copy)]
pub struct SystemKeyspace;

impl SystemKeyspace {
    /// Every system key.
    pub fn root() -> KeyPrefix {
        KeyPrefix(SYSTEM.to_owned())
    }

    /// The prefix `/kplex/system/<segments…>/`.
    pub fn prefix(segments: &[&str]) -> StoreResult<KeyPrefix> {
        let mut s = SYSTEM.to_owned();
        for segment in segments {
            validate_segment(segment)?;
            s.push_str(segment);
            s.push('/');
        }
        Ok(KeyPrefix(s))
    }

    /// The key `/kplex/system/<segments…>`; at least one segment.
    pub fn key(segments: &[&str]) -> StoreResult<Key> {
        let Some((last, init)) = segments.split_last() else {
            return Err(invalid("", "a system key needs at least one segment"));
        };
        let prefix = Self::prefix(init)?;
        validate_segment(last)?;
        Ok(Key(format!("{}{last}", prefix.0)))
    }
}

/// `parts` one after the other, in one allocation of the exact size: keys
/// are built on every request.
fn joined(parts: &[&str]) -> String {
    let mut joined = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        joined.push_str(part);
    }
    joined
}

fn group_segment(group: &str) -> StoreResult<&str> {
    if group.is_empty() {
        return Ok(CORE_GROUP);
    }
    if group == CORE_GROUP {
        // "core" is how the empty group is spelled in keys; a group literally
        // named "core" would alias it.
        return Err(invalid(group, "the group name \"core\" is reserved"));
    }
    validate_segment(group)?;
    Ok(group)
}

/// Checks one key segment. Everything a segment may not be is listed here.
fn validate_segment(segment: &str) -> StoreResult<()> {
    let reason = if segment.is_empty() {
        "must not be empty"
    } else if segment.len() > MAX_SEGMENT_LEN {
        "is longer than 253 bytes"
    } else if segment.contains('/') {
        "must not contain '/'"
    } else if segment == "." || segment.contains("..") {
        "must not be '.' or contain '..'"
    } else if segment.contains('%') {
        "must not contain '%'"
    } else if segment.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(invalid(segment, reason))
}

fn invalid(segment: &str, reason: &'static str) -> StoreError {
    StoreError::InvalidKey {
        segment: escape(segment),
        reason,
    }
}

/// Escapes and truncates untrusted text for error messages and logs.
fn escape(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_default).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn builds_the_documented_layout() {
        let ks = TenantKeyspace::for_vc("1b4e28ba").unwrap();
        assert_eq!(ks.prefix().as_str(), "/kplex/clusters/1b4e28ba/");
        assert_eq!(ks.vc_uid(), "1b4e28ba");
        assert_eq!(
            ks.object_key("", "pods", Some("default"), "web")
                .unwrap()
                .as_str(),
            "/kplex/clusters/1b4e28ba/core/pods/default/web"
        );
        assert_eq!(
            ks.object_key("apps", "deployments", Some("ns"), "d")
                .unwrap()
                .as_str(),
            "/kplex/clusters/1b4e28ba/apps/deployments/ns/d"
        );
        assert_eq!(
            ks.object_key("", "namespaces", None, "default")
                .unwrap()
                .as_str(),
            "/kplex/clusters/1b4e28ba/core/namespaces/default"
        );
        assert_eq!(
            ks.namespace_prefix("", "pods", "ns1").unwrap().as_str(),
            "/kplex/clusters/1b4e28ba/core/pods/ns1/"
        );
        assert_eq!(
            SystemKeyspace::key(&["virtualclusters", "team-a"])
                .unwrap()
                .as_str(),
            "/kplex/system/virtualclusters/team-a"
        );
    }

    #[test]
    fn rejects_each_kind_of_bad_segment() {
        let ks = TenantKeyspace::for_vc("vc").unwrap();
        let long = "a".repeat(254);
        let cases: &[(&str, &str)] = &[
            ("", "must not be empty"),
            ("a/b", "must not contain '/'"),
            ("..", "must not be '.' or contain '..'"),
            (".", "must not be '.' or contain '..'"),
            ("a..b", "must not be '.' or contain '..'"),
            ("a%2fb", "must not contain '%'"),
            ("a\0b", "must not contain control characters"),
            ("a\nb", "must not contain control characters"),
            ("a\u{7f}", "must not contain control characters"),
            (&long, "is longer than 253 bytes"),
        ];
        for (segment, want) in cases {
            for result in [
                TenantKeyspace::for_vc(segment).map(|_| ()),
                ks.object_key("", "pods", Some(segment), "n").map(|_| ()),
                ks.object_key("", "pods", Some("ns"), segment).map(|_| ()),
                // The empty group is the core group, so only non-empty ones can be invalid.
                if segment.is_empty() {
                    Err(invalid(segment, "must not be empty"))
                } else {
                    ks.object_key(segment, "pods", None, "n").map(|_| ())
                },
                ks.resource_prefix("", segment).map(|_| ()),
                SystemKeyspace::key(&["a", segment]).map(|_| ()),
            ] {
                match result {
                    Err(StoreError::InvalidKey { reason, .. }) => assert_eq!(reason, *want),
                    other => panic!("segment {segment:?}: expected InvalidKey, got {other:?}"),
                }
            }
        }
        assert!(ks.object_key("core", "pods", None, "n").is_err());
        assert!(SystemKeyspace::key(&[]).is_err());
    }

    #[test]
    fn prefixes_of_similar_names_do_not_overlap() {
        let a = TenantKeyspace::for_vc("a").unwrap();
        let ab = TenantKeyspace::for_vc("ab").unwrap();
        let key_ab = ab.object_key("", "pods", Some("ns"), "x").unwrap();
        assert!(!a.prefix().contains(&key_ab));
        let ns1 = a.namespace_prefix("", "pods", "ns1").unwrap();
        let in_ns10 = a.object_key("", "pods", Some("ns10"), "x").unwrap();
        assert!(!ns1.contains(&in_ns10));
        assert_eq!(a.prefix().range_end(), "/kplex/clusters/a0");
    }

    fn segment_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9.-]{1,20}",
            any::<String>(),
            prop::sample::select(vec![
                "..".to_owned(),
                "../..".to_owned(),
                "/".to_owned(),
                "a/../b".to_owned(),
                "%2e%2e".to_owned(),
                "core".to_owned(),
                String::new(),
                "x\u{0}".to_owned(),
            ]),
        ]
    }

    #[test]
    fn the_system_cluster_is_system_keys_no_cross_vc_reader_sees() {
        let ks = TenantKeyspace::system_cluster();
        let key = ks
            .object_key(
                "coordination.k8s.io",
                "leases",
                Some("kube-system"),
                "kplex-controllers",
            )
            .unwrap();
        assert_eq!(
            key.as_str(),
            "/kplex/system/cluster/coordination.k8s.io/leases/kube-system/kplex-controllers"
        );
        assert!(SystemKeyspace::root().contains(&key));
        assert!(!TenantKeyspace::all_clusters().contains(&key));
        assert!(TenantKeyspace::parse(&key).is_none());
        assert_eq!(AcrossClusters::index_of(&key), None);
        let leases = AcrossClusters::resource("coordination.k8s.io", "leases").unwrap();
        assert!(!leases.contains(&key));
        // Prefixes that are not objects match nothing.
        let ns = TenantKeyspace::for_vc("u1").unwrap();
        let prefix = ns.resource_prefix("", "pods").unwrap();
        assert_eq!(
            AcrossClusters::index_of(&Key(prefix.as_str().to_owned())),
            None
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever the segments, a tenant keyspace either refuses them or
        /// yields a key inside its own prefix that parses back to exactly
        /// the segments given, and that no other VC's prefix contains.
        #[test]
        fn tenant_keys_stay_inside_their_prefix(
            uid in "[a-z0-9-]{1,12}",
            other_uid in "[a-z0-9-]{1,12}",
            group in segment_strategy(),
            resource in segment_strategy(),
            namespace in prop::option::of(segment_strategy()),
            name in segment_strategy(),
        ) {
            let ks = TenantKeyspace::for_vc(&uid).unwrap();
            if let Ok(key) = ks.object_key(&group, &resource, namespace.as_deref(), &name) {
                prop_assert!(ks.prefix().contains(&key));
                let parts = TenantKeyspace::parse(&key).unwrap();
                prop_assert_eq!(parts.vc_uid, uid.as_str());
                prop_assert_eq!(parts.group, group.as_str());
                prop_assert_eq!(parts.resource, resource.as_str());
                prop_assert_eq!(parts.namespace, namespace.as_deref());
                prop_assert_eq!(parts.name, name.as_str());
                if other_uid != uid {
                    let other = TenantKeyspace::for_vc(&other_uid).unwrap();
                    prop_assert!(!other.prefix().contains(&key));
                }
                prop_assert!(!SystemKeyspace::root().contains(&key));
                // One resource across VCs matches it, and no other.
                let across = AcrossClusters::resource(&group, &resource).unwrap();
                prop_assert!(across.contains(&key));
                prop_assert_eq!(across.in_vc(&ks), ks.resource_prefix(&group, &resource).unwrap());
                let longer = format!("{resource}x");
                if let Ok(other) = AcrossClusters::resource(&group, &longer) {
                    prop_assert!(!other.contains(&key));
                }
                if group != "apps" {
                    let elsewhere = AcrossClusters::resource("apps", &resource).unwrap();
                    prop_assert!(!elsewhere.contains(&key));
                }
            }
        }

        #[test]
        fn system_keys_stay_under_system(segments in prop::collection::vec(segment_strategy(), 1..4)) {
            let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
            if let Ok(key) = SystemKeyspace::key(&refs) {
                prop_assert!(SystemKeyspace::root().contains(&key));
                prop_assert!(!TenantKeyspace::all_clusters().contains(&key));
                prop_assert_eq!(key.as_str().matches('/').count(), 3 + segments.len() - 1);
            }
        }
    }
}
