//! A YAML document as written: every scalar as its text (with whether it was plain), every
//! key and value with its line and column. Built from the event stream of the parser
//! inside serde-saphyr (`granit-parser`, re-exported by it), so it reads exactly the YAML
//! serde-saphyr reads.
//!
//! serde gives typed values but no positions, so findings made after deserializing
//! (duplicates, bad names, keys a lenient type dropped) would lose their place: [`Index`]
//! answers "where was this path written?". And serde stops at the first error: loading
//! leaves the field in error out of the [`Node`] tree and reads the rest again, printed
//! back as YAML ([`Node::to_yaml`]) so that it reads with serde-saphyr's own rules.

use std::collections::HashMap;

use serde_path_to_error::Segment;
use serde_saphyr::granit_parser::{Event, Parser, ScalarStyle, Span};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// One node of a document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// Where the node starts.
    pub at: Position,
    /// What it is.
    pub kind: Kind,
}

/// The three kinds of YAML node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    /// A scalar: its text after escapes and folding; `plain` when written unquoted (so
    /// `1` may be a number and `null` nothing), else always text.
    Scalar { text: String, plain: bool },
    /// A sequence.
    Sequence(Vec<Node>),
    /// A mapping, in the order written. A key that is not a scalar is kept as `?`.
    Mapping(Vec<Entry>),
}

/// A mapping entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    /// The key's text.
    pub key: String,
    /// Where the key was written.
    pub key_at: Position,
    /// Its value.
    pub value: Node,
}

/// Parsing into a [`Node`] tree.
pub(crate) struct Tree;

impl Tree {
    /// The first document of `text`; `None` when `text` is not YAML (serde-saphyr reports
    /// that error, with its position) or holds no document.
    pub(crate) fn parse(text: &str) -> Option<Node> {
        let mut stack: Vec<Open> = Vec::new();
        let mut anchors: HashMap<usize, Node> = HashMap::new();
        for event in Parser::new_from_str(text) {
            let (event, span) = event.ok()?;
            let at = position(&span);
            let done = match event {
                Event::Scalar(text, style, anchor, _) => {
                    let plain = style == ScalarStyle::Plain;
                    let node = Node {
                        at,
                        kind: Kind::Scalar {
                            text: text.into_owned(),
                            plain,
                        },
                    };
                    remember(&mut anchors, anchor, &node);
                    node
                }
                Event::Alias(id) => Node {
                    at,
                    ..anchors.get(&id)?.clone()
                },
                Event::SequenceStart(_, anchor, _) => {
                    stack.push(Open::new(at, anchor, Kind::Sequence(Vec::new())));
                    continue;
                }
                Event::MappingStart(_, anchor, _) => {
                    stack.push(Open::new(at, anchor, Kind::Mapping(Vec::new())));
                    continue;
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let open = stack.pop()?;
                    remember(&mut anchors, open.anchor, &open.node);
                    open.node
                }
                Event::DocumentEnd if stack.is_empty() => return None,
                _ => continue,
            };
            match stack.last_mut() {
                None => return Some(done),
                Some(parent) => parent.add(done),
            }
        }
        None
    }
}

fn remember(anchors: &mut HashMap<usize, Node>, anchor: usize, node: &Node) {
    if anchor != 0 {
        anchors.insert(anchor, node.clone());
    }
}

fn position(span: &Span) -> Position {
    Position {
        line: span.start.line(),
        column: span.start.col() + 1,
    }
}

/// A collection being read.
struct Open {
    node: Node,
    anchor: usize,
    /// In a mapping: the key read, waiting for its value.
    key: Option<(String, Position)>,
}

impl Open {
    fn new(at: Position, anchor: usize, kind: Kind) -> Open {
        Open {
            node: Node { at, kind },
            anchor,
            key: None,
        }
    }

    /// Adds a child. A block collection's start event may come after its first child was
    /// scanned, so the collection starts where its first child does when that is earlier.
    fn add(&mut self, child: Node) {
        if child.at < self.node.at {
            self.node.at = child.at;
        }
        match &mut self.node.kind {
            Kind::Sequence(items) => items.push(child),
            Kind::Mapping(entries) => match self.key.take() {
                Some((key, key_at)) => entries.push(Entry {
                    key,
                    key_at,
                    value: child,
                }),
                None => {
                    let key = match child.kind {
                        Kind::Scalar { text, .. } => text,
                        _ => "?".to_string(),
                    };
                    self.key = Some((key, child.at));
                }
            },
            Kind::Scalar { .. } => {}
        }
    }
}

