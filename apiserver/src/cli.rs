//! `kplex vc …`: the admin API from the command line. A thin client over
//! HTTPS with the admin kubeconfig kplex wrote; every command is one call
//! of the Kubernetes-shaped admin API, so the CLI can do nothing kubectl
//! could not.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

const VCS: &str = "/apis/tenancy.kplex.dev/v1alpha1/virtualclusters";

/// A client for the admin API.
pub struct AdminClient {
    host: String,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

/// The first value of `key:` in a kubeconfig written by kplex (one cluster,
/// one user, single-line values).
fn field<'a>(text: &'a str, key: &str) -> Result<&'a str, String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .next()
        .ok_or_else(|| format!("the kubeconfig has no {key}"))
}

fn decode(text: &str, key: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(field(text, key)?)
        .map_err(|e| format!("{key}: {e}"))
}

/// Where a kplex-written kubeconfig points and the TLS client it carries.
pub struct KubeconfigTarget {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// The server URL's path (`/clusters/<vc>` for a tenant, else empty).
    pub base_path: String,
    /// The CA to trust and the client certificate to present.
    pub tls: Arc<rustls::ClientConfig>,
}

/// Reads a kubeconfig written by kplex (one cluster, one user, single-line
/// values).
pub fn parse_kubeconfig(text: &str) -> Result<KubeconfigTarget, String> {
    let server = field(text, "server")?;
    let rest = server
        .strip_prefix("https://")
        .ok_or_else(|| format!("server {server} is not https"))?;
    let (authority, base_path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, format!("/{path}")),
        None => (rest, String::new()),
    };
    let (host, port) = authority
        .rsplit_once(':')
        .and_then(|(h, p)| {
            p.parse()
                .ok()
                .map(|p| (h.trim_matches(['[', ']']).to_owned(), p))
        })
        .ok_or_else(|| format!("server {server} has no port"))?;
    let ca = decode(text, "certificate-authority-data")?;
    let cert = decode(text, "client-certificate-data")?;
    let key = decode(text, "client-key-data")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| e.to_string())?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|e| e.to_string())?;
    Ok(KubeconfigTarget {
        host,
        port,
        base_path,
        tls: Arc::new(tls),
    })
}

impl AdminClient {
    /// Reads a kubeconfig written by kplex (`<data-dir>/admin.kubeconfig`).
    pub fn from_kubeconfig(path: &Path) -> Result<AdminClient, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let target = parse_kubeconfig(&text)?;
        Ok(AdminClient {
            host: target.host,
            port: target.port,
            tls: target.tls,
        })
    }

    /// One request; returns the status code and the JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", self.host, self.port))?;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(bytes))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let code = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((code, value))
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let (code, value) = self.call(method, path, body).await?;
        if code >= 400 {
            let message = value["message"].as_str().unwrap_or("request failed");
            let reason = value["reason"].as_str().unwrap_or("Error");
            return Err(format!("Error from server ({reason}): {message}"));
        }
        Ok(value)
    }

    /// Creates a VC.
    pub async fn create(&self, name: &str, spec: Value) -> Result<Value, String> {
        let body = json!({
            "apiVersion": "tenancy.kplex.dev/v1alpha1",
            "kind": "VirtualCluster",
            "metadata": {"name": name},
            "spec": spec,
        });
        self.ok(Method::POST, VCS, Some(body)).await
    }

    /// Every VC.
    pub async fn list(&self) -> Result<Vec<Value>, String> {
        let list = self.ok(Method::GET, VCS, None).await?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Deletes a VC.
    pub async fn delete(&self, name: &str) -> Result<(), String> {
        self.ok(Method::DELETE, &format!("{VCS}/{name}"), None)
            .await
            .map(|_| ())
    }

    /// A kubeconfig for `user` in VC `name`.
    pub async fn kubeconfig(
        &self,
        name: &str,
        user: &str,
        groups: &[String],
        expiration_seconds: Option<u64>,
    ) -> Result<String, String> {
        let mut body = json!({"user": user, "groups": groups});
        if let Some(s) = expiration_seconds {
            body["expirationSeconds"] = json!(s);
        }
        let response = self
            .ok(
                Method::POST,
                &format!("{VCS}/{name}/kubeconfig"),
                Some(body),
            )
            .await?;
        response["kubeconfig"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "the server returned no kubeconfig".into())
    }

    /// Registers a host cluster (its kubeconfig's text).
    pub async fn add_host(
        &self,
        name: &str,
        kubeconfig: &str,
        default: bool,
    ) -> Result<Value, String> {
        let body = json!({
            "apiVersion": "tenancy.kplex.dev/v1alpha1",
            "kind": "HostCluster",
            "metadata": {"name": name},
            "spec": {"kubeconfig": kubeconfig, "default": default},
        });
        self.ok(Method::POST, HOSTS, Some(body)).await
    }

    /// Every host cluster.
    pub async fn hosts(&self) -> Result<Vec<Value>, String> {
        let list = self.ok(Method::GET, HOSTS, None).await?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Removes a host cluster.
    pub async fn remove_host(&self, name: &str) -> Result<(), String> {
        self.ok(Method::DELETE, &format!("{HOSTS}/{name}"), None)
            .await
            .map(|_| ())
    }
}

const HOSTS: &str = "/apis/tenancy.kplex.dev/v1alpha1/hostclusters";
