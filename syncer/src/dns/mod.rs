//! `kplex dns`: one DNS server per host cluster for every VC placed there.
//!
//! It watches the host's Pods, Services and EndpointSlices that carry
//! kplex's labels (read-only credentials, kube-rs watches; [`index`]) and
//! answers each question for the VC of the Pod that asks, known by the
//! question's source address: in that VC's cluster domain from that VC's
//! entries only ([`answer`]), anything outside every cluster domain from
//! the host's upstream resolver ([`forward`]). An address no live kplex
//! Pod has is REFUSED. Nothing is kept per VC beyond its names, so an idle
//! VC costs nothing here and replicas scale it out.
//!
//! The syncer points each host Pod of a VC at this server's Service
//! (`dnsPolicy: None`, the VC's search path; see [`wiring`]).

pub mod answer;
pub mod forward;
pub mod index;
pub mod wiring;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;

use answer::Answer;
use index::{Kind, Zones};

/// How long a TCP connection may stay idle.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// CNAMEs followed at most for one question.
const MAX_CHAIN: usize = 8;

/// How `kplex dns` runs.
pub struct Options {
    /// The host cluster's client configuration (read-only suffices).
    pub config: kube::Config,
    /// Where to answer, over UDP and TCP.
    pub listen: SocketAddr,
    /// The upstream resolver for names outside every cluster domain.
    pub upstream: Option<SocketAddr>,
    /// The host cluster's own domain: never forwarded (its names are the
    /// host's, other VCs' among them).
    pub host_domain: String,
}

/// The names every VC on the host has, as the watches keep them.
pub type SharedZones = Arc<RwLock<Zones>>;

/// Runs until the server fails: watches the host, then, once
/// every watch has its first listing, answers on `options.listen`.
pub async fn run(options: Options) -> Result<(), String> {
    let client = kube::Client::try_from(options.config).map_err(|e| e.to_string())?;
    let zones: SharedZones = Arc::default();
    let (synced, mut listed) = tokio::sync::mpsc::channel(3);
    tokio::spawn(follow::<Pod>(client.clone(), zones.clone(), synced.clone()));
    tokio::spawn(follow::<Service>(
        client.clone(),
        zones.clone(),
        synced.clone(),
    ));
    tokio::spawn(follow::<EndpointSlice>(client, zones.clone(), synced));
    for _ in 0..3 {
        listed
            .recv()
            .await
            .ok_or("the host watches ended before their first listing")?;
    }
    let handler = Handler::new(zones, options.upstream, &options.host_domain);
    let mut server = serve(handler, options.listen).await?;
    tracing::info!(listen = %options.listen, upstream = ?options.upstream, "kplex dns serving");
    eprintln!("kplex dns: serving on {}", options.listen);
    server.block_until_done().await.map_err(|e| e.to_string())
}

/// A DNS server answering with `handler` on `listen`, UDP and TCP.
pub async fn serve<H: RequestHandler>(
    handler: H,
    listen: SocketAddr,
) -> Result<hickory_server::Server<H>, String> {
    let udp = tokio::net::UdpSocket::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on udp {listen}: {e}"))?;
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on tcp {listen}: {e}"))?;
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, TCP_IDLE, 64 * 1024);
    Ok(server)
}

/// Keeps kind `K`'s entries as the host's objects change; says once when
/// the first listing is in.
async fn follow<K: Kind>(
    client: kube::Client,
    zones: SharedZones,
    synced: tokio::sync::mpsc::Sender<()>,
) {
    use kube::runtime::WatchStreamExt;
    let api = kube::Api::<K>::all(client);
    let config = watcher::Config::default()
        .labels(&kplex_api::mapping::any_vc_selector())
        .any_semantic()
        .page_size(500);
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    let mut listing: Option<Vec<(Box<str>, K::Entry)>> = None;
    let mut told = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(Vec::new()),
            Ok(watcher::Event::InitApply(object)) => {
                if let (Some(listing), Some(entry)) = (listing.as_mut(), object.project()) {
                    listing.push((index::host_key(object.meta()), entry));
                }
            }
            Ok(watcher::Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                index::relist::<K>(&mut zones.write().expect("zones lock"), listed);
                if !told {
                    told = synced.send(()).await.is_ok();
                }
            }
            Ok(watcher::Event::Apply(object)) => {
                index::apply(&mut zones.write().expect("zones lock"), &object);
            }
            Ok(watcher::Event::Delete(object)) => {
                index::delete(&mut zones.write().expect("zones lock"), &object);
            }
            Err(e) => tracing::warn!(kind = %K::kind(&()), error = %e, "watching the host failed"),
        }
    }
}

/// Answers questions for the VC of the Pod that asks.
pub struct Handler {
    zones: SharedZones,
    upstream: Option<Arc<forward::Upstream>>,
    host_domain: String,
}

