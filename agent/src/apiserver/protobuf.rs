//! The protobuf bodies kubectl sends that JSON cannot replace: kubectl 1.32+ creates namespaces
//! and secrets with `application/vnd.kubernetes.protobuf` (and does not retry a 415 as JSON). The
//! envelope is `k8s\0` + `runtime.Unknown{1: TypeMeta{1: apiVersion, 2: kind}, 2: raw}`; the
//! messages use the field numbers of `k8s.io/api/core/v1/generated.proto`.

use serde_json::{json, Map, Value};

use super::error::ApiError;

const MAGIC: &[u8] = b"k8s\0";

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first()?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// The next field as (number, bytes); varint fields come back as their encoded bytes (a
    /// true bool is `[1]`) and fixed-width ones are skipped over.
    fn field(&mut self) -> Option<(u64, &'a [u8])> {
        let tag = self.varint()?;
        let (number, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                let start = self.0;
                self.varint()?;
                Some((number, &start[..start.len() - self.0.len()]))
            }
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                if len > self.0.len() {
                    return None;
                }
                let (bytes, rest) = self.0.split_at(len);
                self.0 = rest;
                Some((number, bytes))
            }
            1 | 5 => {
                let width = if wire == 1 { 8 } else { 4 };
                if width > self.0.len() {
                    return None;
                }
                self.0 = &self.0[width..];
                Some((number, &[]))
            }
            _ => None,
        }
    }

    fn fields(bytes: &'a [u8]) -> Option<Vec<(u64, &'a [u8])>> {
        let mut reader = Reader(bytes);
        let mut out = Vec::new();
        while !reader.0.is_empty() {
            out.push(reader.field()?);
        }
        Some(out)
    }
}

fn text(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}

fn string_map(entries: &[&[u8]]) -> Option<Value> {
    let mut map = Map::new();
    for entry in entries {
        let (mut k, mut v) = (String::new(), String::new());
        for (n, b) in Reader::fields(entry)? {
            match n {
                1 => k = text(b)?,
                2 => v = text(b)?,
                _ => {}
            }
        }
        map.insert(k, json!(v));
    }
    Some(Value::Object(map))
}

fn object_meta(bytes: &[u8]) -> Option<Value> {
    let mut meta = Map::new();
    let (mut labels, mut annotations) = (Vec::new(), Vec::new());
    for (n, b) in Reader::fields(bytes)? {
        match n {
            1 => {
                meta.insert("name".into(), json!(text(b)?));
            }
            2 => {
                meta.insert("generateName".into(), json!(text(b)?));
            }
            3 => {
                meta.insert("namespace".into(), json!(text(b)?));
            }
            11 => labels.push(b),
            12 => annotations.push(b),
            _ => {}
        }
    }
    meta.retain(|_, v| v.as_str() != Some(""));
    if !labels.is_empty() {
        meta.insert("labels".into(), string_map(&labels)?);
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), string_map(&annotations)?);
    }
    Some(Value::Object(meta))
}

fn namespace(raw: &[u8]) -> Option<Value> {
    let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {}});
    for (n, b) in Reader::fields(raw)? {
        match n {
            1 => ns["metadata"] = object_meta(b)?,
            2 => {
                let finalizers: Vec<String> = Reader::fields(b)?
                    .into_iter()
                    .filter(|(n, _)| *n == 1)
                    .map(|(_, b)| text(b))
                    .collect::<Option<_>>()?;
                if !finalizers.is_empty() {
                    ns["spec"] = json!({"finalizers": finalizers});
                }
            }
            _ => {}
        }
    }
    Some(ns)
}

/// One entry of a `map<string, bytes>` (key 1, value 2).
fn bytes_entry(raw: &[u8]) -> Option<(String, &[u8])> {
    let (mut key, mut value) = (String::new(), &[][..]);
    for (m, v) in Reader::fields(raw)? {
        match m {
            1 => key = text(v)?,
            2 => value = v,
            _ => {}
        }
    }
    Some((key, value))
}

