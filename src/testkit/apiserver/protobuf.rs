//! Decoding of the Kubernetes protobuf envelope (`k8s\0` + `runtime.Unknown`) for the few
//! built-in kinds that kubectl's typed clients POST as protobuf: Namespace, ConfigMap,
//! Secret and ServiceAccount (`kubectl create namespace|configmap|secret|serviceaccount`).
//! Other kinds get 415; responses are always JSON (which kubectl accepts).

use base64::Engine as _;
use serde_json::{json, Map, Value};

#[derive(Clone, Copy)]
enum T {
    Str,
    I64,
    Bool,
    Time,
    Msg(&'static [F]),
    MapStr,
    MapBytes,
}

#[derive(Clone, Copy)]
struct F {
    n: u64,
    name: &'static str,
    t: T,
    rep: bool,
}

const fn f(n: u64, name: &'static str, t: T) -> F {
    F {
        n,
        name,
        t,
        rep: false,
    }
}

const fn r(n: u64, name: &'static str, t: T) -> F {
    F {
        n,
        name,
        t,
        rep: true,
    }
}

const OWNER_REF: &[F] = &[
    f(1, "kind", T::Str),
    f(3, "name", T::Str),
    f(4, "uid", T::Str),
    f(5, "apiVersion", T::Str),
    f(6, "controller", T::Bool),
    f(7, "blockOwnerDeletion", T::Bool),
];

const OBJECT_META: &[F] = &[
    f(1, "name", T::Str),
    f(2, "generateName", T::Str),
    f(3, "namespace", T::Str),
    f(4, "selfLink", T::Str),
    f(5, "uid", T::Str),
    f(6, "resourceVersion", T::Str),
    f(7, "generation", T::I64),
    f(8, "creationTimestamp", T::Time),
    f(9, "deletionTimestamp", T::Time),
    f(10, "deletionGracePeriodSeconds", T::I64),
    f(11, "labels", T::MapStr),
    f(12, "annotations", T::MapStr),
    r(13, "ownerReferences", T::Msg(OWNER_REF)),
    r(14, "finalizers", T::Str),
];

const NAMESPACE: &[F] = &[
    f(1, "metadata", T::Msg(OBJECT_META)),
    f(2, "spec", T::Msg(&[r(1, "finalizers", T::Str)])),
    f(3, "status", T::Msg(&[f(1, "phase", T::Str)])),
];

const CONFIGMAP: &[F] = &[
    f(1, "metadata", T::Msg(OBJECT_META)),
    f(2, "data", T::MapStr),
    f(3, "binaryData", T::MapBytes),
    f(4, "immutable", T::Bool),
];

const SECRET: &[F] = &[
    f(1, "metadata", T::Msg(OBJECT_META)),
    f(2, "data", T::MapBytes),
    f(3, "type", T::Str),
    f(4, "stringData", T::MapStr),
    f(5, "immutable", T::Bool),
];

const OBJECT_REF: &[F] = &[
    f(1, "kind", T::Str),
    f(2, "namespace", T::Str),
    f(3, "name", T::Str),
    f(4, "uid", T::Str),
    f(5, "apiVersion", T::Str),
    f(6, "resourceVersion", T::Str),
    f(7, "fieldPath", T::Str),
];

const SERVICE_ACCOUNT: &[F] = &[
    f(1, "metadata", T::Msg(OBJECT_META)),
    r(2, "secrets", T::Msg(OBJECT_REF)),
    r(3, "imagePullSecrets", T::Msg(&[f(1, "name", T::Str)])),
    f(4, "automountServiceAccountToken", T::Bool),
];

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

enum Wire<'a> {
    Varint(u64),
    Len(&'a [u8]),
    Skip,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let c = *self.b.get(self.i).ok_or("truncated varint")?;
            self.i += 1;
            v |= u64::from(c & 0x7f) << shift;
            if c < 0x80 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, String> {
        if self.i >= self.b.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.i = self.i.checked_add(8).ok_or("overflow")?;
                Wire::Skip
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
                let end = self.i.checked_add(len).ok_or("overflow")?;
                let s = self.b.get(self.i..end).ok_or("truncated field")?;
                self.i = end;
                Wire::Len(s)
            }
            5 => {
                self.i = self.i.checked_add(4).ok_or("overflow")?;
                Wire::Skip
            }
            w => return Err(format!("unsupported wire type {w}")),
        };
        if self.i > self.b.len() {
            return Err("truncated field".into());
        }
        Ok(Some((key >> 3, wire)))
    }
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in string field".to_string())
}

