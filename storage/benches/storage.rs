//! Storage benchmark: each kplex backend beside its raw baseline, measured in
//! the same run, printed as a Markdown table with ratios.
//!
//! - embedded backend vs raw redb (same file layout size, one write
//!   transaction per create, the way a naive caller would use redb);
//! - etcd backend vs raw `etcd-client` calls against the same etcd.
//!
//! Run: `hack/bench-storage` (or `cargo bench -p kplex-storage --bench storage`).
//! `KPLEX_BENCH_SCALE` (default 1.0) scales the operation counts.

#[path = "../tests/support/etcd.rs"]
mod etcd;
mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kplex_storage::{
    EmbeddedOptions, EmbeddedStore, Key, RangeRequest, Revision, Store, TenantKeyspace, WatchEvent,
};
use redb::{ReadableDatabase, TableDefinition};
use support::{header, row, run, scale, Stats};

/// A watch that delivers nothing for this long has failed.
const STALL: Duration = Duration::from_secs(30);
const VALUE: &[u8] = &[b'x'; 512];
const RAW_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("raw");

fn key(ks: &TenantKeyspace, name: &str) -> Key {
    ks.object_key("", "configmaps", Some("bench"), name)
        .unwrap()
}

/// The operations of one side (kplex or baseline) of a comparison.
trait Side: Clone + Send + Sync + 'static {
    fn create(&self, name: String) -> impl Future<Output = ()> + Send;
    fn get(&self, name: String) -> impl Future<Output = ()> + Send;
    fn range100(&self) -> impl Future<Output = ()> + Send;
    /// Replays the first `expect` events of its prefix from the start of history.
    fn replay(&self, expect: usize) -> impl Future<Output = usize> + Send;
}

#[derive(Clone)]
struct Kplex {
    store: Arc<dyn Store>,
    ks: TenantKeyspace,
    tag: &'static str,
}

impl Side for Kplex {
    async fn create(&self, name: String) {
        self.store
            .create(
                &key(&self.ks, &format!("{}-{name}", self.tag)),
                Bytes::from_static(VALUE),
            )
            .await
            .unwrap();
    }
    async fn get(&self, name: String) {
        self.store
            .get(&key(&self.ks, &format!("{}-{name}", self.tag)))
            .await
            .unwrap()
            .unwrap();
    }
    async fn range100(&self) {
        let mut req = RangeRequest::prefix(self.ks.prefix().clone());
        req.limit = Some(100);
        assert_eq!(self.store.range(req).await.unwrap().kvs.len(), 100);
    }
    async fn replay(&self, expect: usize) -> usize {
        let mut w = self
            .store
            .watch(self.ks.prefix(), Revision::new(0))
            .await
            .unwrap();
        let mut n = 0;
        while n < expect {
            match tokio::time::timeout(STALL, w.next()).await {
                Ok(Some(Ok(WatchEvent::Change(_)))) => n += 1,
                Ok(Some(Ok(WatchEvent::Progress(_)))) => {}
                Ok(other) => panic!("kplex watch ended after {n} events: {other:?}"),
                Err(_) => panic!("kplex watch stalled after {n} of {expect} events"),
            }
        }
        n
    }
}

/// redb used directly: one durable write transaction per create.
#[derive(Clone)]
struct RawRedb {
    db: Arc<redb::Database>,
    prefix: String,
}

impl Side for RawRedb {
    async fn create(&self, name: String) {
        let db = self.db.clone();
        let k = format!("{}raw-{name}", self.prefix);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().unwrap();
            txn.open_table(RAW_TABLE)
                .unwrap()
                .insert(k.as_str(), VALUE)
                .unwrap();
            txn.commit().unwrap();
        })
        .await
        .unwrap();
    }
    // Reads run on the caller's thread, as the embedded backend's do.
    async fn get(&self, name: String) {
        let k = format!("{}raw-{name}", self.prefix);
        let txn = self.db.begin_read().unwrap();
        let t = txn.open_table(RAW_TABLE).unwrap();
        let value = t
            .get(k.as_str())
            .unwrap()
            .expect("written")
            .value()
            .to_vec();
        assert_eq!(value.len(), VALUE.len());
    }
    async fn range100(&self) {
        let txn = self.db.begin_read().unwrap();
        let t = txn.open_table(RAW_TABLE).unwrap();
        let n = copy_rows(&t, &self.prefix, 100);
        assert_eq!(n, 100);
    }
    async fn replay(&self, expect: usize) -> usize {
        // The raw equivalent of a replay: scan and copy `expect` rows.
        let db = self.db.clone();
        let p = self.prefix.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().unwrap();
            let t = txn.open_table(RAW_TABLE).unwrap();
            copy_rows(&t, &p, expect)
        })
        .await
        .unwrap()
    }
}

/// Copies the values of up to `limit` rows from `start` on, as any reader must.
fn copy_rows(t: &redb::ReadOnlyTable<&str, &[u8]>, start: &str, limit: usize) -> usize {
    let mut n = 0;
    for entry in t.range(start..).unwrap().take(limit) {
        std::hint::black_box(entry.unwrap().1.value().to_vec());
        n += 1;
    }
    n
}

/// etcd-client used directly, with the same requests kplex sends.
#[derive(Clone)]
struct RawEtcd {
    kv: etcd_client::KvClient,
    watch: etcd_client::WatchClient,
    prefix: String,
}

