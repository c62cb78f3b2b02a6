//! Types shared by the apiserver and the syncer: the admin API
//! (`VirtualCluster`, `HostCluster`), well-known labels, and the tenant→host
//! name mapping. Built with the API server and syncer issues; nothing here yet.