impl Handler {
    /// A handler over `zones` (as [`run`] fills them), forwarding to
    /// `upstream`.
    pub fn new(zones: SharedZones, upstream: Option<SocketAddr>, host_domain: &str) -> Handler {
        Handler {
            zones,
            upstream: upstream.map(forward::Upstream::new).map(Arc::new),
            host_domain: index::fqdn(host_domain),
        }
    }
}

/// A response before it is encoded.
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Reply {
    fn error(code: ResponseCode) -> Reply {
        Reply {
            code,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

impl Handler {
    async fn reply(&self, request: &Request) -> Reply {
        if request.metadata.op_code != OpCode::Query {
            return Reply::error(ResponseCode::NotImp);
        }
        let [query] = request.queries.queries() else {
            return Reply::error(ResponseCode::FormErr);
        };
        if query.query_class() != DNSClass::IN {
            return Reply::error(ResponseCode::Refused);
        }
        let Some(asker) = self
            .zones
            .read()
            .expect("zones lock")
            .asker(request.src().ip())
        else {
            tracing::debug!(src = %request.src(), "question from an address no kplex Pod has");
            return Reply::error(ResponseCode::Refused);
        };
        let qtype = query.query_type();
        let mut reply = Reply::error(ResponseCode::NoError);
        let mut name = query.original().name().clone();
        for step in 0..=MAX_CHAIN {
            let lower = name.to_lowercase().to_ascii();
            let lower = if lower.ends_with('.') {
                lower
            } else {
                format!("{lower}.")
            };
            let answer = {
                let zones = self.zones.read().expect("zones lock");
                answer::resolve(&zones, &asker, &name, &lower, qtype, &self.host_domain)
            };
            let ours = !matches!(answer, Answer::Forward);
            if step == 0 {
                reply.authoritative = ours;
            }
            match answer {
                Answer::Records {
                    answers,
                    additionals,
                } => {
                    if answers.is_empty() {
                        reply.authorities.push(answer::soa(&asker.domain));
                    }
                    reply.answers.extend(answers);
                    reply.additionals.extend(additionals);
                    return reply;
                }
                Answer::NxDomain => {
                    reply.code = ResponseCode::NXDomain;
                    reply.authorities.push(answer::soa(&asker.domain));
                    return reply;
                }
                Answer::Alias { cname, target } => {
                    reply.answers.push(*cname);
                    name = target;
                }
                Answer::Forward => {
                    reply.authoritative = false;
                    let Some(upstream) = &self.upstream else {
                        reply.code = ResponseCode::ServFail;
                        return reply;
                    };
                    match upstream.ask(&asker.vc, &name, qtype, DNSClass::IN).await {
                        Ok(answer) => {
                            reply.code = answer.code;
                            reply.answers.extend(answer.answers);
                            reply.authorities.extend(answer.authorities);
                        }
                        Err(e) => {
                            tracing::debug!(upstream = %upstream.addr(), error = %e, "upstream failed");
                            reply.code = ResponseCode::ServFail;
                        }
                    }
                    return reply;
                }
            }
        }
        // A loop of aliases (or a chain too long to follow).
        reply.code = ResponseCode::ServFail;
        reply
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let reply = self.reply(request).await;
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.code;
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = true;
        send(
            request,
            &mut response,
            metadata,
            &reply.answers,
            &reply.authorities,
            &reply.additionals,
        )
        .await
    }
}

/// Encodes and sends a response (truncated to the asker's UDP size, which
/// EDNS may raise from 512 bytes).
pub async fn send<R: ResponseHandler>(
    request: &Request,
    response: &mut R,
    metadata: Metadata,
    answers: &[Record],
    authorities: &[Record],
    additionals: &[Record],
) -> ResponseInfo {
    let edns = request.edns.as_ref().map(|asked| {
        let mut ours = Edns::new();
        ours.set_max_payload(asked.max_payload().clamp(512, 4096));
        ours
    });
    let message = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
        metadata,
        answers.iter(),
        authorities.iter(),
        std::iter::empty(),
        additionals.iter(),
    );
    match response.send_response(message).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, "cannot send a DNS response");
            let mut failed = metadata;
            failed.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata: failed,
                counts: HeaderCounts::default(),
            })
        }
    }
}

/// The host's client configuration: from `kubeconfig`, or (unset) the
/// ServiceAccount of the Pod this runs in.
pub async fn host_config(kubeconfig: Option<&std::path::Path>) -> Result<kube::Config, String> {
    match kubeconfig {
        Some(path) => {
            let parsed = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(parsed, &Default::default())
                .await
                .map_err(|e| format!("{}: {e}", path.display()))
        }
        None => kube::Config::incluster()
            .map_err(|e| format!("no --kubeconfig, and not in a Pod with a ServiceAccount: {e}")),
    }
}

/// The first nameserver of the process's `/etc/resolv.conf` (the node's
/// resolver, for a Pod with `dnsPolicy: Default`).
pub fn system_upstream() -> Option<SocketAddr> {
    forward::resolv_conf_nameserver(&std::fs::read_to_string("/etc/resolv.conf").ok()?)
}
