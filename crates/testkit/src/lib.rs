//! Dev-only test support for plugsync: the synthetic repository generator behind the
//! benchmark and the scale tests. Never a dependency of the product.
pub mod synth;

use plugsync_core::crd::{Plugin, PluginPhase, PluginSpec, PluginStatus};
use plugsync_core::fetch::{FetchSettings, Fetchers};
use plugsync_core::model::default_marketplace_url;
use plugsync_core::resolve::cache::Cache;
use plugsync_core::resolve::Resolver;

/// The package size cap the CLI applies by default (64 MiB).
pub const MAX_PACKAGE_BYTES: u64 = 64 << 20;

/// A resolver as `plugsync` builds one with no flags (the public marketplace, the source
/// clients found on `PATH`, the default size cap) over `cache`: what the tests and the
/// benchmark resolve with, so they resolve the way users do.
pub fn resolver(cache: Cache) -> Resolver {
    Resolver::new(
        Fetchers::discover(FetchSettings::default(), default_marketplace_url()),
        cache,
        MAX_PACKAGE_BYTES,
    )
}

/// A Plugin of set `s` named `a/<id>`, at `attempt`, in `phase`, the rest of its spec
/// minimal: for unit tests of code that reads Plugins (the set's status, its conditions),
/// which care about those three fields only. Set more on the result as a test needs.
pub fn plugin(id: &str, attempt: u32, phase: PluginPhase) -> Plugin {
    let spec: PluginSpec = serde_json::from_value(serde_json::json!({
        "pluginSet": "s", "name": format!("a/{id}"), "version": "1", "uniqueIdentifier": "u",
        "pluginId": id, "attempt": attempt,
        "package": {"source": "x", "sha256": "", "checksum": ""},
        "runner": {"language": "python", "version": "3.12", "entrypoint": "main"},
        "build": {"contextSha256": "", "inputsHash": "", "image": "i"},
        "runtime": {}
    }))
    .expect("a valid Plugin spec");
    let mut p = Plugin::new(id, spec);
    p.status = Some(PluginStatus {
        phase: Some(phase),
        ..Default::default()
    });
    p
}
