//! The seam to the server-side-apply engine in [`crate::testkit::ssa`]: maps the URL's
//! subresource and the engine's errors to what the handlers use.

use serde_json::Value;

use super::errors::ApiError;
use crate::testkit::ssa::{self, Subresource};

fn subresource(sub: Option<&str>) -> Subresource {
    Subresource::from_name(sub).unwrap_or(Subresource::Main)
}

/// Server-side apply of `config` onto `live` by `manager`.
pub(crate) fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
    sub: Option<&str>,
) -> Result<Value, ApiError> {
    ssa::apply_to(live, config, manager, force, now, subresource(sub)).map_err(|e| ApiError {
        code: e.code(),
        status: e.to_status(),
    })
}

/// managedFields bookkeeping for create/update/patch.
pub(crate) fn record_update(
    old: Option<&Value>,
    new: Value,
    manager: &str,
    now: &str,
    sub: Option<&str>,
) -> Value {
    ssa::record_update_to(old, new, manager, now, subresource(sub))
}

pub(crate) use ssa::{only_status, strip_status};
