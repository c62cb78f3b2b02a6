//! ServiceAccount tokens: JWTs kplex signs (ES256) for a VC's
//! ServiceAccounts (`serviceaccounts/<name>/token`, TokenRequest, what
//! `kubectl create token` asks for), and their verification when a client
//! presents one as a bearer token.
//!
//! A token names its VC by UID (`kplex.dev/vc`), its namespace and
//! ServiceAccount (by name and UID) and, when bound, its Pod (by name and
//! UID). It is accepted by that VC only, and only while the VC, the
//! ServiceAccount and the bound Pod still exist with those UIDs.
//!
//! The signing key lives in the system keyspace, created by the first
//! kplex to start, so every replica on one etcd signs and verifies alike.
//!
//! The JWS (RFC 7515 compact form, `alg: ES256`) is made and checked here
//! with ring's P-256, the crypto provider kplex already uses for TLS: one
//! signature per TokenRequest is on the path of every synced Pod.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use kplex_storage::{Store, StoreError, SystemKeyspace};
use ring::signature::{EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// The issuer kplex names, and the audience of a token that names none
/// (kubeadm's and kind's default, which in-cluster clients expect).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Default lifetime of a requested token (kube-apiserver's).
pub const DEFAULT_EXPIRATION: u64 = 3600;
/// Shortest lifetime a TokenRequest may ask for.
pub const MIN_EXPIRATION: u64 = 600;
/// Longest lifetime kplex grants (kube-apiserver caps at its
/// `--service-account-max-token-expiration`).
pub const MAX_EXPIRATION: u64 = 48 * 3600;

/// `kubernetes.io.serviceaccount` / `.pod` in the claims.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Ref {
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KubernetesClaim {
    /// The ServiceAccount's namespace.
    pub namespace: String,
    /// The ServiceAccount.
    pub serviceaccount: Ref,
    /// The Pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
}

/// What a kplex ServiceAccount token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// `system:serviceaccount:<ns>:<name>`.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Namespace, ServiceAccount, Pod.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
    /// The VC's UID.
    #[serde(rename = "kplex.dev/vc")]
    pub vc: String,
}

/// The JOSE header of every token kplex signs (fixed, so it is encoded
/// once).
const HEADER: &str = r#"{"alg":"ES256","typ":"JWT"}"#;

/// Seconds of clock skew allowed on `exp` and `nbf`.
const LEEWAY: u64 = 5;

