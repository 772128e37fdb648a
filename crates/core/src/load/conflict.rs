//! Git conflict markers left in a file by a merge (`<<<<<<<`, `|||||||`, `=======`,
//! `>>>>>>>`).
//!
//! A YAML parser reports such a file as a syntax error somewhere near the first marker,
//! which tells the user nothing about what happened. Found first, the markers are named
//! for what they are, with their lines; and for plugins.lock, each side of the conflict
//! can be read back whole (the lines outside every hunk plus that side's lines), which is
//! how `plugsync lock` resolves one.

use std::path::Path;

use crate::error::Diagnostic;

/// One conflicted region, by 1-based line numbers of its markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hunk {
    /// The `<<<<<<<` line (ours begins after it).
    pub(crate) start: usize,
    /// The `|||||||` line of a diff3-style conflict (the merge base follows it).
    pub(crate) base: Option<usize>,
    /// The `=======` line (theirs begins after it).
    pub(crate) middle: Option<usize>,
    /// The `>>>>>>>` line; `None` when the file ends first.
    pub(crate) end: Option<usize>,
}

/// One side of a conflicted file, as it was before the merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Side {
    /// The text of that side.
    pub(crate) text: String,
    /// For each line of `text` (0-based), its 1-based line in the conflicted file.
    pub(crate) lines: Vec<usize>,
}

impl Side {
    /// The conflicted file's line for `line` (1-based) of this side; 0 stays 0.
    pub(crate) fn original_line(&self, line: usize) -> usize {
        match line {
            0 => 0,
            n => self.lines.get(n - 1).copied().unwrap_or(0),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Marker {
    Start,
    Base,
    Middle,
    End,
}

/// A marker line: seven marker characters, then the end of the line or a space (git
/// writes `<<<<<<< HEAD`, `>>>>>>> branch`; `=======` stands alone).
fn marker(line: &str) -> Option<Marker> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let is = |c: char, label: bool| {
        let rest = line.strip_prefix(&c.to_string().repeat(7))?;
        let ok = rest.is_empty() || (label && rest.starts_with(' '));
        ok.then_some(())
    };
    if is('<', true).is_some() {
        Some(Marker::Start)
    } else if is('|', true).is_some() {
        Some(Marker::Base)
    } else if is('=', false).is_some() {
        Some(Marker::Middle)
    } else if is('>', true).is_some() {
        Some(Marker::End)
    } else {
        None
    }
}

/// The conflict hunks in `text`; empty when it has none. Only a `<<<<<<<` line opens one,
/// so a lone `=======` (a valid YAML scalar) is not taken for a conflict.
pub(crate) fn hunks(text: &str) -> Vec<Hunk> {
    // Cheap test first: nearly every file has no marker at all.
    if !text.contains("<<<<<<<") {
        return Vec::new();
    }
    let mut hunks: Vec<Hunk> = Vec::new();
    let mut open: Option<Hunk> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        match (marker(line), open.as_mut()) {
            (Some(Marker::Start), None) => {
                open = Some(Hunk {
                    start: n,
                    base: None,
                    middle: None,
                    end: None,
                })
            }
            (Some(Marker::Base), Some(h)) if h.middle.is_none() && h.base.is_none() => {
                h.base = Some(n)
            }
            (Some(Marker::Middle), Some(h)) if h.middle.is_none() => h.middle = Some(n),
            (Some(Marker::End), Some(h)) if h.middle.is_some() => {
                h.end = Some(n);
                hunks.extend(open.take());
            }
            _ => {}
        }
    }
    hunks.extend(open);
    hunks
}

/// Ours (`which == 0`) or theirs (`which == 1`) of a conflicted `text`: every line outside
/// the hunks, and that side's lines inside them (never the merge base's).
pub(crate) fn side(text: &str, hunks: &[Hunk], which: usize) -> Side {
    let mut out = Side {
        text: String::new(),
        lines: Vec::new(),
    };
    let mut hunk = hunks.iter().peekable();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        while hunk
            .peek()
            .is_some_and(|h| h.end.is_some_and(|end| end < n))
        {
            hunk.next();
        }
        let keep = match hunk.peek() {
            Some(h) if n >= h.start => {
                let middle = h.middle.unwrap_or(usize::MAX);
                let ours_end = h.base.unwrap_or(middle);
                let end = h.end.unwrap_or(usize::MAX);
                match which {
                    0 => n > h.start && n < ours_end,
                    _ => n > middle && n < end,
                }
            }
            _ => true,
        };
        if keep {
            out.text.push_str(line);
            out.text.push('\n');
            out.lines.push(n);
        }
    }
    out
}

