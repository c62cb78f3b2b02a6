//! Names and rules shared by every kplex crate that speaks about virtual
//! clusters: well-known annotations and paths (`names`), resource
//! quantities (`quantity`), what an object uses of a quota (`quota`),
//! where a tenant's objects live on a host cluster (`mapping`), a VC's
//! isolation policy (`isolation`), its limits (`limits`) and the rules it sets for Pods
//! (`podsecurity`).

pub mod isolation;
pub mod limits;
pub mod mapping;
pub mod names;
pub mod podsecurity;
pub mod quantity;
pub mod quota;
