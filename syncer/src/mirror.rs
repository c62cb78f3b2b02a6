//! Ingresses, PodDisruptionBudgets and NetworkPolicies: copied to the
//! host as they are (their names, the mapped namespace, kplex's labels),
//! behind the finalizer; drift on the host put back; the host's status
//! brought back. An Ingress's backends name Services of its own
//! namespace, which keep their names on the host, so they route to the
//! VC's Services there; its TLS Secrets go with it (`configs`). A budget's
//! selector is pinned to the VC's UID label, so it counts only the VC's
//! Pods. A NetworkPolicy's namespace selectors are confined to the VC's
//! host namespaces (the tenant namespaces' labels are copied onto them
//! under kplex's prefix, and the VC's UID label is required): a tenant's
//! policy can open its Pods to its own namespaces, never select another
//! VC's. (Its `ipBlock`s are kept: they name addresses, as on any
//! cluster; the other VCs' walls still keep their Pods closed.)

use std::sync::Arc;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy, NetworkPolicyPeer};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::Api;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use kplex_api::mapping::{self, OBJECT_UID_ANNOTATION};
use kplex_controllers::cache::{Cache, ObjectKey};
use kplex_controllers::client::{is_status, Vc};
use kplex_controllers::Error;

use crate::hosts::Host;
use crate::pods::{ensure_namespace, has_finalizer, hold, host_meta, post_params, release};
use crate::{Ctx, Outcome};

/// Which kind a [`crate::Task::Mirror`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MirrorKind {
    /// An Ingress.
    Ingress,
    /// A PodDisruptionBudget.
    Budget,
    /// A NetworkPolicy.
    NetworkPolicy,
}

/// A kind the syncer mirrors to the host.
pub trait Mirrored:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + PartialEq
    + Send
    + Sync
    + 'static
{
    /// The host copy of `object` of `vc` in tenant namespace `ns`.
    fn copy_of(vc: &Vc, ns: &str, object: &Self) -> Self;
    /// `copy` with what the syncer owns (spec, labels, annotations) taken
    /// from `desired`; the rest — what the host filled in — kept.
    fn repaired(copy: &Self, desired: &Self) -> Self {
        let (Ok(mut fixed), Ok(want)) = (serde_json::to_value(copy), serde_json::to_value(desired))
        else {
            return desired.clone();
        };
        fixed["spec"] = want["spec"].clone();
        fixed["metadata"]["labels"] = want["metadata"]["labels"].clone();
        fixed["metadata"]["annotations"] = want["metadata"]["annotations"].clone();
        serde_json::from_value(fixed).unwrap_or_else(|_| desired.clone())
    }
    /// `tenant` with `copy`'s status, if that differs from its own.
    fn with_status_of(tenant: &Self, copy: &Self) -> Option<Self>;

    /// Why `object` (at `key`) may not be copied beside the host's
    /// `copies` of every VC, if it may not.
    fn refusal(_copies: &Cache<Self>, _key: &ObjectKey, _object: &Self) -> Option<String> {
        None
    }
}

/// Ingress-controller annotations a tenant's Ingress may carry to the
/// host: the ones that shape its own routing, limits and TLS behaviour.
const INGRESS_ANNOTATIONS: &[&str] = &[
    "app-root",
    "affinity",
    "affinity-mode",
    "backend-protocol",
    "client-body-buffer-size",
    "cors-allow-credentials",
    "cors-allow-headers",
    "cors-allow-methods",
    "cors-allow-origin",
    "cors-expose-headers",
    "cors-max-age",
    "enable-cors",
    "force-ssl-redirect",
    "limit-connections",
    "limit-rpm",
    "limit-rps",
    "load-balance",
    "proxy-body-size",
    "proxy-buffer-size",
    "proxy-buffering",
    "proxy-connect-timeout",
    "proxy-read-timeout",
    "proxy-send-timeout",
    "rewrite-target",
    "session-cookie-expires",
    "session-cookie-max-age",
    "session-cookie-name",
    "session-cookie-path",
    "ssl-redirect",
    "upstream-hash-by",
    "use-regex",
    "allowlist-source-range",
    "whitelist-source-range",
    "denylist-source-range",
];

/// Whether an annotation of a tenant's Ingress may reach the host: any
/// that no ingress controller reads, and of the controllers' own
/// (`*.ingress.kubernetes.io/`, Traefik's, HAProxy's) only those in
/// [`INGRESS_ANNOTATIONS`].
fn ingress_annotation_allowed(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let controller = ["ingress.kubernetes.io/", "traefik.", "haproxy."]
        .iter()
        .any(|p| key.contains(p));
    if !controller {
        return true;
    }
    key.strip_prefix("nginx.ingress.kubernetes.io/")
        .is_some_and(|name| INGRESS_ANNOTATIONS.contains(&name))
}

