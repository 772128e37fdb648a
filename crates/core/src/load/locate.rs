//! Maps field paths (`spec.plugins[2].version`) to line and column in a YAML text.
//!
//! serde gives us typed values but no positions, so errors found after deserializing
//! (duplicates, bad names, conflicting fields) would lose their place. This index is built
//! from the YAML event stream once per document and answers "where is this path?".

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// Positions of every key and value in one YAML document.
#[derive(Debug, Default, Clone)]
pub struct LocationIndex {
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
}

impl LocationIndex {
    /// Indexes `text`; a text that does not parse gives an empty index (serde reports that
    /// error with its own position).
    pub fn build(text: &str) -> LocationIndex {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return LocationIndex::default();
        }
        builder.index
    }

    /// Where the value at `path` starts.
    pub fn value(&self, path: &str) -> Option<Position> {
        self.values.get(path).copied()
    }

    /// Where the key of the mapping entry at `path` starts (best place for "unknown field").
    pub fn key(&self, path: &str) -> Option<Position> {
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

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    index: LocationIndex,
    stack: Vec<Frame>,
}

impl Builder {
    fn position(mark: Marker) -> Position {
        Position {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }

    /// Path of the node starting now, or `None` when the node is a mapping key.
    ///
    /// yaml-rust2 marks a block collection's start event after its first key or item has been
    /// scanned, so a collection's position is pulled back to its first child's when earlier.
    fn begin_node(&mut self, mark: Marker, scalar_key: Option<&str>) -> Option<String> {
        let pos = Self::position(mark);
        let (result, container) = match self.stack.last_mut() {
            None => return Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = join_index(path, *next);
                *next += 1;
                (Some(p), path.clone())
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => (Some(join_key(path, &k)), path.clone()),
                None => {
                    // This node is a key. Only scalar keys are addressable.
                    let k = scalar_key.unwrap_or("?").to_string();
                    let full = join_key(path, &k);
                    self.index.keys.insert(full, pos);
                    *key = Some(k);
                    (None, path.clone())
                }
            },
        };
        if let Some(start) = self.index.values.get_mut(&container) {
            if (pos.line, pos.column) < (start.line, start.column) {
                *start = pos;
            }
        }
        result
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                if let Some(path) = self.begin_node(mark, Some(&value)) {
                    self.index.values.insert(path, Self::position(mark));
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.begin_node(mark, None) {
                    self.index.values.insert(path, Self::position(mark));
                }
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.begin_node(mark, None) {
                    self.index.values.insert(path.clone(), Self::position(mark));
                    self.stack.push(Frame::Map { path, key: None });
                } else {
                    // A complex key: track it so the structure stays aligned, under a dummy path.
                    self.stack.push(Frame::Map {
                        path: "?".into(),
                        key: None,
                    });
                }
            }
            Event::SequenceStart(..) => {
                if let Some(path) = self.begin_node(mark, None) {
                    self.index.values.insert(path.clone(), Self::position(mark));
                    self.stack.push(Frame::Seq { path, next: 0 });
                } else {
                    self.stack.push(Frame::Seq {
                        path: "?".into(),
                        next: 0,
                    });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
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

    #[test]
    fn finds_values_keys_and_sequence_items() {
        let idx = LocationIndex::build(DOC);
        assert_eq!(
            idx.value("apiVersion"),
            Some(Position {
                line: 1,
                column: 13
            })
        );
        assert_eq!(
            idx.key("spec.plugins"),
            Some(Position { line: 3, column: 3 })
        );
        assert_eq!(
            idx.value("spec.plugins[0]"),
            Some(Position { line: 4, column: 7 })
        );
        assert_eq!(
            idx.value("spec.plugins[0].runtime.replicas"),
            Some(Position {
                line: 6,
                column: 19
            })
        );
        assert_eq!(
            idx.key("spec.plugins[1].url"),
            Some(Position { line: 7, column: 7 })
        );
        assert_eq!(
            idx.value("spec.flow.b[1]"),
            Some(Position {
                line: 8,
                column: 23
            })
        );
    }

    #[test]
    fn nearest_falls_back_to_ancestors() {
        let idx = LocationIndex::build(DOC);
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
}
