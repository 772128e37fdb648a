//! A fast path for parsing what the templates render (and other plain block YAML).
//!
//! Parsing every rendered object with `serde_yaml` was most of the cost of rendering (a
//! thousand plugins rendered four objects each spent ~70% of their time in the YAML
//! scanner). Rendered objects use a tiny part of YAML: block mappings and sequences of
//! simple keys, a few plain words and integers, one literal block (`|`), and values
//! interpolated with `tojson`, i.e. compact JSON on one line. `plugins.lock` (written by
//! `serde_yaml`) adds a comment line, indentless sequences, plain scalars such as URLs,
//! versions and digests, and the odd single-quoted string. What people write by hand
//! (plugins.yaml, a package's `manifest.yaml`) adds plain text with spaces, labels in
//! other scripts, and one-line flow collections such as `{replicas: 2, labels: {a: b}}`.
//! This module parses exactly that subset, and nothing else.
//!
//! Correctness rule: [`parse`] returns `Some` only where the result is certain to be what
//! `serde_yaml::from_str::<Value>` returns; on anything else (double-quoted scalars
//! outside JSON's escapes, tabs, line-break characters other than `\n`, floats, duplicate
//! keys, multi-line flow collections or plain scalars, odd indentation, …) it returns
//! `None` and the caller parses with `serde_yaml`, errors included. Differential tests
//! hold it to that rule.

use std::borrow::Cow;

use serde_json::Value;

use super::tree::{Build, Node};

/// Deepest nesting accepted (serde_yaml's own limit is 128); deeper goes the slow way.
const MAX_DEPTH: usize = 64;
/// Longest key accepted, quotes and escapes included: YAML stops looking for a simple
/// key's `:` after 1024 characters.
const MAX_KEY_LEN: usize = 512;

/// The document's value, when the text is within the subset; `None` means "ask serde_yaml".
pub(crate) fn parse(text: &str) -> Option<Value> {
    parse_into(text)
}

/// [`parse`], into a tree borrowing `text`: `None` exactly where [`parse`] answers `None`,
/// else the same document.
pub(crate) fn parse_tree(text: &str) -> Option<Node<'_>> {
    parse_into(text)
}

fn parse_into<'a, T: Build<'a>>(text: &'a str) -> Option<T> {
    if !is_plain_text(text) {
        return None;
    }
    // The lines as `split('\n')` gives them, found in one pass over the whole text.
    let mut lines = Vec::with_capacity(text.len() / 32 + 1);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', text.as_bytes()).chain(std::iter::once(text.len())) {
        let raw = &text[start..end];
        let indent = raw.bytes().take_while(|&b| b == b' ').count();
        lines.push(Line {
            indent,
            text: &raw[indent..],
        });
        start = end + 1;
    }
    let mut parser = Parser { lines, pos: 0 };
    parser.skip_blank();
    let first = parser.peek()?;
    if first.indent != 0 {
        return None;
    }
    let value = parser.mapping(0, 0)?;
    parser.skip_blank();
    if parser.peek().is_some() {
        return None;
    }
    Some(value)
}

/// Newlines and printable characters whose meaning YAML and serde_yaml agree on: no tabs
/// (indentation), no `\r`, no C0 or C1 controls (U+0085 is a line break to YAML), no
/// U+2028 or U+2029 (line breaks too), no byte order mark and no non-characters.
/// Everything else above U+00A0 (labels in Chinese or Japanese, accents, emoji) is an
/// ordinary character to libyaml, in quoted and plain scalars alike.
fn is_plain_text(text: &str) -> bool {
    // The common case (printable ASCII), many bytes at a time: every rendered object
    // passes through here.
    if super::printable_ascii(text.as_bytes()) {
        return true;
    }
    text.chars().all(|c| match c {
        '\n' | ' '..='~' => true,
        '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}' => false,
        c => c >= '\u{a0}',
    })
}

#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    indent: usize,
    /// The line after its indentation (trailing spaces included).
    text: &'a str,
}

