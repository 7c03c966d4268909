//! OpenAPI v3 documents for the types served, with their full schemas from k8s-openapi (its
//! `schemars` feature: the same definitions, descriptions included, that kube-apiserver
//! publishes), so `kubectl explain pods.spec.containers` works. Each group-version's document
//! is made on first request and kept as JSON (about a megabyte for core/v1), its hash in the
//! URL `/openapi/v3` lists, as kube-apiserver's.

use std::sync::OnceLock;

use k8s_openapi::api::{coordination::v1 as coordination, core::v1 as core};
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use super::discovery::KUBE_VERSION;
use super::resource::{Resource, COORDINATION};

pub struct Document {
    pub json: Vec<u8>,
    pub hash: String,
}

/// The group-versions with a document, by their path below `/openapi/v3/`.
pub const PATHS: [(&str, &str); 2] = [
    ("api/v1", "v1"),
    ("apis/coordination.k8s.io/v1", COORDINATION),
];

pub fn document(path: &str) -> Option<&'static Document> {
    static DOCS: [OnceLock<Document>; PATHS.len()] = [const { OnceLock::new() }; PATHS.len()];
    let i = PATHS.iter().position(|(p, _)| *p == path)?;
    Some(DOCS[i].get_or_init(|| {
        let json = serde_json::to_vec(&build(path, PATHS[i].1)).expect("serialise OpenAPI");
        use sha2::Digest as _;
        let digest = sha2::Sha512::digest(&json);
        Document {
            hash: hex::encode_upper(&digest[..64]),
            json,
        }
    }))
}

/// The schema name of a served type, and its definition put into the generator.
fn schema_of(generator: &mut SchemaGenerator, r: Resource) -> String {
    fn add<T: JsonSchema>(generator: &mut SchemaGenerator) -> String {
        generator.subschema_for::<T>();
        T::schema_name().into_owned()
    }
    match r {
        Resource::Pods => add::<core::Pod>(generator),
        Resource::Namespaces => add::<core::Namespace>(generator),
        Resource::Nodes => add::<core::Node>(generator),
        Resource::Events => add::<core::Event>(generator),
        Resource::Secrets => add::<core::Secret>(generator),
        Resource::ConfigMaps => add::<core::ConfigMap>(generator),
        Resource::ServiceAccounts => add::<core::ServiceAccount>(generator),
        Resource::Services => add::<core::Service>(generator),
        Resource::Leases => add::<coordination::Lease>(generator),
    }
}

fn build(path: &str, group_version: &str) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let (group, version) = group_version.split_once('/').unwrap_or(("", group_version));
    let served: Vec<(Resource, String)> = Resource::ALL
        .into_iter()
        .filter(|r| r.api_version() == group_version)
        .map(|r| (r, schema_of(&mut generator, r)))
        .collect();
    let mut schemas: Map<String, Value> = generator.take_definitions(true);
    let mut paths = Map::new();
    for (r, name) in &served {
        let gvk = json!({"group": group, "version": version, "kind": r.kind()});
        if let Some(schema) = schemas.get_mut(name).and_then(Value::as_object_mut) {
            schema.insert("x-kubernetes-group-version-kind".into(), json!([gvk]));
        }
        let url = if r.namespaced() {
            format!("/{path}/namespaces/{{namespace}}/{}/{{name}}", r.plural())
        } else {
            format!("/{path}/{}/{{name}}", r.plural())
        };
        let params = json!([
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ]);
        let body = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{name}")}}}});
        let op = |verb: &str| {
            json!({"operationId": format!("{verb}{}", r.kind()), "x-kubernetes-action": verb,
                "x-kubernetes-group-version-kind": gvk, "parameters": params,
                "requestBody": body, "responses": {"200": {"description": "OK", "content": body["content"]}}})
        };
        paths.insert(
            url,
            json!({"get": op("get"), "patch": op("patch"), "put": op("put")}),
        );
    }
    // kube-openapi writes a reference with a description beside it as `allOf: [{$ref}]`.
    for schema in schemas.values_mut() {
        wrap_refs(schema);
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", KUBE_VERSION.0, KUBE_VERSION.1)},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// `/openapi/v2`: every served type's definition in one Swagger 2.0 document, as JSON and in
/// gnostic's protobuf (`OpenAPIv2.proto`), which is what kubectl asks for when it validates a
/// file client-side (a `kind: List`, whose items it checks one by one).
pub struct V2 {
    pub json: Vec<u8>,
    pub protobuf: Vec<u8>,
    pub etag: String,
}

pub fn v2() -> &'static V2 {
    static DOC: OnceLock<V2> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut definitions = Map::new();
        for (path, group_version) in PATHS {
            let doc = build(path, group_version);
            if let Some(schemas) = doc["components"]["schemas"].as_object() {
                for (name, schema) in schemas {
                    definitions.insert(name.clone(), to_v2(schema.clone()));
                }
            }
        }
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": format!("v{}.{}.0", KUBE_VERSION.0, KUBE_VERSION.1)},
            "paths": {},
            "definitions": definitions,
        });
        let json = serde_json::to_vec(&doc).expect("serialise OpenAPI v2");
        use sha2::Digest as _;
        let etag = hex::encode_upper(&sha2::Sha512::digest(&json)[..32]);
        V2 {
            protobuf: encode_document(&doc),
            json,
            etag,
        }
    })
}