fn secret(raw: &[u8]) -> Option<Value> {
    let mut secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {}});
    let (mut data, mut strings) = (Map::new(), Vec::new());
    for (n, b) in Reader::fields(raw)? {
        match n {
            1 => secret["metadata"] = object_meta(b)?,
            2 => {
                let (key, value) = bytes_entry(b)?;
                data.insert(key, json!(openssl::base64::encode_block(value)));
            }
            3 if !b.is_empty() => secret["type"] = json!(text(b)?),
            4 => strings.push(b),
            5 => secret["immutable"] = json!(b == [1]),
            _ => {}
        }
    }
    if !data.is_empty() {
        secret["data"] = Value::Object(data);
    }
    if !strings.is_empty() {
        secret["stringData"] = string_map(&strings)?;
    }
    Some(secret)
}

/// `ConfigMap`: metadata 1, data 2 (map<string,string>), binaryData 3 (map<string,bytes>),
/// immutable 4.
fn config_map(raw: &[u8]) -> Option<Value> {
    let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}});
    let (mut data, mut binary) = (Vec::new(), Map::new());
    for (n, b) in Reader::fields(raw)? {
        match n {
            1 => cm["metadata"] = object_meta(b)?,
            2 => data.push(b),
            3 => {
                let (key, value) = bytes_entry(b)?;
                binary.insert(key, json!(openssl::base64::encode_block(value)));
            }
            4 => cm["immutable"] = json!(b == [1]),
            _ => {}
        }
    }
    if !data.is_empty() {
        cm["data"] = string_map(&data)?;
    }
    if !binary.is_empty() {
        cm["binaryData"] = Value::Object(binary);
    }
    Some(cm)
}

/// A varint field's value.
fn number(bytes: &[u8]) -> Option<u64> {
    Reader(bytes).varint()
}

/// The `name` (1) of each `LocalObjectReference` in a repeated field.
fn local_refs(entries: &[&[u8]]) -> Option<Value> {
    let names = entries.iter().map(|e| {
        let fields = Reader::fields(e)?;
        let name = fields
            .iter()
            .find(|(n, _)| *n == 1)
            .map_or(Some(String::new()), |(_, b)| text(b))?;
        Some(json!({"name": name}))
    });
    Some(Value::Array(names.collect::<Option<_>>()?))
}

/// `ServiceAccount`: metadata 1, secrets 2 (ObjectReference: name 3, namespace 2),
/// imagePullSecrets 3, automountServiceAccountToken 4.
fn service_account(raw: &[u8]) -> Option<Value> {
    let mut sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {}});
    let (mut secrets, mut pull) = (Vec::new(), Vec::new());
    for (n, b) in Reader::fields(raw)? {
        match n {
            1 => sa["metadata"] = object_meta(b)?,
            2 => {
                let mut r = Map::new();
                for (m, v) in Reader::fields(b)? {
                    let key = match m {
                        1 => "kind",
                        2 => "namespace",
                        3 => "name",
                        4 => "uid",
                        5 => "apiVersion",
                        _ => continue,
                    };
                    r.insert(key.into(), json!(text(v)?));
                }
                secrets.push(Value::Object(r));
            }
            3 => pull.push(b),
            4 => sa["automountServiceAccountToken"] = json!(b == [1]),
            _ => {}
        }
    }
    if !secrets.is_empty() {
        sa["secrets"] = Value::Array(secrets);
    }
    if !pull.is_empty() {
        sa["imagePullSecrets"] = local_refs(&pull)?;
    }
    Some(sa)
}

/// `authentication.k8s.io/v1 TokenRequest` (what `kubectl create token` sends): metadata 1,
/// spec 2 {audiences 1, boundObjectRef 3 {kind 1, apiVersion 2, name 3, uid 4},
/// expirationSeconds 4}.
fn token_request(raw: &[u8]) -> Option<Value> {
    let mut tr = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "metadata": {}, "spec": {}});
    for (n, b) in Reader::fields(raw)? {
        match n {
            1 => tr["metadata"] = object_meta(b)?,
            2 => {
                let mut audiences = Vec::new();
                for (m, v) in Reader::fields(b)? {
                    match m {
                        1 => audiences.push(json!(text(v)?)),
                        3 => {
                            let mut r = Map::new();
                            for (k, w) in Reader::fields(v)? {
                                let key = match k {
                                    1 => "kind",
                                    2 => "apiVersion",
                                    3 => "name",
                                    4 => "uid",
                                    _ => continue,
                                };
                                r.insert(key.into(), json!(text(w)?));
                            }
                            tr["spec"]["boundObjectRef"] = Value::Object(r);
                        }
                        4 => tr["spec"]["expirationSeconds"] = json!(number(v)? as i64),
                        _ => {}
                    }
                }
                tr["spec"]["audiences"] = Value::Array(audiences);
            }
            _ => {}
        }
    }
    Some(tr)
}

