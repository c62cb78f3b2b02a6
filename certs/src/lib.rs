//! Identities for kplex: the cluster CA, serving certificates, and client
//! certificates that bind a user and groups either to the admin API or to
//! exactly one virtual cluster, by the VC's UID.
//!
//! Binding by UID (not name) means that deleting a VC and creating another of
//! the same name never revives the old VC's credentials.
//!
//! A client certificate carries the user in the subject's CN (as Kubernetes
//! does), and as URI SANs its groups (`kplex:group:<name>`; one subject may
//! hold only one O here) and its scope (`kplex:admin`, `kplex:vc:<uid>` or `kplex:system:<component>`).
//! A certificate without exactly one scope grants nothing.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SCOPE_ADMIN: &str = "kplex:admin";
const SCOPE_VC_PREFIX: &str = "kplex:vc:";
const SCOPE_SYSTEM_PREFIX: &str = "kplex:system:";
const GROUP_PREFIX: &str = "kplex:group:";
/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Reading or writing key material failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Generating or parsing a certificate failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A client certificate carries no usable kplex identity.
    #[error("client certificate has no kplex identity: {0}")]
    NoIdentity(&'static str),
}

fn cert_err(e: impl std::fmt::Display) -> CertError {
    CertError::Certificate(e.to_string())
}

/// What a credential may reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The admin API (root paths).
    Admin,
    /// One virtual cluster, by UID.
    VirtualCluster {
        /// The VC's UID.
        uid: String,
    },
    /// One of kplex's own system components (the controllers, the syncer):
    /// the only scope that may list and watch across every VC
    /// (`/clusters/*/…`) and write into any VC. Issued by `kplex serve` to
    /// its components, never through the admin API.
    System {
        /// The component's name (`controllers`, `syncer`).
        component: String,
    },
}

/// Who a client certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name (subject CN).
    pub user: String,
    /// Groups (subject O entries).
    pub groups: Vec<String>,
    /// What the credential may reach.
    pub scope: Scope,
}

/// A certificate and its private key, as PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// The cluster CA: signs serving and client certificates.
pub struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// Loads the CA from `dir`, or creates it (key written mode 0600).
    pub fn load_or_create(dir: &Path) -> Result<Authority, CertError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        if cert_path.exists() && key_path.exists() {
            let cert_pem = read(&cert_path)?;
            let key = KeyPair::from_pem(&read(&key_path)?).map_err(cert_err)?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(cert_err)?;
            return Ok(Authority { cert_pem, issuer });
        }
        fs::create_dir_all(dir).map_err(|source| CertError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "kplex-ca");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key).map_err(cert_err)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_public(&cert_path, cert.pem().as_bytes())?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, as PEM.
    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A serving certificate for these DNS names and IP addresses.
    pub fn issue_serving(
        &self,
        names: &[String],
        validity: Duration,
    ) -> Result<IssuedCert, CertError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "kplex-apiserver");
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into().map_err(cert_err)?),
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, validity)
    }

    /// A client certificate for `identity`, valid for `validity`.
    pub fn issue_client(
        &self,
        identity: &Identity,
        validity: Duration,
    ) -> Result<IssuedCert, CertError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, identity.user.as_str());
        let scope = match &identity.scope {
            Scope::Admin => SCOPE_ADMIN.to_owned(),
            Scope::VirtualCluster { uid } => format!("{SCOPE_VC_PREFIX}{uid}"),
            Scope::System { component } => format!("{SCOPE_SYSTEM_PREFIX}{component}"),
        };
        let mut uris = vec![scope];
        for group in &identity.groups {
            if group.is_empty() || !group.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(CertError::Certificate(format!(
                    "group {group:?} must be non-empty printable ASCII without spaces"
                )));
            }
            uris.push(format!("{GROUP_PREFIX}{group}"));
        }
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().map_err(cert_err)?));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, validity)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        validity: Duration,
    ) -> Result<IssuedCert, CertError> {
        set_validity(&mut params, validity);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = OffsetDateTime::now_utc();
    // A minute of slack for clocks that disagree slightly.
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + validity;
}

