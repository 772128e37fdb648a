//! What can still be read of a damaged plugins.lock, so `plugsync lock` repairs it rather
//! than making the user delete it (and lose every remote pin with it).
//!
//! A lock goes bad in two ways: a hand edit (a field changed, a line lost, a typo in a
//! key) and a bad merge (conflict markers committed, or two branches' entries side by
//! side). Either way most entries are usually intact, and an entry is only as good as its
//! pin: its `source` and the `sha256` of the package there. Everything else in an entry
//! (name, version, checksum, identifier, plugin id) follows from the package itself and is
//! written afresh from it.
//!
//! So repair reads each entry on its own, as leniently as it can: through the whole YAML
//! document when it still parses, else entry by entry (each `- ` item of the canonical
//! layout). An entry with a readable `source` and `sha256` keeps its pin, whatever else is
//! wrong with it; any other is dropped, and says so. A merge conflict is read as its two
//! sides (see [`super::conflict`]), each entry of either side a candidate; where the two
//! sides pin one source to different packages, both are handed to the resolver, which keeps
//! the one the source still serves ([`SalvagedLock::contested`]).

use std::collections::BTreeMap;
use std::path::Path;

use super::conflict::{self, Side};
use super::validate::{locked_image_problems, locked_plugin_problems};
use crate::error::Diagnostic;
use crate::model::{LockedImage, LockedPlugin, PluginLock};
use crate::yaml::{Kind, Node, Tree};

/// What `plugsync lock` could read of a plugins.lock that does not load.
#[derive(Debug, Clone, Default)]
pub struct SalvagedLock {
    /// The pins kept, one per source, and the recorded images kept.
    pub lock: PluginLock,
    /// Sources pinned to different packages by different entries (the two sides of a
    /// merge conflict, or an entry duplicated by hand): every candidate. The resolver
    /// keeps the one the source serves and refuses if it serves neither.
    pub contested: BTreeMap<String, Vec<LockedPlugin>>,
    /// What was wrong, each with where, and what repair does about it.
    pub notes: Vec<Diagnostic>,
    /// Whether the damage is a merge conflict (conflict markers).
    pub conflict: bool,
}

