//! berth: a self-hosted OCI registry and pull-through cache. The binary (`main.rs`) is a thin CLI over this library.

pub mod archive;
pub mod auth;
pub mod config;
pub mod http;
pub mod maint;
pub mod meta;
pub mod metrics;
pub mod migrate;
pub mod mirror;
pub mod oci;
pub mod prefetch;
pub mod registry;
pub mod server;
pub mod store;
pub mod tls;
pub mod ui;
pub mod worker;
