//! Names outside every VC's domain: asked of the host's upstream resolver
//! (UDP, then TCP when the answer is truncated) and kept for their TTL,
//! per VC: a shared cache would tell a tenant, by a TTL already counting
//! down, which names another tenant looked up lately.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_server::proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one try may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Answers kept at most (the oldest go first when full).
const CACHE_ENTRIES: usize = 10_000;
/// The longest an answer is kept, whatever its TTL.
const MAX_TTL: u32 = 300;
/// How long a negative answer without an SOA is kept.
const NEGATIVE_TTL: u32 = 5;
/// Questions out to the upstream at once (each holds a socket).
const IN_FLIGHT: usize = 256;

/// What the upstream said.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Its response code.
    pub code: ResponseCode,
    /// Its answer section.
    pub answers: Vec<Record>,
    /// Its authority section.
    pub authorities: Vec<Record>,
}

struct Cached {
    reply: Reply,
    stored: Instant,
    ttl: u32,
}

/// The upstream resolver and what it said lately.
pub struct Upstream {
    addr: SocketAddr,
    cache: Mutex<HashMap<Key, Cached>>,
    in_flight: tokio::sync::Semaphore,
}

/// A cached answer's key: the VC that asked, the question.
type Key = (std::sync::Arc<str>, String, RecordType, DNSClass);

impl Upstream {
    /// The resolver at `addr`.
    pub fn new(addr: SocketAddr) -> Upstream {
        Upstream {
            addr,
            cache: Mutex::new(HashMap::new()),
            in_flight: tokio::sync::Semaphore::new(IN_FLIGHT),
        }
    }

    /// Where it is.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Asks (`name`, `qtype`, `class`) for VC `vc`, from its cache while
    /// the TTL lasts.
    pub async fn ask(
        &self,
        vc: &std::sync::Arc<str>,
        name: &Name,
        qtype: RecordType,
        class: DNSClass,
    ) -> Result<Reply, String> {
        let key = (vc.clone(), name.to_lowercase().to_ascii(), qtype, class);
        if let Some(reply) = self.cached(&key) {
            return Ok(reply);
        }
        let _turn = self.in_flight.acquire().await.map_err(|e| e.to_string())?;
        let mut query = Message::query();
        query.metadata.id = fresh_id();
        query.metadata.recursion_desired = true;
        let mut question = Query::query(name.clone(), qtype);
        question.set_query_class(class);
        query.add_query(question);
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        query.set_edns(edns);
        let mut response = self.over_udp(&query).await?;
        if response.metadata.truncation {
            response = self.over_tcp(&query).await?;
        }
        let reply = Reply {
            code: response.metadata.response_code,
            answers: response.answers,
            authorities: response.authorities,
        };
        if matches!(reply.code, ResponseCode::NoError | ResponseCode::NXDomain) {
            self.keep(key, &reply);
        }
        Ok(reply)
    }

    fn cached(&self, key: &Key) -> Option<Reply> {
        let cache = self.cache.lock().expect("cache lock");
        let entry = cache.get(key)?;
        let age = u32::try_from(entry.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= entry.ttl {
            return None;
        }
        let mut reply = entry.reply.clone();
        for record in reply.answers.iter_mut().chain(reply.authorities.iter_mut()) {
            record.ttl = record.ttl.saturating_sub(age);
        }
        Some(reply)
    }

    fn keep(&self, key: Key, reply: &Reply) {
        let ttl = if reply.answers.is_empty() {
            reply
                .authorities
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                    _ => None,
                })
                .unwrap_or(NEGATIVE_TTL)
        } else {
            reply.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
        }
        .min(MAX_TTL);
        if ttl == 0 {
            return;
        }
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.stored.elapsed().as_secs() < u64::from(c.ttl));
            // Not a tenth freed: the tenth nearest to expiring goes too
            // (one pass now, not one per insert).
            if cache.len() >= CACHE_ENTRIES - CACHE_ENTRIES / 10 {
                let mut left: Vec<(Instant, Key)> = cache
                    .iter()
                    .map(|(k, c)| (c.stored + Duration::from_secs(u64::from(c.ttl)), k.clone()))
                    .collect();
                left.sort_by_key(|(expires, _)| *expires);
                for (_, k) in left.into_iter().take(CACHE_ENTRIES / 10) {
                    cache.remove(&k);
                }
            }
        }
        cache.insert(
            key,
            Cached {
                reply: reply.clone(),
                stored: Instant::now(),
                ttl,
            },
        );
    }

    async fn over_udp(&self, query: &Message) -> Result<Message, String> {
        let bytes = query.to_vec().map_err(|e| e.to_string())?;
        let local: SocketAddr = if self.addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(local)
            .await
            .map_err(|e| e.to_string())?;
        socket.connect(self.addr).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        for _ in 0..2 {
            socket.send(&bytes).await.map_err(|e| e.to_string())?;
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            loop {
                match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(e.to_string()),
                    Ok(Ok(n)) => {
                        if let Some(response) = answer_to(query, &buf[..n]) {
                            return Ok(response);
                        }
                    }
                }
            }
        }
        Err(format!("upstream {} did not answer", self.addr))
    }

    async fn over_tcp(&self, query: &Message) -> Result<Message, String> {
        let bytes = query.to_vec().map_err(|e| e.to_string())?;
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
            let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            stream.write_all(&framed).await?;
            let len = stream.read_u16().await?;
            let mut buf = vec![0u8; usize::from(len)];
            stream.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let buf = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| format!("upstream {} did not answer over TCP", self.addr))?
            .map_err(|e| e.to_string())?;
        answer_to(query, &buf)
            .ok_or_else(|| format!("upstream {} answered something else", self.addr))
    }
}

/// `bytes` as the response to `query` (its ID and question), if it is.
fn answer_to(query: &Message, bytes: &[u8]) -> Option<Message> {
    let response = Message::from_vec(bytes).ok()?;
    (response.metadata.id == query.metadata.id
        && response.metadata.message_type == MessageType::Response
        && response.metadata.op_code == OpCode::Query
        && response.queries == query.queries)
        .then_some(response)
}

/// A query ID no one can guess from the last.
fn fresh_id() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    (hasher.finish() & 0xffff) as u16
}

/// The first `nameserver` of resolv.conf text, on port 53.
pub fn resolv_conf_nameserver(text: &str) -> Option<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            rest.trim()
                .split('%')
                .next()?
                .parse::<std::net::IpAddr>()
                .ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_nameserver_is_the_upstream() {
        let text =
            "# generated\nsearch example.com\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n";
        assert_eq!(
            resolv_conf_nameserver(text),
            Some("192.0.2.53:53".parse().unwrap())
        );
        assert_eq!(
            resolv_conf_nameserver("nameserver fe80::1%eth0\n"),
            Some("[fe80::1]:53".parse().unwrap())
        );
        assert_eq!(resolv_conf_nameserver("search x\n"), None);
    }
}
