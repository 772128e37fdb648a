//! A fast path for printing objects as YAML: the exact bytes of `serde_yaml::to_string`.
//!
//! `plugsync render` prints every rendered object, and turning a thousand plugins' objects
//! into text through `serde_yaml` cost more than rendering them (serde_yaml checks every
//! string against the YAML 1.2 core schema by trying to parse it as a number, then libyaml
//! analyses it again and writes it byte by byte). Rendered objects are block mappings and
//! sequences of ASCII strings, integers, booleans and nulls, with the odd multi-line
//! string, so this module writes that subset directly, following the decisions libyaml's
//! emitter makes (its indentation state, its scalar analysis, its style selection) and
//! serde_yaml's choice of scalar style hints.
//!
//! Correctness rule: [`to_string`] returns `Some` only where the text is certain to be
//! byte-for-byte what `serde_yaml::to_string` returns (with serde_yaml's settings: no
//! line folding, two-space indentation); anything outside the subset (non-ASCII or control
//! characters, floats, strings libyaml would double-quote, long or multi-line keys,
//! block scalars with kept trailing newlines) gives `None`, and the caller uses serde_yaml.
//! A differential test holds it to that rule.

use super::tree::{Shape, Tree};

/// libyaml's indentation step (serde_yaml keeps the default).
const INDENT_STEP: i32 = 2;
/// Longest key libyaml writes as a simple `key:` (longer ones take the `? key` form).
const MAX_SIMPLE_KEY_LEN: usize = 128;

/// `value` (a `serde_json::Value`, or a parsed [`super::tree::Node`], which prints the same
/// as the `Value` it stands for) as `serde_yaml::to_string` prints it, when that is
/// certain; `None` means "ask serde_yaml".
pub(crate) fn to_string<T: Tree>(value: &T) -> Option<String> {
    to_string_sized(value, 1024)
}

/// [`to_string`], into a string of `capacity` to begin with (the printed size, when the
/// caller can tell, saves growing the string as it is written).
pub(crate) fn to_string_sized<T: Tree>(value: &T, capacity: usize) -> Option<String> {
    let mut emitter = Emitter {
        out: String::with_capacity(capacity),
        column: 0,
        indent: -1,
        indents: Vec::with_capacity(16),
        whitespace: true,
        indention: true,
    };
    emitter.node(value, Context::Root)?;
    // The implicit document end: finish the last line.
    emitter.write_indent();
    Some(emitter.out)
}

/// Where a node sits, which decides its indentation and scalar styles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Root,
    SequenceItem,
    MappingKey,
    MappingValue,
}

/// The style serde_yaml asks libyaml for (its "hint"), before libyaml's own checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    /// Whatever libyaml finds best (plain where allowed).
    Any,
    Plain,
    SingleQuoted,
    Literal,
}

/// The style libyaml ends up writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    SingleQuoted,
    Literal,
}

/// libyaml's writer state, reduced to what block collections and the scalar styles above
/// use (no flow collections other than `[]` and `{}`, so no flow level).
struct Emitter {
    out: String,
    column: usize,
    /// The current indentation; -1 before the root collection.
    indent: i32,
    indents: Vec<i32>,
    /// Whether the last character written was whitespace (an indicator may need a space).
    whitespace: bool,
    /// Whether only indentation has been written on the current line.
    indention: bool,
}

impl Emitter {
    fn node<T: Tree>(&mut self, value: &T, context: Context) -> Option<()> {
        match value.shape() {
            Shape::Null => self.scalar("null", Hint::Plain, context),
            Shape::Bool(b) => self.scalar(if b { "true" } else { "false" }, Hint::Plain, context),
            // Integers print as `itoa` writes them, which is what `Display` writes; floats
            // go through ryu and special cases in serde_yaml, so they take the slow path.
            Shape::Integer(text) => self.scalar(&text, Hint::Plain, context),
            Shape::Float => None,
            Shape::String(s) => self.string(s, context),
            Shape::Sequence([]) => {
                self.empty_flow("[", "]");
                Some(())
            }
            Shape::Sequence(items) => self.block_sequence(items, context),
            Shape::Mapping(0) => {
                self.empty_flow("{", "}");
                Some(())
            }
            Shape::Mapping(_) => self.block_mapping(value),
        }
    }

