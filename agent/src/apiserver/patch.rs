//! The three patch types kubectl and node agents send: JSON merge patch (RFC 7386), JSON patch
//! (RFC 6902), both from the `json-patch` crate, and strategic merge patch, which merges lists of
//! objects by their key (`conditions` by `type`, `containers` by `name`, ...) as the Go types'
//! `patchMergeKey` tags say, and honours `$patch`, `$setElementOrder` and
//! `$deleteFromPrimitiveList` directives.

use serde_json::{Map, Value};

use super::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

pub fn apply(kind: PatchType, target: &Value, body: &[u8]) -> Result<Value, ApiError> {
    let bad =
        |e: &dyn std::fmt::Display| ApiError::bad_request(format!("error decoding patch: {e}"));
    let mut doc = target.clone();
    match kind {
        PatchType::Merge => {
            let patch: Value = serde_json::from_slice(body).map_err(|e| bad(&e))?;
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(&mut doc, &patch);
        }
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body).map_err(|e| bad(&e))?;
            json_patch::patch(&mut doc, &patch).map_err(|e| {
                ApiError::invalid_patch(format!(
                    "the server rejected our request due to an error in our request: {e}"
                ))
            })?;
        }
        PatchType::Strategic => {
            let patch: Value = serde_json::from_slice(body).map_err(|e| bad(&e))?;
            let Value::Object(patch) = patch else {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            };
            strategic(&mut doc, &patch);
        }
    }
    Ok(doc)
}

/// The merge key of a list field, from the `patchMergeKey` tags of the Kubernetes Go types.
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "conditions" | "addresses" => "type",
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "containerStatuses"
        | "initContainerStatuses"
        | "ephemeralContainerStatuses"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "ports" => "containerPort",
        "volumeMounts" | "volumeDevices" => "mountPath",
        "podIPs" | "hostIPs" => "ip",
        "ownerReferences" => "uid",
        "taints" => "key",
        _ => return None,
    })
}

/// Lists of strings that strategic merge treats as sets (`patchStrategy:"merge"`).
fn merged_primitive_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

fn strategic(doc: &mut Value, patch: &Map<String, Value>) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = patch.clone();
        replaced.remove("$patch");
        *doc = Value::Object(replaced);
        return;
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let target = doc.as_object_mut().expect("object");
    for (field, value) in patch {
        if field.starts_with("$setElementOrder/") || field == "$retainKeys" || field == "$patch" {
            continue;
        }
        if let Some(list) = field.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(current)), Value::Array(gone)) = (target.get_mut(list), value)
            {
                current.retain(|v| !gone.contains(v));
            }
            continue;
        }
        match value {
            Value::Null => {
                target.remove(field);
            }
            Value::Object(sub) => {
                if sub.get("$patch").and_then(Value::as_str) == Some("delete") {
                    target.remove(field);
                } else {
                    strategic(target.entry(field.clone()).or_insert(Value::Null), sub);
                }
            }
            Value::Array(items) => match (merge_key(field), target.get_mut(field)) {
                (Some(key), Some(Value::Array(current))) => merge_list(current, items, key),
                (None, Some(Value::Array(current))) if merged_primitive_list(field) => {
                    for item in items {
                        if !current.contains(item) {
                            current.push(item.clone());
                        }
                    }
                }
                _ => {
                    let cleaned = items
                        .iter()
                        .filter(|i| i.get("$patch").is_none())
                        .cloned()
                        .collect();
                    target.insert(field.clone(), Value::Array(cleaned));
                }
            },
            other => {
                target.insert(field.clone(), other.clone());
            }
        }
    }
}

fn merge_list(current: &mut Vec<Value>, items: &[Value], key: &str) {
    for item in items {
        let Some(id) = item.get(key) else {
            current.push(item.clone());
            continue;
        };
        let pos = current.iter().position(|c| c.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, item) {
            (Some(p), _) if delete => {
                current.remove(p);
            }
            (_, _) if delete => {}
            (Some(p), Value::Object(sub)) => strategic(&mut current[p], sub),
            (None, _) => current.push(item.clone()),
            (Some(p), other) => current[p] = other.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(kind: PatchType, doc: Value, patch: Value) -> Value {
        apply(kind, &doc, patch.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn merge_patch_sets_and_deletes_labels() {
        let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let out = run(
            PatchType::Merge,
            doc,
            json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
        );
        assert_eq!(out, json!({"metadata": {"labels": {"b": "2", "c": "3"}}}));
    }

    #[test]
    fn strategic_merges_conditions_by_type() {
        let doc = json!({"status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False"}]}});
        let patch = json!({"metadata": {"uid": "u"}, "status": {
            "$setElementOrder/conditions": [{"type": "Ready"}, {"type": "PodScheduled"}],
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}]}});
        let out = run(PatchType::Strategic, doc, patch);
        assert_eq!(out["status"]["phase"], "Running");
        assert_eq!(out["metadata"]["uid"], "u");
        let conds = out["status"]["conditions"].as_array().unwrap();
        assert_eq!(conds.len(), 3);
        assert_eq!(conds[0], json!({"type": "PodScheduled", "status": "True"}));
        assert_eq!(conds[1]["status"], "True");
    }

    #[test]
    fn strategic_directives() {
        let doc = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]},
            "metadata": {"finalizers": ["f1"]}});
        let patch = json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}, {"name": "a", "image": "y"}]},
            "metadata": {"finalizers": ["f2"]}});
        let out = run(PatchType::Strategic, doc, patch);
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "image": "y"}])
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["f1", "f2"]));
        let out = run(
            PatchType::Strategic,
            out,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["f2"]));
    }

    #[test]
    fn json_patch_and_errors() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}});
        let out = run(
            PatchType::Json,
            doc.clone(),
            json!([{"op": "replace", "path": "/metadata/labels/a", "value": "2"}]),
        );
        assert_eq!(out["metadata"]["labels"]["a"], "2");
        let bad = apply(
            PatchType::Json,
            &doc,
            br#"[{"op": "remove", "path": "/nope"}]"#,
        )
        .unwrap_err();
        assert_eq!(bad.code, 422);
        assert_eq!(
            apply(PatchType::Merge, &doc, b"{nope").unwrap_err().code,
            400
        );
        assert_eq!(apply(PatchType::Merge, &doc, b"[1]").unwrap_err().code, 400);
    }
}
