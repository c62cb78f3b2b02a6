//! `pods/<name>/{log,exec,attach,portforward}` of a VC, proxied to the
//! host cluster the VC is placed on, for the Pod's host copy: the same
//! method, query and streaming headers, on the mapped path, with the
//! host's credentials. A streamed answer (`logs -f`) is passed on as it
//! comes; an upgrade (`exec`, `attach`, `port-forward` over SPDY or
//! WebSocket) is passed through both ways once both sides have switched.
//!
//! The host's kubeconfig (its current context) decides where and how:
//! `https` with its CA (or `insecure-skip-tls-verify`), a client
//! certificate and/or a bearer token; or plain `http`.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use hyper::{header, Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

use crate::handler::{Context, Request};
use crate::response::Body;
use crate::virtualclusters::VirtualCluster;
use kplex_registry::ApiError;

/// The Pod subresources served by the host's kubelet.
pub const STREAMED: &[&str] = &["log", "exec", "attach", "portforward"];

/// Request headers passed to the host (what streaming and upgrades need).
const FORWARDED: &[&str] = &[
    "accept",
    "content-type",
    "connection",
    "upgrade",
    "x-stream-protocol-version",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
];

/// Where a host is and how to reach it.
struct HostTarget {
    https: bool,
    host: String,
    port: u16,
    base_path: String,
    token: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

fn bad_kubeconfig(message: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!(
        "the host cluster's kubeconfig is unusable: {message}"
    ))
}

/// Reads bytes given inline (`<key>-data`, base64) or as a file (`<key>`).
fn material(entry: &Value, key: &str) -> Result<Option<Vec<u8>>, ApiError> {
    if let Some(data) = entry[format!("{key}-data")].as_str() {
        return base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map(Some)
            .map_err(|e| bad_kubeconfig(format!("{key}-data: {e}")));
    }
    match entry[key].as_str() {
        Some(path) => std::fs::read(path)
            .map(Some)
            .map_err(|e| bad_kubeconfig(format!("{key} {path}: {e}"))),
        None => Ok(None),
    }
}

fn named<'a>(config: &'a Value, list: &str, name: Option<&str>) -> Option<&'a Value> {
    let items = config[list].as_array()?;
    match name {
        Some(name) => items.iter().find(|i| i["name"].as_str() == Some(name)),
        None => items.first(),
    }
}

impl HostTarget {
    fn from_kubeconfig(text: &str) -> Result<HostTarget, ApiError> {
        let config = kplex_registry::yaml::to_json(text.as_bytes()).map_err(bad_kubeconfig)?;
        let current = config["current-context"].as_str();
        let context = current.and_then(|c| named(&config, "contexts", Some(c)));
        let cluster_name = context.and_then(|c| c["context"]["cluster"].as_str());
        let user_name = context.and_then(|c| c["context"]["user"].as_str());
        let cluster = &named(&config, "clusters", cluster_name)
            .ok_or_else(|| bad_kubeconfig("no cluster"))?["cluster"];
        let user = named(&config, "users", user_name)
            .map(|u| u["user"].clone())
            .unwrap_or(Value::Null);
        let server = cluster["server"]
            .as_str()
            .ok_or_else(|| bad_kubeconfig("no server"))?;
        let (https, rest) = match (
            server.strip_prefix("https://"),
            server.strip_prefix("http://"),
        ) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            _ => return Err(bad_kubeconfig(format!("server {server} is not http(s)"))),
        };
        let (authority, base_path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, format!("/{}", path.trim_end_matches('/'))),
            None => (rest, String::new()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_matches(['[', ']']).to_owned(),
                p.parse()
                    .map_err(|_| bad_kubeconfig(format!("port of {server}")))?,
            ),
            _ => (
                authority.trim_matches(['[', ']']).to_owned(),
                if https { 443 } else { 80 },
            ),
        };
        let token = match user["token"].as_str() {
            Some(token) => Some(token.to_owned()),
            None => match user["tokenFile"].as_str() {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| bad_kubeconfig(format!("tokenFile {path}: {e}")))?
                        .trim()
                        .to_owned(),
                ),
                None => None,
            },
        };
        let tls = if https {
            Some(Arc::new(tls_config(cluster, &user)?))
        } else {
            None
        };
        Ok(HostTarget {
            https,
            host,
            port,
            base_path,
            token,
            tls,
        })
    }
}

