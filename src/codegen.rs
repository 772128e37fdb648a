//! Generated artifacts (JSON schemas, later CRDs), committed to the repository.
//!
//! They are generated from the Rust types so that they cannot disagree with the parser;
//! `cargo run --bin codegen` rewrites them and `cargo run --bin codegen -- --check` (run by CI
//! and by `tests/generated.rs`) fails when the committed copies have drifted.

use crate::model::{PluginLock, PluginSet};

/// Every generated file: path relative to the repository root, and its exact contents.
pub fn artifacts() -> Vec<(&'static str, String)> {
    vec![
        ("schemas/pluginset.schema.json", json_schema::<PluginSet>()),
        (
            "schemas/pluginlock.schema.json",
            json_schema::<PluginLock>(),
        ),
    ]
}

fn json_schema<T: schemars::JsonSchema>() -> String {
    let schema = schemars::schema_for!(T);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