/// Reads what it can of `text`, a plugins.lock that [`super::load_lock`] refused. `file`
/// is for the notes. Never fails: at worst nothing is kept, and the notes say why.
pub fn salvage_lock(file: &Path, text: &str) -> SalvagedLock {
    let hunks = conflict::hunks(text);
    let mut out = SalvagedLock {
        conflict: !hunks.is_empty(),
        ..SalvagedLock::default()
    };
    let note = |line: usize, path: String, message: String| Diagnostic {
        file: file.to_path_buf(),
        line,
        column: if line > 0 { 1 } else { 0 },
        path,
        message,
    };
    let sides: Vec<(Side, &str)> = if hunks.is_empty() {
        vec![(
            Side {
                text: text.to_string(),
                lines: (1..=text.lines().count()).collect(),
            },
            "",
        )]
    } else {
        for h in &hunks {
            out.notes.push(note(
                h.start,
                String::new(),
                format!(
                    "merge conflict: {}; taking the entries of both sides",
                    conflict::describe(h)
                ),
            ));
        }
        vec![
            (conflict::side(text, &hunks, 0), " (ours)"),
            (conflict::side(text, &hunks, 1), " (theirs)"),
        ]
    };

    // Every readable pin, with the line it was read at, by source.
    let mut pins: BTreeMap<String, Vec<(LockedPlugin, usize, bool)>> = BTreeMap::new();
    let mut images: BTreeMap<String, Vec<(LockedImage, usize)>> = BTreeMap::new();
    for (side, which) in &sides {
        let mut seen_here: BTreeMap<String, usize> = BTreeMap::new();
        for item in items(&side.text) {
            let line = side.original_line(item.line);
            // Paths only mean something in a file without conflict markers.
            let path = |p: String| if which.is_empty() { p } else { String::new() };
            let value = match item.value {
                Ok(value) => value,
                Err(why) => {
                    out.notes.push(note(
                        line,
                        path(item.path.clone()),
                        format!("unreadable{which} ({why}); dropped: the plugins it pinned are resolved afresh"),
                    ));
                    continue;
                }
            };
            if item.section == Section::Images {
                match read_image(&value) {
                    Ok(image) => images
                        .entry(image.inputs_hash.clone())
                        .or_default()
                        .push((image, line)),
                    Err(why) => out.notes.push(note(
                        line,
                        path(item.path.clone()),
                        format!("{why}{which}; dropped: that image is built again when needed"),
                    )),
                }
                continue;
            }
            let unread: Vec<String> = item
                .bad_lines
                .iter()
                .map(|&l| format!("line {} does not read", side.original_line(l)))
                .collect();
            match read_plugin(&value) {
                Ok((plugin, problems)) => {
                    let problems: Vec<String> = unread.into_iter().chain(problems).collect();
                    let clean = problems.is_empty();
                    if !clean {
                        let keeps = if plugin.source.starts_with("path:") {
                            "it is packed again from the repository".to_string()
                        } else {
                            format!(
                                "kept its pin (sha256:{}), the rest is written afresh from the package",
                                short(&plugin.sha256)
                            )
                        };
                        out.notes.push(note(
                            line,
                            path(item.path.clone()),
                            format!(
                                "{}{which}: {}; {keeps}",
                                describe_entry(&plugin),
                                problems.join("; ")
                            ),
                        ));
                    }
                    if let Some(first) = seen_here.insert(plugin.source.clone(), line) {
                        out.notes.push(note(
                            line,
                            path(item.path.clone()),
                            format!(
                                "{}{which}: pinned again (first at line {first})",
                                describe_entry(&plugin)
                            ),
                        ));
                    }
                    pins.entry(plugin.source.clone())
                        .or_default()
                        .push((plugin, line, clean));
                }
                Err(why) => out.notes.push(note(
                    line,
                    path(item.path.clone()),
                    format!("{why}{which}; dropped: {}", lost(&value)),
                )),
            }
        }
    }

    let mut kept = Vec::new();
    for (source, mut candidates) in pins {
        // Clean entries first, so the one kept for display is a well-formed one.
        candidates.sort_by_key(|(_, line, clean)| (!clean, *line));
        let mut distinct: Vec<(LockedPlugin, usize)> = Vec::new();
        for (plugin, line, _) in candidates {
            if !distinct.iter().any(|(p, _)| p.sha256 == plugin.sha256) {
                distinct.push((plugin, line));
            }
        }
        if distinct.len() > 1 && !source.starts_with("path:") {
            let list: Vec<String> = distinct
                .iter()
                .map(|(p, line)| format!("sha256:{} at line {line}", short(&p.sha256)))
                .collect();
            out.notes.push(note(
                distinct[0].1,
                String::new(),
                format!(
                    "{} is pinned to different packages ({}); `plugsync lock` keeps the one its source still serves",
                    describe_entry(&distinct[0].0),
                    list.join(", ")
                ),
            ));
            out.contested.insert(
                source.clone(),
                distinct.iter().map(|(p, _)| p.clone()).collect(),
            );
        }
        kept.extend(distinct.into_iter().next().map(|(p, _)| p));
    }
    out.lock = PluginLock::new(kept);

    let mut recorded = Vec::new();
    for (hash, found) in images {
        let first = &found[0];
        if found.iter().all(|(i, _)| i.digest == first.0.digest) {
            recorded.push(first.0.clone());
        } else {
            out.notes.push(note(
                first.1,
                String::new(),
                format!(
                    "the build inputs {} are recorded with different image digests; dropped: that image is built again when needed",
                    short(&hash)
                ),
            ));
        }
    }
    out.lock.record_images(recorded);
    out.notes.sort_by_key(|d| d.line);
    out
}

/// Which list of the lock an entry was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Plugins,
    Images,
}

/// One entry of a lock, read on its own.
struct Item {
    section: Section,
    /// Its line in the text it was read from (1-based).
    line: usize,
    /// `plugins[3]`, for messages.
    path: String,
    /// The entry, or why it could not be read as YAML at all.
    value: Result<Node, String>,
    /// Lines (in the text it was read from) left out because they did not read, when the
    /// entry was read line by line.
    bad_lines: Vec<usize>,
}

