//! First-start material in the data directory: the CA, the serving
//! certificate, and the admin kubeconfig. Key material and kubeconfigs are
//! written mode 0600.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use kplex_certs::{Authority, CertError, Identity, IssuedCert, Scope};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Lifetime of the serving certificate (renewed at every start).
const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Lifetime of the admin credential written on first start.
const ADMIN_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Errors of the bootstrap.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Certificate work failed.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// TLS configuration failed.
    #[error("TLS: {0}")]
    Tls(String),
}

/// What the server needs from the data directory.
pub struct Bootstrap {
    /// The cluster CA.
    pub authority: Authority,
    /// The rustls configuration (client certificates optional, verified
    /// against the CA when presented).
    pub tls: Arc<ServerConfig>,
    /// The admin kubeconfig file.
    pub admin_kubeconfig: PathBuf,
    /// The CA certificate file.
    pub ca_file: PathBuf,
}

/// Loads or creates the CA, issues a serving certificate for `names`, and
/// writes the admin kubeconfig if it is missing.
pub fn prepare(
    data_dir: &Path,
    names: &[String],
    server_url: &str,
) -> Result<Bootstrap, BootstrapError> {
    let pki = data_dir.join("pki");
    let authority = Authority::load_or_create(&pki)?;
    let serving = authority.issue_serving(names, SERVING_VALIDITY)?;
    kplex_certs::write_private(&pki.join("apiserver.key"), serving.key_pem.as_bytes())?;
    kplex_certs::write_private(&pki.join("apiserver.crt"), serving.cert_pem.as_bytes())?;
    let admin_kubeconfig = data_dir.join("admin.kubeconfig");
    if !admin_kubeconfig.exists() {
        let admin = authority.issue_client(
            &Identity {
                user: "kplex-admin".into(),
                groups: vec!["system:masters".into()],
                scope: Scope::Admin,
            },
            ADMIN_VALIDITY,
        )?;
        let config = kubeconfig(
            "kplex",
            server_url,
            authority.ca_pem(),
            "kplex-admin",
            &admin,
        );
        kplex_certs::write_private(&admin_kubeconfig, config.as_bytes())?;
    }
    let tls = server_config(authority.ca_pem(), &serving)?;
    Ok(Bootstrap {
        authority,
        tls: Arc::new(tls),
        admin_kubeconfig,
        ca_file: pki.join("ca.crt"),
    })
}

fn server_config(ca_pem: &str, serving: &IssuedCert) -> Result<ServerConfig, BootstrapError> {
    let tls = |e: &dyn std::fmt::Display| BootstrapError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?;
    let chain = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// How long a system component's credential lasts (`kplex serve` issues a
/// fresh one to its own components at every start).
const SYSTEM_VALIDITY: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// A kubeconfig for the system component `component` (the scope
/// `kplex:system:<component>`): its server is kplex's root URL; the
/// component addresses `/clusters/*`, `/clusters/<vc>` and `/system` itself.
pub fn system_kubeconfig(
    authority: &Authority,
    component: &str,
    server_url: &str,
) -> Result<String, CertError> {
    let user = format!("kplex:{component}");
    let credential = authority.issue_client(
        &Identity {
            user: user.clone(),
            groups: vec![],
            scope: Scope::System {
                component: component.to_owned(),
            },
        },
        SYSTEM_VALIDITY,
    )?;
    Ok(kubeconfig(
        "kplex-system",
        server_url,
        authority.ca_pem(),
        &user,
        &credential,
    ))
}

/// A kubeconfig with one cluster, one user and one context, all named `name`.
pub fn kubeconfig(name: &str, server: &str, ca_pem: &str, user: &str, cred: &IssuedCert) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {user}
current-context: {name}
",
        ca = b64(ca_pem),
        cert = b64(&cred.cert_pem),
        key = b64(&cred.key_pem),
    )
}
