//! The kplex API server. The request path, as built so far:
//! TLS (rustls, client certificates optional) → authentication (the
//! certificate's kplex identity) → routing → handler. See ARCHITECTURE.md.

pub mod admin;
pub mod bootstrap;
pub mod catalog;
pub mod cli;
pub mod defaults;
pub mod duplicates;
pub mod generic;
pub mod handler;
pub mod immutable;
pub mod managed;
pub mod metrics;
pub mod openapi;
pub mod patch;
pub mod printers;
pub mod protobuf;
pub mod quota;
pub mod reviews;
pub mod selectors;
pub mod server;
pub mod services;
pub mod status;
pub mod storage_config;
pub mod tenant;
pub mod virtualclusters;
pub mod warnings;
pub mod watchcache;
pub mod watchstream;
pub mod yaml;
