//! Choosing and opening the storage backend from command-line settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kplex_storage::{EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, EtcdTls, Store};

/// Where kplex keeps its data.
#[derive(Debug, Clone, clap::Args)]
pub struct StorageArgs {
    /// Directory for kplex's data (embedded store, certificates, kubeconfigs).
    #[arg(long, default_value = "./kplex-data", env = "KPLEX_DATA_DIR")]
    pub data_dir: PathBuf,
    /// etcd endpoints (comma-separated); without them kplex uses its embedded store.
    #[arg(long, value_delimiter = ',', env = "KPLEX_ETCD_ENDPOINTS")]
    pub etcd_endpoints: Vec<String>,
    /// CA bundle that signed etcd's serving certificate (enables TLS to etcd).
    #[arg(long, requires = "etcd_endpoints")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long, requires = "etcd_cafile")]
    pub etcd_certfile: Option<PathBuf>,
    /// Key of the client certificate for etcd.
    #[arg(long, requires = "etcd_certfile")]
    pub etcd_keyfile: Option<PathBuf>,
    /// Bound on each etcd request.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    pub etcd_timeout: u64,
    /// Memory for the embedded store's cache of its file's pages.
    #[arg(long, default_value_t = kplex_storage::DEFAULT_CACHE_BYTES >> 20, value_name = "MIB")]
    pub embedded_cache_mib: usize,
    /// Memory for the embedded store's current values of recently read
    /// keys (0: none), which point reads serve without reading the file.
    #[arg(long, default_value_t = kplex_storage::DEFAULT_POINT_CACHE_BYTES >> 20, value_name = "MIB")]
    pub embedded_point_cache_mib: usize,
}

/// Why storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A TLS file could not be read.
    #[error("reading {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The backend refused to open.
    #[error(transparent)]
    Store(#[from] kplex_storage::StoreError),
}

impl StorageArgs {
    /// Opens etcd when endpoints are given, else the embedded store in the data dir.
    pub async fn open(&self) -> Result<Arc<dyn Store>, OpenError> {
        if self.etcd_endpoints.is_empty() {
            let dir = self.data_dir.join("store");
            let options = EmbeddedOptions {
                cache_bytes: self.embedded_cache_mib << 20,
                point_cache_bytes: self.embedded_point_cache_mib << 20,
                ..Default::default()
            };
            let store = EmbeddedStore::open(&dir, options).await?;
            return Ok(Arc::new(store));
        }
        let mut options = EtcdOptions::new(self.etcd_endpoints.clone());
        options.request_timeout = Duration::from_secs(self.etcd_timeout);
        if let Some(ca) = &self.etcd_cafile {
            options.tls = Some(EtcdTls {
                ca_pem: read(ca)?,
                client_cert_pem: self.etcd_certfile.as_ref().map(read).transpose()?,
                client_key_pem: self.etcd_keyfile.as_ref().map(read).transpose()?,
                domain_name: None,
            });
        }
        Ok(Arc::new(EtcdStore::connect(options).await?))
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, OpenError> {
    std::fs::read(path).map_err(|source| OpenError::ReadFile {
        path: path.clone(),
        source,
    })
}
