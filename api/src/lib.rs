//! Names and rules shared by every kplex crate that speaks about virtual
//! clusters: well-known annotations and paths (`names`), resource
//! quantities (`quantity`), what an object uses of a quota (`quota`) and
//! where a tenant's objects live on a host cluster (`mapping`).

pub mod mapping;
pub mod names;
pub mod quantity;
pub mod quota;
