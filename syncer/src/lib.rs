//! kplex-syncer
