//! End-to-end tests that drive the real `kplex` binary with real clients.
//! The first scenarios arrive with the API server issue.