/// One diagnostic per hunk naming the merge conflict and its marker lines; `None` without
/// markers.
pub(crate) fn diagnostics(file: &Path, text: &str) -> Option<Vec<Diagnostic>> {
    let hunks = hunks(text);
    if hunks.is_empty() {
        return None;
    }
    Some(
        hunks
            .iter()
            .map(|h| Diagnostic {
                file: file.to_path_buf(),
                line: h.start,
                column: 1,
                path: String::new(),
                message: format!("merge conflict: {}", describe(h)),
            })
            .collect(),
    )
}

/// `git conflict markers at lines 4 (<<<<<<<), 9 (=======) and 14 (>>>>>>>)`.
pub(crate) fn describe(h: &Hunk) -> String {
    let mut parts = vec![format!("{} (<<<<<<<)", h.start)];
    parts.extend(h.base.map(|n| format!("{n} (|||||||)")));
    parts.extend(h.middle.map(|n| format!("{n} (=======)")));
    match h.end {
        Some(n) => parts.push(format!("{n} (>>>>>>>)")),
        None => parts.push("no closing >>>>>>> before the end of the file".into()),
    }
    let last = parts.pop().unwrap_or_default();
    if parts.is_empty() {
        format!("git conflict marker at line {last}")
    } else {
        format!(
            "git conflict markers at lines {} and {last}",
            parts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MERGED: &str = "\
a: 1
<<<<<<< HEAD
b: ours
=======
b: theirs
c: theirs
>>>>>>> feature
d: 4
<<<<<<< HEAD
e: ours
||||||| base
e: base
=======
>>>>>>> feature
";

    #[test]
    fn finds_hunks_with_and_without_a_base() {
        assert_eq!(
            hunks(MERGED),
            vec![
                Hunk {
                    start: 2,
                    base: None,
                    middle: Some(4),
                    end: Some(7)
                },
                Hunk {
                    start: 9,
                    base: Some(11),
                    middle: Some(13),
                    end: Some(14)
                }
            ]
        );
        assert!(hunks("a: '<<<<<<<'\nb: =======\n").is_empty());
        assert!(hunks("=======\n>>>>>>> x\n").is_empty());
    }

    #[test]
    fn each_side_is_the_file_before_the_merge() {
        let h = hunks(MERGED);
        let ours = side(MERGED, &h, 0);
        assert_eq!(ours.text, "a: 1\nb: ours\nd: 4\ne: ours\n");
        assert_eq!(ours.lines, vec![1, 3, 8, 10]);
        let theirs = side(MERGED, &h, 1);
        assert_eq!(theirs.text, "a: 1\nb: theirs\nc: theirs\nd: 4\n");
        assert_eq!(theirs.original_line(3), 6);
    }

    #[test]
    fn an_unclosed_conflict_is_still_named() {
        let text = "a: 1\n<<<<<<< HEAD\nb: 2\n";
        let d = diagnostics(Path::new("f"), text).expect("conflict");
        assert_eq!(d[0].line, 2);
        assert!(
            d[0].message.contains("no closing >>>>>>>"),
            "{}",
            d[0].message
        );
        assert_eq!(
            describe(&hunks(MERGED)[1]),
            "git conflict markers at lines 9 (<<<<<<<), 11 (|||||||), 13 (=======) and 14 (>>>>>>>)"
        );
    }
}
