//! The committed JSON schemas (and later CRDs) must match what the code generates.

#[test]
fn committed_artifacts_match_the_code() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (rel, expected) in plugsync_core::codegen::artifacts() {
        let committed = std::fs::read_to_string(root.join(rel))
            .unwrap_or_else(|e| panic!("{rel}: {e}; run `cargo run --bin codegen`"));
        assert!(
            committed == expected,
            "{rel} is out of date; run `cargo run --bin codegen` and commit the result"
        );
    }
}
