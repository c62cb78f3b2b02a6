//! Where a tenant's objects live on a host cluster.
//!
//! A VC's namespace `ns` becomes the host namespace `kplex-<vc>-<ns>`;
//! object names stay as they are (a tenant's `web-7d4f…` Pod is `web-7d4f…`
//! on the host, within the 63-character limits the tenant already met).
//! A host namespace name longer than 63 characters is cut and given a
//! hash of the whole pair, so it stays unique, and never ends in `-`.
//!
//! Every object the syncer puts on a host carries the labels below; the
//! syncer changes or deletes only host objects labelled for the VC (by UID)
//! it is working for. Two pairs can map to one name (VC `a`, namespace
//! `b-c` and VC `a-b`, namespace `c`): the labels of the host namespace
//! say whose it is, and the other pair is refused there, never merged.

use std::collections::BTreeMap;

/// How every label and annotation key kplex sets on host objects begins.
pub const KEY_PREFIX: &str = "tenancy.kplex.dev/";
/// On every host object: the name of the VC it belongs to.
pub const VC_LABEL: &str = "tenancy.kplex.dev/vc";
/// On every host object: the UID of the VC it belongs to.
pub const VC_UID_LABEL: &str = "tenancy.kplex.dev/vc-uid";
/// On every namespaced host object: its namespace in the VC.
pub const NAMESPACE_LABEL: &str = "tenancy.kplex.dev/namespace";
/// On every host object: the UID of the tenant object it copies.
pub const OBJECT_UID_ANNOTATION: &str = "tenancy.kplex.dev/object-uid";
/// On a virtual Node the syncer keeps in a VC: the host cluster whose
/// Node it mirrors (the syncer changes and deletes only Nodes with it).
pub const HOST_CLUSTER_LABEL: &str = "tenancy.kplex.dev/host-cluster";
/// On the host Secret holding a Pod's VC ServiceAccount token: the tenant
/// Pod's UID (the Secret is the syncer's, not a copy of a tenant Secret).
pub const TOKEN_FOR_ANNOTATION: &str = "tenancy.kplex.dev/token-for";
/// On that Secret: when its token expires (seconds since the epoch).
pub const TOKEN_EXPIRES_ANNOTATION: &str = "tenancy.kplex.dev/token-expires";
/// On a host Pod wired to kplex's shared DNS: the cluster domain its VC
/// had when the Pod was placed (the one its resolver searches), so
/// `kplex dns` answers the Pod in that domain.
pub const DNS_DOMAIN_ANNOTATION: &str = "tenancy.kplex.dev/dns-domain";
/// On a host ExternalName Service: the target as the tenant wrote it
/// (the host's `externalName` names the host's namespaces), so `kplex
/// dns` answers the tenant's name.
pub const EXTERNAL_NAME_ANNOTATION: &str = "tenancy.kplex.dev/external-name";
/// The cluster domain of a VC that sets none.
pub const DEFAULT_DNS_DOMAIN: &str = "cluster.local";
/// How every host namespace of a VC begins.
pub const HOST_NAMESPACE_PREFIX: &str = "kplex-";

/// On a host copy: the keys of the tenant labels the syncer copied (comma
/// separated), so a label the tenant later removes is removed there too,
/// and labels the host's own controllers add are told apart.
pub const SYNCED_LABELS_ANNOTATION: &str = "tenancy.kplex.dev/synced-labels";

/// Longest name of a namespace (a DNS-1123 label).
const MAX: usize = 63;
/// Hex digits of the hash suffix.
const HASH_DIGITS: usize = 10;

/// The host namespace of namespace `ns` of VC `vc`.
pub fn host_namespace(vc: &str, ns: &str) -> String {
    let plain = format!("{HOST_NAMESPACE_PREFIX}{vc}-{ns}");
    if plain.len() <= MAX {
        return plain;
    }
    let hash = fnv1a(format!("{vc}/{ns}").as_bytes());
    let digits = format!("{hash:016x}");
    let keep = MAX - 1 - HASH_DIGITS;
    // (The name is ASCII: VC and namespace names are DNS labels.)
    let head = plain[..keep.min(plain.len())].trim_end_matches('-');
    format!("{head}-{}", &digits[..HASH_DIGITS])
}

/// The label prefix under which a tenant namespace's labels are copied
/// onto its host namespace, so the VC's NetworkPolicies can select them
/// there (and nothing else: a host namespace's own labels are kplex's).
pub const NAMESPACE_LABELS_PREFIX: &str = "ns.tenancy.kplex.dev";

/// The host namespace's key for tenant namespace label `key`: `name` →
/// `ns.tenancy.kplex.dev/name`, `prefix/name` →
/// `prefix.ns.tenancy.kplex.dev/name` (distinct keys stay distinct, and
/// none is one of kplex's own); `None` when the prefix would grow past
/// what a label prefix may be (253 characters).
pub fn namespace_label_key(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (format!("{prefix}.{NAMESPACE_LABELS_PREFIX}"), name),
        None => (NAMESPACE_LABELS_PREFIX.to_owned(), key),
    };
    (prefix.len() <= 253).then(|| format!("{prefix}/{name}"))
}

/// Whether a host namespace's label key is a copied tenant label.
pub fn is_namespace_label_copy(key: &str) -> bool {
    key.split_once('/').is_some_and(|(prefix, _)| {
        prefix == NAMESPACE_LABELS_PREFIX
            || prefix.ends_with(&format!(".{NAMESPACE_LABELS_PREFIX}"))
    })
}

