//! In-pod API access: a Pod on a host reaches its own VC, not the host.
//!
//! Its host copy gets no host token (`automountServiceAccountToken:
//! false`); instead the syncer asks the VC for a token of the Pod's
//! ServiceAccount bound to the Pod (TokenRequest), keeps it in a host
//! Secret `kplex-token-<pod uid>` with kplex's CA and the Pod's namespace,
//! renews it before it expires, and mounts it where client libraries look
//! (`/var/run/secrets/kubernetes.io/serviceaccount`). The containers get
//! `KUBERNETES_SERVICE_HOST/PORT` (kplex's address) and, as the kubelet
//! would, the environment of the VC's Services in the namespace; the names
//! a cluster gives its API server resolve to kplex (`hostAliases`, when
//! kplex's address is an IP).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EnvVar, HostAlias, Pod, PodSpec, Secret, SecretVolumeSource, Service, Volume, VolumeMount,
};
use k8s_openapi::ByteString;
use kube::api::Api;
use serde_json::json;

use kplex_api::mapping::{self, TOKEN_EXPIRES_ANNOTATION, TOKEN_FOR_ANNOTATION};
use kplex_controllers::cache::ObjectKey;
use kplex_controllers::client::{is_status, Vc};
use kplex_controllers::Error;

use crate::hosts::Host;
use crate::pods::post_params;
use crate::Ctx;

/// Where client libraries look for a Pod's credentials.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The volume holding them on the host copy.
const VOLUME: &str = "kplex-api-access";
/// Lifetime of a Pod's token.
const LIFETIME: u64 = 3600;
/// A token is renewed once less than this is left (a fifth of it).
const RENEW_BEFORE: u64 = LIFETIME / 5;

/// The names a cluster gives its API server (and
/// `kubernetes.default.svc.<the VC's cluster domain>`).
const API_NAMES: [&str; 3] = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"];