/// Signs and verifies tokens.
pub struct Tokens {
    pair: EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    /// `HEADER`, base64url.
    header: String,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| "malformed token".to_owned())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Tokens {
    /// The signer with the key stored in `store` (made and stored if there
    /// is none yet).
    pub async fn load_or_create(store: &Arc<dyn Store>) -> Result<Tokens, String> {
        let key =
            SystemKeyspace::key(&["serviceaccounts", "signing-key"]).map_err(|e| e.to_string())?;
        let pkcs8 = match store.get(&key).await.map_err(|e| e.to_string())? {
            Some(kv) => kv.value.to_vec(),
            None => {
                let rng = ring::rand::SystemRandom::new();
                let fresh = EcdsaKeyPair::generate_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &rng,
                )
                .map_err(|_| "cannot generate the token signing key".to_owned())?;
                match store
                    .create(&key, Bytes::copy_from_slice(fresh.as_ref()))
                    .await
                {
                    Ok(_) => fresh.as_ref().to_vec(),
                    // Another replica made one first: use it.
                    Err(StoreError::AlreadyExists { current }) => current.value.to_vec(),
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        Tokens::from_pkcs8(&pkcs8)
    }

    /// The signer with this PKCS#8 P-256 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Tokens, String> {
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &rng,
        )
        .map_err(|e| format!("the token signing key is unusable: {e}"))?;
        Ok(Tokens {
            pair,
            rng,
            header: b64(HEADER.as_bytes()),
        })
    }

    /// The compact JWS of `claims`.
    fn sign(&self, claims: &Claims) -> Result<String, String> {
        let body = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
        let mut token = format!("{}.{}", self.header, b64(&body));
        let signature = self
            .pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| "cannot sign the token".to_owned())?;
        token.push('.');
        token.push_str(&b64(signature.as_ref()));
        Ok(token)
    }

    /// A token with these claims' subject, for `lifetime` seconds from now.
    pub fn issue(
        &self,
        vc_uid: &str,
        kubernetes: KubernetesClaim,
        audiences: Vec<String>,
        lifetime: u64,
    ) -> Result<(String, u64), String> {
        let iat = now();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                kubernetes.namespace, kubernetes.serviceaccount.name
            ),
            aud: if audiences.is_empty() {
                vec![ISSUER.to_owned()]
            } else {
                audiences
            },
            exp: iat + lifetime,
            iat,
            nbf: iat,
            kubernetes,
            vc: vc_uid.to_owned(),
        };
        let token = self.sign(&claims)?;
        Ok((token, claims.exp))
    }

    /// The claims of `token` if kplex signed it, it is current and meant
    /// for kplex (its audience includes the issuer).
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        self.verify_for(token, &[ISSUER]).map(|(claims, _)| claims)
    }

    /// The claims of `token` if kplex signed it and it is current, with
    /// those of `audiences` it is meant for (at least one, or it is
    /// refused).
    pub fn verify_for(
        &self,
        token: &str,
        audiences: &[&str],
    ) -> Result<(Claims, Vec<String>), String> {
        let mut parts = token.split('.');
        let (Some(header), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("malformed token".into());
        };
        // The algorithm is ours to choose, never the token's: only ES256.
        let header: serde_json::Value =
            serde_json::from_slice(&unb64(header)?).map_err(|_| "malformed token header")?;
        if header["alg"] != "ES256" {
            return Err("token algorithm is not ES256".into());
        }
        let signed = &token[..token.len() - signature.len() - 1];
        UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            self.pair.public_key().as_ref(),
        )
        .verify(signed.as_bytes(), &unb64(signature)?)
        .map_err(|_| "invalid token signature".to_owned())?;
        let claims: Claims =
            serde_json::from_slice(&unb64(body)?).map_err(|e| format!("token claims: {e}"))?;
        let now = now();
        if claims.iss != ISSUER {
            return Err("token issuer is not kplex".into());
        }
        let meant: Vec<String> = audiences
            .iter()
            .filter(|a| claims.aud.iter().any(|c| c == *a))
            .map(|a| (*a).to_owned())
            .collect();
        if meant.is_empty() {
            return Err("token audiences is invalid for the current issuer".into());
        }
        if claims.exp + LEEWAY <= now {
            return Err("token has expired".into());
        }
        if claims.nbf > now + LEEWAY {
            return Err("token is not valid yet".into());
        }
        Ok((claims, meant))
    }
}

