//! kplex-certs