/// Reads the kplex identity from a client certificate (DER) whose chain the
/// TLS layer has already verified against the CA.
pub fn identity_from_der(der: &[u8]) -> Result<Identity, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(cert_err)?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|u| !u.is_empty())
        .ok_or(CertError::NoIdentity("no common name"))?
        .to_owned();
    let mut groups = Vec::new();
    let mut scopes = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                if let Some(group) = uri.strip_prefix(GROUP_PREFIX) {
                    groups.push(group.to_owned());
                } else if *uri == SCOPE_ADMIN {
                    scopes.push(Scope::Admin);
                } else if let Some(uid) = uri.strip_prefix(SCOPE_VC_PREFIX) {
                    scopes.push(Scope::VirtualCluster {
                        uid: uid.to_owned(),
                    });
                } else if let Some(component) = uri.strip_prefix(SCOPE_SYSTEM_PREFIX) {
                    scopes.push(Scope::System {
                        component: component.to_owned(),
                    });
                }
            }
        }
    }
    // Exactly one scope: a certificate naming two could be read either way.
    let scope = match scopes.as_slice() {
        [one] => one.clone(),
        [] => return Err(CertError::NoIdentity("no kplex scope")),
        _ => return Err(CertError::NoIdentity("more than one kplex scope")),
    };
    Ok(Identity {
        user,
        groups,
        scope,
    })
}

fn read(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes key material readable by its owner only (0600), atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), CertError> {
    write_with_mode(path, contents, 0o600)
}

fn write_public(path: &Path, contents: &[u8]) -> Result<(), CertError> {
    write_with_mode(path, contents, 0o644)
}

fn write_with_mode(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

/// The DER bytes of the first certificate in a PEM string.
pub fn first_cert_der(pem: &str) -> Result<Vec<u8>, CertError> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(cert_err)?;
    Ok(parsed.contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn vc_identity(uid: &str) -> Identity {
        Identity {
            user: "alice".into(),
            groups: vec!["system:masters".into(), "dev".into()],
            scope: Scope::VirtualCluster { uid: uid.into() },
        }
    }

    #[test]
    fn client_identity_round_trips_with_its_scope() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path()).unwrap();
        for identity in [
            vc_identity("3f1c"),
            Identity {
                user: "admin".into(),
                groups: vec![],
                scope: Scope::Admin,
            },
            Identity {
                user: "kplex:controllers".into(),
                groups: vec![],
                scope: Scope::System {
                    component: "controllers".into(),
                },
            },
        ] {
            let issued = ca
                .issue_client(&identity, Duration::from_secs(3600))
                .unwrap();
            let der = first_cert_der(&issued.cert_pem).unwrap();
            assert_eq!(identity_from_der(&der).unwrap(), identity);
        }
    }

    #[test]
    fn client_certificates_expire_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path()).unwrap();
        let issued = ca
            .issue_client(&vc_identity("u"), Duration::from_secs(7200))
            .unwrap();
        let der = first_cert_der(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 7200 + 60);
    }

    #[test]
    fn the_ca_is_created_once_with_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = Authority::load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Authority::load_or_create(dir.path()).unwrap();
        assert_eq!(first.ca_pem(), again.ca_pem());
        // A certificate issued after reloading verifies under the same CA name.
        let issued = again
            .issue_client(&vc_identity("u"), Duration::from_secs(60))
            .unwrap();
        let der = first_cert_der(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(cert.issuer().to_string(), "CN=kplex-ca");
    }

    #[test]
    fn serving_certificates_carry_dns_and_ip_names() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path()).unwrap();
        let names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "kplex.example".to_owned(),
        ];
        let issued = ca.issue_serving(&names, Duration::from_secs(60)).unwrap();
        let der = first_cert_der(&issued.cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let rendered: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert!(
            rendered.iter().any(|n| n.contains("localhost")),
            "{rendered:?}"
        );
        assert!(
            rendered.iter().any(|n| n.contains("kplex.example")),
            "{rendered:?}"
        );
        assert!(
            rendered.iter().any(|n| n.contains("7f:00:00:01")),
            "{rendered:?}"
        );
        // A serving certificate is no client credential.
        assert!(identity_from_der(&der).is_err());
    }
}