/// The labels every host object of VC (`vc`, `vc_uid`) carries; with
/// `ns`, also its tenant namespace.
pub fn host_labels(vc: &str, vc_uid: &str, ns: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert(VC_LABEL.to_owned(), vc.to_owned());
    labels.insert(VC_UID_LABEL.to_owned(), vc_uid.to_owned());
    if let Some(ns) = ns {
        labels.insert(NAMESPACE_LABEL.to_owned(), ns.to_owned());
    }
    labels
}

/// Whether a host object's labels say it belongs to the VC with `vc_uid`.
pub fn owned_by(labels: Option<&BTreeMap<String, String>>, vc_uid: &str) -> bool {
    labels.is_some_and(|l| l.get(VC_UID_LABEL).map(String::as_str) == Some(vc_uid))
}

/// The label selector that finds every host object of the VC `vc_uid`.
pub fn vc_selector(vc_uid: &str) -> String {
    format!("{VC_UID_LABEL}={vc_uid}")
}

/// The label selector that finds every host object kplex placed.
pub fn any_vc_selector() -> String {
    VC_UID_LABEL.to_owned()
}

/// 64-bit FNV-1a: a stable hash (the same in every process and release).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= MAX
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn short_pairs_map_as_they_read() {
        assert_eq!(host_namespace("team-a", "shop"), "kplex-team-a-shop");
        assert_eq!(host_namespace("x", "default"), "kplex-x-default");
        // 63 exactly is kept.
        let ns = "n".repeat(63 - "kplex-v-".len());
        assert_eq!(host_namespace("v", &ns), format!("kplex-v-{ns}"));
    }

    #[test]
    fn long_pairs_are_cut_with_a_hash() {
        let ns = "n".repeat(63 - "kplex-v-".len() + 1);
        let mapped = host_namespace("v", &ns);
        assert_eq!(mapped.len(), 63);
        assert!(mapped.starts_with("kplex-v-nnn"));
        assert_ne!(mapped, host_namespace("v", &format!("{ns}x")));
    }

    #[test]
    fn a_cut_never_leaves_a_dash_before_the_hash() {
        // The cut falls right after a '-' of the namespace.
        let keep = MAX - 1 - HASH_DIGITS;
        let vc = "v";
        let pad = keep - "kplex-v-".len() - 1;
        let ns = format!("{}-{}", "a".repeat(pad), "b".repeat(30));
        let mapped = host_namespace(vc, &ns);
        assert!(is_dns_label(&mapped), "{mapped}");
        assert!(!mapped.contains("--"), "{mapped}");
    }

    #[test]
    fn ownership_is_by_uid() {
        let labels = host_labels("a", "uid-1", Some("shop"));
        assert!(owned_by(Some(&labels), "uid-1"));
        assert!(!owned_by(Some(&labels), "uid-2"));
        assert!(!owned_by(None, "uid-1"));
        assert_eq!(labels[NAMESPACE_LABEL], "shop");
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
    }

    #[test]
    fn namespace_labels_keep_their_names_under_kplexs_prefix() {
        assert_eq!(
            namespace_label_key("team").unwrap(),
            "ns.tenancy.kplex.dev/team"
        );
        assert_eq!(
            namespace_label_key("kubernetes.io/metadata.name").unwrap(),
            "kubernetes.io.ns.tenancy.kplex.dev/metadata.name"
        );
        assert_eq!(
            namespace_label_key("tenancy.kplex.dev/vc-uid").unwrap(),
            "tenancy.kplex.dev.ns.tenancy.kplex.dev/vc-uid",
            "a tenant's key never becomes kplex's"
        );
        assert!(namespace_label_key(&format!("{}/x", "a".repeat(240))).is_none());
        assert!(!is_namespace_label_copy(VC_UID_LABEL));
    }

    proptest! {
        #[test]
        fn every_pair_maps_to_a_namespace_name(vc in label(), ns in label()) {
            let mapped = host_namespace(&vc, &ns);
            prop_assert!(is_dns_label(&mapped), "{} from {}/{}", mapped, vc, ns);
            prop_assert!(mapped.starts_with(HOST_NAMESPACE_PREFIX));
            prop_assert_eq!(&mapped, &host_namespace(&vc, &ns));
        }

        #[test]
        fn tenant_namespace_labels_map_apart_from_kplexs_own(
            a in "([a-z]{1,8}(\\.[a-z]{1,8}){0,2}/)?[a-z][a-z0-9.-]{0,20}",
            b in "([a-z]{1,8}(\\.[a-z]{1,8}){0,2}/)?[a-z][a-z0-9.-]{0,20}",
        ) {
            let (ma, mb) = (namespace_label_key(&a).unwrap(), namespace_label_key(&b).unwrap());
            prop_assert!(is_namespace_label_copy(&ma));
            prop_assert!(!ma.starts_with(KEY_PREFIX), "{} is one of kplex's keys", ma);
            if a != b {
                prop_assert_ne!(ma, mb, "{} and {} map to one key", a, b);
            }
        }

        #[test]
        fn distinct_long_pairs_stay_distinct(
            vc in label(), ns in label(), other in label()
        ) {
            prop_assume!(ns != other);
            let a = host_namespace(&vc, &ns);
            let b = host_namespace(&vc, &other);
            // Within one VC, two namespaces never share a host namespace.
            prop_assert_ne!(a, b);
        }
    }
}