/// kplex's address and CA, as Pods on hosts use them.
pub struct Access {
    host: String,
    port: u16,
    ca_pem: String,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Access {
    /// From the syncer's own view of kplex (its kubeconfig's server).
    pub fn new(config: &kube::Config, ca_pem: &str) -> Result<Access, String> {
        let url = &config.cluster_url;
        let host = url
            .host()
            .ok_or_else(|| format!("kplex's URL {url} has no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = url.port_u16().unwrap_or(443);
        Ok(Access {
            host,
            port,
            ca_pem: ca_pem.to_owned(),
        })
    }

    fn env(&self) -> Vec<EnvVar> {
        let (h, p) = (self.host.clone(), self.port.to_string());
        let tcp = format!("tcp://{h}:{p}");
        [
            ("KUBERNETES_SERVICE_HOST", h.clone()),
            ("KUBERNETES_SERVICE_PORT", p.clone()),
            ("KUBERNETES_SERVICE_PORT_HTTPS", p.clone()),
            ("KUBERNETES_PORT", tcp.clone()),
            (&*format!("KUBERNETES_PORT_{p}_TCP"), tcp),
            (&*format!("KUBERNETES_PORT_{p}_TCP_PROTO"), "tcp".into()),
            (&*format!("KUBERNETES_PORT_{p}_TCP_PORT"), p.clone()),
            (&*format!("KUBERNETES_PORT_{p}_TCP_ADDR"), h),
        ]
        .into_iter()
        .map(|(name, value)| EnvVar {
            name: name.to_owned(),
            value: Some(value),
            value_from: None,
        })
        .collect()
    }
}

/// The environment a kubelet gives a Pod for the Services of its
/// namespace (`enableServiceLinks`): `<NAME>_SERVICE_HOST`, `…_PORT` and
/// the Docker-link variables, for Services with a ClusterIP.
pub fn service_env(services: &[Arc<Service>]) -> Vec<EnvVar> {
    let mut env = Vec::new();
    let var = |name: String, value: String| EnvVar {
        name,
        value: Some(value),
        value_from: None,
    };
    for service in services {
        let Some(spec) = service.spec.as_ref() else {
            continue;
        };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let name = service
            .metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .to_uppercase()
            .replace('-', "_");
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(first) = ports.first() else {
            continue;
        };
        env.push(var(format!("{name}_SERVICE_HOST"), ip.to_owned()));
        env.push(var(format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for port in &ports {
            if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                env.push(var(
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        port_name.to_uppercase().replace('-', "_")
                    ),
                    port.port.to_string(),
                ));
            }
        }
        let protocol = |p: &k8s_openapi::api::core::v1::ServicePort| {
            p.protocol.clone().unwrap_or_else(|| "TCP".into())
        };
        env.push(var(
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", protocol(first).to_lowercase(), first.port),
        ));
        for port in &ports {
            let proto = protocol(port);
            let prefix = format!("{name}_PORT_{}_{}", port.port, proto.to_uppercase());
            env.push(var(
                prefix.clone(),
                format!("{}://{ip}:{}", proto.to_lowercase(), port.port),
            ));
            env.push(var(format!("{prefix}_PROTO"), proto.to_lowercase()));
            env.push(var(format!("{prefix}_PORT"), port.port.to_string()));
            env.push(var(format!("{prefix}_ADDR"), ip.to_owned()));
        }
    }
    env
}

/// Whether the tenant Pod asked for no API credentials.
fn opted_out(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.automount_service_account_token)
        == Some(false)
}

/// The host Secret holding `pod`'s token.
pub fn secret_name(pod: &Pod) -> String {
    format!(
        "kplex-token-{}",
        pod.metadata.uid.as_deref().unwrap_or_default()
    )
}

/// What the host copy of a Pod gets to reach its VC.
pub struct Wiring {
    env: Vec<EnvVar>,
    secret: Option<String>,
    alias: Option<HostAlias>,
}

impl Wiring {
    /// The wiring of tenant Pod `pod` in namespace `ns` of `vc`.
    pub fn of(ctx: &Ctx, vc: &Vc, ns: &str, pod: &Pod) -> Wiring {
        let mut env = ctx.access.env();
        let links = pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false);
        if links {
            env.extend(service_env(&ctx.services.in_namespace(vc, Some(ns))));
        }
        let alias = ctx
            .access
            .host
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| HostAlias {
                ip: ip.to_string(),
                hostnames: Some(
                    API_NAMES
                        .iter()
                        .map(|n| n.to_string())
                        .chain([format!("kubernetes.default.svc.{}", ctx.hosts.domain(vc))])
                        .collect(),
                ),
            });
        Wiring {
            env,
            secret: (!opted_out(pod)).then(|| secret_name(pod)),
            alias,
        }
    }