    fn block_sequence<T: Tree>(&mut self, items: &[T], context: Context) -> Option<()> {
        // A sequence that is a mapping's value is not indented further than its key.
        let indentless = context == Context::MappingValue && !self.indention;
        self.increase_indent(false, indentless);
        for item in items {
            self.write_indent();
            self.write_indicator("-", true, false, true);
            self.node(item, Context::SequenceItem)?;
        }
        self.pop_indent();
        Some(())
    }

    fn block_mapping<T: Tree>(&mut self, map: &T) -> Option<()> {
        self.increase_indent(false, false);
        for (key, value) in map.entries() {
            self.write_indent();
            // Long keys take libyaml's complex-key form (`? key`); so do multi-line ones,
            // which the key context refuses.
            if key.len() > MAX_SIMPLE_KEY_LEN {
                return None;
            }
            self.string(key, Context::MappingKey)?;
            self.write_indicator(":", false, false, false);
            self.node(value, Context::MappingValue)?;
        }
        self.pop_indent();
        Some(())
    }

    /// `[]` or `{}`: libyaml writes empty collections in flow style.
    fn empty_flow(&mut self, open: &str, close: &str) {
        self.write_indicator(open, true, true, false);
        self.increase_indent(true, false);
        self.pop_indent();
        self.write_indicator(close, false, false, false);
    }

    /// A string, in the style serde_yaml asks for ([`string_hint`]) as libyaml settles it.
    fn string(&mut self, text: &str, context: Context) -> Option<()> {
        let analysis = Analysis::of(text)?;
        self.styled(text, string_hint(text, &analysis), &analysis, context)
    }

    fn scalar(&mut self, text: &str, hint: Hint, context: Context) -> Option<()> {
        self.styled(text, hint, &Analysis::of(text)?, context)
    }

    fn styled(
        &mut self,
        text: &str,
        hint: Hint,
        analysis: &Analysis,
        context: Context,
    ) -> Option<()> {
        let style = select_style(hint, analysis, context == Context::MappingKey)?;
        self.increase_indent(true, false);
        match style {
            Style::Plain => self.write_plain(text),
            Style::SingleQuoted => self.write_single_quoted(text),
            Style::Literal => self.write_literal(text)?,
        }
        self.pop_indent();
        Some(())
    }

    fn increase_indent(&mut self, flow: bool, indentless: bool) {
        self.indents.push(self.indent);
        if self.indent < 0 {
            self.indent = if flow { INDENT_STEP } else { 0 };
        } else if !indentless {
            self.indent += INDENT_STEP;
        }
    }

    fn pop_indent(&mut self) {
        // Pushes and pops are paired within each node.
        self.indent = self.indents.pop().unwrap_or(-1);
    }

    fn put(&mut self, text: &str) {
        self.out.push_str(text);
        self.column += text.len();
    }

    fn put_break(&mut self) {
        self.out.push('\n');
        self.column = 0;
    }

