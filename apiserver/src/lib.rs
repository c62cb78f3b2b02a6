//! The kplex API server. The request path, as built so far:
//! TLS (rustls, client certificates optional) → authentication (the
//! certificate's kplex identity) → routing → handler → the generic store
//! (`kplex-registry`) over the built-in kinds (`kplex-kinds`). See
//! ARCHITECTURE.md.

pub mod admin;
pub mod admission;
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
