//! Identities for kplex: CA bootstrap, serving certificates, and client
//! certificates bound to one virtual cluster. Built with the API server issue;
//! nothing here yet.
