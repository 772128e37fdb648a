//! Fast paths for the YAML plugsync reads and writes most: exact, never approximate.
//!
//! `serde_yaml` (libyaml underneath) is the reference for every byte plugsync parses or
//! prints, but it was most of the cost of rendering and loading large sets. Each fast
//! path here handles a narrow subset and answers only where its result is certain to be
//! what `serde_yaml` gives; everywhere else it answers `None` and the caller uses
//! `serde_yaml` itself. Differential tests hold each one to that rule.

pub(crate) mod emit;
pub(crate) mod parse;
pub(crate) mod strict;
pub(crate) mod tree;

pub(crate) use parse::{parse, parse_tree};
pub(crate) use tree::Node;

/// Whether `bytes` are all printable ASCII or `\n`: the characters that mean the same to
/// libyaml and to the fast paths, on the way in and out. Branch-free over blocks, so long
/// documents are checked many bytes at a time.
pub(crate) fn printable_ascii(bytes: &[u8]) -> bool {
    let printable_or_newline = |b: u8| (b == b'\n') | (b.wrapping_sub(b' ') < 0x5f);
    bytes.chunks(64).all(|block| {
        block
            .iter()
            .fold(true, |ok, &b| ok & printable_or_newline(b))
    })
}

/// `value` as YAML, exactly as `serde_yaml::to_string` prints it: through the fast path
/// where it answers, else through serde_yaml.
pub(crate) fn to_string(value: &serde_json::Value) -> Result<String, serde_yaml::Error> {
    match emit::to_string(value) {
        Some(text) => Ok(text),
        None => serde_yaml::to_string(value),
    }
}

/// `text` read into `T` exactly as `serde_yaml::from_str` reads it, with the document
/// as parsed (a [`Node`] tree of what `serde_yaml` reads into a JSON value; loading checks
/// it for keys `T` dropped); `None` when either step is not certain, and the caller takes
/// the serde_yaml path (its errors included).
///
/// Why the two paths agree whenever this answers: [`crate::yaml::parse_tree`] answers only
/// when its tree is what `serde_yaml` parses into a `serde_json::Value`, and the fast
/// parser produces only plain `true`/`false`/`null`, plain decimal integers, and strings
/// (plain words that `serde_yaml` resolves to strings, or quoted/literal scalars), in
/// block or compact-JSON mappings and sequences without tags, anchors or duplicate keys.
/// [`strict::Strict`] then answers each request the way `serde_yaml`'s deserializer
/// answers it for such a node (a bool from a bool, an integer from an integer visited as
/// `u64` unless negative, a string from a string, `None` from null, a struct or map from
/// a mapping, a list from a sequence, a unit enum variant from a string) and refuses
/// everything where the two could differ, e.g. a `String` field holding `1` or `true`
/// (serde_yaml reads the plain scalar as a string; the tree holds a number or bool, so
/// this refuses and the slow path gives serde_yaml's answer), `null` for a list, a struct
/// written as a list, an enum variant written as a map, bytes. Map order: the tree sorts
/// a mapping's entries by key (as `serde_json::Map` does), so `T` sees the keys sorted
/// rather than as written. No key repeats, and the types loaded here (`PluginSet`,
/// `PluginLock` and the Kubernetes types inside, the package manifest: all derived or
/// field-by-field `visit_map` impls and `BTreeMap`s) do not depend on the order of
/// distinct keys; a `T` that did (an `IndexMap` field) should not come this way.
pub(crate) fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Option<(T, Node<'_>)> {
    let written = parse_tree(text)?;
    let value = T::deserialize(strict::Strict::Node(&written)).ok()?;
    Some((value, written))
}

/// What the differential tests of the fast paths share.
#[cfg(test)]
pub(crate) mod testing {
    use rand::{Rng, SeedableRng};

    /// A seeded generator: each differential test runs the same cases every time.
    pub(crate) struct Seeded(rand::rngs::StdRng);

    impl Seeded {
        pub(crate) fn new(seed: u64) -> Seeded {
            Seeded(rand::rngs::StdRng::seed_from_u64(seed))
        }

        /// A number in `0..n`.
        pub(crate) fn below(&mut self, n: usize) -> usize {
            self.0.random_range(0..n)
        }
    }
}