impl Line<'_> {
    fn is_blank(&self) -> bool {
        self.text.trim_end_matches(' ').is_empty()
    }

    /// A full-line comment: outside block scalars YAML skips it at any indentation.
    fn is_comment(&self) -> bool {
        self.text.starts_with('#')
    }
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    /// Skips blank and comment lines (never called inside a block scalar, whose lines are
    /// read raw).
    fn skip_blank(&mut self) {
        while self
            .lines
            .get(self.pos)
            .is_some_and(|l| l.is_blank() || l.is_comment())
        {
            self.pos += 1;
        }
    }

    /// The next line that is neither blank nor a comment, without consuming it.
    fn peek(&mut self) -> Option<Line<'a>> {
        self.skip_blank();
        self.lines.get(self.pos).copied()
    }

    /// A block node whose first line is the next line, at `indent`.
    fn node<T: Build<'a>>(&mut self, indent: usize, depth: usize) -> Option<T> {
        let line = self.peek()?;
        if line.indent != indent {
            return None;
        }
        if is_entry(line.text) {
            self.sequence(indent, depth, false)
        } else {
            self.mapping(indent, depth)
        }
    }

    /// A block mapping whose keys sit at column `col`.
    fn mapping<T: Build<'a>>(&mut self, col: usize, depth: usize) -> Option<T> {
        if depth > MAX_DEPTH {
            return None;
        }
        let mut map = T::entries();
        while let Some(line) = self.peek() {
            if line.indent < col {
                break;
            }
            if line.indent > col {
                return None;
            }
            let (key, rest) = split_key(line.text)?;
            self.pos += 1;
            let rest = rest.trim_matches(' ');
            // `split_key` left a space before `rest`, so a `#` here starts a comment.
            let value = if rest.is_empty() || rest.starts_with('#') {
                // A nested block, more indented, or a sequence at the key's own column (an
                // empty value goes the slow way).
                let next = self.peek()?;
                if next.indent == col && is_entry(next.text) {
                    self.sequence(col, depth + 1, true)?
                } else if next.indent <= col {
                    return None;
                } else {
                    self.node(next.indent, depth + 1)?
                }
            } else if is_literal_header(rest) {
                self.literal(col)?
            } else {
                inline(rest, depth + 1)?
            };
            if !T::insert(&mut map, Cow::Borrowed(key), value) {
                return None;
            }
        }
        T::mapping(map)
    }

    /// A block sequence whose `-` sit at column `col`. An `indentless` one is a mapping
    /// value whose `-` sit at its key's column: a key at that column ends it.
    fn sequence<T: Build<'a>>(&mut self, col: usize, depth: usize, indentless: bool) -> Option<T> {
        if depth > MAX_DEPTH {
            return None;
        }
        let mut items = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent < col {
                break;
            }
            if line.indent > col {
                return None;
            }
            if !is_entry(line.text) {
                // A key at the sequence's column: the parent mapping's next key if the
                // sequence is indentless; otherwise the parent is less indented, so this
                // is not a valid continuation.
                if indentless {
                    break;
                }
                return None;
            }
            let after_dash = &line.text[1..];
            let gap = after_dash.len() - after_dash.trim_start_matches(' ').len();
            let rest = after_dash[gap..].trim_end_matches(' ');
            if rest.is_empty() || is_entry(rest) || rest.starts_with('#') {
                return None;
            }
            if is_literal_header(rest) {
                self.pos += 1;
                items.push(self.literal(col)?);
            } else if split_key(rest).is_some() {
                // `- key: value`: a mapping whose first key shares the dash's line. Let
                // the line stand for the mapping's first line, at the key's column.
                let item_col = col + 1 + gap;
                self.lines[self.pos] = Line {
                    indent: item_col,
                    text: rest,
                };
                items.push(self.mapping(item_col, depth + 1)?);
            } else {
                self.pos += 1;
                items.push(inline(rest, depth + 1)?);
                // A continuation line (a multi-line scalar) goes the slow way.
                if self.peek().is_some_and(|next| next.indent > col) {
                    return None;
                }
            }
        }
        Some(T::sequence(items))
    }

    /// A literal block scalar (`|`, clip chomping) whose header was just consumed; its
    /// parent node sits at column `parent`. Only the simple form: content lines all
    /// non-blank and at one indentation or deeper.
    fn literal<T: Build<'a>>(&mut self, parent: usize) -> Option<T> {
        let first = *self.lines.get(self.pos)?;
        if first.is_blank() || first.indent <= parent {
            return None;
        }
        let indent = first.indent;
        let mut out = String::new();
        while let Some(line) = self.lines.get(self.pos) {
            if line.is_blank() || line.indent < indent {
                break;
            }
            out.push_str(&" ".repeat(line.indent - indent));
            out.push_str(line.text);
            // Clip keeps the last line break, if there is one: not at the end of the text.
            if self.pos + 1 < self.lines.len() {
                out.push('\n');
            }
            self.pos += 1;
        }
        // Blank lines followed by more content at the block's indentation would still
        // belong to it, and so would a comment-like line there: look at every line. A
        // line of spaces only, longer than the indentation, is content too.
        let mut next = self.pos;
        while let Some(line) = self.lines.get(next).filter(|l| l.is_blank()) {
            if line.indent + line.text.len() > indent {
                return None;
            }
            next += 1;
        }
        if self.lines.get(next).is_some_and(|l| l.indent >= indent) {
            return None;
        }
        Some(T::string(Cow::Owned(out)))
    }
}

/// `|` (clip chomping, indentation detected), optionally followed by a comment.
fn is_literal_header(rest: &str) -> bool {
    rest.strip_prefix('|').is_some_and(is_comment_tail)
}

/// Nothing, or spaces then a comment: what may follow a value on its line.
fn is_comment_tail(tail: &str) -> bool {
    tail.is_empty() || (tail.starts_with(' ') && tail.trim_start_matches(' ').starts_with('#'))
}