/// The hosts an Ingress's rules claim (lower case); `None` for a rule or
/// default backend that serves every host.
fn claimed_hosts(ingress: &Ingress) -> Option<BTreeSet<String>> {
    let spec = ingress.spec.as_ref()?;
    if spec.default_backend.is_some() {
        return None;
    }
    let mut hosts = BTreeSet::new();
    for rule in spec.rules.iter().flatten() {
        match rule.host.as_deref().filter(|h| !h.is_empty()) {
            Some(host) => {
                hosts.insert(host.to_ascii_lowercase());
            }
            None => return None,
        }
    }
    Some(hosts)
}

impl Mirrored for Ingress {
    /// The host's ingress controllers are shared: a host name is one VC's
    /// (the first to claim it there), and a rule for every host would take
    /// other VCs' traffic.
    fn refusal(copies: &Cache<Self>, key: &ObjectKey, object: &Self) -> Option<String> {
        let Some(mine) = claimed_hosts(object) else {
            return Some(
                "a rule or default backend without a host would serve every host name of the shared ingress controller".into(),
            );
        };
        let mut taken = None;
        copies.any(|k, other| {
            if k.vc == key.vc {
                return false;
            }
            let theirs = claimed_hosts(other).unwrap_or_default();
            taken = mine.iter().find(|h| theirs.contains(*h)).cloned();
            taken.is_some()
        });
        taken.map(|host| {
            format!("the host name {host} is another virtual cluster's on this host cluster")
        })
    }

    fn copy_of(vc: &Vc, ns: &str, object: &Self) -> Self {
        let mut metadata = host_meta(vc, ns, &object.metadata);
        // The host's ingress controllers are shared and let through every
        // wall: of their annotations only those that shape this Ingress's
        // own traffic go (no snippets, no URLs or other namespaces'
        // Secrets to fetch, no host names beside the claimed ones).
        if let Some(annotations) = metadata.annotations.as_mut() {
            annotations.retain(|k, _| ingress_annotation_allowed(k));
        }
        Ingress {
            metadata,
            spec: object.spec.clone(),
            status: None,
        }
    }

    fn with_status_of(tenant: &Self, copy: &Self) -> Option<Self> {
        let status = copy.status.clone()?;
        (tenant.status.as_ref() != Some(&status)).then(|| Ingress {
            status: Some(status),
            ..tenant.clone()
        })
    }
}

impl Mirrored for PodDisruptionBudget {
    fn copy_of(vc: &Vc, ns: &str, object: &Self) -> Self {
        let mut spec = object.spec.clone().unwrap_or_default();
        let selector = spec.selector.get_or_insert_with(Default::default);
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(mapping::VC_UID_LABEL.to_owned(), vc.uid.to_string());
        PodDisruptionBudget {
            metadata: host_meta(vc, ns, &object.metadata),
            spec: Some(spec),
            status: None,
        }
    }

    fn with_status_of(tenant: &Self, copy: &Self) -> Option<Self> {
        let mut status = copy.status.clone()?;
        // The host's generation is not the tenant's.
        status.observed_generation = tenant.metadata.generation;
        (tenant.status.as_ref() != Some(&status)).then(|| PodDisruptionBudget {
            status: Some(status),
            ..tenant.clone()
        })
    }
}

impl Mirrored for NetworkPolicy {
    fn copy_of(vc: &Vc, ns: &str, object: &Self) -> Self {
        let mut spec = object.spec.clone().unwrap_or_default();
        for rule in spec.ingress.iter_mut().flatten() {
            for peer in rule.from.iter_mut().flatten() {
                confine(vc, peer);
            }
        }
        for rule in spec.egress.iter_mut().flatten() {
            for peer in rule.to.iter_mut().flatten() {
                confine(vc, peer);
            }
        }
        // A policy that lets DNS out (to the VC's kube-system, say) lets it
        // out to where the VC's names are answered: the shared `kplex dns`.
        let lets_dns_out = spec.egress.iter().flatten().any(|rule| {
            rule.ports
                .iter()
                .flatten()
                .any(crate::dns::wiring::is_dns_port)
        });
        if lets_dns_out {
            spec.egress
                .get_or_insert_with(Vec::new)
                .push(crate::dns::wiring::egress_rule());
        }
        NetworkPolicy {
            metadata: host_meta(vc, ns, &object.metadata),
            spec: Some(spec),
        }
    }

