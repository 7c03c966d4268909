//! What kube-apiserver does to an object on its way in: decoding (strict or not), server-set
//! metadata, each type's defaulting and validation, and the rules for updates (status only through
//! `/status`, most of a pod's spec immutable, resourceVersion preconditions).

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::resource::Resource;
use crate::pod::build::qos;
use crate::pod::manifest;

/// How unknown fields in a request body are treated (`fieldValidation`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(value: Option<&str>) -> Result<FieldValidation, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation: invalid value {other:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
            ))),
        }
    }
}

/// An admitted object and the warnings to send back (`Warning:` headers).
#[derive(Debug)]
pub struct Admitted {
    pub object: Value,
    pub warnings: Vec<String>,
}

pub fn now() -> String {
    format!("{:.0}", Timestamp::now())
}

pub fn new_uid() -> String {
    let h = crate::random_hex(16);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

pub fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn namespace_of(obj: &Value) -> &str {
    obj["metadata"]["namespace"].as_str().unwrap_or_default()
}

/// Decodes `body` as the resource's type, reporting unknown fields as `fieldValidation` asks,
/// and returns the object as that type serialises it (unknown fields dropped).
fn decode(
    resource: Resource,
    body: &Value,
    validation: FieldValidation,
) -> Result<Admitted, ApiError> {
    fn typed<T: DeserializeOwned + Serialize>(
        resource: Resource,
        body: &Value,
    ) -> Result<Value, ApiError> {
        let obj: T = serde_path_to_error::deserialize(body.clone()).map_err(|e| {
            let kind = resource.kind();
            ApiError::bad_request(format!(
                "{kind} in version \"{}\" cannot be handled as a {kind}: {}: {}",
                resource.api_version().rsplit('/').next().unwrap_or("v1"),
                e.path(),
                e.inner()
            ))
        })?;
        Ok(serde_json::to_value(obj).expect("serialise a decoded object"))
    }
    let object = match resource {
        Resource::Pods => typed::<Pod>(resource, body)?,
        Resource::Namespaces => typed::<Namespace>(resource, body)?,
        Resource::Nodes => typed::<Node>(resource, body)?,
        Resource::Events => typed::<Event>(resource, body)?,
        Resource::Leases => typed::<Lease>(resource, body)?,
        Resource::Secrets => typed::<Secret>(resource, body)?,
        Resource::ConfigMaps => typed::<ConfigMap>(resource, body)?,
        Resource::ServiceAccounts => typed::<ServiceAccount>(resource, body)?,
        Resource::Services => typed::<Service>(resource, body)?,
    };
    let mut unknown = Vec::new();
    unknown_fields(body, &object, "", &mut unknown);
    let warnings = match validation {
        FieldValidation::Ignore => Vec::new(),
        FieldValidation::Warn => unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect(),
        FieldValidation::Strict if unknown.is_empty() => Vec::new(),
        FieldValidation::Strict => {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            let kind = resource.kind();
            return Err(ApiError::bad_request(format!(
                "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
                resource.api_version().rsplit('/').next().unwrap_or("v1"),
                list.join(", ")
            )));
        }
    };
    Ok(Admitted { object, warnings })
}

/// Fields present (and not null) in what was sent but absent from what the type kept.
fn unknown_fields(sent: &Value, kept: &Value, path: &str, out: &mut Vec<String>) {
    match (sent, kept) {
        (Value::Object(s), Value::Object(k)) => {
            for (field, value) in s {
                let sub = if path.is_empty() {
                    field.clone()
                } else {
                    format!("{path}.{field}")
                };
                match k.get(field) {
                    None if !value.is_null() => out.push(sub),
                    Some(kv) => unknown_fields(value, kv, &sub, out),
                    None => {}
                }
            }
        }
        (Value::Array(s), Value::Array(k)) => {
            for (i, (sv, kv)) in s.iter().zip(k).enumerate() {
                unknown_fields(sv, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks that the body is an object of the type the URL names, then fills in its type
/// fields when the client left them out.
fn check_type(resource: Resource, body: &mut Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    let kind = body["kind"].as_str().unwrap_or(resource.kind());
    let version = body["apiVersion"]
        .as_str()
        .unwrap_or(resource.api_version());
    if kind != resource.kind() || version != resource.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({version}) does not match the expected API version ({})",
            resource.api_version()
        ))
        .or_kind(kind, resource));
    }
    body["kind"] = json!(resource.kind());
    body["apiVersion"] = json!(resource.api_version());
    Ok(())
}

impl ApiError {
    fn or_kind(self, kind: &str, resource: Resource) -> ApiError {
        if kind == resource.kind() {
            self
        } else {
            ApiError::bad_request(format!(
                "the server could not handle a {kind} posted to {}",
                resource.plural()
            ))
        }
    }
}

/// A new object: decoded, given its server-set metadata, defaulted and validated.
pub fn admit_create(
    resource: Resource,
    namespace: Option<&str>,
    mut body: Value,
    validation: FieldValidation,
) -> Result<Admitted, ApiError> {
    check_type(resource, &mut body)?;
    if !body["metadata"].is_object() {
        body["metadata"] = json!({});
    }
    let meta = &mut body["metadata"];
    if let Some(ns) = namespace {
        match meta["namespace"].as_str() {
            Some(given) if !given.is_empty() && given != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => meta["namespace"] = json!(ns),
        }
    } else if let Some(obj) = meta.as_object_mut() {
        obj.remove("namespace");
    }
    if meta["name"].as_str().unwrap_or_default().is_empty() {
        if let Some(prefix) = meta["generateName"].as_str().filter(|p| !p.is_empty()) {
            meta["name"] = json!(format!("{prefix}{}", random_suffix()));
        }
    }
    let mut admitted = decode(resource, &body, validation)?;
    let obj = &mut admitted.object;
    let meta = &mut obj["metadata"];
    for server_set in [
        "uid",
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    ] {
        if let Some(m) = meta.as_object_mut() {
            m.remove(server_set);
        }
    }
    meta["uid"] = json!(new_uid());
    meta["creationTimestamp"] = json!(now());
    if resource == Resource::Pods {
        meta["generation"] = json!(1);
    }
    default(resource, obj);
    validate(resource, obj)?;
    Ok(admitted)
}

/// A replacement for `old` (PUT, or the result of a patch). `status` says whether it came through
/// the `/status` subresource: then only the status changes, otherwise everything but the status.
pub fn admit_update(
    resource: Resource,
    old: &Value,
    mut new: Value,
    status: bool,
    validation: FieldValidation,
) -> Result<Admitted, ApiError> {
    check_type(resource, &mut new)?;
    let name = name_of(old);
    if name_of(&new) != name || (resource.namespaced() && namespace_of(&new) != namespace_of(old)) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            name_of(&new)
        )));
    }
    if let Some(rv) = new["metadata"]["resourceVersion"]
        .as_str()
        .filter(|v| !v.is_empty())
    {
        if Some(rv) != old["metadata"]["resourceVersion"].as_str() {
            return Err(ApiError::conflict(
                resource.plural(),
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
    }
    if let Some(uid) = new["metadata"]["uid"].as_str().filter(|v| !v.is_empty()) {
        if Some(uid) != old["metadata"]["uid"].as_str() {
            return Err(ApiError::conflict(
                resource.plural(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old["metadata"]["uid"].as_str().unwrap_or_default()
                ),
            ));
        }
    }
    let mut admitted = decode(resource, &new, validation)?;
    let obj = &mut admitted.object;
    // Server-owned metadata never changes through an update.
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
    ] {
        match old["metadata"].get(field) {
            Some(v) => obj["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    if status {
        // Through /status only the status (and, as kube-apiserver allows, labels and
        // annotations are left as they were).
        let mut kept = old.clone();
        kept["status"] = obj["status"].clone();
        *obj = kept;
    } else if resource != Resource::Events && resource != Resource::Leases {
        obj["status"] = old["status"].clone();
        if let Some(m) = obj.as_object_mut() {
            if old.get("status").is_none() {
                m.remove("status");
            }
        }
    }
    default(resource, obj);
    if resource == Resource::Secrets {
        check_secret_update(old, obj)?;
    }
    if resource == Resource::ConfigMaps {
        check_config_map_update(old, obj)?;
    }
    if resource == Resource::Pods && !status {
        check_pod_update(old, obj)?;
        if obj["spec"] != old["spec"] {
            obj["metadata"]["generation"] =
                json!(old["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
        }
    }
    validate(resource, obj)?;
    Ok(admitted)
}

/// kube-apiserver lets a pod's spec change only in its images, activeDeadlineSeconds and
/// added tolerations; binding (setting nodeName once) is the scheduler's.
fn check_pod_update(old: &Value, new: &Value) -> Result<(), ApiError> {
    let mut a = old["spec"].clone();
    let mut b = new["spec"].clone();
    for spec in [&mut a, &mut b] {
        for list in ["containers", "initContainers"] {
            if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs {
                    c["image"] = Value::Null;
                }
            }
        }
        if let Some(spec) = spec.as_object_mut() {
            spec.remove("activeDeadlineSeconds");
            spec.remove("tolerations");
        }
    }
    if old["spec"]["nodeName"].is_null() {
        if let Some(spec) = b.as_object_mut() {
            spec.remove("nodeName");
        }
    }
    if a != b {
        return Err(ApiError::invalid(
            "Pod",
            name_of(old),
            &[("spec".into(), "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into())],
        ));
    }
    Ok(())
}

pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    crate::random_hex(5)
        .as_bytes()
        .chunks(2)
        .take(5)
        .map(|pair| {
            let n = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("0"), 16).unwrap_or(0);
            ALPHABET[n as usize % ALPHABET.len()] as char
        })
        .collect()
}

fn default(resource: Resource, obj: &mut Value) {
    match resource {
        Resource::Pods => default_pod(obj),
        Resource::Namespaces => {
            let name = name_of(obj).to_owned();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            if obj["spec"]["finalizers"].is_null() && obj["metadata"]["deletionTimestamp"].is_null()
            {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
            if obj["status"]["phase"].is_null() {
                obj["status"]["phase"] = json!("Active");
            }
        }
        Resource::Events => {
            if obj["count"].is_null() {
                obj["count"] = json!(1);
            }
            if obj["type"].is_null() {
                obj["type"] = json!("Normal");
            }
        }
        Resource::Secrets => {
            if obj["type"].is_null() {
                obj["type"] = json!("Opaque");
            }
            // stringData is write-only: folded into data (winning over it), never stored.
            if let Some(Value::Object(strings)) =
                obj.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                for (key, value) in strings {
                    let text = value.as_str().unwrap_or_default();
                    obj["data"][key] = json!(openssl::base64::encode_block(text.as_bytes()));
                }
            }
        }
        Resource::Nodes
        | Resource::Leases
        | Resource::ConfigMaps
        | Resource::ServiceAccounts
        | Resource::Services => {}
    }
}

/// `SetDefaults_Pod`, `SetDefaults_PodSpec`, `SetDefaults_Container` and what the default
/// admission plugins add (service account name, priority, not-ready/unreachable tolerations).
pub(super) fn default_pod(pod: &mut Value) {
    let spec = &mut pod["spec"];
    let set = |v: &mut Value, field: &str, default: Value| {
        if v[field].is_null() {
            v[field] = default;
        }
    };
    set(spec, "restartPolicy", json!("Always"));
    set(spec, "terminationGracePeriodSeconds", json!(30));
    set(spec, "dnsPolicy", json!("ClusterFirst"));
    set(spec, "securityContext", json!({}));
    set(spec, "schedulerName", json!("default-scheduler"));
    set(spec, "enableServiceLinks", json!(true));
    set(spec, "priority", json!(0));
    set(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set(
        spec,
        "tolerations",
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ]),
    );
    let host_network = spec["hostNetwork"] == true;
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in containers {
            // SetDefaults_PodSpec: a hostNetwork pod's ports are the node's.
            if host_network {
                for p in c
                    .get_mut("ports")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if p["hostPort"].is_null() {
                        p["hostPort"] = p["containerPort"].clone();
                    }
                }
            }
            let policy = if tag_is_latest(c["image"].as_str().unwrap_or_default()) {
                "Always"
            } else {
                "IfNotPresent"
            };
            set(c, "imagePullPolicy", json!(policy));
            set(c, "terminationMessagePath", json!("/dev/termination-log"));
            set(c, "terminationMessagePolicy", json!("File"));
            set(c, "resources", json!({}));
            // SetDefaults_Probe and SetDefaults_HTTPGetAction.
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                let Some(p) = c.get_mut(probe).filter(|p| p.is_object()) else {
                    continue;
                };
                set(p, "timeoutSeconds", json!(1));
                set(p, "periodSeconds", json!(10));
                set(p, "successThreshold", json!(1));
                set(p, "failureThreshold", json!(3));
                if let Some(get) = p.get_mut("httpGet").filter(|g| g.is_object()) {
                    set(get, "path", json!("/"));
                    set(get, "scheme", json!("HTTP"));
                }
                // SetDefaults_GRPCAction (kubectl describe dereferences it).
                if let Some(grpc) = p.get_mut("grpc").filter(|g| g.is_object()) {
                    set(grpc, "service", json!(""));
                }
            }
            for hook in ["postStart", "preStop"] {
                if let Some(get) = c
                    .get_mut("lifecycle")
                    .and_then(|l| l.get_mut(hook))
                    .and_then(|h| h.get_mut("httpGet"))
                    .filter(|g| g.is_object())
                {
                    set(get, "path", json!("/"));
                    set(get, "scheme", json!("HTTP"));
                }
            }
            if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    set(p, "protocol", json!("TCP"));
                }
            }
        }
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for v in volumes {
            if v.as_object().is_some_and(|o| o.len() == 1) {
                v["emptyDir"] = json!({});
            }
        }
    }
    if pod["status"]["phase"].is_null() {
        pod["status"]["phase"] = json!("Pending");
    }
    if pod["status"]["qosClass"].is_null() {
        if let Ok(p) = serde_json::from_value::<Pod>(pod.clone()) {
            if let Some(spec) = &p.spec {
                pod["status"]["qosClass"] = json!(qos(spec).as_str());
            }
        }
    }
}

