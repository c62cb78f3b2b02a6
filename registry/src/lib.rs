//! The generic store of kplex: one implementation of get, list, watch,
//! create, update, patch, server-side apply and delete for every kind, over
//! the [`resource::Strategy`] each kind supplies. It knows no kind by name
//! (but namespaces, whose lifecycle every namespaced object shares), holds
//! no HTTP, and reaches storage only through one VC's `TenantKeyspace`.
//!
//! Beside it: the watch cache in front of storage, label and field
//! selectors, the patch types, field ownership (`managedFields`), and the
//! checks every kind's metadata gets.

pub mod allocation;
pub mod duplicates;
pub mod error;
pub mod generic;
pub mod managed;
pub mod meta;
pub mod patch;
pub mod pervc;
pub mod quota;
pub mod raw;
pub mod resource;
pub mod selectors;
pub mod table;
pub mod usage;
pub mod warnings;
pub mod watchcache;
pub mod yaml;

pub use error::ApiError;
pub use generic::GenericStore;
pub use http::StatusCode;
pub use resource::{Catalog, ResourceInfo, Strategy};
