//! The kplex API server: opens storage and (as it grows) serves the
//! Kubernetes API of every virtual cluster. See ARCHITECTURE.md.

pub mod storage_config;