/// `SetDefaults_Container`: Always iff the reference's tag is `latest` (or it has neither tag
/// nor digest).
fn tag_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

fn validate(resource: Resource, obj: &Value) -> Result<(), ApiError> {
    let name = name_of(obj);
    let kind = resource.kind();
    let field_error =
        |e: manifest::FieldError| ApiError::invalid(kind, name, &[(e.field, e.reason)]);
    if name.is_empty() {
        return Err(ApiError::invalid(
            kind,
            name,
            &[(
                "metadata.name".into(),
                "Required value: name or generateName is required".into(),
            )],
        ));
    }
    let meta: ObjectMeta = serde_json::from_value(obj["metadata"].clone())
        .map_err(|e| ApiError::bad_request(format!("metadata: {e}")))?;
    manifest::validate_meta(&meta).map_err(field_error)?;
    match resource {
        Resource::Namespaces => manifest::check_label("metadata.name", name).map_err(field_error),
        Resource::Pods => {
            let pod: Pod = serde_json::from_value(obj.clone())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            manifest::validate(&pod).map_err(field_error)
        }
        Resource::Secrets => {
            manifest::check_subdomain("metadata.name", name).map_err(field_error)?;
            validate_secret(obj)
                .map_err(|(field, reason)| ApiError::invalid(kind, name, &[(field, reason)]))
        }
        Resource::ConfigMaps => {
            manifest::check_subdomain("metadata.name", name).map_err(field_error)?;
            validate_config_map(obj)
                .map_err(|(field, reason)| ApiError::invalid(kind, name, &[(field, reason)]))
        }
        _ => manifest::check_subdomain("metadata.name", name).map_err(field_error),
    }
}

