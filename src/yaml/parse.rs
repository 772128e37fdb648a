//! A fast path for parsing what the templates render (and other plain block YAML).
//!
//! Parsing every rendered object with `serde_yaml` was most of the cost of rendering (a
//! thousand plugins rendered four objects each spent ~70% of their time in the YAML
//! scanner). Rendered objects use a tiny part of YAML: block mappings and sequences of
//! simple keys, a few plain words and integers, one literal block (`|`), and values
//! interpolated with `tojson`, i.e. compact JSON on one line. This module parses exactly
//! that subset, and nothing else.
//!
//! Correctness rule: [`parse`] returns `Some` only where the result is certain to be what
//! `serde_yaml::from_str::<Value>` returns; on anything else (comments, quoting styles,
//! tabs, non-ASCII, floats, duplicate keys, flow values with spaces, odd indentation, …)
//! it returns `None` and the caller parses with `serde_yaml`, errors included. A
//! differential test holds it to that rule.

use serde_json::{Map, Value};

/// Deepest nesting accepted (serde_yaml's own limit is 128); deeper goes the slow way.
const MAX_DEPTH: usize = 64;
/// Longest key accepted, quotes and escapes included: YAML stops looking for a simple
/// key's `:` after 1024 characters.
const MAX_KEY_LEN: usize = 512;

/// The document's value, when the text is within the subset; `None` means "ask serde_yaml".
pub(crate) fn parse(text: &str) -> Option<Value> {
    // Printable ASCII and newlines only: no tabs (indentation), no `\r`, no non-ASCII (YAML
    // treats some code points, such as U+2028 and U+0085, as line breaks).
    if !text
        .bytes()
        .all(|b| b == b'\n' || (b' '..=b'~').contains(&b))
    {
        return None;
    }
    let lines: Vec<Line<'_>> = text
        .split('\n')
        .map(|raw| {
            let indent = raw.len() - raw.trim_start_matches(' ').len();
            Line {
                indent,
                text: &raw[indent..],
            }
        })
        .collect();
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
}

struct Parser<'a> {
    lines: Vec<Line<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn skip_blank(&mut self) {
        while self.lines.get(self.pos).is_some_and(Line::is_blank) {
            self.pos += 1;
        }
    }

    /// The next non-blank line, without consuming it.
    fn peek(&mut self) -> Option<Line<'a>> {
        self.skip_blank();
        self.lines.get(self.pos).copied()
    }

    /// A block node whose first line is the next line, at `indent`.
    fn node(&mut self, indent: usize, depth: usize) -> Option<Value> {
        let line = self.peek()?;
        if line.indent != indent {
            return None;
        }
        if is_entry(line.text) {
            self.sequence(indent, depth)
        } else {
            self.mapping(indent, depth)
        }
    }

    /// A block mapping whose keys sit at column `col`.
    fn mapping(&mut self, col: usize, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        let mut map = Map::new();
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
            let value = if rest.is_empty() {
                // A nested block, more indented (an indentless sequence or an empty value
                // goes the slow way).
                let next = self.peek()?;
                if next.indent <= col {
                    return None;
                }
                self.node(next.indent, depth + 1)?
            } else if rest == "|" {
                self.literal(col)?
            } else {
                inline(rest, depth + 1)?
            };
            if map.insert(key.to_string(), value).is_some() {
                return None;
            }
        }
        Some(Value::Object(map))
    }

    /// A block sequence whose `-` sit at column `col`.
    fn sequence(&mut self, col: usize, depth: usize) -> Option<Value> {
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
                // A key at the sequence's column: the parent's business (but the parent
                // is always less indented here, so this is not a valid continuation).
                return None;
            }
            let after_dash = &line.text[1..];
            let gap = after_dash.len() - after_dash.trim_start_matches(' ').len();
            let rest = after_dash[gap..].trim_end_matches(' ');
            if rest.is_empty() || is_entry(rest) {
                return None;
            }
            if rest == "|" {
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
        Some(Value::Array(items))
    }

    /// A literal block scalar (`|`, clip chomping) whose header was just consumed; its
    /// parent node sits at column `parent`. Only the simple form: content lines all
    /// non-blank and at one indentation or deeper.
    fn literal(&mut self, parent: usize) -> Option<Value> {
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
        // belong to it.
        if self.peek().is_some_and(|next| next.indent >= indent) {
            return None;
        }
        Some(Value::String(out))
    }
}

