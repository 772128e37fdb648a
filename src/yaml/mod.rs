//! Fast paths for the YAML plugsync reads and writes most: exact, never approximate.
//!
//! `serde_yaml` (libyaml underneath) is the reference for every byte plugsync parses or
//! prints, but it was most of the cost of rendering and loading large sets. Each fast
//! path here handles a narrow subset and answers only where its result is certain to be
//! what `serde_yaml` gives; everywhere else it answers `None` and the caller uses
//! `serde_yaml` itself. Differential tests hold each one to that rule.

pub(crate) mod emit;
pub(crate) mod parse;

pub(crate) use parse::parse;

/// `value` as YAML, exactly as `serde_yaml::to_string` prints it: through the fast path
/// where it answers, else through serde_yaml.
pub(crate) fn to_string(value: &serde_json::Value) -> Result<String, serde_yaml::Error> {
    match emit::to_string(value) {
        Some(text) => Ok(text),
        None => serde_yaml::to_string(value),
    }
}
