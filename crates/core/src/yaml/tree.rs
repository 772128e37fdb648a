//! The two forms a fast-parsed document takes, and what the emitter needs of a document.
//!
//! The fast parser builds either a `serde_json::Value` (what loading, planning and
//! applying work on) or a [`Node`] tree that borrows the parsed text. `plugsync render`
//! parses every rendered object only to check it and print it again in serde_yaml's form;
//! through a `Value` that meant allocating every string and map node, sorting the keys
//! into B-trees, and freeing it all after printing. A [`Node`] holds slices of the text
//! and one vector per collection, and prints the same bytes.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

/// A parsed document borrowing its text. Mapping entries are sorted by key, as a
/// `serde_json::Map`'s are, and keys are unique, so printing a node gives the same bytes
/// as printing the `Value` the same text parses to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node<'a> {
    Null,
    Bool(bool),
    /// A decimal integer: its text, written exactly as `Display` writes the number (the
    /// parser accepts no sign `+`, no leading zeros and no `-0`), and its value.
    Integer(&'a str, Number),
    String(Cow<'a, str>),
    Sequence(Vec<Node<'a>>),
    Mapping(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// The value of `key`, when this is a mapping that has it.
    pub(crate) fn get(&self, key: &str) -> Option<&Node<'a>> {
        match self {
            Node::Mapping(entries) => entries
                .binary_search_by(|(k, _)| k.as_ref().cmp(key))
                .ok()
                .map(|i| &entries[i].1),
            _ => None,
        }
    }

    /// The text, when this is a string.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    /// The same document as a `Value` (what [`super::parse`] gives for the same text).
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Integer(_, number) => Value::Number(number.clone()),
            Node::String(s) => Value::String(s.to_string()),
            Node::Sequence(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            Node::Mapping(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

/// What the fast parser builds a document into. A mapping is refused (`None`) when a key
/// repeats, as serde_yaml refuses it.
pub(crate) trait Build<'a>: Sized {
    /// A mapping under construction.
    type Entries;
    fn null() -> Self;
    fn bool(value: bool) -> Self;
    /// A decimal integer: its text and its value.
    fn integer(text: &'a str, number: Number) -> Self;
    fn string(text: Cow<'a, str>) -> Self;
    fn sequence(items: Vec<Self>) -> Self;
    fn entries() -> Self::Entries;
    /// Adds an entry; `false` when the key is already there.
    fn insert(entries: &mut Self::Entries, key: Cow<'a, str>, value: Self) -> bool;
    /// The finished mapping; `None` when a key repeats.
    fn mapping(entries: Self::Entries) -> Option<Self>;
}

impl<'a> Build<'a> for Value {
    type Entries = Map<String, Value>;

    fn null() -> Self {
        Value::Null
    }

    fn bool(value: bool) -> Self {
        Value::Bool(value)
    }

    fn integer(_: &'a str, number: Number) -> Self {
        Value::Number(number)
    }

    fn string(text: Cow<'a, str>) -> Self {
        Value::String(text.into_owned())
    }

    fn sequence(items: Vec<Self>) -> Self {
        Value::Array(items)
    }

    fn entries() -> Self::Entries {
        Map::new()
    }

    fn insert(entries: &mut Self::Entries, key: Cow<'a, str>, value: Self) -> bool {
        entries.insert(key.into_owned(), value).is_none()
    }

    fn mapping(entries: Self::Entries) -> Option<Self> {
        Some(Value::Object(entries))
    }
}

impl<'a> Build<'a> for Node<'a> {
    type Entries = Vec<(Cow<'a, str>, Node<'a>)>;

    fn null() -> Self {
        Node::Null
    }

    fn bool(value: bool) -> Self {
        Node::Bool(value)
    }

    fn integer(text: &'a str, number: Number) -> Self {
        Node::Integer(text, number)
    }

    fn string(text: Cow<'a, str>) -> Self {
        Node::String(text)
    }

    fn sequence(items: Vec<Self>) -> Self {
        Node::Sequence(items)
    }

    fn entries() -> Self::Entries {
        Vec::new()
    }

    fn insert(entries: &mut Self::Entries, key: Cow<'a, str>, value: Self) -> bool {
        // Repeated keys are found once the mapping is sorted.
        entries.push((key, value));
        true
    }

    fn mapping(mut entries: Self::Entries) -> Option<Self> {
        // Keys are unique once checked, so an unstable sort gives the one order.
        entries.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        if entries.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            return None;
        }
        Some(Node::Mapping(entries))
    }
}

/// A document node as the emitter sees it.
pub(crate) enum Shape<'n, T> {
    Null,
    Bool(bool),
    /// An integer, as `Display` writes it.
    Integer(Cow<'n, str>),
    /// A number the fast emitter does not print (a float).
    Float,
    String(&'n str),
    Sequence(&'n [T]),
    /// A mapping with this many entries (see [`Tree::entries`]).
    Mapping(usize),
}

/// A document the emitter can print: `Value`, or [`Node`].
pub(crate) trait Tree: Sized {
    fn shape(&self) -> Shape<'_, Self>;
    /// A mapping's entries, in key order; nothing for other nodes.
    fn entries(&self) -> impl Iterator<Item = (&str, &Self)>;
}

impl Tree for Value {
    fn shape(&self) -> Shape<'_, Self> {
        match self {
            Value::Null => Shape::Null,
            Value::Bool(b) => Shape::Bool(*b),
            Value::Number(n) if n.is_i64() || n.is_u64() => {
                Shape::Integer(Cow::Owned(n.to_string()))
            }
            Value::Number(_) => Shape::Float,
            Value::String(s) => Shape::String(s),
            Value::Array(items) => Shape::Sequence(items),
            Value::Object(map) => Shape::Mapping(map.len()),
        }
    }

    fn entries(&self) -> impl Iterator<Item = (&str, &Self)> {
        self.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v))
    }
}

impl Tree for Node<'_> {
    fn shape(&self) -> Shape<'_, Self> {
        match self {
            Node::Null => Shape::Null,
            Node::Bool(b) => Shape::Bool(*b),
            Node::Integer(text, _) => Shape::Integer(Cow::Borrowed(text)),
            Node::String(s) => Shape::String(s),
            Node::Sequence(items) => Shape::Sequence(items),
            Node::Mapping(entries) => Shape::Mapping(entries.len()),
        }
    }

    fn entries(&self) -> impl Iterator<Item = (&str, &Self)> {
        let entries: &[(Cow<'_, str>, Node<'_>)] = match self {
            Node::Mapping(entries) => entries,
            _ => &[],
        };
        entries.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_mapping_is_sorted_and_refuses_repeated_keys() {
        let entries = |keys: &[&'static str]| {
            let mut entries = <Node<'_> as Build<'_>>::entries();
            for (i, key) in keys.iter().enumerate() {
                let text = ["0", "1", "2"][i];
                let node = Node::Integer(text, Number::from(i));
                Node::insert(&mut entries, Cow::Borrowed(key), node);
            }
            Node::mapping(entries)
        };
        let node = entries(&["b", "a", "c"]).expect("distinct keys");
        let keys: Vec<&str> = node.entries().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(node.get("b"), Some(&Node::Integer("0", Number::from(0))));
        assert_eq!(node.get("d"), None);
        assert_eq!(entries(&["a", "b", "a"]), None);
    }
}