/// The entries of `text`: through the whole document when it is still YAML, else item by
/// item in the layout `plugsync lock` writes (`- ` at the start of a line begins an entry,
/// indented lines continue it, anything else ends it).
fn items(text: &str) -> Vec<Item> {
    if let Some(doc) = Tree::parse(text).filter(|doc| doc.entries().is_some()) {
        let mut out = Vec::new();
        for (key, section) in [("plugins", Section::Plugins), ("images", Section::Images)] {
            let Some(list) = doc.get(key).and_then(Node::items) else {
                continue;
            };
            for (i, value) in list.iter().enumerate() {
                let path = format!("{key}[{i}]");
                out.push(Item {
                    section,
                    line: value.at.line,
                    path,
                    value: Ok(value.clone()),
                    bad_lines: Vec::new(),
                });
            }
        }
        return out;
    }

    let mut out = Vec::new();
    let mut section = Section::Plugins;
    let mut counts = [0usize; 2];
    let mut chunk: Option<(usize, String)> = None;
    let mut flush = |chunk: &mut Option<(usize, String)>, section: Section, out: &mut Vec<Item>| {
        let Some((line, text)) = chunk.take() else {
            return;
        };
        let slot = &mut counts[section as usize];
        let path = format!(
            "{}[{}]",
            if section == Section::Images {
                "images"
            } else {
                "plugins"
            },
            *slot
        );
        *slot += 1;
        let mut bad_lines = Vec::new();
        let value = match Tree::parse(&text).map(|node| node.kind) {
            Some(Kind::Sequence(mut one)) if one.len() == 1 => Ok(one.remove(0)),
            Some(_) => Err("not a single entry".to_string()),
            None => match line_by_line(&text) {
                Some((fields, bad)) => {
                    bad_lines = bad.into_iter().map(|i| line + i).collect();
                    Ok(fields)
                }
                None => Err(not_yaml(&text)),
            },
        };
        // An entry that reads as the other kind was filed under the wrong heading (the
        // merge lost it): go by its fields, which the two kinds do not share.
        let section = match &value {
            Ok(v) if v.get("inputsHash").is_some() => Section::Images,
            Ok(v) if v.get("sha256").is_some() || v.get("source").is_some() => Section::Plugins,
            _ => section,
        };
        out.push(Item {
            section,
            line,
            path,
            value,
            bad_lines,
        });
    };
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("- ") || line == "-" {
            flush(&mut chunk, section, &mut out);
            chunk = Some((i + 1, format!("{line}\n")));
        } else if line.starts_with(' ') || line.starts_with('\t') || line.trim().is_empty() {
            if let Some((_, text)) = chunk.as_mut() {
                text.push_str(line);
                text.push('\n');
            }
        } else {
            flush(&mut chunk, section, &mut out);
            if line.starts_with("images:") {
                section = Section::Images;
            } else if line.starts_with("plugins:") {
                section = Section::Plugins;
            }
        }
    }
    flush(&mut chunk, section, &mut out);
    out
}

/// An entry whose YAML does not read as a whole (a stray or broken line), read one
/// `key: value` line at a time, as `plugsync lock` writes them: the fields that read, and
/// the offsets (from the entry's first line) of the lines that do not. `None` when no line
/// reads.
fn line_by_line(text: &str) -> Option<(Node, Vec<usize>)> {
    let mut fields: Vec<crate::yaml::Entry> = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let field = line.strip_prefix("- ").unwrap_or(line).trim();
        if field.is_empty() {
            continue;
        }
        match Tree::parse(field).map(|node| node.kind) {
            Some(Kind::Mapping(mut one))
                if one.len() == 1 && !fields.iter().any(|f| f.key == one[0].key) =>
            {
                fields.append(&mut one)
            }
            _ => bad.push(i),
        }
    }
    (!fields.is_empty()).then_some((
        Node {
            at: crate::yaml::Position::default(),
            kind: Kind::Mapping(fields),
        },
        bad,
    ))
}