fn tls_config(cluster: &Value, user: &Value) -> Result<rustls::ClientConfig, ApiError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(bad_kubeconfig)?;
    let builder = if cluster["insecure-skip-tls-verify"].as_bool() == Some(true) {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let ca = material(cluster, "certificate-authority")?
            .ok_or_else(|| bad_kubeconfig("no certificate-authority for https"))?;
        for cert in CertificateDer::pem_slice_iter(&ca) {
            roots
                .add(cert.map_err(bad_kubeconfig)?)
                .map_err(bad_kubeconfig)?;
        }
        builder.with_root_certificates(roots)
    };
    let cert = material(user, "client-certificate")?;
    let key = material(user, "client-key")?;
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad_kubeconfig)?;
            let key = PrivateKeyDer::from_pem_slice(&key).map_err(bad_kubeconfig)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(bad_kubeconfig)
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `insecure-skip-tls-verify: true`: the host's certificate is not checked
/// (signatures still are).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The host kubeconfig of the host `vc` is placed on.
async fn placement(ctx: &Context, vc: &VirtualCluster) -> Result<Option<String>, ApiError> {
    let named = vc.object()["spec"]["hostCluster"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned);
    let name = match named {
        Some(name) => name,
        None => match ctx.hosts.default_host().await? {
            Some(name) => name,
            None => return Ok(None),
        },
    };
    Ok(ctx
        .hosts
        .get(&name)
        .await?
        .and_then(|h| h["spec"]["kubeconfig"].as_str().map(str::to_owned)))
}

fn not_placed(pod: &str) -> ApiError {
    ApiError::bad_request(format!(
        "pod \"{pod}\" does not run anywhere yet: its virtual cluster is placed on no host cluster"
    ))
}

/// Proxies `sub` of Pod `ns/name` (which the caller found in `vc`, with
/// `tenant_uid`) to the Pod's host copy, once the host's Pod of that name
/// is shown to be that copy.
pub async fn to_host(
    ctx: &Context,
    vc: &VirtualCluster,
    ns: &str,
    name: &str,
    tenant_uid: Option<String>,
    sub: &str,
    req: &Request,
) -> Result<Response<Body>, ApiError> {
    let kubeconfig = placement(ctx, vc).await?.ok_or_else(|| not_placed(name))?;
    let target = HostTarget::from_kubeconfig(&kubeconfig)?;
    let host_ns = kplex_api::mapping::host_namespace(vc.name(), ns);
    let pod_path = format!(
        "{}/api/v1/namespaces/{host_ns}/pods/{name}",
        target.base_path
    );
    // The host's Pod of that name must be this VC's copy of this Pod: a
    // host namespace's name can be another VC's too, or hold a Pod kplex
    // did not place.
    let copy = target
        .call(
            Method::GET,
            &pod_path,
            &hyper::HeaderMap::new(),
            Bytes::new(),
        )
        .await?;
    let pod: Value = if copy.status() == StatusCode::OK {
        let body = copy
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?;
        serde_json::from_slice(&body.to_bytes()).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let labels = &pod["metadata"]["labels"];
    let ours = labels[kplex_api::mapping::VC_UID_LABEL].as_str() == Some(vc.uid())
        && pod["metadata"]["annotations"][kplex_api::mapping::OBJECT_UID_ANNOTATION].as_str()
            == tenant_uid.as_deref();
    if !ours {
        return Err(ApiError::bad_request(format!(
            "pod \"{name}\" is not running on its host cluster yet"
        )));
    }
    let mut path = format!("{pod_path}/{sub}");
    if !req.query.is_empty() {
        path.push('?');
        path.push_str(&req.query);
    }
    let response = target
        .call(req.method.clone(), &path, &req.headers, req.body.clone())
        .await?;
    Ok(relay(response, req))
}

/// Deletes every namespace of `vc` on its host (labelled with its UID);
/// how many. Nothing to do for a VC placed nowhere.
pub async fn clear_host(ctx: &Context, vc: &VirtualCluster) -> Result<usize, ApiError> {
    let Some(kubeconfig) = placement(ctx, vc).await? else {
        return Ok(0);
    };
    let target = HostTarget::from_kubeconfig(&kubeconfig)?;
    let list = format!(
        "{}/api/v1/namespaces?labelSelector={}%3D{}",
        target.base_path,
        kplex_api::mapping::VC_UID_LABEL.replace('/', "%2F"),
        vc.uid()
    );
    let answer = target
        .call(Method::GET, &list, &hyper::HeaderMap::new(), Bytes::new())
        .await?;
    if answer.status() != StatusCode::OK {
        return Err(unreachable(&format!(
            "listing namespaces: {}",
            answer.status()
        )));
    }
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(&e))?
        .to_bytes();
    let list: Value = serde_json::from_slice(&body).map_err(|e| unreachable(&e))?;
    let mut deleted = 0;
    for item in list["items"].as_array().into_iter().flatten() {
        // Only the VC's own, whatever the host's selector support.
        if item["metadata"]["labels"][kplex_api::mapping::VC_UID_LABEL].as_str() != Some(vc.uid()) {
            continue;
        }
        let Some(name) = item["metadata"]["name"].as_str() else {
            continue;
        };
        let path = format!("{}/api/v1/namespaces/{name}", target.base_path);
        let answer = target
            .call(
                Method::DELETE,
                &path,
                &hyper::HeaderMap::new(),
                Bytes::new(),
            )
            .await?;
        if answer.status().is_success() {
            deleted += 1;
        }
    }
    Ok(deleted)
}

