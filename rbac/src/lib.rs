//! RBAC inside each virtual cluster, as kube-apiserver's RBAC authorizer
//! enforces it: a request's attributes ([`Attributes`]), rules and whether
//! they allow it or cover others ([`rules`]), the default roles every VC
//! has without storing them ([`defaults`]), a VC's compiled [`Policy`], and
//! the [`Authorizer`] that keeps every active VC's policy in memory from
//! the watch cache. It knows no HTTP.

pub mod defaults;
pub mod index;
pub mod policy;
pub mod request;
pub mod rules;

pub use index::Authorizer;
pub use policy::{Objects, Policy, Subject, AUTHENTICATED, MASTERS};
pub use request::Attributes;
pub use rules::Rule;