/// Whether a line (after its indentation) is a block sequence entry.
fn is_entry(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// `key: rest` or `key:` with a simple plain key; `None` for anything else.
fn split_key(text: &str) -> Option<(&str, &str)> {
    let colon = text.find(':')?;
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
    [
        "true", "false", "null", "yes", "no", "on", "off", "y", "n", "inf", "infinity", "nan",
    ]
    .iter()
    .any(|w| bare.eq_ignore_ascii_case(w))
}

/// A value on the rest of a line: compact JSON (`tojson`) or a plain scalar.
fn inline(text: &str, depth: usize) -> Option<Value> {
    match text.as_bytes().first()? {
        b'{' | b'[' | b'"' => {
            let mut flow = Flow {
                bytes: text.as_bytes(),
                pos: 0,
            };
            let value = flow.value(depth)?;
            (flow.pos == text.len()).then_some(value)
        }
        _ => plain(text),
    }
}

/// A plain scalar: `true`, `false`, `null`, a decimal integer, or a word of letters,
/// digits and `_ - . /` that no YAML version reads as anything but a string.
fn plain(text: &str) -> Option<Value> {
    match text {
        "true" => return Some(Value::Bool(true)),
        "false" => return Some(Value::Bool(false)),
        "null" => return Some(Value::Null),
        _ => {}
    }
    if let Some(n) = integer(text) {
        return Some(n);
    }
    let bytes = text.as_bytes();
    let first_ok = match bytes[0] {
        b if b.is_ascii_alphabetic() || b == b'_' || b == b'/' => true,
        b'-' | b'.' => bytes.get(1).is_some_and(u8::is_ascii_alphabetic),
        _ => false,
    };
    let rest_ok = bytes[1..]
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'));
    (first_ok && rest_ok && !is_reserved_word(text)).then(|| Value::String(text.to_string()))
}

/// A decimal integer without sign `+`, leading zeros or `-0`, within i64 or u64.
fn integer(text: &str) -> Option<Value> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let bytes = digits.as_bytes();
    if bytes.is_empty()
        || !bytes.iter().all(u8::is_ascii_digit)
        || (bytes[0] == b'0' && (bytes.len() > 1 || digits.len() != text.len()))
    {
        return None;
    }
    if digits.len() == text.len() {
        text.parse::<u64>().ok().map(|n| Value::Number(n.into()))
    } else {
        text.parse::<i64>().ok().map(|n| Value::Number(n.into()))
    }
}