    fn with_status_of(_: &Self, _: &Self) -> Option<Self> {
        None
    }
}

/// A peer's namespace selector, confined to the VC's host namespaces: its
/// keys as the tenant namespaces' labels are copied there, and the VC's
/// UID label required. (A peer without one selects in the policy's own
/// namespace, which is the VC's already.) A key no host namespace can
/// carry makes the selector match nothing.
pub fn confine(vc: &Vc, peer: &mut NetworkPolicyPeer) {
    if let Some(selector) = peer.namespace_selector.as_mut() {
        confine_namespaces(vc, selector);
    }
}

/// A namespace selector of `vc`'s, made to select only the VC's host
/// namespaces: its keys mapped to the tenant namespace labels copied there,
/// the VC's UID label required; a key no host namespace can carry makes it
/// match nothing.
pub fn confine_namespaces(vc: &Vc, selector: &mut LabelSelector) {
    let mut unmatchable = false;
    let mut labels = BTreeMap::new();
    for (key, value) in selector.match_labels.take().unwrap_or_default() {
        match mapping::namespace_label_key(&key) {
            Some(copied) => {
                labels.insert(copied, value);
            }
            None => unmatchable = true,
        }
    }
    let mut expressions = Vec::new();
    for mut e in selector.match_expressions.take().unwrap_or_default() {
        match mapping::namespace_label_key(&e.key) {
            Some(copied) => {
                e.key = copied;
                expressions.push(e);
            }
            None => unmatchable = true,
        }
    }
    labels.insert(mapping::VC_UID_LABEL.to_owned(), vc.uid.to_string());
    if unmatchable {
        // The UID label both required and absent: no namespace.
        expressions.push(LabelSelectorRequirement {
            key: mapping::VC_UID_LABEL.to_owned(),
            operator: "DoesNotExist".into(),
            values: None,
        });
    }
    selector.match_labels = Some(labels);
    selector.match_expressions = (!expressions.is_empty()).then_some(expressions);
}

/// Syncs one mirrored object of `kind`.
pub async fn reconcile(ctx: &Arc<Ctx>, kind: MirrorKind, key: &ObjectKey) -> Outcome {
    let host = ctx.hosts.placement(&key.vc).ok();
    match kind {
        MirrorKind::Ingress => {
            let copies = host.as_ref().map(|h| h.ingresses.clone());
            sync(ctx, host.as_deref(), key, &ctx.ingresses, copies.as_deref()).await
        }
        MirrorKind::Budget => {
            let copies = host.as_ref().map(|h| h.budgets.clone());
            sync(ctx, host.as_deref(), key, &ctx.budgets, copies.as_deref()).await
        }
        // The wall of a host namespace is kplex's: a tenant policy of its
        // name is not copied (it would replace the wall), and the wall
        // itself is no copy to sync.
        MirrorKind::NetworkPolicy if key.name == crate::isolation::WALL => {
            if let Some(object) = ctx.policies.get(key) {
                let uid = object.metadata.uid.as_deref().unwrap_or_default();
                let why = format!(
                    "not copied to the host: the name {} is the isolation wall's there",
                    crate::isolation::WALL
                );
                if ctx.reported(uid, &why) {
                    ctx.events
                        .warning(key, "NetworkPolicy", uid, "NameReserved", &why);
                }
                if object.metadata.deletion_timestamp.is_some() {
                    let api = ctx
                        .clients
                        .vc::<NetworkPolicy>(&key.vc, key.namespace.as_deref());
                    return release(api, &ctx.policies, key, &*object).await;
                }
            }
            // The wall itself changed or went on the host: put it back.
            if let Some(host) = host.as_deref() {
                let host_ns = mapping::host_namespace(&key.vc.name, key.ns());
                let placed = host
                    .namespaces
                    .get(&ObjectKey::new(&key.vc, None, &host_ns))
                    .is_some_and(|n| n.metadata.deletion_timestamp.is_none());
                if placed && ctx.hosts.vc(&key.vc.uid).is_some() {
                    crate::isolation::guard(host, &key.vc, key.ns(), &ctx.hosts.policy(&key.vc))
                        .await?;
                }
            }
            Ok(None)
        }
        MirrorKind::NetworkPolicy => {
            let copies = host.as_ref().map(|h| h.policies.clone());
            sync(ctx, host.as_deref(), key, &ctx.policies, copies.as_deref()).await
        }
    }
}

