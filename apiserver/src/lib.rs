//! kplex-apiserver
