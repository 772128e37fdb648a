//! A small JSONPath evaluator for printer columns: `.a.b`, `.a[0].b`, `.a[*].b`,
//! `.a['x.y']`, and filters `.a[?(@.type=="Ready")].status` (`==`, `!=`).

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    Filter(Vec<String>, bool, Value),
}

/// A compiled path.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonPath(Vec<Step>);

fn parse_literal(s: &str) -> Result<Value, String> {
    let s = s.trim();
    if let Some(inner) = s
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
    {
        return Ok(Value::String(inner.to_string()));
    }
    serde_json::from_str(s).map_err(|_| format!("unsupported literal {s}"))
}

fn parse_fields(s: &str) -> Vec<String> {
    s.split('.')
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

impl JsonPath {
    /// Parses a path; a surrounding `{…}` is accepted.
    pub fn parse(src: &str) -> Result<Self, String> {
        let mut s = src.trim();
        if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            s = inner.trim();
        }
        s = s.strip_prefix('$').unwrap_or(s);
        let mut steps = Vec::new();
        let chars: Vec<char> = s.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    i += 1;
                    let start = i;
                    while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                        i += 1;
                    }
                    let name: String = chars[start..i].iter().collect();
                    if name == "*" {
                        steps.push(Step::All);
                    } else if !name.is_empty() {
                        steps.push(Step::Field(name));
                    }
                }
                '[' => {
                    let mut depth = 0;
                    let start = i + 1;
                    let mut end = None;
                    let mut quote: Option<char> = None;
                    for (j, &c) in chars.iter().enumerate().skip(i) {
                        match (quote, c) {
                            (Some(q), c) if c == q => quote = None,
                            (Some(_), _) => {}
                            (None, '"' | '\'') => quote = Some(c),
                            (None, '[') => depth += 1,
                            (None, ']') => {
                                depth -= 1;
                                if depth == 0 {
                                    end = Some(j);
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    let end = end.ok_or_else(|| format!("unclosed [ in {src}"))?;
                    let inner: String = chars[start..end].iter().collect();
                    let inner = inner.trim();
                    i = end + 1;
                    if inner == "*" {
                        steps.push(Step::All);
                    } else if let Some(f) =
                        inner.strip_prefix("?(").and_then(|r| r.strip_suffix(')'))
                    {
                        let (lhs, eq, rhs) = if let Some((l, r)) = f.split_once("==") {
                            (l, true, r)
                        } else if let Some((l, r)) = f.split_once("!=") {
                            (l, false, r)
                        } else {
                            return Err(format!("unsupported filter {f}"));
                        };
                        let lhs = lhs
                            .trim()
                            .strip_prefix('@')
                            .ok_or_else(|| format!("filter must start with @: {f}"))?;
                        steps.push(Step::Filter(parse_fields(lhs), eq, parse_literal(rhs)?));
                    } else if let Ok(n) = inner.parse::<i64>() {
                        steps.push(Step::Index(n));
                    } else {
                        let lit = parse_literal(inner)?;
                        let name = lit.as_str().ok_or_else(|| format!("bad key {inner}"))?;
                        steps.push(Step::Field(name.to_string()));
                    }
                }
                c if c.is_whitespace() => i += 1,
                _ => {
                    // A bare leading field (`metadata.name`).
                    let start = i;
                    while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                        i += 1;
                    }
                    steps.push(Step::Field(chars[start..i].iter().collect()));
                }
            }
        }
        Ok(JsonPath(steps))
    }

    /// Every value the path selects.
    pub fn find<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut cur = vec![root];
        for step in &self.0 {
            let mut next = Vec::new();
            for v in cur {
                match step {
                    Step::Field(f) => {
                        if let Some(x) = v.get(f.as_str()) {
                            next.push(x);
                        }
                    }
                    Step::Index(n) => {
                        if let Some(a) = v.as_array() {
                            let idx = if *n < 0 { a.len() as i64 + n } else { *n };
                            if let Some(x) = usize::try_from(idx).ok().and_then(|i| a.get(i)) {
                                next.push(x);
                            }
                        }
                    }
                    Step::All => match v {
                        Value::Array(a) => next.extend(a.iter()),
                        Value::Object(m) => next.extend(m.values()),
                        _ => {}
                    },
                    Step::Filter(path, eq, lit) => {
                        if let Some(a) = v.as_array() {
                            for item in a {
                                let mut x = Some(item);
                                for f in path {
                                    x = x.and_then(|x| x.get(f.as_str()));
                                }
                                let hit = x == Some(lit);
                                if hit == *eq {
                                    next.push(item);
                                }
                            }
                        }
                    }
                }
            }
            cur = next;
        }
        cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        let o = json!({"status": {"phase": "Running", "conditions": [
            {"type": "Reconciling", "status": "False"}, {"type": "Ready", "status": "True"}]},
            "a": [{"b": 1}, {"b": 2}], "m": {"x.y": 3}});
        let f = |p: &str| {
            JsonPath::parse(p)
                .unwrap()
                .find(&o)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(f(".status.phase"), vec![json!("Running")]);
        assert_eq!(
            f(".status.conditions[?(@.type==\"Ready\")].status"),
            vec![json!("True")]
        );
        assert_eq!(f(".a[0].b"), vec![json!(1)]);
        assert_eq!(f(".a[*].b"), vec![json!(1), json!(2)]);
        assert_eq!(f("{.m['x.y']}"), vec![json!(3)]);
        assert!(f(".nope.x").is_empty());
        assert!(JsonPath::parse(".a[?(@.x>1)]").is_err());
    }
}