    fn write_indent(&mut self) {
        let indent = self.indent.max(0) as usize;
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.put_break();
        }
        while self.column < indent {
            self.put(" ");
        }
        self.whitespace = true;
        self.indention = true;
    }

    fn write_indicator(
        &mut self,
        indicator: &str,
        need_whitespace: bool,
        is_whitespace: bool,
        is_indention: bool,
    ) {
        if need_whitespace && !self.whitespace {
            self.put(" ");
        }
        self.put(indicator);
        self.whitespace = is_whitespace;
        self.indention = self.indention && is_indention;
    }

    fn write_plain(&mut self, text: &str) {
        if !self.whitespace && !text.is_empty() {
            self.put(" ");
        }
        // Single-line (plain is never chosen for multi-line text), and serde_yaml sets no
        // line width, so libyaml never folds at a space.
        self.put(text);
        self.whitespace = false;
        self.indention = false;
    }

    fn write_single_quoted(&mut self, text: &str) {
        self.write_indicator("'", true, false, false);
        // Single-line, as for plain; a quote is written twice.
        for (i, part) in text.split('\'').enumerate() {
            if i > 0 {
                self.put("''");
            }
            self.put(part);
        }
        self.write_indicator("'", false, false, false);
        self.whitespace = false;
        self.indention = false;
    }

    fn write_literal(&mut self, text: &str) -> Option<()> {
        self.write_indicator("|", true, false, false);
        // Block scalar hints: an explicit indentation when the text starts with a space or a
        // break, and `-` (strip) when it does not end with a break. Text ending in two
        // breaks needs `+` (keep), after which libyaml ends the document with `...`.
        if text.starts_with([' ', '\n']) {
            self.write_indicator("2", false, false, false);
        }
        if !text.ends_with('\n') {
            self.write_indicator("-", false, false, false);
        } else if text.len() == 1 || text.ends_with("\n\n") {
            return None;
        }
        self.put_break();
        self.indention = true;
        self.whitespace = true;
        let mut breaks = true;
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                self.put_break();
                self.indention = true;
                breaks = true;
            }
            if !line.is_empty() {
                if breaks {
                    self.write_indent();
                }
                self.put(line);
                self.indention = false;
                breaks = false;
            }
        }
        Some(())
    }
}

/// What libyaml's scalar analysis finds about a text, reduced to the block context (the
/// only one scalars are written in here).
#[derive(Debug)]
struct Analysis {
    multiline: bool,
    empty: bool,
    block_plain_allowed: bool,
    single_quoted_allowed: bool,
    block_allowed: bool,
}

/// Bytes libyaml writes plainly wherever they are in a string: ASCII letters and digits
/// and `. _ / = + -` (a table, as this is asked of every byte of almost every string).
const PLAIN_EVERYWHERE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'=' | b'+' | b'-');
        b += 1;
    }
    table
};

impl Analysis {
    /// `None` when the text has a character libyaml would escape (anything but printable
    /// ASCII and `\n`): such text is double-quoted, which this module does not write.
    fn of(text: &str) -> Option<Analysis> {
        let bytes = text.as_bytes();
        if bytes.is_empty() {
            return Some(Analysis {
                multiline: false,
                empty: true,
                block_plain_allowed: true,
                single_quoted_allowed: true,
                block_allowed: false,
            });
        }
        // Most text (names, images, paths, hashes) has no character libyaml looks at twice:
        // plain style, with nothing to find.
        if bytes.iter().all(|&b| PLAIN_EVERYWHERE[usize::from(b)])
            && bytes != b"-"
            && !bytes.starts_with(b"---")
            && !bytes.starts_with(b"...")
        {
            return Some(Analysis {
                multiline: false,
                empty: false,
                block_plain_allowed: true,
                single_quoted_allowed: true,
                block_allowed: true,
            });
        }
        if !super::printable_ascii(bytes) {
            return None;
        }
        let last = bytes.len() - 1;
        // Whether the character after position `i` is whitespace; the end of the text
        // counts as whitespace (libyaml sees the string's terminating NUL).
        let followed_by_whitespace = |i: usize| i == last || matches!(bytes[i + 1], b' ' | b'\n');
        let mut block_indicators = bytes.starts_with(b"---") || bytes.starts_with(b"...");
        let (mut leading_space, mut leading_break) = (false, false);
        let (mut trailing_space, mut trailing_break) = (false, false);
        let (mut break_space, mut space_break, mut line_breaks) = (false, false, false);
        let (mut previous_space, mut previous_break) = (false, false);
        let mut preceded_by_whitespace = true;
        for (i, &b) in bytes.iter().enumerate() {
            if i == 0 {
                if b"#,[]{}&*!|>'\"%@`".contains(&b) {
                    block_indicators = true;
                }
                if matches!(b, b'?' | b':' | b'-') && followed_by_whitespace(i) {
                    block_indicators = true;
                }
            } else {
                if b == b':' && followed_by_whitespace(i) {
                    block_indicators = true;
                }
                if b == b'#' && preceded_by_whitespace {
                    block_indicators = true;
                }
            }
            match b {
                b' ' => {
                    leading_space |= i == 0;
                    trailing_space |= i == last;
                    break_space |= previous_break;
                    (previous_space, previous_break) = (true, false);
                }
                b'\n' => {
                    line_breaks = true;
                    leading_break |= i == 0;
                    trailing_break |= i == last;
                    space_break |= previous_space;
                    (previous_space, previous_break) = (false, true);
                }
                _ => (previous_space, previous_break) = (false, false),
            }
            preceded_by_whitespace = matches!(b, b' ' | b'\n');
        }
        Some(Analysis {
            multiline: line_breaks,
            empty: false,
            block_plain_allowed: !(leading_space
                || leading_break
                || trailing_space
                || trailing_break
                || break_space
                || space_break
                || line_breaks
                || block_indicators),
            single_quoted_allowed: !(break_space || space_break),
            block_allowed: !(trailing_space || space_break),
        })
    }
}