/// Why `text` is not YAML, with the line and a caret.
fn not_yaml(text: &str) -> String {
    match crate::yaml::from_str::<serde::de::IgnoredAny>(text) {
        Ok(_) => "not a single entry".to_string(),
        Err(e) => e.to_string(),
    }
}

/// A scalar field of an entry, as text (as written: `1.10` stays `1.10`).
fn text_field(value: &Node, key: &str) -> Option<String> {
    value
        .get(key)
        .filter(|v| !v.is_null())?
        .as_str()
        .map(str::to_string)
}

/// Unknown and missing fields of an entry.
fn shape_problems(value: &Node, fields: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    for entry in value.entries().unwrap_or_default() {
        let name = entry.key.as_str();
        if !fields.contains(&name) {
            problems.push(format!("unknown field `{name}`"));
        }
    }
    for field in fields {
        if text_field(value, field).is_none() {
            problems.push(format!("`{field}` is missing"));
        }
    }
    problems
}

const PLUGIN_FIELDS: [&str; 7] = [
    "name",
    "version",
    "source",
    "sha256",
    "checksum",
    "unique_identifier",
    "plugin_id",
];

/// An entry with a readable pin (its `source` and `sha256`), with what else is wrong with
/// it; or why it has no pin to keep.
fn read_plugin(value: &Node) -> Result<(LockedPlugin, Vec<String>), String> {
    if value.entries().is_none() {
        return Err("not an entry (a mapping of fields)".into());
    }
    let field = |key| text_field(value, key).unwrap_or_default();
    let plugin = LockedPlugin {
        name: field("name"),
        version: field("version"),
        source: field("source"),
        sha256: field("sha256"),
        checksum: field("checksum"),
        unique_identifier: field("unique_identifier"),
        plugin_id: field("plugin_id"),
        signature: text_field(value, "signature"),
    };
    if plugin.source.is_empty() {
        return Err(format!("{}: no readable `source`", describe_entry(&plugin)));
    }
    if !crate::package::is_sha256_hex(&plugin.sha256) {
        return Err(format!(
            "{}: `sha256` is not 64 lowercase hex characters",
            describe_entry(&plugin)
        ));
    }
    let mut problems = shape_problems(value, &PLUGIN_FIELDS);
    if problems.is_empty() {
        problems.extend(
            locked_plugin_problems(&plugin)
                .into_iter()
                .map(|(field, message)| format!("`{field}` {message}")),
        );
    }
    Ok((plugin, problems))
}

/// A recorded image, when every field reads and checks.
fn read_image(value: &Node) -> Result<LockedImage, String> {
    let mut problems = shape_problems(value, &["inputsHash", "image", "digest"]);
    let field = |key| text_field(value, key).unwrap_or_default();
    let image = LockedImage {
        inputs_hash: field("inputsHash"),
        image: field("image"),
        digest: field("digest"),
    };
    if problems.is_empty() {
        problems.extend(
            locked_image_problems(&image)
                .into_iter()
                .map(|(field, message)| format!("`{field}` {message}")),
        );
    }
    if problems.is_empty() {
        Ok(image)
    } else {
        Err(format!("recorded image: {}", problems.join("; ")))
    }
}

/// How an entry is named in notes: its name, else its source (redacted), else `an entry`.
fn describe_entry(p: &LockedPlugin) -> String {
    if !p.name.is_empty() {
        p.name.clone()
    } else if !p.source.is_empty() {
        redacted(&p.source)
    } else {
        "an entry".into()
    }
}

/// What dropping an entry without a readable pin costs.
fn lost(value: &Node) -> String {
    match text_field(value, "source") {
        Some(source) if source.starts_with("path:") => {
            format!("{source} is packed again from the repository")
        }
        Some(source) => format!(
            "its pin is lost, and `plugsync lock` pins what {} serves now",
            redacted(&source)
        ),
        None => "whatever it pinned is resolved afresh".into(),
    }
}

