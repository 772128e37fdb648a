//! `Package::read` on arbitrary bytes: it may refuse anything, but must never panic,
//! hang or allocate without bound (packages come from untrusted sources).
//!
//! Run with `cargo +nightly fuzz run package_reader` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;
use plugsync::package::{parse_unique_identifier, Package};

fuzz_target!(|data: &[u8]| {
    if let Ok(package) = Package::read(data) {
        // Accepted packages must yield a well-formed identity.
        let uid = package.unique_identifier();
        assert!(parse_unique_identifier(&uid).is_ok(), "{uid}");
        assert_eq!(package.plugin_id().len(), 32);
    }
});
