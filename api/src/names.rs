//! Well-known names: annotations kplex sets, the paths its system
//! components use, and the annotation keys reserved to the server.

/// On every item of a cross-VC list or watch (`/clusters/*/…`): the name of
/// the VC the object belongs to.
pub const CLUSTER_ANNOTATION: &str = "tenancy.kplex.dev/cluster";

/// On every item of a cross-VC list or watch: the UID of the VC the object
/// belongs to.
pub const CLUSTER_UID_ANNOTATION: &str = "tenancy.kplex.dev/cluster-uid";

/// Annotations the server sets on the way out and never stores: a client
/// (tenant or system) that sends them back has them removed, so no stored
/// object can claim another VC.
pub const OUTPUT_ONLY_ANNOTATIONS: &[&str] = &[CLUSTER_ANNOTATION, CLUSTER_UID_ANNOTATION];

/// The path segment that addresses every VC at once (`/clusters/*/…`).
pub const ALL_CLUSTERS: &str = "*";

/// The URL path of the system cluster: the objects kplex's own components
/// share (their leader-election Leases), reachable by system credentials
/// only.
pub const SYSTEM_CLUSTER_PATH: &str = "/system";

/// The namespace of the system cluster's Leases.
pub const SYSTEM_NAMESPACE: &str = "kube-system";

/// The admin API's group (`VirtualCluster`, `HostCluster`).
pub const ADMIN_GROUP: &str = "tenancy.kplex.dev";

/// The admin API's version.
pub const ADMIN_VERSION: &str = "v1alpha1";
