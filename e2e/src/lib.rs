//! kplex-e2e