impl Side for RawEtcd {
    async fn create(&self, name: String) {
        use etcd_client::{Compare, CompareOp, Txn, TxnOp};
        let k = format!("{}raw-{name}", self.prefix);
        let txn = Txn::new()
            .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k.clone(), VALUE, None)])
            .or_else([TxnOp::get(k, None)]);
        assert!(self.kv.clone().txn(txn).await.unwrap().succeeded());
    }
    async fn get(&self, name: String) {
        let k = format!("{}raw-{name}", self.prefix);
        assert_eq!(self.kv.clone().get(k, None).await.unwrap().kvs().len(), 1);
    }
    async fn range100(&self) {
        let opts = etcd_client::GetOptions::new().with_prefix().with_limit(100);
        let r = self
            .kv
            .clone()
            .get(self.prefix.clone(), Some(opts))
            .await
            .unwrap();
        assert_eq!(r.kvs().len(), 100);
    }
    async fn replay(&self, expect: usize) -> usize {
        let opts = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(1)
            .with_prev_key();
        let mut w = self
            .watch
            .clone()
            .watch(self.prefix.clone(), Some(opts))
            .await
            .unwrap();
        let mut n = 0;
        while n < expect {
            let resp = tokio::time::timeout(STALL, w.message())
                .await
                .unwrap_or_else(|_| panic!("raw watch stalled after {n} of {expect} events"))
                .unwrap()
                .unwrap();
            n += resp.events().len();
        }
        n
    }
}

async fn compare<A: Side, B: Side>(ours: A, base: B) {
    let creates_1 = scale(1000);
    let creates_64 = scale(20000);
    for (clients, total) in [(1, creates_1), (64, creates_64)] {
        let offset = if clients == 1 { 0 } else { creates_1 };
        let o = ours.clone();
        let a = run(clients, total, move |i| {
            let o = o.clone();
            async move { o.create((offset + i).to_string()).await }
        })
        .await;
        let b2 = base.clone();
        let b = run(clients, total, move |i| {
            let b2 = b2.clone();
            async move { b2.create((offset + i).to_string()).await }
        })
        .await;
        row("create", clients, &a, &b);
    }
    // Names that exist: the 1-client creates, then 64 equal shares of the rest.
    let existing = creates_1 + creates_64 / 64 * 64;
    for clients in [1, 64] {
        let total = scale(if clients == 1 { 5000 } else { 20000 });
        let o = ours.clone();
        let a = run(clients, total, move |i| {
            let o = o.clone();
            async move { o.get((i * 7919 % existing).to_string()).await }
        })
        .await;
        let b2 = base.clone();
        let b = run(clients, total, move |i| {
            let b2 = b2.clone();
            async move { b2.get((i * 7919 % existing).to_string()).await }
        })
        .await;
        row("get", clients, &a, &b);
    }
    for clients in [1, 64] {
        let total = scale(if clients == 1 { 1000 } else { 4000 });
        let o = ours.clone();
        let a = run(clients, total, move |_| {
            let o = o.clone();
            async move { o.range100().await }
        })
        .await;
        let b2 = base.clone();
        let b = run(clients, total, move |_| {
            let b2 = b2.clone();
            async move { b2.range100().await }
        })
        .await;
        row("range (limit 100)", clients, &a, &b);
    }
    // Watch: replay of the events written above, by 1 and by 64 watchers at once.
    let n = scale(2000).min(existing);
    for clients in [1, 64] {
        let o = ours.clone();
        let a = run(clients, clients, move |_| {
            let o = o.clone();
            async move {
                tokio::time::timeout(STALL, o.replay(n))
                    .await
                    .expect("kplex replay stalled");
            }
        })
        .await;
        let b2 = base.clone();
        let b = run(clients, clients, move |_| {
            let b2 = b2.clone();
            async move {
                tokio::time::timeout(STALL, b2.replay(n))
                    .await
                    .expect("raw replay stalled");
            }
        })
        .await;
        let events = |s: &Stats| Stats {
            ops: n * clients,
            elapsed: s.elapsed,
            latencies: s.latencies.clone(),
        };
        row(
            &format!("watch replay ({n} events/watcher, events/s)"),
            clients,
            &events(&a),
            &events(&b),
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "Storage benchmark, {} cores; values of {} bytes. p50/p99 are per operation \
         (for watch: per whole replay). ratio = kplex throughput / baseline throughput.",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        VALUE.len()
    );

    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("kplex"), EmbeddedOptions::default())
        .await
        .unwrap();
    std::fs::create_dir_all(dir.path().join("raw")).unwrap();
    let raw = redb::Database::create(dir.path().join("raw/raw.redb")).unwrap();
    {
        let txn = raw.begin_write().unwrap();
        txn.open_table(RAW_TABLE).unwrap();
        txn.commit().unwrap();
    }
    let ks = TenantKeyspace::for_vc("bench").unwrap();
    header("Embedded backend vs raw redb (durable commits)", "raw redb");
    compare(
        Kplex {
            store: Arc::new(store),
            ks: ks.clone(),
            tag: "k",
        },
        RawRedb {
            db: Arc::new(raw),
            prefix: ks.prefix().to_string(),
        },
    )
    .await;

    let server = etcd::EtcdServer::start().await;
    let store = server.connect().await;
    let client = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .unwrap();
    header(
        "etcd backend vs raw etcd-client (same etcd)",
        "raw etcd-client",
    );
    let raw_ks = TenantKeyspace::for_vc("raw").unwrap();
    compare(
        Kplex {
            store: Arc::new(store),
            ks,
            tag: "k",
        },
        RawEtcd {
            kv: client.kv_client(),
            watch: client.watch_client(),
            prefix: raw_ks.prefix().to_string(),
        },
    )
    .await;
}
