//! The etcd backend, on `etcd-client`.
//!
//! Each conditional write is one etcd transaction whose failure branch reads
//! the key, so a conflict reports the current value without a second round
//! trip. Every call is bounded by a timeout; a broken watch reconnects with
//! backoff from the revision after the last one delivered.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Certificate, Client, CompactionOptions, Compare, CompareOp, ConnectOptions, DeleteOptions,
    EventType, GetOptions, Identity, KvClient, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchClient, WatchOptions, WatchResponse,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{StoreError, StoreResult};
use crate::keyspace::{Key, KeyPrefix};
use crate::store::{
    Deleted, DeletedRange, Event, KeyValue, RangeRequest, RangeResponse, Revision, Store,
    WatchEvent, WatchStream, DEFAULT_MAX_VALUE_BYTES, DEFAULT_PROGRESS_INTERVAL,
};

/// Responses can carry many objects; gRPC's 4 MiB default is too small.
const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;
/// Events buffered between the watch task and its consumer.
const STREAM_BUFFER: usize = 256;

/// TLS material for talking to etcd, as PEM.
#[derive(Clone, Debug, Default)]
pub struct EtcdTls {
    /// CA bundle that signed etcd's serving certificates.
    pub ca_pem: Vec<u8>,
    /// Client certificate and key, for etcd's client-cert auth.
    pub client_cert_pem: Option<Vec<u8>>,
    /// Key of `client_cert_pem`.
    pub client_key_pem: Option<Vec<u8>>,
    /// Name to verify in etcd's certificate, if not the endpoint's host.
    pub domain_name: Option<String>,
}

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// `host:port` or URLs; several for a cluster.
    pub endpoints: Vec<String>,
    /// TLS, or `None` for plaintext.
    pub tls: Option<EtcdTls>,
    /// Bound on each request, and on establishing a connection.
    pub request_timeout: Duration,
    /// How long a broken watch keeps trying to reconnect before it fails.
    pub reconnect_timeout: Duration,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Idle time after which a watch asks etcd for progress.
    pub progress_interval: Duration,
}

impl EtcdOptions {
    /// Defaults for the given endpoints.
    pub fn new(endpoints: Vec<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            tls: None,
            request_timeout: Duration::from_secs(5),
            reconnect_timeout: Duration::from_secs(30),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
        }
    }
}

/// A [`Store`] on an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    kv: KvClient,
    watch: WatchClient,
    client: Client,
    options: EtcdOptions,
}

