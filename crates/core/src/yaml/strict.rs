//! Reading a fast-parsed document into its type exactly as `serde_yaml` reads the text.
//!
//! `serde_json::Value`'s own deserializer is more lenient than `serde_yaml`'s (it reads a
//! struct from an array, an enum from a one-key map, bytes from a string; and
//! `serde_yaml::Value`'s reads `null` as an empty list), so a document `serde_yaml`
//! refuses could load. [`Strict`] answers only the requests `serde_yaml` answers the same
//! way for every scalar the fast parser produces, and refuses the rest, which sends the
//! document down the `serde_yaml` path (its diagnostics included).

use std::borrow::Cow;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Node;

/// Any refusal: the caller falls back to `serde_yaml`, so no detail is kept.
#[derive(Debug)]
pub(crate) struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not on the fast path")
    }
}

impl std::error::Error for Refused {}

impl de::Error for Refused {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Refused
    }
}

/// A node of the parsed document (which borrows text living at least as long), or a
/// mapping key (always a string).
#[derive(Clone, Copy)]
pub(crate) enum Strict<'a, 't> {
    Node(&'a Node<'t>),
    Key(&'a str),
}

impl<'a> Strict<'a, '_> {
    fn str(self) -> Option<&'a str> {
        match self {
            Strict::Node(Node::String(s)) => Some(s),
            Strict::Key(s) => Some(s),
            _ => None,
        }
    }

    /// Integers as `serde_yaml` visits a plain integer: `u64` unless negative.
    fn number<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Strict::Node(Node::Integer(_, n)) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => visitor.visit_u64(u),
                (None, Some(i)) => visitor.visit_i64(i),
                _ => Err(Refused),
            },
            _ => Err(Refused),
        }
    }
}

macro_rules! numbers {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
            self.number(visitor)
        })*
    };
}

macro_rules! strings {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
            visitor.visit_borrowed_str(self.str().ok_or(Refused)?)
        })*
    };
}

impl<'a> Deserializer<'a> for Strict<'a, '_> {
    type Error = Refused;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Strict::Key(s) => visitor.visit_borrowed_str(s),
            Strict::Node(node) => match node {
                Node::Null => visitor.visit_unit(),
                Node::Bool(b) => visitor.visit_bool(*b),
                Node::Integer(..) => self.number(visitor),
                Node::String(s) => visitor.visit_borrowed_str(s),
                Node::Sequence(items) => visitor.visit_seq(Seq(items.iter())),
                Node::Mapping(entries) => visitor.visit_map(Map {
                    iter: entries.iter(),
                    value: None,
                }),
            },
        }
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Strict::Node(Node::Bool(b)) => visitor.visit_bool(*b),
            _ => Err(Refused),
        }
    }

    numbers! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64
    }

    strings! { deserialize_char deserialize_str deserialize_string deserialize_identifier }

    fn deserialize_bytes<V: Visitor<'a>>(self, _: V) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, _: V) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Strict::Node(Node::Null) => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Strict::Node(Node::Null) => visitor.visit_unit(),
            _ => Err(Refused),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Strict::Node(Node::Sequence(items)) => visitor.visit_seq(Seq(items.iter())),
            _ => Err(Refused),
        }
    }

    fn deserialize_tuple<V: Visitor<'a>>(self, _: usize, visitor: V) -> Result<V::Value, Refused> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self {
            Strict::Node(Node::Mapping(entries)) => visitor.visit_map(Map {
                iter: entries.iter(),
                value: None,
            }),
            _ => Err(Refused),
        }
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.deserialize_map(visitor)
    }

    /// Only a unit variant written as a string: `serde_yaml` reads other variants
    /// from tags (`!Variant`), which the fast parser never accepts.
    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        visitor.visit_enum(UnitVariant(self.str().ok_or(Refused)?))
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_unit()
    }
}

struct Seq<'a, 't>(std::slice::Iter<'a, Node<'t>>);

impl<'a> SeqAccess<'a> for Seq<'a, '_> {
    type Error = Refused;

    fn next_element_seed<S: DeserializeSeed<'a>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Refused> {
        self.0
            .next()
            .map(|v| seed.deserialize(Strict::Node(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Map<'a, 't> {
    iter: std::slice::Iter<'a, (Cow<'t, str>, Node<'t>)>,
    value: Option<&'a Node<'t>>,
}

impl<'a> MapAccess<'a> for Map<'a, '_> {
    type Error = Refused;

    fn next_key_seed<S: DeserializeSeed<'a>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, Refused> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(Strict::Key(k)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'a>>(&mut self, seed: S) -> Result<S::Value, Refused> {
        seed.deserialize(Strict::Node(self.value.take().ok_or(Refused)?))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct UnitVariant<'a>(&'a str);

impl<'a> de::EnumAccess<'a> for UnitVariant<'a> {
    type Error = Refused;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'a>>(self, seed: S) -> Result<(S::Value, Self), Refused> {
        Ok((seed.deserialize(Strict::Key(self.0))?, self))
    }
}

impl<'a> de::VariantAccess<'a> for UnitVariant<'a> {
    type Error = Refused;

    fn unit_variant(self) -> Result<(), Refused> {
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'a>>(self, _: S) -> Result<S::Value, Refused> {
        Err(Refused)
    }

    fn tuple_variant<V: Visitor<'a>>(self, _: usize, _: V) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn struct_variant<V: Visitor<'a>>(
        self,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Refused> {
        Err(Refused)
    }
}