/// The bearer token of an `Authorization` header, if it carries one.
pub fn bearer(headers: &hyper::HeaderMap) -> Option<&str> {
    headers
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A token's payload, unverified (for tests and diagnostics).
pub fn payload(token: &str) -> Option<serde_json::Value> {
    let part = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `POST serviceaccounts/<name>/token` (TokenRequest) in a VC: a token for
/// the ServiceAccount, optionally bound to one of its namespace's Pods.
pub async fn token_request(
    tokens: &Tokens,
    vc_uid: &str,
    store: &kplex_registry::generic::GenericStore,
    catalog: &kplex_registry::Catalog,
    ns: &str,
    name: &str,
    req: &crate::handler::Request,
) -> Result<hyper::Response<crate::response::Body>, kplex_registry::ApiError> {
    use kplex_registry::ApiError;
    use serde_json::{json, Value};
    const KIND: &str = "TokenRequest.authentication.k8s.io";
    if req.method != hyper::Method::POST {
        return Err(crate::tenant::method_not_allowed(&req.method));
    }
    let body = req.json_body()?;
    if body["kind"].as_str().is_some_and(|k| k != "TokenRequest") {
        return Err(ApiError::bad_request("the body is not a TokenRequest"));
    }
    let spec = &body["spec"];
    let audiences: Vec<String> = match &spec["audiences"] {
        Value::Null => Vec::new(),
        Value::Array(items) => items
            .iter()
            .map(|a| a.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::invalid(KIND, name, "spec.audiences", "must be strings"))?,
        _ => {
            return Err(ApiError::invalid(
                KIND,
                name,
                "spec.audiences",
                "must be a list",
            ))
        }
    };
    let lifetime = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_EXPIRATION,
        v => match v.as_u64() {
            Some(s) if s >= MIN_EXPIRATION => s.min(MAX_EXPIRATION),
            _ => {
                return Err(ApiError::invalid(
                    KIND,
                    name,
                    "spec.expirationSeconds",
                    "may not specify a duration less than 10 minutes",
                ))
            }
        },
    };
    let find = |plural: &str| catalog.find("", "v1", plural).expect("catalogued");
    let account = store.get(find("serviceaccounts"), Some(ns), name).await?;
    let pod = match &spec["boundObjectRef"] {
        Value::Null => None,
        bound => {
            if bound["kind"].as_str() != Some("Pod") {
                return Err(ApiError::invalid(
                    KIND,
                    name,
                    "spec.boundObjectRef.kind",
                    "Unsupported value: only Pod is supported",
                ));
            }
            let pod_name = bound["name"].as_str().unwrap_or_default();
            let pod = store.get(find("pods"), Some(ns), pod_name).await?;
            let uid = pod["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if bound["uid"]
                .as_str()
                .is_some_and(|u| !u.is_empty() && u != uid)
            {
                return Err(ApiError {
                    code: hyper::StatusCode::CONFLICT,
                    reason: "Conflict",
                    message: format!(
                        "the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
                        bound["uid"].as_str().unwrap_or_default()
                    ),
                    details: None,
                });
            }
            Some(Ref {
                name: pod_name.to_owned(),
                uid,
            })
        }
    };
    let claim = KubernetesClaim {
        namespace: ns.to_owned(),
        serviceaccount: Ref {
            name: name.to_owned(),
            uid: account["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        },
        pod: pod.clone(),
    };
    let (token, expires) = tokens
        .issue(vc_uid, claim, audiences.clone(), lifetime)
        .map_err(ApiError::internal)?;
    let expiration = time::OffsetDateTime::from_unix_timestamp(expires as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let mut answer = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": {
            "audiences": if audiences.is_empty() { vec![ISSUER.to_owned()] } else { audiences },
            "expirationSeconds": lifetime,
            "boundObjectRef": spec["boundObjectRef"],
        },
        "status": {"token": token, "expirationTimestamp": expiration},
    });
    if pod.is_none() {
        answer["spec"]["boundObjectRef"] = Value::Null;
    }
    Ok(crate::response::json_response(
        hyper::StatusCode::CREATED,
        &answer,
    ))
}

/// Who presents `token`: its ServiceAccount, in its VC — if kplex signed
/// it, it is current, and its VC, ServiceAccount and bound Pod still exist
/// with the UIDs it names. Anything else is `None` (401).
pub async fn authenticate(
    ctx: &crate::handler::Context,
    token: &str,
) -> Option<kplex_certs::Identity> {
    let claims = ctx.tokens.verify(token).ok()?;
    let name = ctx.registry.name_of(&claims.vc)?;
    let vc = ctx.registry.get(&name).await.ok()??;
    if vc.uid() != claims.vc {
        return None;
    }
    let store = ctx.vc_store(&vc).ok()?;
    still_bound(&store, &ctx.catalog, &claims).await.ok()?;
    Some(identity(claims))
}

/// Whether the ServiceAccount and the Pod `claims` name still exist in
/// `store` (the claims' VC) with the UIDs they name.
async fn still_bound(
    store: &kplex_registry::generic::GenericStore,
    catalog: &kplex_registry::Catalog,
    claims: &Claims,
) -> Result<(), String> {
    let k = &claims.kubernetes;
    let find = |plural: &str| catalog.find("", "v1", plural).expect("catalogued");
    let uid_of = |object: Result<serde_json::Value, kplex_registry::ApiError>| {
        object
            .ok()
            .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
    };
    let account = store
        .get(
            find("serviceaccounts"),
            Some(&k.namespace),
            &k.serviceaccount.name,
        )
        .await;
    if uid_of(account).as_deref() != Some(k.serviceaccount.uid.as_str()) {
        return Err("service account token has been invalidated".into());
    }
    if let Some(pod) = &k.pod {
        let object = store.get(find("pods"), Some(&k.namespace), &pod.name).await;
        if uid_of(object).as_deref() != Some(pod.uid.as_str()) {
            return Err(format!(
                "pod \"{}\" bound to the token no longer exists",
                pod.name
            ));
        }
    }
    Ok(())
}

/// The identity a token with `claims` authenticates as.
fn identity(claims: Claims) -> kplex_certs::Identity {
    kplex_certs::Identity {
        groups: vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{}", claims.kubernetes.namespace),
        ],
        user: claims.sub,
        scope: kplex_certs::Scope::VirtualCluster { uid: claims.vc },
    }
}

/// The status of a TokenReview of `spec` in the VC `vc_uid` (whose objects
/// `store` holds): authenticated only for a token of this VC, current,
/// meant for one of the audiences asked (kplex's when none are), whose
/// ServiceAccount and bound Pod still exist. A token of another VC is
/// refused as any invalid token is: nothing says the other VC exists.
pub async fn review(
    tokens: &Tokens,
    vc_uid: &str,
    store: &kplex_registry::generic::GenericStore,
    catalog: &kplex_registry::Catalog,
    spec: &serde_json::Value,
) -> Result<serde_json::Value, kplex_registry::ApiError> {
    use serde_json::json;
    let token = spec["token"].as_str().unwrap_or_default();
    if token.is_empty() {
        return Err(kplex_registry::ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let asked: Vec<&str> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    let audiences = if asked.is_empty() {
        vec![ISSUER]
    } else {
        asked
    };
    let verified = tokens
        .verify_for(token, &audiences)
        .map_err(|_| "invalid bearer token".to_owned())
        .and_then(|(claims, meant)| match claims.vc == vc_uid {
            true => Ok((claims, meant)),
            false => Err("invalid bearer token".to_owned()),
        });
    let (claims, meant) = match verified {
        Ok(found) => found,
        Err(error) => return Ok(json!({"user": {}, "error": error})),
    };
    if let Err(error) = still_bound(store, catalog, &claims).await {
        return Ok(json!({"user": {}, "error": error}));
    }
    let mut extra = serde_json::Map::new();
    if let Some(pod) = &claims.kubernetes.pod {
        extra.insert(
            "authentication.kubernetes.io/pod-name".into(),
            json!([pod.name]),
        );
        extra.insert(
            "authentication.kubernetes.io/pod-uid".into(),
            json!([pod.uid]),
        );
    }
    let uid = claims.kubernetes.serviceaccount.uid.clone();
    let who = identity(claims);
    let mut groups = who.groups;
    groups.push("system:authenticated".to_owned());
    Ok(json!({
        "authenticated": true,
        "user": {"username": who.user, "uid": uid, "groups": groups, "extra": extra},
        "audiences": meant,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Tokens {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .unwrap();
        Tokens::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn claim() -> KubernetesClaim {
        KubernetesClaim {
            namespace: "shop".into(),
            serviceaccount: Ref {
                name: "default".into(),
                uid: "sa-uid".into(),
            },
            pod: Some(Ref {
                name: "web".into(),
                uid: "pod-uid".into(),
            }),
        }
    }

    #[test]
    fn a_token_verifies_with_its_signer_only() {
        let (a, b) = (signer(), signer());
        let (token, exp) = a.issue("vc-1", claim(), vec![], 600).unwrap();
        let claims = a.verify(&token).unwrap();
        assert_eq!(claims.sub, "system:serviceaccount:shop:default");
        assert_eq!(claims.vc, "vc-1");
        assert_eq!(claims.exp, exp);
        assert_eq!(claims.kubernetes, claim());
        assert!(b.verify(&token).is_err(), "another key's token is refused");
        assert_eq!(
            payload(&token).unwrap()["kubernetes.io"]["pod"]["uid"],
            "pod-uid"
        );
    }

    #[test]
    fn tampered_expired_or_foreign_audience_tokens_are_refused() {
        let a = signer();
        let (token, _) = a.issue("vc-1", claim(), vec![], 600).unwrap();
        // A payload edited to another VC: the signature no longer holds.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut body = payload(&token).unwrap();
        body["kplex.dev/vc"] = "vc-2".into();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body.to_string());
        assert!(a.verify(&parts.join(".")).is_err());
        // Expired.
        let claims = Claims {
            exp: now() - 60,
            ..a.verify(&token).unwrap()
        };
        let old = a.sign(&claims).unwrap();
        assert!(a.verify(&old).is_err());
        // Not yet valid.
        let early = Claims {
            nbf: now() + 600,
            ..a.verify(&token).unwrap()
        };
        assert!(a.verify(&a.sign(&early).unwrap()).is_err());
        // Another algorithm named in the header (alg: none and friends).
        let mut unsigned: Vec<String> = token.split('.').map(str::to_owned).collect();
        unsigned[0] = b64(br#"{"alg":"none"}"#);
        assert!(a.verify(&unsigned.join(".")).is_err());
        unsigned[2] = String::new();
        assert!(a.verify(&unsigned.join(".")).is_err());
        assert!(a.verify(&format!("{token}.extra")).is_err());
        // Meant for someone else.
        let (other, _) = a.issue("vc-1", claim(), vec!["vault".into()], 600).unwrap();
        assert!(a.verify(&other).is_err());
        assert!(a.verify("not.a.token").is_err());
    }
}
