//! The kplex API server. The request path, as built so far:
//! TLS (rustls, client certificates optional) → authentication (the
//! certificate's kplex identity) → routing → handler → the generic store
//! (`kplex-registry`) over the built-in kinds (`kplex-kinds`). See
//! ARCHITECTURE.md.

pub mod admin;
pub mod admission;
pub mod authz;
pub mod bootstrap;
pub mod cli;
pub mod discovery;
pub mod fairness;
pub mod handler;
pub mod hostclusters;
pub mod metrics;
pub mod openapi;
pub mod policy;
pub mod proxy;
pub mod rates;
pub mod response;
pub mod reviews;
pub mod server;
pub mod storage_config;
pub mod system;
pub mod tenant;
pub mod tokens;
pub mod virtualclusters;
pub mod watchstream;

/// Asks the allocator (mimalloc, the binary's) to return the pages it
/// holds free to the system: after a burst that is freed at once — the
/// controllers' first listing of every VC, a large VC's deletion — the
/// memory would otherwise stay counted against the process.
pub fn give_back_memory() {
    // SAFETY: mi_collect only walks the allocator's own free lists.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