/// libyaml's style selection for an untagged scalar in block context; `None` where it
/// would pick double quotes.
fn select_style(hint: Hint, analysis: &Analysis, simple_key: bool) -> Option<Style> {
    if simple_key && analysis.multiline {
        return None;
    }
    let mut style = match hint {
        Hint::Any | Hint::Plain => Style::Plain,
        Hint::SingleQuoted => Style::SingleQuoted,
        Hint::Literal => Style::Literal,
    };
    if style == Style::Plain && (!analysis.block_plain_allowed || (analysis.empty && simple_key)) {
        style = Style::SingleQuoted;
    }
    if style == Style::SingleQuoted && !analysis.single_quoted_allowed {
        return None;
    }
    if style == Style::Literal && (!analysis.block_allowed || simple_key) {
        return None;
    }
    Some(style)
}

/// The style serde_yaml asks for a string (`analysis` is the string's): literal for
/// multi-line text, single quotes for text that would read back as another type (null, a
/// boolean, a number) or as a string of digits with a leading zero, and "any" otherwise.
fn string_hint(text: &str, analysis: &Analysis) -> Hint {
    if analysis.multiline {
        Hint::Literal
    } else if reads_as_non_string(text) || digits_with_leading_zero(text) {
        Hint::SingleQuoted
    } else {
        Hint::Any
    }
}

/// Whether serde_yaml would read the plain scalar `text` as something other than a string:
/// the same rules, in the same order, as its untagged-scalar deserialization.
fn reads_as_non_string(text: &str) -> bool {
    // Numbers start with a digit, a sign or a dot (Rust's float syntax spells infinity and
    // NaN with letters, but serde_yaml refuses non-finite floats other than its own
    // `.inf` and `.nan`), so text starting with a letter can only be a keyword.
    let keyword = matches!(
        text,
        "" | "~"
            | "null"
            | "Null"
            | "NULL"
            | "true"
            | "True"
            | "TRUE"
            | "false"
            | "False"
            | "FALSE"
    );
    if text.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return keyword;
    }
    keyword
        || unsigned_int(text)
        || signed_int(text)
        || (!digits_with_leading_zero(text) && float(text))
}

/// serde_yaml's unsigned integers (it also tries 64 bits first, which 128 bits include).
fn unsigned_int(text: &str) -> bool {
    let unsigned = |digits: &str, radix: u32| u128::from_str_radix(digits, radix).is_ok();
    let unpositive = text.strip_prefix('+').unwrap_or(text);
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(rest) = unpositive.strip_prefix(prefix) {
            if rest.starts_with(['+', '-']) {
                return false;
            }
            if unsigned(rest, radix) {
                return true;
            }
        }
    }
    if unpositive.starts_with(['+', '-']) || digits_with_leading_zero(text) {
        return false;
    }
    unsigned(unpositive, 10)
}

/// serde_yaml's negative (in fact any signed) integers, 128 bits wide.
fn signed_int(text: &str) -> bool {
    let signed = |digits: &str, radix: u32| i128::from_str_radix(digits, radix).is_ok();
    for (prefix, radix) in [("-0x", 16), ("-0o", 8), ("-0b", 2)] {
        if let Some(rest) = text.strip_prefix(prefix) {
            if signed(&format!("-{rest}"), radix) {
                return true;
            }
        }
    }
    !digits_with_leading_zero(text) && signed(text, 10)
}

