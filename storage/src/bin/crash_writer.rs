//! Writes to an embedded store until killed, printing one line per
//! acknowledged write: `create <key> <revision>` or `counter <key> <value> <revision>`.
//! The crash test kills it with SIGKILL and checks that every printed write
//! survived. Not part of kplex itself.

use std::io::Write;

use bytes::Bytes;
use kplex_storage::{EmbeddedOptions, EmbeddedStore, Store, StoreError, TenantKeyspace};

const WRITERS: usize = 16;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .expect("usage: kplex-storage-crash-writer DIR RUN");
    let run = args
        .next()
        .expect("usage: kplex-storage-crash-writer DIR RUN");
    let store = EmbeddedStore::open(&dir, EmbeddedOptions::default())
        .await
        .expect("open store");
    let ks = TenantKeyspace::for_vc("crash").expect("keyspace");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for w in 0..WRITERS {
        let store = store.clone();
        let ks = ks.clone();
        let tx = tx.clone();
        let run = run.clone();
        tokio::spawn(async move {
            let counter = ks
                .object_key("", "configmaps", Some("counters"), &format!("w{w}"))
                .expect("key");
            for i in 0u64.. {
                let key = ks
                    .object_key("", "configmaps", Some("run"), &format!("r{run}-w{w}-{i}"))
                    .expect("key");
                let kv = store
                    .create(&key, Bytes::from(format!("value-{i}")))
                    .await
                    .expect("create");
                let _ = tx.send(format!("create {} {}\n", key, kv.mod_revision));
                // Bump the writer's counter with compare-and-swap.
                let (value, rev) = match store.get(&counter).await.expect("get") {
                    None => match store.create(&counter, Bytes::from_static(b"1")).await {
                        Ok(kv) => (1, kv.mod_revision),
                        Err(e) => panic!("{e}"),
                    },
                    Some(cur) => {
                        let n: u64 = std::str::from_utf8(&cur.value).unwrap().parse().unwrap();
                        match store
                            .update(&counter, Bytes::from((n + 1).to_string()), cur.mod_revision)
                            .await
                        {
                            Ok(kv) => (n + 1, kv.mod_revision),
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                };
                let _ = tx.send(format!("counter {counter} {value} {rev}\n"));
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    while let Some(line) = rx.recv().await {
        out.write_all(line.as_bytes()).expect("stdout");
        out.flush().expect("stdout");
    }
}
