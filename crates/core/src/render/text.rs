//! The rendered objects as the text `plugsync render` prints: YAML documents or a JSON List.

use serde_json::Value;

/// Multi-document YAML, one object per document, in the given (apply) order.
pub fn objects_to_yaml(objects: &[Value]) -> String {
    let documents: Vec<String> = objects
        .iter()
        .map(|object| crate::yaml::to_string(object).unwrap_or_default())
        .collect();
    documents_to_yaml(&documents)
}

/// Multi-document YAML from objects in the [`AsYaml`] form: the same bytes as
/// [`objects_to_yaml`] on the same objects as values.
pub(crate) fn documents_to_yaml(documents: &[String]) -> String {
    let mut out = String::with_capacity(documents.iter().map(|d| d.len() + 4).sum());
    for document in documents {
        out.push_str("---\n");
        out.push_str(document);
    }
    out
}

/// The format of what `plugsync render` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    /// Multi-document YAML ([`objects_to_yaml`]).
    Yaml,
    /// One pretty-printed JSON List ([`json_list`]).
    Json,
}

/// `objects` as items of the pretty-printed JSON List `plugsync render -o json` prints
/// (`{"apiVersion": "v1", "items": [...], "kind": "List"}`): each object as
/// `serde_json::to_string_pretty` writes it at that depth, joined by `,\n`, so the items
/// of several plugins joined the same way inside [`json_list`] are byte-identical to the
/// whole List pretty-printed at once.
pub fn objects_to_json_items(objects: &[Value]) -> String {
    let mut out = String::new();
    for object in objects {
        if !out.is_empty() {
            out.push_str(",\n");
        }
        let text = serde_json::to_string_pretty(object).unwrap_or_default();
        // A List's items are two levels deep; JSON strings hold no raw newlines, so every
        // line break is an indentation point.
        out.push_str(JSON_ITEM_INDENT);
        out.push_str(&text.replace('\n', "\n    "));
    }
    out
}

/// Indentation of a JSON List's items (two levels of two spaces).
const JSON_ITEM_INDENT: &str = "    ";

/// Emits, piece by piece, the pretty-printed JSON List of `items` (each from
/// [`objects_to_json_items`], in order; empty ones are skipped) followed by a newline:
/// the same bytes as `println!("{}", to_string_pretty(&json!({"apiVersion": "v1",
/// "kind": "List", "items": objects})))` on all the objects at once.
pub fn json_list<'a>(items: impl IntoIterator<Item = &'a str>, mut emit: impl FnMut(&'a str)) {
    emit("{\n  \"apiVersion\": \"v1\",\n  \"items\": [");
    let mut any = false;
    for item in items.into_iter().filter(|item| !item.is_empty()) {
        emit(if any { ",\n" } else { "\n" });
        emit(item);
        any = true;
    }
    if any {
        emit("\n  ]");
    } else {
        emit("]");
    }
    emit(",\n  \"kind\": \"List\"\n}\n");
}
