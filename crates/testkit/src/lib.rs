//! Dev-only test support for plugsync: the synthetic repository generator behind the
//! benchmark and the scale tests. Never a dependency of the product.
pub mod synth;

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