/// Whether a line (after its indentation) is a block sequence entry.
fn is_entry(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// `key: rest` or `key:` with a simple plain key; `None` for anything else.
fn split_key(text: &str) -> Option<(&str, &str)> {
    let colon = memchr::memchr(b':', text.as_bytes())?;
    let (key, after) = (&text[..colon], &text[colon + 1..]);
    if !(after.is_empty() || after.starts_with(' ')) {
        return None;
    }
    if key.len() > MAX_KEY_LEN {
        return None;
    }
    let mut bytes = key.bytes();
    let first = bytes.next()?;
    if !(first.is_ascii_alphabetic() || first == b'_')
        || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
        || is_reserved_word(key)
    {
        return None;
    }
    Some((key, after))
}

/// Words some YAML version reads as something other than a string.
fn is_reserved_word(word: &str) -> bool {
    let bare = word.trim_start_matches(['-', '.', '+']);
    // The longest is `infinity`; most keys and words are longer.
    if bare.len() > 8 {
        return false;
    }
    [
        "true", "false", "null", "yes", "no", "on", "off", "y", "n", "inf", "infinity", "nan",
    ]
    .iter()
    .any(|w| bare.eq_ignore_ascii_case(w))
}

/// A value on the rest of a line (trailing spaces trimmed): compact JSON (`tojson`), a
/// single-quoted string or a plain scalar, then perhaps a comment.
fn inline<'a, T: Build<'a>>(text: &'a str, depth: usize) -> Option<T> {
    match text.as_bytes().first()? {
        b'{' | b'[' | b'"' => {
            let mut flow = Flow { text, pos: 0 };
            let value = flow.value(depth)?;
            is_comment_tail(&text[flow.pos..]).then_some(value)
        }
        b'\'' => {
            let (value, len) = single_quoted(text)?;
            is_comment_tail(&text[len..]).then_some(T::string(value))
        }
        _ => {
            // ` #` always starts a comment after a plain scalar; the scalar itself may
            // contain no `#` or space (`plain` refuses both).
            let value = match text.find('#') {
                Some(at) if text[..at].ends_with(' ') => text[..at].trim_end_matches(' '),
                Some(_) => return None,
                None => text,
            };
            plain(value)
        }
    }
}

/// A single-quoted scalar on one line (`''` is a quote; there are no escapes) and the
/// length it spans, quotes included; `None` if it does not close on this line.
fn single_quoted(text: &str) -> Option<(Cow<'_, str>, usize)> {
    let close = 1 + text[1..].find('\'')?;
    if !text[close + 1..].starts_with('\'') {
        // No quote inside: the text between the quotes, as it is.
        return Some((Cow::Borrowed(&text[1..close]), close + 1));
    }
    let mut out = String::new();
    let mut pos = 1;
    loop {
        let close = pos + text[pos..].find('\'')?;
        out.push_str(&text[pos..close]);
        if text[close + 1..].starts_with('\'') {
            out.push('\'');
            pos = close + 2;
        } else {
            return Some((Cow::Owned(out), close + 1));
        }
    }
}

/// A plain scalar: `true`, `false`, `null`, a decimal integer, or text that no YAML
/// version reads as anything but a string: it starts with a letter, a digit, `_`, `/` or
/// a non-ASCII character (or `-`/`.` then a letter or digit), and goes on with those,
/// spaces between words, and a few punctuation marks that mean nothing inside a
/// block plain scalar (`: ` and a final `:` would make it a key, so it has neither).
fn plain<'a, T: Build<'a>>(text: &'a str) -> Option<T> {
    match text {
        "true" => return Some(T::bool(true)),
        "false" => return Some(T::bool(false)),
        "null" => return Some(T::null()),
        _ => {}
    }
    if let Some(n) = integer(text) {
        return Some(n);
    }
    let bytes = text.as_bytes();
    let first_ok = match *bytes.first()? {
        b if b.is_ascii_alphanumeric() || b == b'_' || b == b'/' || !b.is_ascii() => true,
        b'-' | b'.' => bytes.get(1).is_some_and(u8::is_ascii_alphanumeric),
        _ => false,
    };
    let rest_ok = bytes[1..].iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || !b.is_ascii()
            || matches!(
                b,
                b'_' | b'-'
                    | b'.'
                    | b'/'
                    | b':'
                    | b'@'
                    | b' '
                    | b','
                    | b'('
                    | b')'
                    | b'\''
                    | b'!'
                    | b'?'
                    | b'+'
                    | b'='
                    | b';'
                    | b'&'
                    | b'%'
                    | b'"'
            )
    });
    // A `:` before a space or at the end would make the text a key (inside, followed by
    // anything else, it is part of the scalar, as in URLs). Spaces inside are kept as
    // written; the caller trimmed those at the ends, which YAML drops.
    (first_ok
        && rest_ok
        && !text.ends_with([':', ' '])
        && !text.contains(": ")
        && !is_reserved_word(text)
        && !maybe_number(text))
    .then(|| T::string(Cow::Borrowed(text)))
}

/// Whether serde_yaml might read a word as a number rather than a string. It reads a
/// plain scalar as one when Rust's float parser accepts it (which also accepts every
/// decimal integer) or it is a `0x`/`0o`/`0b` integer; over-approximated here, so digests
/// such as `0b3f…` stay strings but `0b101` does not.
fn maybe_number(word: &str) -> bool {
    if word.parse::<f64>().is_ok() {
        return true;
    }
    let unsigned = word.strip_prefix(['-', '+']).unwrap_or(word);
    [("0x", 16), ("0o", 8), ("0b", 2)]
        .iter()
        .any(|&(prefix, radix)| {
            unsigned.strip_prefix(prefix).is_some_and(|rest| {
                rest.is_empty()
                    || rest.starts_with(['+', '-'])
                    || rest.chars().all(|c| c.is_digit(radix))
            })
        })
}

/// A decimal integer without sign `+`, leading zeros or `-0`, within i64 or u64.
fn integer<'a, T: Build<'a>>(text: &'a str) -> Option<T> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let bytes = digits.as_bytes();
    if bytes.is_empty()
        || !bytes.iter().all(u8::is_ascii_digit)
        || (bytes[0] == b'0' && (bytes.len() > 1 || digits.len() != text.len()))
    {
        return None;
    }
    if digits.len() == text.len() {
        text.parse::<u64>().ok().map(|n| T::integer(text, n.into()))
    } else {
        text.parse::<i64>().ok().map(|n| T::integer(text, n.into()))
    }
}