fn redacted(source: &str) -> String {
    url::Url::parse(source)
        .map(|u| crate::redact::redact_url(&u))
        .unwrap_or_else(|_| source.to_string())
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, source: &str, sha: char) -> String {
        let checksum = "c".repeat(64);
        let uid = format!("{name}:1.0.0@{checksum}");
        format!(
            "- name: {name}\n  version: 1.0.0\n  source: {source}\n  sha256: {}\n  checksum: {checksum}\n  unique_identifier: {uid}\n  plugin_id: {}\n",
            sha.to_string().repeat(64),
            crate::package::plugin_id(&uid)
        )
    }

    const HEAD: &str = "apiVersion: plugsync.dev/v1alpha1\nkind: PluginLock\nplugins:\n";

    #[test]
    fn broken_yaml_keeps_every_entry_that_reads() {
        let sha = |c: char| c.to_string().repeat(64);
        let text = format!(
            "{HEAD}{}{}{}",
            entry("a/one", "https://h/one", 'a'),
            entry("a/two", "https://h/two", 'b')
                .replace(&format!("sha256: {}", sha('b')), "sha256: [unclosed"),
            entry("a/three", "https://h/three", 'd')
                .replace("  checksum:", "  stray: {\n  checksum:"),
        );
        let s = salvage_lock(Path::new("plugins.lock"), &text);
        let names: Vec<&str> = s.lock.plugins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["a/one", "a/three"], "{:#?}", s.notes);
        assert_eq!(s.lock.plugins[1].sha256, sha('d'));
        let notes: Vec<(usize, &str)> = s
            .notes
            .iter()
            .map(|n| (n.line, n.message.as_str()))
            .collect();
        assert_eq!(
            notes,
            vec![
                (11, "a/two: `sha256` is not 64 lowercase hex characters; dropped: its pin is lost, and `plugsync lock` pins what https://h/two serves now"),
                (18, "a/three: line 22 does not read; kept its pin (sha256:dddddddddddd), the rest is written afresh from the package"),
            ]
        );
        assert!(!s.conflict);
    }

    #[test]
    fn an_inconsistent_entry_keeps_its_pin() {
        let text = format!("{HEAD}{}", entry("a/one", "https://h/one", 'a'))
            .replace("version: 1.0.0", "version: 1.0.1");
        let s = salvage_lock(Path::new("plugins.lock"), &text);
        assert_eq!(s.lock.plugins.len(), 1);
        assert_eq!(s.lock.plugins[0].sha256, "a".repeat(64));
        assert_eq!(s.notes[0].path, "plugins[0]");
        assert!(
            s.notes[0].message.contains("kept its pin"),
            "{}",
            s.notes[0]
        );
    }

    /// Recorded images of a conflict: both sides' are kept where they agree, and an image
    /// recorded with different digests for the same build inputs is dropped (built again).
    #[test]
    fn images_of_both_sides_are_kept_where_they_agree() {
        let image = |hash: char, digest: char| {
            format!(
                "- inputsHash: {}\n  image: r.local/one-{}:1.0.0\n  digest: sha256:{}\n",
                hash.to_string().repeat(64),
                crate::package::plugin_id(&format!("a/one:1.0.0@{}", "c".repeat(64))),
                digest.to_string().repeat(64)
            )
        };
        let text = format!(
            "{HEAD}{}images:\n{}<<<<<<< HEAD\n{}=======\n{}{}>>>>>>> other\n",
            entry("a/one", "https://h/one", 'a'),
            image('a', '2'),
            image('b', '4'),
            image('b', '5'),
            image('e', '7'),
        );
        let s = salvage_lock(Path::new("plugins.lock"), &text);
        assert!(s.conflict);
        let hashes: Vec<char> = s
            .lock
            .images
            .iter()
            .map(|i| i.inputs_hash.chars().next().unwrap_or(' '))
            .collect();
        assert_eq!(hashes, vec!['a', 'e'], "{:#?}", s.notes);
        assert!(
            s.notes.iter().any(|n| n.message.starts_with(
                "the build inputs bbbbbbbbbbbb are recorded with different image digests"
            )),
            "{:#?}",
            s.notes
        );
        assert_eq!(s.lock.plugins.len(), 1);
        assert!(s.contested.is_empty());
    }
}
