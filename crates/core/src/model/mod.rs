//! Plain data: what users declare (`plugins.yaml`) and what plugsync pins (`plugins.lock`).
//!
//! These types carry no I/O. Their serde shape *is* the file format, and the JSON schemas in
//! `schemas/` are generated from them (`cargo run --bin codegen`), so the schema, the parser
//! and the docs cannot drift apart.

mod lock_state;
pub mod lockfile;
mod marketplace;
pub mod pluginset;

pub use lock_state::{LockChange, LockState};
pub use lockfile::{LockedImage, LockedInventory, LockedPlugin, PluginLock};
pub use marketplace::{marketplace_batch_url, marketplace_download_url};
pub use pluginset::*;

/// The API group and version of every plugsync document and resource.
pub const API_VERSION: &str = "plugsync.dev/v1alpha1";