/// Decodes a protobuf request body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let bad = || ApiError::bad_request("invalid protobuf body");
    let envelope = body.strip_prefix(MAGIC).ok_or_else(bad)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, b) in Reader::fields(envelope).ok_or_else(bad)? {
        match n {
            1 => {
                for (m, v) in Reader::fields(b).ok_or_else(bad)? {
                    match m {
                        1 => api_version = text(v).ok_or_else(bad)?,
                        2 => kind = text(v).ok_or_else(bad)?,
                        _ => {}
                    }
                }
            }
            2 => raw = b,
            _ => {}
        }
    }
    match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => namespace(raw).ok_or_else(bad),
        ("v1", "Secret") => secret(raw).ok_or_else(bad),
        ("v1", "ConfigMap") => config_map(raw).ok_or_else(bad),
        ("v1", "ServiceAccount") => service_account(raw).ok_or_else(bad),
        ("authentication.k8s.io/v1", "TokenRequest") => token_request(raw).ok_or_else(bad),
        _ => Err(ApiError::unsupported_media_type(&format!(
            "application/vnd.kubernetes.protobuf ({api_version} {kind}; only v1 Namespace, Secret, ConfigMap and ServiceAccount, and TokenRequest, are decoded)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_132_create_namespace_body() {
        // The bytes kubectl 1.32 sent for `kubectl create namespace custom33` (k8s-api.md A.9).
        let mut body = b"k8s\0".to_vec();
        body.extend([0x0a, 0x0f, 0x0a, 0x02]);
        body.extend(b"v1");
        body.extend([0x12, 0x09]);
        body.extend(b"Namespace");
        body.extend([0x12, 0x20, 0x0a, 0x18, 0x0a, 0x08]);
        body.extend(b"custom33");
        body.extend([
            0x12, 0x00, 0x1a, 0x00, 0x22, 0x00, 0x2a, 0x00, 0x32, 0x00, 0x38, 0x00, 0x42, 0x00,
        ]);
        body.extend([0x12, 0x00, 0x1a, 0x02, 0x0a, 0x00, 0x1a, 0x00, 0x22, 0x00]);
        let ns = decode(&body).unwrap();
        assert_eq!(
            ns,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "custom33"}})
        );
    }

    #[test]
    fn secret_body() {
        // Secret{metadata{name: "s"}, data{"k": "v"}, type: "Opaque", immutable: true}
        let mut raw = vec![0x0a, 0x03, 0x0a, 0x01, b's'];
        raw.extend([0x12, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v']);
        raw.extend([0x1a, 0x06]);
        raw.extend(b"Opaque");
        raw.extend([0x28, 0x01]);
        let mut body = b"k8s\0".to_vec();
        body.extend([0x0a, 0x0c, 0x0a, 0x02]);
        body.extend(b"v1");
        body.extend([0x12, 0x06]);
        body.extend(b"Secret");
        body.push(0x12);
        body.push(raw.len() as u8);
        body.extend(raw);
        assert_eq!(
            decode(&body).unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                "data": {"k": "dg=="}, "type": "Opaque", "immutable": true})
        );
    }

    #[test]
    fn garbage_and_other_kinds() {
        assert_eq!(decode(b"nope").unwrap_err().code, 400);
        assert_eq!(decode(b"k8s\0\x0a\xff").unwrap_err().code, 400);
        let mut pod = b"k8s\0".to_vec();
        pod.extend([0x0a, 0x09, 0x0a, 0x02]);
        pod.extend(b"v1");
        pod.extend([0x12, 0x03]);
        pod.extend(b"Pod");
        assert_eq!(decode(&pod).unwrap_err().code, 415);
    }
}