/// A flow collection or double-quoted string on one line: compact JSON as `tojson` writes
/// it, and the flow style people write by hand (`{replicas: 2, labels: {tier: a}}`,
/// `[amd64, arm64]`). Keys are JSON strings or simple plain words; values are JSON
/// strings, single-quoted strings, nested collections, or plain scalars read as in a
/// block (integers only, no floats). No duplicate keys, no empty values, no trailing
/// commas, no `:`, `#`, `[` or `{` inside a plain scalar: the part of flow YAML where
/// libyaml reads exactly what is written here.
struct Flow<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Flow<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    /// After an entry: spaces, then the closing `close` (true) or a `,` and spaces before
    /// the next entry (false); anything else is refused. (An entry cannot start with a
    /// closing bracket or a comma, so a trailing comma is refused too.)
    fn next_entry(&mut self, close: u8) -> Option<bool> {
        self.spaces();
        if self.eat(close) {
            return Some(true);
        }
        if !self.eat(b',') {
            return None;
        }
        self.spaces();
        Some(false)
    }

    /// A mapping key and its `:`: a JSON string (the value may follow the `:` at once,
    /// as in JSON), or a simple plain word followed by `: `.
    fn key(&mut self) -> Option<Cow<'a, str>> {
        let start = self.pos;
        let key = if self.peek() == Some(b'"') {
            self.string()?
        } else {
            let len = self.text[start..].find(':')?;
            let (key, _) = split_key(&self.text[start..start + len + 1])?;
            self.pos += len;
            if self.text.as_bytes().get(self.pos + 1) != Some(&b' ') {
                return None;
            }
            Cow::Borrowed(key)
        };
        (self.pos - start <= MAX_KEY_LEN && self.eat(b':')).then_some(key)
    }

    fn value<T: Build<'a>>(&mut self, depth: usize) -> Option<T> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => {
                self.pos += 1;
                self.spaces();
                let mut map = T::entries();
                if self.eat(b'}') {
                    return T::mapping(map);
                }
                loop {
                    let key = self.key()?;
                    self.spaces();
                    let value = self.value(depth + 1)?;
                    if !T::insert(&mut map, key, value) {
                        return None;
                    }
                    if self.next_entry(b'}')? {
                        return T::mapping(map);
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                self.spaces();
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Some(T::sequence(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.next_entry(b']')? {
                        return Some(T::sequence(items));
                    }
                }
            }
            b'"' => self.string().map(T::string),
            b'\'' => {
                let (value, len) = single_quoted(&self.text[self.pos..])?;
                self.pos += len;
                Some(T::string(value))
            }
            _ => {
                // A plain scalar ends at a flow indicator; spaces before it are not part
                // of it.
                let start = self.pos;
                while let Some(b) = self.peek() {
                    match b {
                        b',' | b']' | b'}' => break,
                        b':' | b'#' | b'[' | b'{' => return None,
                        _ => self.pos += 1,
                    }
                }
                plain(self.text[start..self.pos].trim_end_matches(' '))
            }
        }
    }

    /// A JSON string with JSON's escapes (all of which YAML double quotes read the same);
    /// surrogate escapes, which JSON pairs and YAML refuses, go the slow way.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out = String::new();
        loop {
            let start = self.pos;
            self.pos += memchr::memchr2(b'"', b'\\', &self.text.as_bytes()[start..])?;
            // `"` and `\\` are ASCII, so the run ends on a character boundary.
            let run = &self.text[start..self.pos];
            match self.peek()? {
                // Most strings have no escapes: the text as written.
                b'"' if out.is_empty() => {
                    self.pos += 1;
                    return Some(Cow::Borrowed(run));
                }
                b'"' => {
                    self.pos += 1;
                    out.push_str(run);
                    return Some(Cow::Owned(out));
                }
                _ => {
                    out.push_str(run);
                    self.pos += 1;
                    let c = match self.peek()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = self.text.get(self.pos + 1..self.pos + 5)?;
                            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                                return None;
                            }
                            let code = u32::from_str_radix(hex, 16).ok()?;
                            self.pos += 4;
                            char::from_u32(code)?
                        }
                        _ => return None,
                    };
                    self.pos += 1;
                    out.push(c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule: the fast path agrees with serde_yaml wherever it answers. And the tree
    /// form answers exactly where the value form does, with the same document, which
    /// prints the same bytes.
    fn check(text: &str) -> Option<Value> {
        let fast = parse(text);
        if let Some(fast) = &fast {
            let slow: Result<Value, _> = serde_yaml::from_str(text);
            match slow {
                Ok(slow) => assert_eq!(fast, &slow, "disagreement on {text:?}"),
                Err(e) => panic!("fast path accepted what serde_yaml refuses ({e}): {text:?}"),
            }
        }
        let tree = parse_tree(text);
        assert_eq!(
            tree.as_ref().map(Node::to_value).as_ref(),
            fast.as_ref(),
            "the tree form disagrees on {text:?}"
        );
        if let (Some(tree), Some(fast)) = (&tree, &fast) {
            assert_eq!(
                crate::yaml::emit::to_string(tree),
                crate::yaml::emit::to_string(fast),
                "the tree prints differently from the value for {text:?}"
            );
        }
        fast
    }

    fn accepted(text: &str) -> Value {
        check(text).unwrap_or_else(|| panic!("fast path refused {text:?}"))
    }

    #[test]
    fn the_rendered_subset_is_accepted() {
        let text = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: "abc"
  labels: {"a":"b","app.kubernetes.io/name":"x","n":-3,"t":true,"z":null}
  annotations: {}
spec:
  replicas: 2
  list: []
  template:
    spec:
      imagePullSecrets:
        - name: "secret"
      containers:
        - name: plugin
          args: ["--a=b","c d"]
          ports:
            - name: http
              containerPort: 8080
          command:
            - sh
            - -ec
            - |
              wget -q -O /workspace/context.tar "$CONTEXT_URL"
                indented  
              echo done
          capabilities:
            drop:
              - ALL
      volumes:
        - name: tmp
          emptyDir: {}
        - name: .dockerconfigjson
          path: /kaniko/.docker
"#;
        let v = accepted(text);
        assert_eq!(v["spec"]["replicas"], 2);
        assert_eq!(
            v["spec"]["template"]["spec"]["containers"][0]["command"][2],
            "wget -q -O /workspace/context.tar \"$CONTEXT_URL\"\n  indented  \necho done\n"
        );
    }

    #[test]
    fn json_escapes_and_numbers_agree() {
        for text in [
            r#"a: "quote \" backslash \\ slash \/ nl \n tab \t uni \u00e9 \u0041 bell \b ff \f cr \r""#,
            r#"a: "<>&' \u003c\u003e\u0026\u0027""#,
            r#"a: "nul \u0000 nel \u0085 ls \u2028 bom \ufeff del \u007f""#,
            "a: 9223372036854775807",
            "a: 18446744073709551615",
            "a: -9223372036854775808",
            "a: [0,-1,1,[],{},[[1]],{\"x\":{\"y\":[true,false,null]}}]",
            "a: \"\"",
            "a:\n  - 1\n  - -2\n  - x\n",
            "a_b-c.d/e: v\n",
        ] {
            accepted(text);
        }
    }

    #[test]
    fn comments_lock_scalars_and_single_quotes_are_accepted() {
        for (text, expected) in [
            ("# comment\na: 1", r#"{"a":1}"#),
            ("  # indented comment\n\na: 1\n#\n", r#"{"a":1}"#),
            ("a: 1 # comment", r#"{"a":1}"#),
            ("a: x   # comment # more", r#"{"a":"x"}"#),
            ("a: b # c: d", r#"{"a":"b"}"#),
            ("a: {\"k\":\"v # w\"} # c", r##"{"a":{"k":"v # w"}}"##),
            ("a: \"x # y\" # c", r##"{"a":"x # y"}"##),
            ("a: b c", r#"{"a":"b c"}"#),
            ("a: b  c # d", r#"{"a":"b  c"}"#),
            (
                "a: Dify official Agent strategies, (v2) for x/y:z, it's 100% \"new\"!",
                r#"{"a":"Dify official Agent strategies, (v2) for x/y:z, it's 100% \"new\"!"}"#,
            ),
            (
                "a: Dify 官方 Agent 策略集合",
                r#"{"a":"Dify 官方 Agent 策略集合"}"#,
            ),
            ("a: 策略", r#"{"a":"策略"}"#),
            ("a: \"Dify Agent 策略\"", r#"{"a":"Dify Agent 策略"}"#),
            ("a: 'café ✓ 😀'", r#"{"a":"café ✓ 😀"}"#),
            ("a:\n  - é\n  - {\"k\":\"ü\"}", r#"{"a":["é",{"k":"ü"}]}"#),
            ("a: |\n  Grüße\n", r#"{"a":"Grüße\n"}"#),
            ("a: {\"k\": 1}", r#"{"a":{"k":1}}"#),
            ("a: { \"k\":1 }", r#"{"a":{"k":1}}"#),
            ("a: [1, 2]", r#"{"a":[1,2]}"#),
            (
                "a: {replicas: 2, labels: {tier: t0}, x: [amd64, arm64]}",
                r#"{"a":{"replicas":2,"labels":{"tier":"t0"},"x":["amd64","arm64"]}}"#,
            ),
            (
                "a: [{name: LOG_LEVEL, value: info}, { }, [ ]]",
                r#"{"a":[{"name":"LOG_LEVEL","value":"info"},{},[]]}"#,
            ),
            (
                "a: {en_US: Synthetic plugin 7, zh_Hans: 合成插件 7} # c",
                r#"{"a":{"en_US":"Synthetic plugin 7","zh_Hans":"合成插件 7"}}"#,
            ),
            (
                "a: {v: \"3.12\", w: '1.0', nl: null, t: true, i: -3, s: it's}",
                r#"{"a":{"v":"3.12","w":"1.0","nl":null,"t":true,"i":-3,"s":"it's"}}"#,
            ),
            (
                "a:\n  - {requests: {cpu: 100m}}",
                r#"{"a":[{"requests":{"cpu":"100m"}}]}"#,
            ),
            ("a: 'single'", r#"{"a":"single"}"#),
            ("a: 'it''s'", r#"{"a":"it's"}"#),
            ("a: ''", r#"{"a":""}"#),
            ("a: ''''", r#"{"a":"'"}"#),
            ("a: ' x # \"y\" \\n '  # c", r##"{"a":" x # \"y\" \\n "}"##),
            ("a: '1.0'", r#"{"a":"1.0"}"#),
            ("a: b:c", r#"{"a":"b:c"}"#),
            (
                "a: https://h.example:8443/p/x.difypkg",
                r#"{"a":"https://h.example:8443/p/x.difypkg"}"#,
            ),
            ("a: 2.0.0", r#"{"a":"2.0.0"}"#),
            ("a: 0b3f", r#"{"a":"0b3f"}"#),
            ("a: 25cb04d3", r#"{"a":"25cb04d3"}"#),
            ("a: 2e18973c", r#"{"a":"2e18973c"}"#),
            ("a: 30m", r#"{"a":"30m"}"#),
            ("a: 1:20", r#"{"a":"1:20"}"#),
            ("a: 2001-12-14", r#"{"a":"2001-12-14"}"#),
            ("a: sha256:ab12", r#"{"a":"sha256:ab12"}"#),
            ("a: synth/p0:2.0.0@fa57", r#"{"a":"synth/p0:2.0.0@fa57"}"#),
            ("a:\n- 1\n", r#"{"a":[1]}"#),
            (
                "a:\n- x\n- w: 1\n  z: 2\nb: 3",
                r#"{"a":["x",{"w":1,"z":2}],"b":3}"#,
            ),
            (
                "a:\n  - b:\n    - 1\n    c: 2\n",
                r#"{"a":[{"b":[1],"c":2}]}"#,
            ),
            ("a: # c\n  b: 1", r#"{"a":{"b":1}}"#),
            (
                "a:\n# c\n     # c\n  b: 1\n# c\n  c: 2",
                r#"{"a":{"b":1,"c":2}}"#,
            ),
            (
                "a:\n  - x # c\n      # c\n  - 'y' # c\n",
                r#"{"a":["x","y"]}"#,
            ),
            ("a: | # c\n  x\n", r#"{"a":"x\n"}"#),
            (
                "a: |\n  # not a comment\n  x\n    # nor this\n# but this\nb: 1",
                r##"{"a":"# not a comment\nx\n  # nor this\n","b":1}"##,
            ),
            ("a:\n  - | # c\n    # x\n", r##"{"a":["# x\n"]}"##),
        ] {
            let expected: Value = serde_json::from_str(expected).unwrap();
            assert_eq!(accepted(text), expected, "{text:?}");
        }
    }

    /// A lock as `plugsync lock` writes it (serde_yaml's own output) takes the fast path.
    #[test]
    fn a_written_lock_is_accepted() {
        let text =
            "# Generated by `plugsync lock`. Do not edit by hand; commit it next to plugins.yaml.
apiVersion: plugsync.dev/v1alpha1
kind: PluginLock
plugins:
- name: synth/p0
  version: 2.0.0
  source: https://packages.example.invalid/synth/p0/2.0.0.difypkg
  sha256: 0b1b57fd4a506fba6c7bd97303771c29c51ecbf0dfd6e1432df01b242913b39b
  checksum: fa57a229089dc98f7503f1c0c7c294bf55e0afe6075ad2a289ebdac4ab07a39c
  unique_identifier: synth/p0:2.0.0@fa57a229089dc98f7503f1c0c7c294bf55e0afe6075ad2a289ebdac4ab07a39c
  plugin_id: 2e189731c2b8dbcecb2baf24747cd80e
- name: local/tool
  version: '1.0'
  source: path:plugins/tool
  sha256: 25cb04d3a91e589018eca84379df69244a24f542d2311a1a6252a2a94fe5ded6
  checksum: ff75ea7d5693ed2170ef2f76ff5d4a4d4cd68745ba06009fc7ab19e09c30ac94
  unique_identifier: local/tool:1.0@ff75ea7d5693ed2170ef2f76ff5d4a4d4cd68745ba06009fc7ab19e09c30ac94
  plugin_id: '12345678901234567890123456789012'
images:
- inputsHash: 5f30c23042195a597c676f807ab7c992b340c452b453dd443bf14a5386febd7d
  image: registry.example.invalid/dify-plugins/p-2e189731c2b8dbcecb2baf24747cd80e:2.0.0
  digest: sha256:04ac00e1fe406a1483f762e49f06aac87bd0cca824993c1c69f912b98bf6a8d7
";
        let v = accepted(text);
        assert_eq!(v["plugins"][1]["version"], "1.0");
        assert_eq!(
            v["plugins"][1]["plugin_id"],
            "12345678901234567890123456789012"
        );
        // The synthetic 1000-plugin lock of the benchmarks, when it is there.
        if let Ok(text) = std::fs::read_to_string("/tmp/b/repo/plugins.lock") {
            accepted(&text);
        }
    }

    #[test]
    fn everything_else_goes_the_slow_way() {
        for text in [
            "",
            "a: 1.5",
            "a: 1e3",
            "a: 0x10",
            "a: 0o10",
            "a: 010",
            "a: +1",
            "a: -0",
            "a: 0b101",
            "a: -0b1",
            "a: 0x1f",
            "a: 0o17",
            "a: 0b",
            "a: 0x",
            "a: 1e5",
            "a: 12e3",
            "a: 1.",
            "a: .5",
            "a: x:",
            "a: b#c",
            "a: @b",
            "a: :b",
            "a: 'open",
            "a: 'multi\n  line'",
            "a: 'x' y",
            "a: 'x'#c",
            "a: x#c",
            "a: \"x\"#c",
            "a: |#c\n  x",
            "a: [1] z",
            "#c: 1",
            "a:\n  - # c\n    x",
            "a:\n- 1\n  - 2",
            "a:\n- 1\nb",
            "a: |\n  x\n\n   # c\nb: 1",
            "a: |\n  x\n     \n# c\nb: 1",
            "a: |\n  x\n     \nb: 1",
            "a: |\n  x\n # c\n  y\n",
            "a: 18446744073709551616",
            "a: ~",
            "a: Null",
            "a: TRUE",
            "a: yes",
            "a: off",
            "a: .inf",
            "a: -.inf",
            "a: .NaN",
            "a: -inf",
            "a: nan",
            "a: *alias",
            "a: &anchor b",
            "a: !!str 1",
            "a: @x",
            "a: `x",
            "a: %x",
            "a: -",
            "a: |-\n  x",
            "a: |+\n  x",
            "a: |2\n  x",
            "a: >\n  x",
            "a: |\n  x\n\n  y\n",
            "a: |\n\n  x\n",
            "a: |\nb: 1",
            "a:\nb: 1",
            "a:",
            "a: 1\na: 2",
            "a: {\"k\":1,\"k\":2}",
            "a: [1,]",
            "a: [1, ]",
            "a: [ , 1]",
            "a: [1,, 2]",
            "a: {k: }",
            "a: {k:}",
            "a: {k}",
            "a: {k: 1,}",
            "a: {k: a:b}",
            "a: {k: a #b}",
            "a: {k: a#b}",
            "a: {k : 1}",
            "a: {\"k\" : 1}",
            "a: [a: 1]",
            "a: {k: [1, 2}",
            "a: {k: 1.5}",
            "a: {yes: 1}",
            "a: {k: yes}",
            "a: {k: v, k: w}",
            "a: {k: ~}",
            "a: {k: 'x' y}",
            "a: {k: [1]x}",
            "a: {k: *x}",
            "a: {k: &x y}",
            "a: {k: !t y}",
            "a: {? k: 1}",
            "a: {k: -}",
            "a: {k: a\u{2028}}",
            "a: {k: v} x",
            "a: {k:1}",
            "a: [1.0]",
            "a: [1e3]",
            "a: [01]",
            "a: \"\\ud83d\\ude00\"",
            "a: \"\\x41\"",
            "a: \"\\'\"",
            "a: \"x\ty\"",
            "a: b\u{2028}c",
            "a: b\u{2029}c",
            "a: b\u{85}c",
            "a: \u{85}",
            "a: b\u{9f}",
            "a: \"b\u{2028}\"",
            "a: \u{feff}b",
            "\u{feff}a: b",
            "a: b\u{fffe}",
            "a: b: c",
            "a: b c:",
            "a: b c#d",
            "a: yes please: no",
            "é: 1",
            "a: {\"k\":\"é\u{2028}\"}",
            "a:\tb",
            "a: b\r\n",
            "---\na: 1",
            "a: 1\n---\nb: 2",
            "a: 1\n...",
            "%YAML 1.2\n---\na: 1",
            " a: 1",
            "a: 1\n b: 2",
            "a: b\n  c",
            "a:\n  - x\n    y",
            "a:\n  - x\n   - y",
            "a:\n  -\n    b: 1",
            "a:\n  - - 1",
            "a:\n  - b: 1\n   c: 2",
            "true: 1",
            "1: a",
            "\"a\": 1",
            "? a\n: 1",
            "a : 1",
            "- 1\n- 2",
            "just a scalar",
            "[1]",
            "{\"a\":1}",
            &format!("{}: 1", "k".repeat(2000)),
            &format!("a: {{\"{}\":1}}", "k".repeat(2000)),
        ] {
            assert!(check(text).is_none(), "fast path accepted {text:?}");
        }
    }

    /// Random documents from a grammar around the subset (valid and near-misses alike):
    /// wherever the fast path answers, it answers what serde_yaml does.
    #[test]
    fn differential_against_serde_yaml() {
        let mut rng = crate::yaml::testing::Seeded::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move |n: usize| rng.below(n);
        const SCALARS: [&str; 86] = [
            "{a: 1}",
            "{a: b c, d: [x, y]}",
            "[a, b]",
            "[ a ,b ]",
            "{a: }",
            "{a:1}",
            "{a: 1,}",
            "{a: x:y}",
            "[a: 1]",
            "{\"k\" : 1}",
            "{k: 'q', z: \"w\"}",
            "{k: 1.5}",
            "{k: yes}",
            "[é, 策略 x]",
            "{k: a #c}",
            "{k: v} # c",
            "{k: v}#c",
            "[-1, -a, - b]",
            "{k: {j: [1, {i: x}]}}",
            "{ }",
            "Dify 官方 Agent 策略集合",
            "策略",
            "\"Dify Agent 策略\"",
            "'été'",
            "a  b",
            "a b, c (d) e's f!",
            "a b: c",
            "a :b",
            "a ? b",
            "a - b",
            "a b # c",
            "a\u{2028}b",
            "a\u{85}b",
            "a & b = c; 100%",
            "yes no",
            "1 2",
            "x",
            "abc",
            "-ec",
            "/tmp",
            ".docker",
            "1",
            "0",
            "-7",
            "true",
            "false",
            "null",
            "\"s\"",
            "\"a\\\"b\"",
            "{}",
            "[]",
            "{\"k\":\"v\"}",
            "[1,\"a\",null]",
            "1.5",
            "~",
            "'q'",
            "yes",
            "a b",
            "{\"k\":1,\"k\":2}",
            "\"\\u00e9\"",
            "x # c",
            "x#c",
            "1 #c",
            "\"s\" # c",
            "'it''s' # c",
            "''",
            "'a # b'",
            "'x' y",
            "'open",
            "https://h.example:8443/p/x.difypkg",
            "synth/p0:2.0.0@0b1a",
            "2.0.0",
            "0b3f",
            "0b101",
            "0x1f",
            "0o7",
            "1e3",
            "2e18973c",
            "25cb04",
            "a:b",
            "x:",
            ":x",
            "@x",
            "| # c",
            "# c",
            "'1.0'",
        ];
        const KEYS: [&str; 6] = ["a", "b", "name", "key_x", "app.io/n", "k-1"];
        let mut accepted_count = 0;
        for _ in 0..6000 {
            let mut text = String::new();
            let mut indent = 0usize;
            let lines = 1 + next(14);
            for _ in 0..lines {
                let pad = " ".repeat(indent);
                match next(10) {
                    0 => {
                        text.push_str(&format!("{pad}{}:\n", KEYS[next(KEYS.len())]));
                        // 0: an indentless sequence may follow.
                        indent += [0, 1, 2, 2, 4][next(5)];
                    }
                    1 => text.push_str(&format!("{pad}- {}\n", SCALARS[next(SCALARS.len())])),
                    2 => text.push_str(&format!(
                        "{pad}- {}: {}\n",
                        KEYS[next(KEYS.len())],
                        SCALARS[next(SCALARS.len())]
                    )),
                    3 => {
                        // A literal block, sometimes with comment-like lines inside it,
                        // at, above or below its indentation, and blank lines.
                        let key = KEYS[next(KEYS.len())];
                        let header = ["|", "| # c", "|#c"][next(3)];
                        text.push_str(&format!("{pad}{key}: {header}\n"));
                        for _ in 0..1 + next(3) {
                            match next(5) {
                                0 => text.push_str(&format!("{pad}  # in block\n")),
                                1 => text.push_str(&format!("{pad}{}# c\n", " ".repeat(next(5)))),
                                2 => text.push('\n'),
                                _ => text.push_str(&format!("{pad}  line {}\n", next(3))),
                            }
                        }
                    }
                    4 => indent = indent.saturating_sub([1, 2, 2, 4][next(4)]),
                    5 => text.push('\n'),
                    6 => {
                        // A comment line at any indentation.
                        let at = " ".repeat(next(indent + 4));
                        text.push_str(&format!("{at}#{}\n", [" c", "", "# c: d", " - x"][next(4)]));
                    }
                    _ => text.push_str(&format!(
                        "{pad}{}: {}\n",
                        KEYS[next(KEYS.len())],
                        SCALARS[next(SCALARS.len())]
                    )),
                }
            }
            if check(&text).is_some() {
                accepted_count += 1;
            }
        }
        // The generator must exercise the fast path, not only the fallback.
        assert!(accepted_count > 300, "only {accepted_count} accepted");
    }

    /// Well-formed nested documents in the subset, then the same with one character
    /// changed: the former must be accepted and agree, the latter agree or be refused.
    #[test]
    fn differential_on_nested_documents() {
        struct Gen(crate::yaml::testing::Seeded);
        impl Gen {
            fn next(&mut self, n: usize) -> usize {
                self.0.below(n)
            }
            fn scalar(&mut self) -> String {
                const WORDS: [&str; 25] = [
                    "Dify official Agent strategies, (v2) for x/y",
                    "Dify 官方 Agent 策略集合",
                    "\"Dify Agent 策略 😀\"",
                    "a  b 'c' \"d\"",
                    "2.0.0",
                    "https://packages.example.invalid/synth/p0/2.0.0.difypkg",
                    "synth/p0:2.0.0@0b3f",
                    "sha256:04ac00e1",
                    "0b3f9a",
                    "25cb04d3",
                    "'1.0'",
                    "'it''s # not a comment'",
                    "''",
                    "x",
                    "IfNotPresent",
                    "-ec",
                    "/health",
                    ".dockerconfigjson",
                    "0",
                    "65532",
                    "-3",
                    "true",
                    "false",
                    "null",
                    "apps/v1",
                ];
                let value = match self.next(3) {
                    0 => WORDS[self.next(WORDS.len())].to_string(),
                    _ => self.json(0),
                };
                match self.next(4) {
                    0 => format!("{value}{}# c", " ".repeat(1 + self.next(2))),
                    _ => value,
                }
            }
            /// Sometimes a comment line, at any indentation up to a little past `indent`.
            fn comment(&mut self, indent: usize, out: &mut String) {
                if self.next(4) == 0 {
                    let at = " ".repeat(self.next(indent + 5));
                    out.push_str(&format!(
                        "{at}#{}\n",
                        [" c", "", " k: v", "- x"][self.next(4)]
                    ));
                }
            }
            fn json(&mut self, depth: usize) -> String {
                match self.next(if depth > 3 { 4 } else { 6 }) {
                    0 => format!("{}", self.next(100_000) as i64 - 50_000),
                    1 => ["true", "false", "null"][self.next(3)].to_string(),
                    2 | 3 => {
                        let text = [
                            "",
                            "a b",
                            "é",
                            "q\"uote",
                            "<&>",
                            "tab\tnl\n",
                            "\u{7f}",
                            "策略 😀",
                            "ls\u{2028}nel\u{85}bom\u{feff}",
                        ][self.next(9)];
                        // Printable characters raw or escaped (as `tojson` leaves them raw
                        // or a hand-written file escapes them), the others escaped.
                        let raw = self.next(2) == 0;
                        let mut json = String::from('"');
                        for c in text.chars() {
                            match c {
                                '"' | '\\' => json.extend(['\\', c]),
                                ' '..='~' => json.push(c),
                                '\u{a0}'..='\u{2027}' | '\u{1f000}'.. if raw => json.push(c),
                                _ => json.push_str(&format!("\\u{:04x}", u32::from(c))),
                            }
                        }
                        json.push('"');
                        json
                    }
                    4 => {
                        let items: Vec<String> =
                            (0..self.next(4)).map(|_| self.json(depth + 1)).collect();
                        let (open, sep, close) = self.flow_spacing();
                        format!("[{open}{}{close}]", items.join(&sep))
                    }
                    _ => {
                        // JSON keys as `tojson` writes them, or plain keys as people do
                        // (`: ` then the value); plain values too, in the hand-written style.
                        let plain_keys = self.next(2) == 0;
                        let items: Vec<String> = (0..self.next(4))
                            .map(|i| {
                                let value = if plain_keys && self.next(2) == 0 {
                                    const PLAIN: [&str; 10] = [
                                        "info",
                                        "a b",
                                        "100m",
                                        "t0",
                                        "Synthetic plugin 7",
                                        "合成插件 7",
                                        "it's",
                                        "'1.0'",
                                        "-ec",
                                        "/tmp",
                                    ];
                                    PLAIN[self.next(PLAIN.len())].to_string()
                                } else {
                                    self.json(depth + 1)
                                };
                                if plain_keys {
                                    format!("k{i}:{}{value}", " ".repeat(1 + self.next(2)))
                                } else {
                                    format!("\"k{i}\":{value}")
                                }
                            })
                            .collect();
                        let (open, sep, close) = self.flow_spacing();
                        format!("{{{open}{}{close}}}", items.join(&sep))
                    }
                }
            }
            /// Spaces after the opening bracket, around commas and before the closing
            /// one: none (compact JSON) or some (hand-written flow YAML).
            fn flow_spacing(&mut self) -> (String, String, String) {
                if self.next(2) == 0 {
                    return (String::new(), ",".into(), String::new());
                }
                let mut spaces = || " ".repeat(self.next(3));
                (spaces(), format!("{},{}", spaces(), spaces()), spaces())
            }
            fn mapping(&mut self, indent: usize, depth: usize, out: &mut String) {
                for i in 0..1 + self.next(4) {
                    self.comment(indent, out);
                    self.entry(&format!("{}k{i}:", " ".repeat(indent)), indent, depth, out);
                }
            }
            fn entry(&mut self, head: &str, indent: usize, depth: usize, out: &mut String) {
                out.push_str(head);
                match self.next(if depth > 4 { 2 } else { 5 }) {
                    0 | 1 => out.push_str(&format!(" {}\n", self.scalar())),
                    2 => {
                        let step = 1 + self.next(4);
                        let header = ["|", "| # c"][self.next(2)];
                        let inner = ["line b ", "# not a comment", "  # nor this"][self.next(3)];
                        out.push_str(&format!(
                            " {header}\n{pad}line a\n{pad}  {inner}\n",
                            pad = " ".repeat(indent + step)
                        ));
                    }
                    3 => {
                        out.push('\n');
                        let col = indent + 1 + self.next(4);
                        self.mapping(col, depth + 1, out);
                    }
                    _ => {
                        out.push('\n');
                        // 0: an indentless sequence, its `-` at the key's column.
                        let col = indent + self.next(5);
                        for _ in 0..1 + self.next(3) {
                            self.comment(col, out);
                            let dash =
                                format!("{}-{}", " ".repeat(col), " ".repeat(1 + self.next(2)));
                            if self.next(2) == 0 {
                                out.push_str(&format!("{dash}{}\n", self.scalar()));
                            } else {
                                // `- key: value` then more keys at the key's column.
                                let item_col = dash.len();
                                self.entry(&format!("{dash}first:"), item_col, depth + 1, out);
                                for i in 0..self.next(3) {
                                    let head = format!("{}more{i}:", " ".repeat(item_col));
                                    self.entry(&head, item_col, depth + 1, out);
                                }
                            }
                        }
                    }
                }
            }
        }

        let mut gen = Gen(crate::yaml::testing::Seeded::new(0x2545_f491_4f6c_dd1d));
        let mut refused_mutants = 0;
        for _ in 0..4000 {
            let mut doc = String::new();
            gen.mapping(0, 0, &mut doc);
            accepted(&doc);
            // One byte replaced by a YAML-significant one.
            let mut bytes = doc.clone().into_bytes();
            let at = gen.next(bytes.len());
            bytes[at] = b" :-#'\"{}[],|>&*!\n0."[gen.next(19)];
            if let Ok(mutant) = String::from_utf8(bytes) {
                if check(&mutant).is_none() {
                    refused_mutants += 1;
                }
            }
        }
        assert!(refused_mutants > 0);
    }
}