impl Node {
    /// The scalar's text.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// Whether this is YAML's null (an empty or `~`/`null` plain scalar).
    pub(crate) fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true }
            if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// The entries, when this is a mapping.
    pub(crate) fn entries(&self) -> Option<&[Entry]> {
        match &self.kind {
            Kind::Mapping(entries) => Some(entries),
            _ => None,
        }
    }

    /// The items, when this is a sequence.
    pub(crate) fn items(&self) -> Option<&[Node]> {
        match &self.kind {
            Kind::Sequence(items) => Some(items),
            _ => None,
        }
    }

    /// The value of mapping key `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }

    /// A scalar standing for text (quoted, so it reads as text whatever it says).
    pub(crate) fn text(text: &str) -> Node {
        Node {
            at: Position::default(),
            kind: Kind::Scalar {
                text: text.to_string(),
                plain: false,
            },
        }
    }

    /// A plain scalar (`0`, `false`: it reads as YAML resolves it).
    pub(crate) fn plain(text: &str) -> Node {
        Node {
            at: Position::default(),
            kind: Kind::Scalar {
                text: text.to_string(),
                plain: true,
            },
        }
    }

    /// An empty mapping or sequence.
    pub(crate) fn empty(mapping: bool) -> Node {
        Node {
            at: Position::default(),
            kind: if mapping {
                Kind::Mapping(Vec::new())
            } else {
                Kind::Sequence(Vec::new())
            },
        }
    }

    /// The node at serde's path `segments`.
    pub(crate) fn at_mut(&mut self, segments: &[Segment]) -> Option<&mut Node> {
        let mut node = self;
        for segment in segments {
            node = match (&mut node.kind, segment) {
                (Kind::Mapping(entries), Segment::Map { key }) => {
                    &mut entries.iter_mut().find(|e| &e.key == key)?.value
                }
                (Kind::Sequence(items), Segment::Seq { index }) => items.get_mut(*index)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// Leaves out the node at `segments` (a mapping entry or a sequence item); false when
    /// there is no such node (the error is about the document or a whole mapping).
    pub(crate) fn remove_at(&mut self, segments: &[Segment]) -> bool {
        let Some((last, parents)) = segments.split_last() else {
            return false;
        };
        let Some(parent) = self.at_mut(parents) else {
            return false;
        };
        match (&mut parent.kind, last) {
            (Kind::Mapping(entries), Segment::Map { key }) => {
                let before = entries.len();
                entries.retain(|e| &e.key != key);
                entries.len() < before
            }
            (Kind::Sequence(items), Segment::Seq { index }) if *index < items.len() => {
                items.remove(*index);
                true
            }
            _ => false,
        }
    }

    /// Sets field `field` of the mapping at `segments` to `value`; false when there is no
    /// mapping there.
    pub(crate) fn insert_at(&mut self, segments: &[Segment], field: &str, value: Node) -> bool {
        let Some(Node {
            kind: Kind::Mapping(entries),
            ..
        }) = self.at_mut(segments)
        else {
            return false;
        };
        entries.retain(|e| e.key != field);
        entries.push(Entry {
            key: field.to_string(),
            key_at: Position::default(),
            value,
        });
        true
    }

    /// The document printed back as YAML that reads as the text this tree came from
    /// (plain scalars unquoted, so they resolve as before; every other scalar quoted).
    pub(crate) fn to_yaml(&self) -> String {
        let mut out = String::new();
        match &self.kind {
            Kind::Scalar { .. } => {
                out.push_str(&self.scalar_yaml());
                out.push('\n');
            }
            _ => self.block(0, &mut out),
        }
        out
    }

    fn scalar_yaml(&self) -> String {
        match &self.kind {
            Kind::Scalar { text, plain: true } if text.is_empty() => "null".into(),
            Kind::Scalar { text, plain: true } if !text.contains('\n') => text.clone(),
            Kind::Scalar { text, .. } => quoted(text),
            Kind::Sequence(_) => "[]".into(),
            Kind::Mapping(_) => "{}".into(),
        }
    }

    fn is_open_collection(&self) -> bool {
        match &self.kind {
            Kind::Sequence(items) => !items.is_empty(),
            Kind::Mapping(entries) => !entries.is_empty(),
            Kind::Scalar { .. } => false,
        }
    }

    fn block(&self, indent: usize, out: &mut String) {
        let pad = " ".repeat(indent);
        let child = |value: &Node, out: &mut String| {
            if value.is_open_collection() {
                out.push('\n');
                value.block(indent + 2, out);
            } else {
                out.push(' ');
                out.push_str(&value.scalar_yaml());
                out.push('\n');
            }
        };
        match &self.kind {
            Kind::Mapping(entries) if !entries.is_empty() => {
                for entry in entries {
                    out.push_str(&pad);
                    out.push_str(&quoted(&entry.key));
                    out.push(':');
                    child(&entry.value, out);
                }
            }
            Kind::Sequence(items) if !items.is_empty() => {
                for item in items {
                    out.push_str(&pad);
                    out.push('-');
                    child(item, out);
                }
            }
            _ => {
                out.push_str(&pad);
                out.push_str(&self.scalar_yaml());
                out.push('\n');
            }
        }
    }
}

/// `text` as a double-quoted YAML scalar (JSON's escapes are YAML's).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// Where each key and value of one document was written, by field path
/// (`spec.plugins[2].version`).
#[derive(Debug, Default, Clone)]
pub(crate) struct Index {
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
}

impl Index {
    /// Indexes `text`; a text that does not parse gives an empty index (serde-saphyr
    /// reports that error with its own position).
    pub(crate) fn build(text: &str) -> Index {
        let mut index = Index::default();
        if let Some(root) = Tree::parse(text) {
            index.add(&root, String::new());
        }
        index
    }

    fn add(&mut self, node: &Node, path: String) {
        match &node.kind {
            Kind::Mapping(entries) => {
                for entry in entries {
                    let child = join_key(&path, &entry.key);
                    self.keys.insert(child.clone(), entry.key_at);
                    self.add(&entry.value, child);
                }
            }
            Kind::Sequence(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.add(item, join_index(&path, i));
                }
            }
            Kind::Scalar { .. } => {}
        }
        self.values.insert(path, node.at);
    }

    /// Where the value at `path` starts.
    pub(crate) fn value(&self, path: &str) -> Option<Position> {
        self.values.get(path).copied()
    }

    /// Where the key of the mapping entry at `path` starts (best place for "unknown field").
    pub(crate) fn key(&self, path: &str) -> Option<Position> {
        self.keys.get(path).copied()
    }

    /// The best position for `path`: its value, else the nearest ancestor's.
    pub(crate) fn nearest(&self, path: &str) -> Position {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.values.get(&p) {
                return *pos;
            }
            match parent_path(&p) {
                Some(parent) => p = parent,
                None => return Position::default(),
            }
        }
    }
}

