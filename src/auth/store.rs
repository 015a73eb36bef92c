//! What the auth domain needs from the metadata store: its records and trait live with the store
//! (`berth_meta::auth`), so users and tokens share the database, its transactions and its schema.

pub use crate::meta::auth::{AuthStore, TokenRecord, UserRecord};