/// serde_yaml's floats: `.inf`, `.nan` and what Rust parses as a finite `f64`.
fn float(text: &str) -> bool {
    let unpositive = match text.strip_prefix('+') {
        Some(rest) if rest.starts_with(['+', '-']) => return false,
        Some(rest) => rest,
        None => text,
    };
    matches!(unpositive, ".inf" | ".Inf" | ".INF")
        || matches!(text, "-.inf" | "-.Inf" | "-.INF" | ".nan" | ".NaN" | ".NAN")
        || unpositive.parse::<f64>().is_ok_and(f64::is_finite)
}

/// A leading zero followed by digits only (after an optional sign): a string in YAML 1.2,
/// which serde_yaml quotes so YAML 1.1 readers do not take it for an octal number.
fn digits_with_leading_zero(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    digits.len() > 1 && digits.starts_with('0') && digits[1..].bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The fast text, checked against serde_yaml's when given.
    fn check(value: &Value) -> Option<String> {
        let fast = to_string(value);
        if let Some(text) = &fast {
            let reference = serde_yaml::to_string(value).expect("serde_yaml prints any JSON");
            assert_eq!(text, &reference, "fast emit differs for {value:?}");
        }
        fast
    }

    #[test]
    fn prints_a_kubernetes_object_as_serde_yaml_does() {
        let object = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "p1", "labels": {"app.kubernetes.io/name": "x"}, "annotations": {}},
            "spec": {
                "replicas": 1,
                "template": {"spec": {
                    "containers": [{
                        "name": "plugin",
                        "args": ["-ec", "set -e\necho hi\n", "  lead", "trail ", ""],
                        "ports": [{"containerPort": 8080}],
                        "env": [{"name": "A", "value": "0755"}, {"name": "B", "value": "true"}],
                        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532},
                        "volumeMounts": [],
                    }],
                    "nodeSelector": null,
                }},
            },
        });
        let text = check(&object).expect("inside the subset");
        assert!(text.contains("\n      - '0755'\n") || text.contains("value: '0755'"));
        assert!(
            text.contains("- |\n"),
            "multi-line text is a literal block:\n{text}"
        );
    }

    #[test]
    fn leaves_what_it_does_not_handle_to_serde_yaml() {
        for value in [
            json!({"a": 1.5}),
            json!({"a": "é"}),
            json!({"a": "tab\there"}),
            json!({"a": "line\n\n"}),
            json!({"a": "\n"}),
            json!({"a": "trailing space \nx"}),
            json!({"multi\nline": 1}),
            json!({"k".repeat(129): 1}),
            json!({"a": "\u{7f}"}),
        ] {
            assert_eq!(check(&value), None, "accepted {value:?}");
        }
    }

    #[test]
    fn quotes_what_would_read_back_as_another_type() {
        for text in [
            "", "~", "null", "True", "FALSE", "12", "-12", "+12", "0x1F", "-0x1F", "0o17", "0b101",
            "1.5", "1e3", "-.inf", ".NaN", "007", "-007", "1_000",
        ] {
            let printed = check(&json!({ "k": text })).expect("ASCII");
            let reads_back: Value = serde_yaml::from_str(&printed).unwrap();
            assert_eq!(reads_back["k"], json!(text), "{printed}");
        }
    }

    /// Every object `plugsync render` prints for the bundled example (the golden file)
    /// takes the fast path, and it prints the golden bytes.
    #[test]
    fn prints_the_golden_render_of_the_example() {
        let golden = include_str!("../../../../tests/golden/example-objects.yaml");
        let documents: Vec<&str> = golden.split("---\n").filter(|d| !d.is_empty()).collect();
        assert!(documents.len() >= 8, "{} documents", documents.len());
        for document in documents {
            let value: Value = serde_yaml::from_str(document).unwrap();
            assert_eq!(to_string(&value).as_deref(), Some(document));
        }
    }

    /// Random texts and values around the subset.
    struct Gen(crate::yaml::testing::Seeded);

    impl Gen {
        fn next(&mut self, n: usize) -> usize {
            self.0.below(n)
        }

        fn text(&mut self) -> String {
            const WORDS: [&str; 40] = [
                "x",
                "abc",
                "apps/v1",
                "IfNotPresent",
                "-ec",
                "/health",
                ".dockerconfigjson",
                "0",
                "007",
                "8080",
                "-3",
                "+4",
                "1.5",
                "1e3",
                ".inf",
                "-.Inf",
                ".nan",
                "nan",
                "inf",
                "0x1f",
                "0o9",
                "0b2",
                "true",
                "False",
                "null",
                "~",
                "yes",
                "---",
                "...",
                "a: b",
                "a:b",
                "a #b",
                "a#b",
                "? x",
                "- x",
                "-x",
                "'q'",
                "\"d\"",
                "sha256:ab",
                "1.0.0",
            ];
            const CHARS: &[u8] = b" \n abc-:#'\"?!&*|>%@`,[]{}.~019+eExXoObB_/";
            match self.next(4) {
                0 | 1 => WORDS[self.next(WORDS.len())].to_string(),
                2 => (0..self.next(8))
                    .map(|_| CHARS[self.next(CHARS.len())] as char)
                    .collect(),
                _ => {
                    let lines: Vec<String> = (0..1 + self.next(4))
                        .map(|_| {
                            let pad = " ".repeat([0, 0, 1, 2][self.next(4)]);
                            let word = WORDS[self.next(WORDS.len())];
                            let tail = [" ", "", "", ""][self.next(4)];
                            format!("{pad}{word}{tail}")
                        })
                        .collect();
                    let end = ["", "\n", "\n", "\n\n"][self.next(4)];
                    format!("{}{end}", lines.join("\n"))
                }
            }
        }

        fn value(&mut self, depth: usize) -> Value {
            match self.next(if depth > 4 { 5 } else { 9 }) {
                0 => Value::Null,
                1 => Value::Bool(self.next(2) == 0),
                2 => json!(self.next(1_000_000) as i64 - 500_000),
                3 => json!(u64::MAX - self.next(3) as u64),
                4 => Value::String(self.text()),
                5 | 6 => Value::Array((0..self.next(4)).map(|_| self.value(depth + 1)).collect()),
                _ => Value::Object(
                    (0..self.next(4))
                        .map(|_| (self.text(), self.value(depth + 1)))
                        .collect(),
                ),
            }
        }
    }

    /// Random values around the subset: wherever the fast path answers, it answers what
    /// serde_yaml prints; and it answers often enough to be the path actually taken.
    #[test]
    fn differential_against_serde_yaml() {
        let mut gen = Gen(crate::yaml::testing::Seeded::new(0x2545_f491_4f6c_dd1d));
        let (mut accepted, total) = (0, 20_000);
        for _ in 0..total {
            let value = match gen.next(3) {
                0 => gen.value(0),
                _ => Value::Object(
                    (0..1 + gen.next(5))
                        .map(|_| (gen.text(), gen.value(1)))
                        .collect(),
                ),
            };
            if check(&value).is_some() {
                accepted += 1;
            }
        }
        assert!(accepted > total / 3, "only {accepted} of {total} accepted");
    }

    /// Every scalar hint decision on its own, over short strings of the characters that
    /// matter: the quoting serde_yaml picks is the one written.
    #[test]
    fn every_short_string_agrees_with_serde_yaml() {
        const CHARS: &[u8] = b" -:#'?.0x1e+b\nA";
        let mut texts = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for prefix in &frontier {
                for &c in CHARS {
                    let mut s = prefix.clone();
                    s.push(c as char);
                    next.push(s);
                }
            }
            texts.extend(next.iter().cloned());
            frontier = next;
        }
        let mut accepted = 0;
        for text in &texts {
            for value in [
                json!({ "k": text }),
                json!([text]),
                json!({ text.as_str(): 1 }),
            ] {
                if check(&value).is_some() {
                    accepted += 1;
                }
            }
        }
        assert!(accepted > texts.len(), "only {accepted} accepted");
    }
}
