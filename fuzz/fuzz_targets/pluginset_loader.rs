//! The plugins.yaml and plugins.lock loaders on arbitrary text: they may refuse anything, but
//! must never panic, and every refusal must carry at least one located diagnostic.
//!
//! Run with `cargo +nightly fuzz run pluginset_loader` from the repository root.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use plugsync::load::{load_lock, load_plugin_set};
use plugsync::Error;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match load_plugin_set(Path::new("plugins.yaml"), text) {
        Ok(set) => assert_eq!(set.plugins.len(), set.spec().spec.plugins.len()),
        Err(Error::Invalid(d)) => assert!(!d.0.is_empty()),
        Err(other) => panic!("unexpected error kind: {other}"),
    }
    if let Err(e) = load_lock(Path::new("plugins.lock"), text) {
        assert!(matches!(e, Error::Invalid(ref d) if !d.0.is_empty()), "{e}");
    }
});
