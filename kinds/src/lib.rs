//! The built-in kinds of kplex: the catalog every VC serves and one
//! strategy per kind (decoding through k8s-openapi's types, defaults,
//! validation, immutability on update, table printers, selectable fields,
//! Service allocation), and the Kubernetes protobuf decoding of request
//! bodies. The generic store (`kplex-registry`) knows none of this by name.

pub mod catalog;
pub mod cel;
pub mod custom;
pub mod defaults;
pub mod fields;
pub mod immutable;
pub mod printers;
pub mod protobuf;
pub mod schema;
pub mod services;
pub mod strategy;
pub mod validation;
