//! Test stores for the conformance suite.

#![allow(dead_code)]

pub mod etcd;

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use kplex_storage::{EmbeddedOptions, EmbeddedStore, Store};

/// A fresh store and whatever keeps it alive (its directory or etcd process).
pub struct TestStore {
    pub store: Arc<dyn Store>,
    pub max_value_bytes: usize,
    _guard: Box<dyn std::any::Any + Send>,
}

impl Deref for TestStore {
    type Target = dyn Store;
    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}

/// Short, so idle-watch tests see progress quickly.
pub const PROGRESS: Duration = Duration::from_millis(100);

pub fn embedded_options() -> EmbeddedOptions {
    EmbeddedOptions {
        progress_interval: PROGRESS,
        compaction_interval: None,
        ..EmbeddedOptions::default()
    }
}

impl TestStore {
    pub async fn embedded() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let options = embedded_options();
        let store = EmbeddedStore::open(dir.path(), options.clone())
            .await
            .unwrap();
        TestStore {
            store: Arc::new(store),
            max_value_bytes: options.max_value_bytes,
            _guard: Box::new(dir),
        }
    }

    pub async fn etcd() -> TestStore {
        let server = etcd::EtcdServer::start().await;
        let store = server.connect().await;
        TestStore {
            store: Arc::new(store),
            max_value_bytes: server.options().max_value_bytes,
            _guard: Box::new(server),
        }
    }
}