/// An immutable ConfigMap keeps its data and stays immutable (`ValidateConfigMapUpdate`).
fn check_config_map_update(old: &Value, new: &Value) -> Result<(), ApiError> {
    if old["immutable"] != json!(true) {
        return Ok(());
    }
    let name = name_of(old);
    let field = if new["immutable"] != json!(true) {
        "immutable"
    } else if old["data"] != new["data"] {
        "data"
    } else if old["binaryData"] != new["binaryData"] {
        "binaryData"
    } else {
        return Ok(());
    };
    Err(ApiError::invalid(
        "ConfigMap",
        name,
        &[(
            field.into(),
            "Forbidden: field is immutable when `immutable` is set".into(),
        )],
    ))
}

/// A config key (`IsConfigMapKey`): letters, digits, `-`, `_`, `.`, at most 253, not `.`/`..`.
fn is_config_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        && key != "."
        && key != ".."
        && !key.starts_with("..")
}

/// kube-apiserver's `ValidateConfigMap`: config keys, no key in both `data` and `binaryData`,
/// and 1 MiB in all (`MaxSecretSize`, which ConfigMaps share).
fn validate_config_map(obj: &Value) -> Result<(), (String, String)> {
    let data = obj["data"].as_object();
    let binary = obj["binaryData"].as_object();
    let mut size = 0usize;
    for (key, value) in data.into_iter().flatten() {
        if !is_config_key(key) {
            return Err((
                format!("data[{key}]"),
                format!("Invalid value: {key:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"),
            ));
        }
        size += key.len() + value.as_str().map_or(0, str::len);
    }
    for (key, value) in binary.into_iter().flatten() {
        if !is_config_key(key) {
            return Err((
                format!("binaryData[{key}]"),
                format!("Invalid value: {key:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
            ));
        }
        if data.is_some_and(|d| d.contains_key(key)) {
            return Err((
                format!("data[{key}]"),
                format!("Invalid value: {key:?}: duplicate of key present in binaryData"),
            ));
        }
        let b64 = value.as_str().unwrap_or_default();
        size +=
            key.len() + b64.len() / 4 * 3 - b64.bytes().rev().take_while(|b| *b == b'=').count();
    }
    if size > SECRET_MAX {
        return Err((
            String::new(),
            format!("Too long: must have at most {SECRET_MAX} bytes"),
        ));
    }
    Ok(())
}

const SECRET_MAX: usize = 1024 * 1024;

/// A secret keeps its type, and an immutable one its data.
fn check_secret_update(old: &Value, new: &Value) -> Result<(), ApiError> {
    let name = name_of(old);
    if old["type"] != new["type"] {
        return Err(ApiError::invalid(
            "Secret",
            name,
            &[(
                "type".into(),
                format!("Invalid value: {}: field is immutable", new["type"]),
            )],
        ));
    }
    if old["immutable"] == json!(true)
        && (old["data"] != new["data"] || new["immutable"] != json!(true))
    {
        return Err(ApiError::invalid(
            "Secret",
            name,
            &[(
                "data".into(),
                "Forbidden: field is immutable when `immutable` is set".into(),
            )],
        ));
    }
    Ok(())
}

/// kube-apiserver's `ValidateSecret`: data keys are config keys, and the docker types carry
/// their key with JSON in it.
fn validate_secret(obj: &Value) -> Result<(), (String, String)> {
    let data = obj["data"].as_object();
    // `MaxSecretSize`: the decoded data, 1 MiB in all.
    let size: usize = data
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_str())
        .map(|b64| b64.len() / 4 * 3 - b64.bytes().rev().take_while(|b| *b == b'=').count())
        .sum();
    if size > SECRET_MAX {
        return Err((
            "data".into(),
            format!("Too long: must have at most {SECRET_MAX} bytes"),
        ));
    }
    for key in data.into_iter().flatten().map(|(k, _)| k) {
        let valid = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            && key != "."
            && key != "..";
        if !valid {
            return Err((
                format!("data[{key}]"),
                format!("Invalid value: \"{key}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"),
            ));
        }
    }
    let required = match obj["type"].as_str() {
        Some("kubernetes.io/dockerconfigjson") => ".dockerconfigjson",
        Some("kubernetes.io/dockercfg") => ".dockercfg",
        _ => return Ok(()),
    };
    let Some(encoded) = data.and_then(|d| d.get(required)).and_then(Value::as_str) else {
        return Err((format!("data[{required}]"), "Required value".into()));
    };
    let json = openssl::base64::decode_block(encoded)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    if json.is_none() {
        return Err((
            format!("data[{required}]"),
            "Invalid value: \"<secret contents redacted>\": not valid JSON".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_pod() -> Value {
        json!({"kind":"Pod","apiVersion":"v1","metadata":{"name":"kubia","creationTimestamp":null,"labels":{"run":"kubia"}},
            "spec":{"containers":[{"name":"kubia","image":"luksa/kubia","ports":[{"containerPort":8080}],"resources":{}}],
            "restartPolicy":"Always","dnsPolicy":"ClusterFirst"},"status":{}})
    }

    #[test]
    fn create_defaults_a_pod_like_kube_apiserver() {
        let a = admit_create(
            Resource::Pods,
            Some("default"),
            run_pod(),
            FieldValidation::Strict,
        )
        .unwrap();
        let p = &a.object;
        assert!(a.warnings.is_empty());
        assert_eq!(p["metadata"]["namespace"], "default");
        assert_eq!(p["metadata"]["uid"].as_str().unwrap().len(), 36);
        assert_eq!(p["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(p["status"]["phase"], "Pending");
        assert_eq!(p["status"]["qosClass"], "BestEffort");
    }

    #[test]
    fn unknown_fields_by_validation_mode() {
        let mut body = run_pod();
        body["spec"]["containers"][0]["imagePolicy"] = json!("x");
        body["spec"]["bogus"] = json!(1);
        let e = admit_create(
            Resource::Pods,
            Some("default"),
            body.clone(),
            FieldValidation::Strict,
        )
        .err()
        .unwrap();
        assert_eq!(e.code, 400);
        assert!(
            e.message
                .contains("unknown field \"spec.containers[0].imagePolicy\""),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("unknown field \"spec.bogus\""),
            "{}",
            e.message
        );
        let warned = admit_create(
            Resource::Pods,
            Some("default"),
            body.clone(),
            FieldValidation::Warn,
        )
        .unwrap();
        assert_eq!(warned.warnings.len(), 2);
        assert!(admit_create(
            Resource::Pods,
            Some("default"),
            body,
            FieldValidation::Ignore
        )
        .unwrap()
        .warnings
        .is_empty());
    }

    #[test]
    fn invalid_and_mismatched_bodies() {
        let mut body = run_pod();
        body["spec"]["containers"][0]["image"] = json!("");
        let e = admit_create(
            Resource::Pods,
            Some("default"),
            body,
            FieldValidation::Strict,
        )
        .err()
        .unwrap();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert!(
            e.message.contains("spec.containers[0].image"),
            "{}",
            e.message
        );
        let mut body = run_pod();
        body["metadata"]["namespace"] = json!("other");
        assert_eq!(
            admit_create(
                Resource::Pods,
                Some("default"),
                body,
                FieldValidation::Strict
            )
            .err()
            .unwrap()
            .code,
            400
        );
        let mut body = run_pod();
        body["spec"]["containers"] = json!("nope");
        let e = admit_create(
            Resource::Pods,
            Some("default"),
            body,
            FieldValidation::Strict,
        )
        .err()
        .unwrap();
        assert!(e.message.contains("spec.containers"), "{}", e.message);
        let e = admit_create(
            Resource::Pods,
            Some("default"),
            json!({"kind": "Node", "apiVersion": "v1"}),
            FieldValidation::Strict,
        )
        .err()
        .unwrap();
        assert_eq!(e.code, 400);
    }

    #[test]
    fn pod_spec_is_mostly_immutable() {
        let old = admit_create(
            Resource::Pods,
            Some("default"),
            run_pod(),
            FieldValidation::Strict,
        )
        .unwrap()
        .object;
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("luksa/kubia:v2");
        new["metadata"]["labels"]["x"] = json!("y");
        let ok = admit_update(
            Resource::Pods,
            &old,
            new.clone(),
            false,
            FieldValidation::Strict,
        )
        .unwrap();
        assert_eq!(ok.object["metadata"]["generation"], 2);
        new["spec"]["restartPolicy"] = json!("Never");
        let e = admit_update(Resource::Pods, &old, new, false, FieldValidation::Strict)
            .err()
            .unwrap();
        assert_eq!(e.code, 422);
        let mut stale = old.clone();
        stale["metadata"]["resourceVersion"] = json!("999");
        let mut old_rv = old.clone();
        old_rv["metadata"]["resourceVersion"] = json!("5");
        assert_eq!(
            admit_update(
                Resource::Pods,
                &old_rv,
                stale,
                false,
                FieldValidation::Strict
            )
            .err()
            .unwrap()
            .code,
            409
        );
    }

    #[test]
    fn image_pull_policy_by_tag() {
        assert!(tag_is_latest("busybox"));
        assert!(tag_is_latest("localhost:5000/busybox"));
        assert!(tag_is_latest("busybox:latest"));
        assert!(!tag_is_latest("busybox:1.36"));
        assert!(!tag_is_latest("localhost:5000/busybox@sha256:abcd"));
    }

    #[test]
    fn secrets_fold_string_data_and_check_docker_types() {
        let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "eA=="}, "stringData": {"a": "y", "b": "z"}});
        let created = admit_create(
            Resource::Secrets,
            Some("default"),
            body,
            FieldValidation::Strict,
        )
        .unwrap()
        .object;
        assert_eq!(created["type"], "Opaque");
        assert_eq!(created["data"], json!({"a": "eQ==", "b": "eg=="}));
        assert!(created.get("stringData").is_none());

        let bad_key = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a/b": "eA=="}});
        let e = admit_create(
            Resource::Secrets,
            Some("default"),
            bad_key,
            FieldValidation::Strict,
        )
        .unwrap_err();
        assert!(e.message.contains("data[a/b]"), "{}", e.message);

        let docker = |data: Value| {
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "d"},
                "type": "kubernetes.io/dockerconfigjson", "data": data})
        };
        let e = admit_create(
            Resource::Secrets,
            Some("default"),
            docker(json!({})),
            FieldValidation::Strict,
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("data[.dockerconfigjson]: Required value"),
            "{}",
            e.message
        );
        let e = admit_create(
            Resource::Secrets,
            Some("default"),
            docker(json!({".dockerconfigjson": "bm90IGpzb24="})),
            FieldValidation::Strict,
        )
        .unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);

        let mut changed = created.clone();
        changed["type"] = json!("kubernetes.io/tls");
        let e = admit_update(
            Resource::Secrets,
            &created,
            changed,
            false,
            FieldValidation::Strict,
        )
        .unwrap_err();
        assert!(e.message.contains("field is immutable"), "{}", e.message);
    }
}