fn map_entry(b: &[u8], bytes: bool) -> Result<(String, Value), String> {
    let mut rd = Reader { b, i: 0 };
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    while let Some((n, w)) = rd.next()? {
        match (n, w) {
            (1, Wire::Len(s)) => k = utf8(s)?,
            (2, Wire::Len(s)) if bytes => {
                v = json!(base64::engine::general_purpose::STANDARD.encode(s))
            }
            (2, Wire::Len(s)) => v = json!(utf8(s)?),
            _ => {}
        }
    }
    Ok((k, v))
}

fn time(b: &[u8]) -> Result<Value, String> {
    let mut rd = Reader { b, i: 0 };
    let mut secs = 0u64;
    while let Some((n, w)) = rd.next()? {
        if let (1, Wire::Varint(v)) = (n, w) {
            secs = v;
        }
    }
    if secs == 0 {
        return Ok(Value::Null);
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    Ok(json!(humantime::format_rfc3339_seconds(t).to_string()))
}

fn message(b: &[u8], schema: &[F], depth: usize) -> Result<Value, String> {
    if depth > 16 {
        return Err("message nested too deeply".into());
    }
    let mut out = Map::new();
    let mut rd = Reader { b, i: 0 };
    while let Some((n, w)) = rd.next()? {
        let Some(fd) = schema.iter().find(|x| x.n == n) else {
            continue;
        };
        let v = match (fd.t, w) {
            (T::Str, Wire::Len(s)) => json!(utf8(s)?),
            (T::I64, Wire::Varint(v)) => json!(v as i64),
            (T::Bool, Wire::Varint(v)) => json!(v != 0),
            (T::Time, Wire::Len(s)) => time(s)?,
            (T::Msg(sub), Wire::Len(s)) => message(s, sub, depth + 1)?,
            (T::MapStr | T::MapBytes, Wire::Len(s)) => {
                let (k, v) = map_entry(s, matches!(fd.t, T::MapBytes))?;
                let m = out.entry(fd.name).or_insert_with(|| json!({}));
                if let Some(m) = m.as_object_mut() {
                    m.insert(k, v);
                }
                continue;
            }
            _ => return Err(format!("field {} has an unexpected wire type", fd.name)),
        };
        if fd.rep {
            let a = out.entry(fd.name).or_insert_with(|| json!([]));
            if let Some(a) = a.as_array_mut() {
                a.push(v);
            }
            continue;
        }
        let empty = match &v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Number(n) => n.as_i64() == Some(0),
            Value::Object(m) => m.is_empty(),
            _ => false,
        };
        if !empty {
            out.insert(fd.name.to_string(), v);
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a protobuf request body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or("protobuf body lacks the k8s\\0 magic prefix")?;
    let mut rd = Reader { b: rest, i: 0 };
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while let Some((n, w)) = rd.next()? {
        match (n, w) {
            (1, Wire::Len(tm)) => {
                let mut t = Reader { b: tm, i: 0 };
                while let Some((n, w)) = t.next()? {
                    match (n, w) {
                        (1, Wire::Len(s)) => api_version = utf8(s)?,
                        (2, Wire::Len(s)) => kind = utf8(s)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Len(s)) => raw = s,
            _ => {}
        }
    }
    let schema = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "ConfigMap") => CONFIGMAP,
        ("v1", "Secret") => SECRET,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        _ => {
            return Err(format!(
                "protobuf is decoded only for v1 Namespace, ConfigMap, Secret and ServiceAccount, not {api_version} {kind}; send JSON"
            ))
        }
    };
    let mut v = message(raw, schema, 0)?;
    v["apiVersion"] = json!(api_version);
    v["kind"] = json!(kind);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_from_kubectl_bytes() {
        // kubectl create configmap cm1 -n default --from-literal=a=b (captured from kubectl 1.33).
        let mut raw = Vec::new();
        let meta = [
            b"\x0a\x03cm1".as_slice(),
            b"\x1a\x07default",
            b"\x38\x00",
            b"\x42\x00",
        ]
        .concat();
        raw.extend([0x0a, meta.len() as u8]);
        raw.extend(&meta);
        raw.extend(b"\x12\x06\x0a\x01a\x12\x01b");
        let tm = b"\x0a\x02v1\x12\x09ConfigMap";
        let mut body = b"k8s\0".to_vec();
        body.extend([0x0a, tm.len() as u8]);
        body.extend(tm);
        body.extend([0x12, raw.len() as u8]);
        body.extend(&raw);
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm1", "namespace": "default"}, "data": {"a": "b"}})
        );
        assert!(decode(b"k8s\0\x0a\xff").is_err());
        assert!(decode(b"nope").is_err());
    }
}
