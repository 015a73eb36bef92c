//! berth: a self-hosted OCI registry and pull-through cache. The binary (`main.rs`) is a thin CLI over this library.

pub mod archive;
pub mod config;
pub mod http;
pub mod meta;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod prefetch;
pub mod registry;
pub mod server;
pub mod store;