/// A v3 schema as Swagger 2.0 writes it: references to `#/definitions/`, a reference with a
/// description beside it rather than wrapped in `allOf`.
fn to_v2(v: Value) -> Value {
    match v {
        Value::Object(mut map) => {
            if let Some(Value::Array(all)) = map.get("allOf") {
                if let [Value::Object(only)] = all.as_slice() {
                    if let (1, Some(r)) = (only.len(), only.get("$ref")) {
                        let r = r.clone();
                        map.remove("allOf");
                        map.insert("$ref".into(), r);
                    }
                }
            }
            map.remove("nullable");
            Value::Object(
                map.into_iter()
                    .map(|(k, v)| match (k.as_str(), v) {
                        ("$ref", Value::String(r)) => {
                            let r = r.replace("#/components/schemas/", "#/definitions/");
                            (k, Value::String(r))
                        }
                        (_, v) => (k, to_v2(v)),
                    })
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(to_v2).collect()),
        other => other,
    }
}

/// Protobuf wire format, the little of it a document needs.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn bytes(&mut self, field: u64, bytes: &[u8]) {
        self.varint(field << 3 | 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    fn string(&mut self, field: u64, v: &str) {
        if !v.is_empty() {
            self.bytes(field, v.as_bytes());
        }
    }

    fn bool(&mut self, field: u64, v: bool) {
        if v {
            self.varint(field << 3);
            self.varint(1);
        }
    }

    fn message(&mut self, field: u64, build: impl FnOnce(&mut Writer)) {
        let mut inner = Writer::default();
        build(&mut inner);
        self.bytes(field, &inner.0);
    }
}

fn encode_document(doc: &Value) -> Vec<u8> {
    let mut w = Writer::default();
    w.string(1, doc["swagger"].as_str().unwrap_or_default());
    w.message(2, |info| {
        info.string(1, doc["info"]["title"].as_str().unwrap_or_default());
        info.string(2, doc["info"]["version"].as_str().unwrap_or_default());
    });
    w.message(8, |_| {});
    w.message(9, |defs| {
        for (name, schema) in doc["definitions"].as_object().into_iter().flatten() {
            defs.message(1, |named| {
                named.string(1, name);
                named.message(2, |s| encode_schema(s, schema));
            });
        }
    });
    w.0
}

/// `Any` as gnostic carries a value it has no message for: its YAML (JSON is YAML).
fn any(w: &mut Writer, field: u64, v: &Value) {
    w.message(field, |a| a.string(2, &v.to_string()));
}

fn encode_schema(w: &mut Writer, s: &Value) {
    let text = |key: &str| s[key].as_str().unwrap_or_default();
    w.string(1, text("$ref"));
    w.string(2, text("format"));
    w.string(3, text("title"));
    w.string(4, text("description"));
    if let Some(d) = s.get("default") {
        any(w, 5, d);
    }
    w.bool(16, s["uniqueItems"].as_bool().unwrap_or(false));
    for r in s["required"].as_array().into_iter().flatten() {
        w.string(19, r.as_str().unwrap_or_default());
    }
    for e in s["enum"].as_array().into_iter().flatten() {
        any(w, 20, e);
    }
    match s.get("additionalProperties") {
        Some(Value::Bool(b)) => w.message(21, |a| {
            a.varint(2 << 3);
            a.varint(u64::from(*b));
        }),
        Some(schema @ Value::Object(_)) => {
            w.message(21, |a| a.message(1, |x| encode_schema(x, schema)))
        }
        _ => {}
    }
    let types: Vec<&str> = match &s["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        w.message(22, |t| types.iter().for_each(|v| t.string(1, v)));
    }
    match &s["items"] {
        item @ Value::Object(_) => w.message(23, |i| i.message(1, |x| encode_schema(x, item))),
        Value::Array(items) => w.message(23, |i| {
            items
                .iter()
                .for_each(|item| i.message(1, |x| encode_schema(x, item)))
        }),
        _ => {}
    }
    for sub in s["allOf"].as_array().into_iter().flatten() {
        w.message(24, |x| encode_schema(x, sub));
    }
    if let Some(props) = s["properties"].as_object() {
        w.message(25, |p| {
            for (name, schema) in props {
                p.message(1, |named| {
                    named.string(1, name);
                    named.message(2, |x| encode_schema(x, schema));
                });
            }
        });
    }
    w.bool(27, s["readOnly"].as_bool().unwrap_or(false));
    for (key, value) in s.as_object().into_iter().flatten() {
        if key.starts_with("x-") {
            w.message(31, |named| {
                named.string(1, key);
                any(named, 2, value);
            });
        }
    }
}

fn wrap_refs(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.len() > 1 {
                if let Some(r) = map.remove("$ref") {
                    map.insert("allOf".into(), json!([{"$ref": r}]));
                }
            }
            map.values_mut().for_each(wrap_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(wrap_refs),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_have_their_full_schema() {
        let doc: Value = serde_json::from_slice(&document("api/v1").unwrap().json).unwrap();
        let schemas = &doc["components"]["schemas"];
        let pod = &schemas["io.k8s.api.core.v1.Pod"];
        assert_eq!(pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["type"], "array");
        assert_eq!(
            containers["items"]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.Container"
        );
        assert!(
            schemas["io.k8s.api.core.v1.Container"]["properties"]["image"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("Container image name"))
        );
        let spec = &pod["properties"]["spec"];
        assert_eq!(
            spec["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.PodSpec"
        );
        assert!(document("apis/coordination.k8s.io/v1").is_some());
        let v2: Value = serde_json::from_slice(&v2().json).unwrap();
        let spec = &v2["definitions"]["io.k8s.api.core.v1.Pod"]["properties"]["spec"];
        assert_eq!(spec["$ref"], "#/definitions/io.k8s.api.core.v1.PodSpec");
        assert!(spec["description"].is_string() && spec.get("allOf").is_none());
        assert!(v2["definitions"]["io.k8s.api.coordination.v1.Lease"].is_object());
        assert!(document("apis/apps/v1").is_none());
    }
}