async fn sync<K: Mirrored>(
    ctx: &Ctx,
    host: Option<&Host>,
    key: &ObjectKey,
    tenants: &Cache<K>,
    copies: Option<&Cache<K>>,
) -> Outcome {
    let tenant = tenants.get(key);
    let api = ctx.clients.vc::<K>(&key.vc, key.namespace.as_deref());
    let (Some(host), Some(copies)) = (host, copies) else {
        if let Some(object) = tenant.filter(|o| o.meta().deletion_timestamp.is_some()) {
            release(api, tenants, key, &*object).await?;
        }
        return Ok(None);
    };
    let host_api: Api<K> = Api::namespaced(
        host.client.clone(),
        &mapping::host_namespace(&key.vc.name, key.ns()),
    );
    let copy = copies.get(key);
    let Some(object) = tenant else {
        if let Some(copy) = copy {
            crate::pods::delete_owned(&host_api, copy.meta()).await?;
        }
        return Ok(None);
    };
    if object.meta().deletion_timestamp.is_some() {
        if let Some(copy) = copy {
            crate::pods::delete_owned(&host_api, copy.meta()).await?;
            return Ok(None);
        }
        return release(api, tenants, key, &*object).await;
    }
    if !has_finalizer(object.meta()) {
        hold(api, tenants, key, &*object).await?;
        return Ok(None);
    }
    if let Some(why) = K::refusal(copies, key, &object) {
        if let Some(copy) = copy {
            crate::pods::delete_owned(&host_api, copy.meta()).await?;
        }
        let uid = object.meta().uid.as_deref().unwrap_or_default();
        if ctx.reported(uid, &why) {
            ctx.events.warning(
                key,
                &K::kind(&()),
                uid,
                "NotCopied",
                &format!("not copied to the host: {why}"),
            );
        }
        return Ok(None);
    }
    let desired = K::copy_of(&key.vc, key.ns(), &object);
    let Some(copy) = copy else {
        ensure_namespace(ctx, host, &key.vc, key.ns()).await?;
        return match host_api.create(&post_params(), &desired).await {
            Ok(created) => {
                copies.upsert_host(created);
                Ok(None)
            }
            Err(e) if is_status(&e, 409) => {
                tracing::warn!(object = %key, host = %host.name, "a host object of that name was not placed by kplex (or is not seen yet); left alone");
                Ok(Some(std::time::Duration::from_secs(30)))
            }
            Err(e) => Err(Error::Api(e)),
        };
    };
    let from_tenant = copy
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(OBJECT_UID_ANNOTATION))
        == object.meta().uid.as_ref();
    if !from_tenant {
        crate::pods::delete_owned(&host_api, copy.meta()).await?;
        return Ok(None);
    }
    if drifted(&*copy, &desired) {
        let fixed = K::repaired(&copy, &desired);
        match host_api.replace(&key.name, &post_params(), &fixed).await {
            Ok(written) => {
                copies.upsert_host(written);
            }
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {
                return Ok(Some(std::time::Duration::ZERO))
            }
            Err(e) => return Err(Error::Api(e)),
        }
    }
    if let Some(updated) = K::with_status_of(&object, &copy) {
        tenants
            .write_status(&api, &key.vc, &key.name, &updated)
            .await?;
    }
    Ok(None)
}

/// Whether the host copy lost what the syncer put there: its spec, labels
/// and annotations must hold all of the desired ones (what the host added
/// — defaults, its own annotations — may stay).
fn drifted<K: Mirrored>(copy: &K, desired: &K) -> bool {
    let (have, want) = (
        serde_json::to_value(copy).unwrap_or_default(),
        serde_json::to_value(desired).unwrap_or_default(),
    );
    !(covers(&have["spec"], &want["spec"])
        && covers(&have["metadata"]["labels"], &want["metadata"]["labels"])
        && covers(
            &have["metadata"]["annotations"],
            &want["metadata"]["annotations"],
        ))
}

