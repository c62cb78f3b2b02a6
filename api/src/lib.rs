//! Names and rules shared by every kplex crate that speaks about virtual
//! clusters: well-known annotations and paths (`names`), resource
//! quantities (`quantity`) and what an object uses of a quota (`quota`).
//! Later: the admin API types and the tenant→host name mapping.

pub mod names;
pub mod quantity;
pub mod quota;