/// Compact JSON (no whitespace outside strings), integers only, no duplicate keys: the
/// part of JSON where YAML's flow syntax reads exactly what JSON does.
struct Flow<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Flow<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => {
                self.pos += 1;
                let mut map = Map::new();
                if self.eat(b'}') {
                    return Some(Value::Object(map));
                }
                loop {
                    let start = self.pos;
                    let key = self.string()?;
                    if self.pos - start > MAX_KEY_LEN || !self.eat(b':') {
                        return None;
                    }
                    let value = self.value(depth + 1)?;
                    if map.insert(key, value).is_some() {
                        return None;
                    }
                    if self.eat(b'}') {
                        return Some(Value::Object(map));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Some(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Some(Value::Array(items));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'"' => self.string().map(Value::String),
            _ => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    self.pos += 1;
                }
                let word = std::str::from_utf8(&self.bytes[start..self.pos]).ok()?;
                match word {
                    "true" => Some(Value::Bool(true)),
                    "false" => Some(Value::Bool(false)),
                    "null" => Some(Value::Null),
                    _ => integer(word),
                }
            }
        }
    }

    /// A JSON string with JSON's escapes (all of which YAML double quotes read the same);
    /// surrogate escapes, which JSON pairs and YAML refuses, go the slow way.
    fn string(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out = String::new();
        loop {
            let start = self.pos;
            while self.peek().is_some_and(|b| b != b'"' && b != b'\\') {
                self.pos += 1;
            }
            // The input is ASCII (checked up front), so any slice is valid UTF-8.
            let run = std::str::from_utf8(&self.bytes[start..self.pos]).ok()?;
            match self.peek()? {
                // Most strings have no escapes: one allocation of the exact size.
                b'"' if out.is_empty() => {
                    self.pos += 1;
                    return Some(run.to_string());
                }
                b'"' => {
                    self.pos += 1;
                    out.push_str(run);
                    return Some(out);
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
                            let hex = self.bytes.get(self.pos + 1..self.pos + 5)?;
                            let hex = std::str::from_utf8(hex).ok()?;
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

    /// The rule: the fast path agrees with serde_yaml wherever it answers.
    fn check(text: &str) -> Option<Value> {
        let fast = parse(text);
        if let Some(fast) = &fast {
            let slow: Result<Value, _> = serde_yaml::from_str(text);
            match slow {
                Ok(slow) => assert_eq!(fast, &slow, "disagreement on {text:?}"),
                Err(e) => panic!("fast path accepted what serde_yaml refuses ({e}): {text:?}"),
            }
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
    fn everything_else_goes_the_slow_way() {
        for text in [
            "",
            "# comment\na: 1",
            "a: 1 # comment",
            "a: 'single'",
            "a: 1.5",
            "a: 1e3",
            "a: 0x10",
            "a: 0o10",
            "a: 010",
            "a: +1",
            "a: -0",
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
            "a: b c",
            "a: b:c",
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
            "a:\n- 1\n",
            "a: 1\na: 2",
            "a: {\"k\":1,\"k\":2}",
            "a: {\"k\": 1}",
            "a: { \"k\":1}",
            "a: [1, 2]",
            "a: [1,]",
            "a: {k:1}",
            "a: [1.0]",
            "a: [1e3]",
            "a: [01]",
            "a: \"\\ud83d\\ude00\"",
            "a: \"\\x41\"",
            "a: \"\\'\"",
            "a: \"x\ty\"",
            "a: \"é\"",
            "a: b\u{2028}c",
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
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        const SCALARS: [&str; 24] = [
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
        ];
        const KEYS: [&str; 6] = ["a", "b", "name", "key_x", "app.io/n", "k-1"];
        let mut accepted_count = 0;
        for _ in 0..3000 {
            let mut text = String::new();
            let mut indent = 0usize;
            let lines = 1 + next(12);
            for _ in 0..lines {
                let pad = " ".repeat(indent);
                match next(7) {
                    0 => {
                        text.push_str(&format!("{pad}{}:\n", KEYS[next(KEYS.len())]));
                        indent += [1, 2, 2, 4][next(4)];
                    }
                    1 => text.push_str(&format!("{pad}- {}\n", SCALARS[next(SCALARS.len())])),
                    2 => text.push_str(&format!(
                        "{pad}- {}: {}\n",
                        KEYS[next(KEYS.len())],
                        SCALARS[next(SCALARS.len())]
                    )),
                    3 => text.push_str(&format!(
                        "{pad}{}: |\n{pad}  line one\n{pad}  two\n",
                        KEYS[next(KEYS.len())]
                    )),
                    4 => indent = indent.saturating_sub([1, 2, 2, 4][next(4)]),
                    5 => text.push('\n'),
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
        assert!(accepted_count > 100, "only {accepted_count} accepted");
    }

    /// Well-formed nested documents in the subset, then the same with one character
    /// changed: the former must be accepted and agree, the latter agree or be refused.
    #[test]
    fn differential_on_nested_documents() {
        struct Gen(u64);
        impl Gen {
            fn next(&mut self, n: usize) -> usize {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 % n as u64) as usize
            }
            fn scalar(&mut self) -> String {
                const WORDS: [&str; 12] = [
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
                match self.next(3) {
                    0 => WORDS[self.next(WORDS.len())].to_string(),
                    _ => self.json(0),
                }
            }
            fn json(&mut self, depth: usize) -> String {
                match self.next(if depth > 3 { 4 } else { 6 }) {
                    0 => format!("{}", self.next(100_000) as i64 - 50_000),
                    1 => ["true", "false", "null"][self.next(3)].to_string(),
                    2 | 3 => {
                        let text =
                            ["", "a b", "é", "q\"uote", "<&>", "tab\tnl\n", "\u{7f}"][self.next(7)];
                        // ASCII-only JSON, as the fast path requires.
                        let mut json = String::from('"');
                        for c in text.chars() {
                            match c {
                                '"' | '\\' => json.extend(['\\', c]),
                                ' '..='~' => json.push(c),
                                _ => json.push_str(&format!("\\u{:04x}", u32::from(c))),
                            }
                        }
                        json.push('"');
                        json
                    }
                    4 => {
                        let items: Vec<String> =
                            (0..self.next(4)).map(|_| self.json(depth + 1)).collect();
                        format!("[{}]", items.join(","))
                    }
                    _ => {
                        let items: Vec<String> = (0..self.next(4))
                            .map(|i| format!("\"k{i}\":{}", self.json(depth + 1)))
                            .collect();
                        format!("{{{}}}", items.join(","))
                    }
                }
            }
            fn mapping(&mut self, indent: usize, depth: usize, out: &mut String) {
                for i in 0..1 + self.next(4) {
                    self.entry(&format!("{}k{i}:", " ".repeat(indent)), indent, depth, out);
                }
            }
            fn entry(&mut self, head: &str, indent: usize, depth: usize, out: &mut String) {
                out.push_str(head);
                match self.next(if depth > 4 { 2 } else { 5 }) {
                    0 | 1 => out.push_str(&format!(" {}\n", self.scalar())),
                    2 => {
                        let step = 1 + self.next(4);
                        out.push_str(&format!(
                            " |\n{pad}line a\n{pad}  line b \n",
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
                        let col = indent + 1 + self.next(4);
                        for _ in 0..1 + self.next(3) {
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

        let mut gen = Gen(0x2545_f491_4f6c_dd1d);
        let mut refused_mutants = 0;
        for _ in 0..2000 {
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
