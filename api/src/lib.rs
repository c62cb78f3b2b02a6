//! kplex-api