/// The parent of a field path (`a.b[2]` → `a.b`, `a.b` → `a`, `a` → ``), `None` at the root.
pub(crate) fn parent_path(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(path[..cut].to_string())
}

/// Appends a mapping key to a path.
pub(crate) fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Appends a sequence index to a path.
pub(crate) fn join_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
apiVersion: v1
spec:
  plugins:
    - path: a
      runtime:
        replicas: 2
    - url: https://x
  flow: {a: 1, b: [x, y]}
";

    fn at(line: usize, column: usize) -> Option<Position> {
        Some(Position { line, column })
    }

    #[test]
    fn finds_values_keys_and_sequence_items() {
        let idx = Index::build(DOC);
        assert_eq!(idx.value("apiVersion"), at(1, 13));
        assert_eq!(idx.key("spec.plugins"), at(3, 3));
        assert_eq!(idx.value("spec.plugins[0]"), at(4, 7));
        assert_eq!(idx.value("spec.plugins[0].runtime.replicas"), at(6, 19));
        assert_eq!(idx.key("spec.plugins[1].url"), at(7, 7));
        assert_eq!(idx.value("spec.flow.b[1]"), at(8, 23));
    }

    #[test]
    fn nearest_falls_back_to_ancestors() {
        let idx = Index::build(DOC);
        assert_eq!(
            idx.nearest("spec.plugins[1].version"),
            Position { line: 7, column: 7 }
        );
        assert_eq!(idx.nearest("nothing.here"), Position { line: 1, column: 1 });
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("a.b[2]").as_deref(), Some("a.b"));
        assert_eq!(parent_path("a.b").as_deref(), Some("a"));
        assert_eq!(parent_path("a").as_deref(), Some(""));
        assert_eq!(parent_path(""), None);
    }

    /// Printed back, a tree reads as the text it came from: plain `1.0` still text to a
    /// string field, quoted `"1"` still text, anchors expanded, empty collections kept.
    #[test]
    fn a_tree_printed_back_reads_as_the_original() {
        let text = "a: 1.0\nb: \"1\"\nc: &x [1, 'two: 2', {d: ~}]\ne: *x\nf: {}\ng: |\n  two\n  lines\nh:\n";
        let tree = Tree::parse(text).unwrap();
        let again: serde_json::Value = crate::yaml::from_str(&tree.to_yaml()).unwrap();
        let direct: serde_json::Value = crate::yaml::from_str(text).unwrap();
        assert_eq!(again, direct, "{}", tree.to_yaml());
        assert_eq!(
            Tree::parse(&tree.to_yaml())
                .unwrap()
                .get("a")
                .unwrap()
                .as_str(),
            Some("1.0")
        );
    }
}