impl EtcdStore {
    /// Connects and checks that etcd answers; an unreachable cluster is an
    /// [`StoreError::Unavailable`] after `request_timeout`, not a hang.
    pub async fn connect(options: EtcdOptions) -> StoreResult<EtcdStore> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoints given".into()));
        }
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let endpoints: Vec<String> = options
            .endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("{scheme}://{e}")
                }
            })
            .collect();
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.request_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(10), options.request_timeout);
        if let Some(tls) = &options.tls {
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            match (&tls.client_cert_pem, &tls.client_key_pem) {
                (Some(cert), Some(key)) => config = config.identity(Identity::from_pem(cert, key)),
                (None, None) => {}
                _ => {
                    return Err(StoreError::Unavailable(
                        "etcd client certificate and key must be given together".into(),
                    ))
                }
            }
            if let Some(name) = &tls.domain_name {
                config = config.domain_name(name.clone());
            }
            connect = connect.with_tls(config);
        }
        let client = bounded(
            options.request_timeout,
            Client::connect(endpoints.clone(), Some(connect)),
        )
        .await
        .map_err(|e| StoreError::Unavailable(format!("etcd at {endpoints:?}: {e}")))?;
        let store = EtcdStore {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            client,
            options,
        };
        store
            .current_revision()
            .await
            .map_err(|e| StoreError::Unavailable(format!("etcd at {endpoints:?}: {e}")))?;
        Ok(store)
    }

    /// Runs one request within `request_timeout`, retrying as [`retry_unsent`] says.
    async fn call<T, Fut>(&self, request: impl Fn() -> Fut) -> StoreResult<T>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let timeout = self.options.request_timeout;
        let deadline = Instant::now() + timeout;
        let result = retry_unsent(&self.options, deadline, || {
            bounded(
                deadline.saturating_duration_since(Instant::now()),
                request(),
            )
        })
        .await;
        match result {
            Err(StoreError::Timeout(_)) => Err(StoreError::Timeout(timeout)),
            other => other,
        }
    }

    fn check_size(&self, value: &Bytes) -> StoreResult<()> {
        let limit = self.options.max_value_bytes;
        if value.len() > limit {
            return Err(StoreError::ValueTooLarge {
                size: value.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Runs a transaction whose failure branch is a `get` of `key`; on
    /// failure returns the key's current value (or `None`).
    async fn txn_or_current(&self, key: &Key, txn: Txn) -> StoreResult<TxnOutcome> {
        let resp = self
            .call(|| {
                let (mut kv, txn) = (self.kv.clone(), txn.clone());
                async move { kv.txn(txn).await }
            })
            .await?;
        let revision = header_revision(resp.header())?;
        let responses = resp.op_responses();
        if resp.succeeded() {
            return Ok(TxnOutcome::Succeeded {
                revision,
                responses,
            });
        }
        let current = match responses.first() {
            Some(TxnOpResponse::Get(get)) => get.kvs().first().map(convert_kv).transpose()?,
            _ => None,
        };
        match current {
            Some(kv) => Ok(TxnOutcome::Failed(Box::new(kv))),
            None => Err(StoreError::NotFound {
                key: key.to_string(),
            }),
        }
    }
}

enum TxnOutcome {
    Succeeded {
        revision: Revision,
        responses: Vec<TxnOpResponse>,
    },
    Failed(Box<KeyValue>),
}

/// Bounds a call by `timeout` and maps etcd's errors.
async fn bounded<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> StoreResult<T> {
    match tokio::time::timeout(timeout, f).await {
        Ok(result) => result.map_err(|e| map_error(e, timeout)),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

fn map_error(e: etcd_client::Error, timeout: Duration) -> StoreError {
    use etcd_client::Error as E;
    match e {
        E::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("request is too large") {
                return StoreError::ValueTooLarge { size: 0, limit: 0 };
            }
            match status.code() {
                tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                    if !message.contains("mvcc") =>
                {
                    StoreError::Unavailable(message.to_owned())
                }
                tonic::Code::DeadlineExceeded => StoreError::Timeout(timeout),
                _ => StoreError::Internal(format!("etcd: {message}")),
            }
        }
        E::TransportError(t) => StoreError::Unavailable(t.to_string()),
        E::IoError(io) => StoreError::Unavailable(io.to_string()),
        E::WatchError(w) => StoreError::Unavailable(w),
        other => StoreError::Internal(other.to_string()),
    }
}

/// Pause between tries of a request that never reached etcd.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Runs `attempt` until it succeeds, fails in a way other than "could not
/// connect", or `deadline` passes. A request that could not even connect was
/// never sent, so trying again is safe; with several endpoints the balanced
/// channel may pick a live one next time. With one endpoint there is nothing
/// else to try, so the first failure stands.
async fn retry_unsent<T, Fut>(
    options: &EtcdOptions,
    deadline: Instant,
    attempt: impl Fn() -> Fut,
) -> StoreResult<T>
where
    Fut: Future<Output = StoreResult<T>>,
{
    loop {
        match attempt().await {
            Err(StoreError::Unavailable(m))
                if options.endpoints.len() > 1
                    && never_sent(&m)
                    && Instant::now() + RETRY_PAUSE < deadline =>
            {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// Whether an error means the request never reached etcd.
fn never_sent(message: &str) -> bool {
    message.contains("tcp connect error") || message.contains("Connection refused")
}

fn is_compacted(e: &StoreError) -> bool {
    matches!(e, StoreError::Internal(m) if m.contains("required revision has been compacted"))
}

fn is_future(e: &StoreError) -> bool {
    matches!(e, StoreError::Internal(m) if m.contains("required revision is a future revision"))
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> StoreResult<Revision> {
    let rev = header
        .ok_or_else(|| StoreError::Internal("etcd response without header".into()))?
        .revision();
    Ok(Revision::new(
        u64::try_from(rev).map_err(StoreError::internal)?,
    ))
}

fn revision(raw: i64) -> Revision {
    Revision::new(raw.max(0) as u64)
}

fn convert_kv(kv: &etcd_client::KeyValue) -> StoreResult<KeyValue> {
    Ok(KeyValue {
        key: Key::from_backend(kv.key())?,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: revision(kv.create_revision()),
        mod_revision: revision(kv.mod_revision()),
    })
}

fn as_i64(r: Revision) -> i64 {
    i64::try_from(r.get()).unwrap_or(i64::MAX)
}

impl EtcdStore {
    /// Deletes the keys from `prefix` up to `end` (exclusive) in one
    /// request; `more` is passed on as the result's.
    async fn delete_keys(
        &self,
        prefix: &KeyPrefix,
        end: Vec<u8>,
        more: bool,
    ) -> StoreResult<DeletedRange> {
        let options = DeleteOptions::new().with_range(end);
        let resp = self
            .call(|| {
                let (mut kv, options) = (self.kv.clone(), options.clone());
                async move { kv.delete(prefix.as_str(), Some(options)).await }
            })
            .await?;
        Ok(DeletedRange {
            deleted: resp.deleted().max(0) as u64,
            revision: header_revision(resp.header())?,
            more,
        })
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &Key) -> StoreResult<Option<KeyValue>> {
        let resp = self
            .call(|| {
                let mut kv = self.kv.clone();
                async move { kv.get(key.as_str(), None).await }
            })
            .await?;
        resp.kvs().first().map(convert_kv).transpose()
    }

    async fn range(&self, request: RangeRequest) -> StoreResult<RangeResponse> {
        let start = match &request.after {
            Some(after) if after.as_str() >= request.prefix.as_str() => {
                format!("{}\0", after.as_str())
            }
            _ => request.prefix.as_str().to_owned(),
        };
        let mut options = GetOptions::new().with_range(request.prefix.range_end());
        if let Some(limit) = request.limit.filter(|&l| l > 0) {
            options = options.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        if let Some(rev) = request.revision {
            options = options.with_revision(as_i64(rev));
        }
        let resp = match self
            .call(|| {
                let (mut kv, options) = (self.kv.clone(), options.clone());
                let start = start.as_str();
                async move { kv.get(start, Some(options)).await }
            })
            .await
        {
            Ok(resp) => resp,
            Err(e) if is_compacted(&e) => {
                return Err(StoreError::Compacted {
                    requested: request.revision.unwrap_or_default(),
                })
            }
            Err(e) if is_future(&e) => {
                return Err(StoreError::FutureRevision {
                    requested: request.revision.unwrap_or_default(),
                })
            }
            Err(e) => return Err(e),
        };
        let kvs = resp
            .kvs()
            .iter()
            .map(convert_kv)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(RangeResponse {
            kvs,
            revision: match request.revision {
                Some(r) => r,
                None => header_revision(resp.header())?,
            },
            more: resp.more(),
        })
    }

    async fn count(&self, prefix: &KeyPrefix) -> StoreResult<u64> {
        let options = GetOptions::new()
            .with_range(prefix.range_end())
            .with_count_only();
        let resp = self
            .call(|| {
                let (mut kv, options) = (self.kv.clone(), options.clone());
                async move { kv.get(prefix.as_str(), Some(options)).await }
            })
            .await?;
        Ok(resp.count().max(0) as u64)
    }

    async fn create(&self, key: &Key, value: Bytes) -> StoreResult<KeyValue> {
        self.check_size(&value)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value.to_vec(), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        match self.txn_or_current(key, txn).await? {
            TxnOutcome::Succeeded { revision, .. } => Ok(KeyValue {
                key: key.clone(),
                value,
                create_revision: revision,
                mod_revision: revision,
            }),
            TxnOutcome::Failed(current) => Err(StoreError::AlreadyExists { current }),
        }
    }

    async fn update(&self, key: &Key, value: Bytes, expected: Revision) -> StoreResult<KeyValue> {
        self.check_size(&value)?;
        // A missing key has mod_revision 0 in etcd; requiring create_revision > 0
        // keeps an update from creating it.
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.as_str(), CompareOp::Equal, as_i64(expected)),
                Compare::create_revision(key.as_str(), CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::put(
                key.as_str(),
                value.to_vec(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        match self.txn_or_current(key, txn).await? {
            TxnOutcome::Succeeded {
                revision,
                responses,
            } => {
                let create_revision = match responses.first() {
                    Some(TxnOpResponse::Put(put)) => put
                        .prev_key()
                        .map_or(revision, |p| self::revision(p.create_revision())),
                    _ => revision,
                };
                Ok(KeyValue {
                    key: key.clone(),
                    value,
                    create_revision,
                    mod_revision: revision,
                })
            }
            TxnOutcome::Failed(current) => Err(StoreError::Conflict { expected, current }),
        }
    }

    async fn delete(&self, key: &Key, expected: Revision) -> StoreResult<Deleted> {
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.as_str(), CompareOp::Equal, as_i64(expected)),
                Compare::create_revision(key.as_str(), CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::delete(
                key.as_str(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        match self.txn_or_current(key, txn).await? {
            TxnOutcome::Succeeded {
                revision,
                responses,
            } => {
                let prev = match responses.first() {
                    Some(TxnOpResponse::Delete(d)) => d.prev_kvs().first().map(convert_kv),
                    _ => None,
                };
                let prev = prev.transpose()?.ok_or_else(|| {
                    StoreError::Internal("etcd delete returned no previous value".into())
                })?;
                Ok(Deleted { prev, revision })
            }
            TxnOutcome::Failed(current) => Err(StoreError::Conflict { expected, current }),
        }
    }

    async fn delete_range(&self, prefix: &KeyPrefix) -> StoreResult<DeletedRange> {
        self.delete_keys(prefix, prefix.range_end().into_bytes(), false)
            .await
    }

    /// The first `limit` keys are found (keys only), then the range up to
    /// the last of them deleted in one request.
    async fn delete_batch(&self, prefix: &KeyPrefix, limit: usize) -> StoreResult<DeletedRange> {
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let options = GetOptions::new()
            .with_range(prefix.range_end())
            .with_keys_only()
            .with_limit(limit);
        let found = self
            .call(|| {
                let (mut kv, options) = (self.kv.clone(), options.clone());
                async move { kv.get(prefix.as_str(), Some(options)).await }
            })
            .await?;
        let Some(last) = found.kvs().last() else {
            return Ok(DeletedRange {
                deleted: 0,
                revision: header_revision(found.header())?,
                more: false,
            });
        };
        let mut end = last.key().to_vec();
        end.push(0);
        self.delete_keys(prefix, end, found.more()).await
    }

    async fn current_revision(&self) -> StoreResult<Revision> {
        let options = GetOptions::new().with_count_only();
        let resp = self
            .call(|| {
                let (mut kv, options) = (self.kv.clone(), options.clone());
                async move { kv.get(KeyPrefix::root().as_str(), Some(options)).await }
            })
            .await?;
        header_revision(resp.header())
    }

    async fn compact(&self, revision: Revision) -> StoreResult<()> {
        let options = CompactionOptions::new().with_physical();
        match self
            .call(|| {
                let (mut client, options) = (self.client.clone(), options.clone());
                async move { client.compact(as_i64(revision), Some(options)).await }
            })
            .await
        {
            Ok(_) => Ok(()),
            // Compacting to an already compacted revision is a no-op, as on
            // the embedded store.
            Err(e) if is_compacted(&e) => Ok(()),
            Err(e) if is_future(&e) => Err(StoreError::FutureRevision {
                requested: revision,
            }),
            Err(e) => Err(e),
        }
    }

    async fn watch(&self, prefix: &KeyPrefix, after: Revision) -> StoreResult<WatchStream> {
        let current = self.current_revision().await?;
        if after > current {
            return Err(StoreError::FutureRevision { requested: after });
        }
        let deadline = Instant::now() + self.options.request_timeout;
        let stream = retry_unsent(&self.options, deadline, || {
            open_watch(&self.watch, &self.options, prefix, after)
        })
        .await?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let task = EtcdWatch {
            client: self.watch.clone(),
            options: self.options.clone(),
            prefix: prefix.clone(),
            last: after,
            synced_at: None,
            tx,
        };
        tokio::spawn(task.run(stream));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

async fn open_watch(
    client: &WatchClient,
    options: &EtcdOptions,
    prefix: &KeyPrefix,
    after: Revision,
) -> StoreResult<etcd_client::WatchStream> {
    let watch_options = WatchOptions::new()
        .with_range(prefix.range_end())
        .with_start_revision(as_i64(after) + 1)
        .with_prev_key()
        .with_progress_notify();
    bounded(
        options.request_timeout,
        client.clone().watch(prefix.as_str(), Some(watch_options)),
    )
    .await
}

struct EtcdWatch {
    client: WatchClient,
    options: EtcdOptions,
    prefix: KeyPrefix,
    /// The revision of the last change delivered (or the start). Only events
    /// move it, never progress reports: etcd before 3.4.24 / 3.5.8 can answer
    /// a progress request with the current revision while it is still
    /// replaying history (etcd issue 15220), and trusting that would drop the
    /// rest of the replay.
    last: Revision,
    /// etcd's revision when the current watch stream was created. Until the
    /// changes delivered reach it, etcd may still be replaying history, and
    /// a progress report (issue 15220 again) may name a revision whose
    /// changes are still to come: such reports are passed on as `last`, not
    /// as their own revision. `None` until the stream says it is created.
    synced_at: Option<Revision>,
    tx: mpsc::Sender<StoreResult<WatchEvent>>,
}

/// What to do after one response from etcd.
enum Next {
    Continue,
    Reconnect,
    Stop,
}

impl EtcdWatch {
    async fn run(mut self, mut stream: etcd_client::WatchStream) {
        let interval = self.options.progress_interval;
        let mut idle_until = Instant::now() + interval;
        loop {
            let next = tokio::select! {
                _ = self.tx.closed() => Next::Stop,
                message = stream.message() => match message {
                    Ok(Some(resp)) => {
                        let next = self.handle(resp).await;
                        idle_until = Instant::now() + interval;
                        next
                    }
                    Ok(None) => Next::Reconnect,
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd watch broke");
                        Next::Reconnect
                    }
                },
                _ = tokio::time::sleep_until(idle_until) => {
                    idle_until = Instant::now() + interval;
                    match stream.request_progress().await {
                        Ok(()) => Next::Continue,
                        Err(_) => Next::Reconnect,
                    }
                }
            };
            match next {
                Next::Continue => {}
                Next::Stop => return,
                Next::Reconnect => match self.reconnect().await {
                    Some(s) => stream = s,
                    None => return,
                },
            }
        }
    }

    async fn handle(&mut self, resp: WatchResponse) -> Next {
        if resp.compact_revision() > 0 {
            let _ = self
                .tx
                .send(Err(StoreError::Compacted {
                    requested: self.last,
                }))
                .await;
            return Next::Stop;
        }
        if resp.canceled() {
            tracing::warn!(reason = resp.cancel_reason(), "etcd cancelled the watch");
            return Next::Reconnect;
        }
        if resp.created() {
            self.synced_at = header_revision(resp.header()).ok();
            return Next::Continue;
        }
        if resp.events().is_empty() {
            let rev = match header_revision(resp.header()) {
                Ok(r) => r,
                Err(_) => return Next::Continue,
            };
            let replaying = self.synced_at.is_none_or(|at| self.last < at);
            let progress = if replaying {
                self.last
            } else {
                self.last.max(rev)
            };
            return self.send(Ok(WatchEvent::Progress(progress))).await;
        }
        // One revision's events arrive in one response; skip only revisions
        // delivered before it (replays after a reconnect).
        let delivered = self.last;
        for event in resp.events() {
            let converted = match convert_event(event) {
                Ok(e) => e,
                Err(e) => {
                    let _ = self.tx.send(Err(e)).await;
                    return Next::Stop;
                }
            };
            if converted.revision() <= delivered {
                continue;
            }
            self.last = self.last.max(converted.revision());
            if let Next::Stop = self.send(Ok(WatchEvent::Change(converted))).await {
                return Next::Stop;
            }
        }
        Next::Continue
    }

    async fn send(&self, item: StoreResult<WatchEvent>) -> Next {
        match self.tx.send(item).await {
            Ok(()) => Next::Continue,
            Err(_) => Next::Stop,
        }
    }

    /// Re-establishes the watch after `last`, with exponential backoff, until
    /// `reconnect_timeout` passes; then the consumer gets `Unavailable`.
    async fn reconnect(&mut self) -> Option<etcd_client::WatchStream> {
        let deadline = Instant::now() + self.options.reconnect_timeout;
        let mut delay = Duration::from_millis(50);
        loop {
            if self.tx.is_closed() {
                return None;
            }
            match open_watch(&self.client, &self.options, &self.prefix, self.last).await {
                Ok(stream) => {
                    // A new stream replays from `last` until it is synced.
                    self.synced_at = None;
                    return Some(stream);
                }
                Err(e) if Instant::now() + delay > deadline => {
                    let _ = self
                        .tx
                        .send(Err(StoreError::Unavailable(format!(
                            "etcd watch could not reconnect: {e}"
                        ))))
                        .await;
                    return None;
                }
                Err(e) => tracing::debug!(error = %e, ?delay, "etcd watch reconnecting"),
            }
            tokio::select! {
                _ = self.tx.closed() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

fn convert_event(event: &etcd_client::Event) -> StoreResult<Event> {
    let kv = event
        .kv()
        .ok_or_else(|| StoreError::Internal("etcd event without key".into()))?;
    let kv = convert_kv(kv)?;
    let prev = event.prev_kv().map(convert_kv).transpose()?;
    Ok(match event.event_type() {
        EventType::Put => Event::Put { kv, prev },
        EventType::Delete => {
            let revision = kv.mod_revision;
            // etcd omits the previous value only if it was compacted away.
            let prev = prev.unwrap_or(KeyValue {
                value: Bytes::new(),
                create_revision: Revision::default(),
                mod_revision: Revision::default(),
                ..kv
            });
            Event::Delete { prev, revision }
        }
    })
}