    /// Puts the wiring on a host copy's spec: the tenant's own variables
    /// and mounts win over these.
    pub fn apply(&self, spec: &mut PodSpec) {
        let containers = spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten());
        for container in containers {
            let env = container.env.get_or_insert_with(Vec::new);
            for var in &self.env {
                if !env.iter().any(|e| e.name == var.name) {
                    env.push(var.clone());
                }
            }
            if self.secret.is_some() {
                let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
                if !mounts.iter().any(|m| m.mount_path == MOUNT_PATH) {
                    mounts.push(VolumeMount {
                        name: VOLUME.into(),
                        mount_path: MOUNT_PATH.into(),
                        read_only: Some(true),
                        ..Default::default()
                    });
                }
            }
        }
        if let Some(secret) = &self.secret {
            spec.volumes.get_or_insert_with(Vec::new).push(Volume {
                name: VOLUME.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    default_mode: Some(0o644),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        if let Some(alias) = &self.alias {
            spec.host_aliases
                .get_or_insert_with(Vec::new)
                .push(alias.clone());
        }
    }
}

/// Makes or renews `pod`'s token Secret on `host`; how long until it needs
/// renewing (`None`: the Pod wants no token).
pub async fn ensure(
    ctx: &Ctx,
    host: &Host,
    key: &ObjectKey,
    pod: &Pod,
) -> Result<Option<std::time::Duration>, Error> {
    if opted_out(pod) {
        return Ok(None);
    }
    let name = secret_name(pod);
    let secret_key = ObjectKey::new(&key.vc, key.namespace.as_deref(), &name);
    let current = host.secrets.get(&secret_key);
    let expires = current
        .as_ref()
        .and_then(|s| {
            s.metadata
                .annotations
                .as_ref()?
                .get(TOKEN_EXPIRES_ANNOTATION)?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    let now = now();
    if expires > now + RENEW_BEFORE {
        return Ok(Some(std::time::Duration::from_secs(
            expires - now - RENEW_BEFORE,
        )));
    }
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": LIFETIME,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": key.name, "uid": pod.metadata.uid},
        },
    });
    let api = ctx
        .clients
        .vc::<k8s_openapi::api::core::v1::ServiceAccount>(&key.vc, key.namespace.as_deref());
    let answer = api.create_subresource("token", &account, &request).await?;
    let token = answer["status"]["token"]
        .as_str()
        .ok_or_else(|| Error::Request("the TokenRequest answer has no token".into()))?
        .to_owned();
    let expires = now + LIFETIME;
    let mut meta = crate::pods::host_meta(&key.vc, key.ns(), &pod.metadata);
    meta.name = Some(name.clone());
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(
        TOKEN_FOR_ANNOTATION.to_owned(),
        pod.metadata.uid.clone().unwrap_or_default(),
    );
    annotations.insert(TOKEN_EXPIRES_ANNOTATION.to_owned(), expires.to_string());
    // The Pod's own labels are not the Secret's.
    meta.labels = Some(mapping::host_labels(
        &key.vc.name,
        &key.vc.uid,
        Some(key.ns()),
    ));
    let data = BTreeMap::from([
        ("token".to_owned(), ByteString(token.into_bytes())),
        (
            "ca.crt".to_owned(),
            ByteString(ctx.access.ca_pem.clone().into_bytes()),
        ),
        (
            "namespace".to_owned(),
            ByteString(key.ns().as_bytes().to_vec()),
        ),
    ]);
    let secret = Secret {
        metadata: meta,
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    crate::pods::ensure_namespace(ctx, host, &key.vc, key.ns()).await?;
    let secrets: Api<Secret> = Api::namespaced(
        host.client.clone(),
        &mapping::host_namespace(&key.vc.name, key.ns()),
    );
    let written = match current {
        None => secrets.create(&post_params(), &secret).await,
        Some(old) => {
            let mut renewed = secret;
            renewed.metadata.resource_version = old.metadata.resource_version.clone();
            secrets.replace(&name, &post_params(), &renewed).await
        }
    };
    match written {
        Ok(written) => {
            host.secrets.upsert_host(written);
        }
        // Ours, not yet in the cache (or raced): the next look settles it.
        // (Not at once: a foreign Secret of that name would make it a loop
        // of TokenRequests.)
        Err(e) if is_status(&e, 409) => return Ok(Some(std::time::Duration::from_secs(5))),
        Err(e) => return Err(Error::Api(e)),
    }
    Ok(Some(std::time::Duration::from_secs(
        LIFETIME - RENEW_BEFORE,
    )))
}

/// Removes `pod`'s token Secret from `host` (the Pod is gone there).
pub async fn remove(host: &Host, key: &ObjectKey, pod_uid: Option<&str>) -> Result<(), Error> {
    let Some(uid) = pod_uid else {
        return Ok(());
    };
    let name = format!("kplex-token-{uid}");
    let secret_key = ObjectKey::new(&key.vc, key.namespace.as_deref(), &name);
    if host.secrets.get(&secret_key).is_none() {
        return Ok(());
    }
    let secrets: Api<Secret> = Api::namespaced(
        host.client.clone(),
        &mapping::host_namespace(&key.vc.name, key.ns()),
    );
    match secrets.delete(&name, &Default::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(Error::Api(e)),
    }
}

/// Whether a host Secret is a Pod's token (the syncer's own, not a copy).
pub fn is_token(secret: &Secret) -> bool {
    secret
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(TOKEN_FOR_ANNOTATION))
}
