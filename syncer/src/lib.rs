//! The syncer: runs each tenant's workloads on shared host clusters. Built
//! with the syncer issue; nothing here yet.