fn unreachable(e: &dyn std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!("the host cluster is unreachable: {e}"))
}

impl HostTarget {
    /// One request to the host on a connection of its own (kept open for
    /// an upgrade); the [`FORWARDED`] headers of `headers` go along.
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &hyper::HeaderMap,
        body: Bytes,
    ) -> Result<Response<hyper::body::Incoming>, ApiError> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, format!("{}:{}", self.host, self.port));
        for (key, value) in headers {
            if FORWARDED.contains(&key.as_str()) {
                request = request.header(key, value);
            }
        }
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| unreachable(&e))?;
        let _ = tcp.set_nodelay(true);
        if self.https {
            let server = ServerName::try_from(self.host.clone()).map_err(|e| unreachable(&e))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone().expect("https has TLS"))
                .connect(server, tcp)
                .await
                .map_err(|e| unreachable(&e))?;
            send(TokioIo::new(tls), request).await
        } else {
            send(TokioIo::new(tcp), request).await
        }
        .map_err(|e| unreachable(&e))
    }
}

async fn send<I>(
    io: I,
    request: hyper::Request<Full<Bytes>>,
) -> Result<Response<hyper::body::Incoming>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "host stream ended");
        }
    });
    sender.send_request(request).await
}

/// The host's answer as the client's: status and headers, then the body
/// as it streams, or — once both sides switched protocols — the two
/// connections joined.
fn relay(mut response: Response<hyper::body::Incoming>, req: &Request) -> Response<Body> {
    let status = response.status();
    let headers = response.headers().clone();
    let body: Body = if status == StatusCode::SWITCHING_PROTOCOLS {
        let host_side = hyper::upgrade::on(&mut response);
        let client_side = req.take_upgrade();
        tokio::spawn(async move {
            let (Some(client_side), Ok(host)) = (client_side, host_side.await) else {
                return;
            };
            let Ok(client) = client_side.await else {
                return;
            };
            let (mut client, mut host) = (TokioIo::new(client), TokioIo::new(host));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut host).await;
        });
        Full::new(Bytes::new()).boxed()
    } else {
        // A stream (`logs -f`) ends where the host's does, or fails.
        let frames = BodyStream::new(response.into_body())
            .take_while(|frame| std::future::ready(frame.is_ok()))
            .map(|frame| Ok(frame.expect("only Ok frames are taken")));
        BodyExt::boxed(StreamBody::new(frames))
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    for (key, value) in &headers {
        if key != header::CONTENT_LENGTH && key != header::TRANSFER_ENCODING {
            out.headers_mut().append(key, value.clone());
        }
    }
    out
}

/// Whether `method` is one a streamed subresource takes.
pub fn allowed(sub: &str, method: &Method) -> bool {
    match sub {
        "log" => method == Method::GET,
        _ => matches!(*method, Method::GET | Method::POST),
    }
}
