//! The shared harness lives in the e2e crate.

pub use kplex_e2e::*;