/// Whether `have` holds everything `want` says (objects key by key, lists
/// item by item, everything else equal).
fn covers(have: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (have, want) {
        (_, Value::Null) => true,
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| covers(h.get(k).unwrap_or(&Value::Null), v)),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(h, w)| covers(h, w))
        }
        (h, w) => h == w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn confined(peer: serde_json::Value) -> serde_json::Value {
        let vc = Vc {
            uid: "uid-a".into(),
            name: "a".into(),
        };
        let mut peer: NetworkPolicyPeer = serde_json::from_value(peer).unwrap();
        confine(&vc, &mut peer);
        serde_json::to_value(peer).unwrap()
    }

    #[test]
    fn a_policy_letting_dns_out_lets_it_reach_the_shared_server() {
        let vc = Vc {
            uid: "uid-a".into(),
            name: "a".into(),
        };
        let policy = |egress: serde_json::Value| -> NetworkPolicy {
            serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u"},
                "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": egress}}))
            .unwrap()
        };
        let dns_to_kube_system = json!([{"to": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "kube-system"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]);
        let copy = NetworkPolicy::copy_of(&vc, "default", &policy(dns_to_kube_system));
        let egress = copy.spec.unwrap().egress.unwrap();
        assert_eq!(egress.len(), 2);
        assert_eq!(egress[1], crate::dns::wiring::egress_rule());
        // A range holding 53 lets DNS out too; a rule for 443 does not.
        let range = json!([{"ports": [{"protocol": "UDP", "port": 1, "endPort": 1024}]}]);
        let copy = NetworkPolicy::copy_of(&vc, "default", &policy(range));
        assert_eq!(copy.spec.unwrap().egress.unwrap().len(), 2);
        let https = json!([{"ports": [{"protocol": "TCP", "port": 443}]}]);
        let copy = NetworkPolicy::copy_of(&vc, "default", &policy(https));
        assert_eq!(copy.spec.unwrap().egress.unwrap().len(), 1);
        // Deny-all egress stays deny-all, DNS included.
        let copy = NetworkPolicy::copy_of(&vc, "default", &policy(json!([])));
        assert_eq!(copy.spec.unwrap().egress.unwrap().len(), 0);
    }

    #[test]
    fn a_namespace_selector_selects_the_vcs_namespaces_only() {
        assert_eq!(
            confined(json!({"namespaceSelector": {}})),
            json!({"namespaceSelector": {"matchLabels": {"tenancy.kplex.dev/vc-uid": "uid-a"}}})
        );
        let peer = confined(json!({"namespaceSelector": {
            "matchLabels": {"team": "web", "tenancy.kplex.dev/vc-uid": "uid-b"},
            "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]}}));
        assert_eq!(
            peer["namespaceSelector"]["matchLabels"],
            json!({"ns.tenancy.kplex.dev/team": "web",
                   "tenancy.kplex.dev.ns.tenancy.kplex.dev/vc-uid": "uid-b",
                   "tenancy.kplex.dev/vc-uid": "uid-a"}),
            "another VC's UID named by a tenant is a tenant label, not kplex's"
        );
        assert_eq!(
            peer["namespaceSelector"]["matchExpressions"][0]["key"],
            "ns.tenancy.kplex.dev/env"
        );
        // A pod selector alone stays in the policy's own namespace.
        assert_eq!(
            confined(json!({"podSelector": {"matchLabels": {"app": "x"}}})),
            json!({"podSelector": {"matchLabels": {"app": "x"}}})
        );
    }

    #[test]
    fn only_routing_annotations_of_an_ingress_reach_the_shared_controller() {
        for kept in [
            "nginx.ingress.kubernetes.io/rewrite-target",
            "nginx.ingress.kubernetes.io/ssl-redirect",
            "cert-manager.io/cluster-issuer",
            "team",
        ] {
            assert!(ingress_annotation_allowed(kept), "{kept}");
        }
        for dropped in [
            "nginx.ingress.kubernetes.io/configuration-snippet",
            "nginx.ingress.kubernetes.io/server-snippet",
            "nginx.ingress.kubernetes.io/auth-url",
            "nginx.ingress.kubernetes.io/auth-response-headers",
            "nginx.ingress.kubernetes.io/mirror-target",
            "nginx.ingress.kubernetes.io/server-alias",
            "nginx.ingress.kubernetes.io/auth-tls-secret",
            "nginx.ingress.kubernetes.io/proxy-ssl-secret",
            "NGINX.ingress.kubernetes.io/Auth-URL",
            "ingress.kubernetes.io/auth-url",
            "traefik.ingress.kubernetes.io/router.middlewares",
            "haproxy.org/auth-secret",
        ] {
            assert!(!ingress_annotation_allowed(dropped), "{dropped}");
        }
    }

    #[test]
    fn a_key_no_host_namespace_can_carry_matches_nothing() {
        let long = format!("{}/x", "a".repeat(240));
        let peer = confined(json!({"namespaceSelector": {"matchLabels": {long: "y"}}}));
        let selector = &peer["namespaceSelector"];
        assert_eq!(selector["matchLabels"]["tenancy.kplex.dev/vc-uid"], "uid-a");
        assert_eq!(
            selector["matchExpressions"],
            json!([{"key": "tenancy.kplex.dev/vc-uid", "operator": "DoesNotExist"}]),
            "required and absent at once"
        );
    }
}
