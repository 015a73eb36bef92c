//! berth: a self-hosted OCI registry and pull-through cache. The binary (`main.rs`) is a thin CLI over this library.

pub mod archive;
pub mod auth;
pub mod config;
pub mod connections;
pub mod http;
pub mod human;
pub mod maint;
pub mod migrate;
pub mod mirror;
pub mod prefetch;
pub mod registry;
pub mod server;
pub mod stores;
pub mod tls;
pub mod ui;
pub mod worker;

// The layers below the domain are crates of their own (docs/architecture.md); they keep their old paths here.
pub use berth_meta as meta;
pub use berth_metrics as metrics;
pub use berth_oci as oci;
pub use berth_store as store;
