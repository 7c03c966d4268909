//! The verbs on stored objects: get, list, create, update, patch, delete (graceful for pods,
//! finalizing for namespaces) and deletecollection, with kube-apiserver's rules.

use jiff::{SignedDuration, Timestamp};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::objects::{self, name_of, namespace_of, Admitted, FieldValidation};
use super::patch::{self, PatchType};
use super::resource::Resource;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Object, Store};

/// Namespaces that exist from the start and cannot be deleted.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

pub struct Selectors {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selectors {
    pub fn parse(
        resource: Resource,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Selectors, ApiError> {
        Ok(Selectors {
            labels: LabelSelector::parse(labels.unwrap_or_default())?,
            fields: FieldSelector::parse(fields.unwrap_or_default(), resource.field_labels())?,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches(obj)
    }
}

pub fn get(
    store: &Store,
    resource: Resource,
    namespace: &str,
    name: &str,
) -> Result<Object, ApiError> {
    store
        .get(resource, namespace, name)
        .ok_or_else(|| ApiError::not_found(resource.plural(), name))
}

pub fn list(
    store: &Store,
    resource: Resource,
    namespace: Option<&str>,
    selectors: &Selectors,
) -> (Vec<Object>, u64) {
    let namespace = namespace.or(selectors.fields.required("metadata.namespace"));
    let (items, rv) = store.list(resource, namespace);
    (
        items.into_iter().filter(|o| selectors.matches(o)).collect(),
        rv,
    )
}

/// Creation needs an existing namespace that is not being deleted (NamespaceLifecycle).
fn check_namespace(
    store: &Store,
    resource: Resource,
    namespace: &str,
    name: &str,
) -> Result<(), ApiError> {
    let Some(ns) = store.get(Resource::Namespaces, "", namespace) else {
        return Err(ApiError::not_found("namespaces", namespace));
    };
    if ns["status"]["phase"] == "Terminating" {
        return Err(ApiError::forbidden(
            resource.plural(),
            name,
            &format!("unable to create new content in namespace {namespace} because it is being terminated"),
        ));
    }
    Ok(())
}

pub fn create(
    store: &Store,
    resource: Resource,
    namespace: Option<&str>,
    body: Value,
    validation: FieldValidation,
) -> Result<(Object, Vec<String>), ApiError> {
    let Admitted {
        mut object,
        warnings,
    } = objects::admit_create(resource, namespace, body, validation)?;
    if let Some(ns) = namespace {
        check_namespace(store, resource, ns, name_of(&object))?;
    }
    if resource == Resource::Pods {
        super::serviceaccounts::admit_pod(store, &mut object)?;
    }
    let created = store.create(resource, object)?;
    if resource == Resource::Namespaces {
        // At once, not on the controller's next pass: a pod created right after its namespace
        // needs the service account.
        super::serviceaccounts::ensure_default_account(store, name_of(&created));
    }
    Ok((created, warnings))
}

/// PUT of a whole object (or of its status).
/// How an update or patch is made: through `/status` or not, and how unknown fields count.
#[derive(Clone, Copy, Debug)]
pub struct Write {
    pub status: bool,
    pub validation: FieldValidation,
}

pub fn update(
    store: &Store,
    resource: Resource,
    namespace: &str,
    name: &str,
    body: Value,
    Write { status, validation }: Write,
) -> Result<(Object, Vec<String>), ApiError> {
    let mut warnings = Vec::new();
    let obj = store.update(resource, namespace, name, |old| {
        let admitted = objects::admit_update(resource, old, body, status, validation)?;
        warnings = admitted.warnings;
        Ok(Some(admitted.object))
    })?;
    Ok((finish_if_done(store, resource, obj)?, warnings))
}

pub fn patch(
    store: &Store,
    resource: Resource,
    namespace: &str,
    name: &str,
    kind: PatchType,
    body: &[u8],
    Write { status, validation }: Write,
) -> Result<(Object, Vec<String>), ApiError> {
    let mut warnings = Vec::new();
    let obj = store.update(resource, namespace, name, |old| {
        let mut patched = patch::apply(kind, old, body)?;
        // A patch is not an optimistic-concurrency write unless it names a version itself.
        if patched["metadata"]["resourceVersion"] == old["metadata"]["resourceVersion"] {
            if let Some(m) = patched["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
        }
        let admitted = objects::admit_update(resource, old, patched, status, validation)?;
        warnings = admitted.warnings;
        Ok(Some(admitted.object))
    })?;
    Ok((finish_if_done(store, resource, obj)?, warnings))
}

/// The `ephemeralcontainers` subresource (what `kubectl debug` patches): only
/// `spec.ephemeralContainers` changes, and only by additions (kube-apiserver's
/// `ValidatePodEphemeralContainersUpdate`); `patch` is the patch and its type, or `None` for a PUT
/// of the whole pod in `body`.
pub fn ephemeral_containers(
    store: &Store,
    namespace: &str,
    name: &str,
    patch: Option<PatchType>,
    body: &[u8],
) -> Result<Object, ApiError> {
    store.update(Resource::Pods, namespace, name, |old| {
        let given = match patch {
            Some(kind) => patch::apply(kind, old, body)?,
            None => serde_json::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("error decoding request body as JSON: {e}"))
            })?,
        };
        let invalid = |field: String, why: String| ApiError::invalid("Pod", name, &[(field, why)]);
        let before: Vec<Value> = old["spec"]["ephemeralContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let after: Vec<Value> = given["spec"]["ephemeralContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, existing) in before.iter().enumerate() {
            let n = existing["name"].as_str().unwrap_or_default();
            match after.iter().position(|e| e["name"] == n) {
                None => {
                    return Err(invalid(
                        "spec.ephemeralContainers".into(),
                        format!(
                            "Forbidden: existing ephemeral containers {n:?} may not be removed"
                        ),
                    ))
                }
                Some(j) if after[j] != *existing => {
                    return Err(invalid(
                        format!("spec.ephemeralContainers[{i}]"),
                        format!(
                            "Forbidden: existing ephemeral containers {n:?} may not be changed"
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        let mut new = old.clone();
        new["spec"]["ephemeralContainers"] = Value::Array(after);
        // SetDefaults_EphemeralContainer: the container defaults (the rest is set already).
        objects::default_pod(&mut new);
        let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(new.clone())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        crate::pod::manifest::validate(&typed)
            .map_err(|e| ApiError::invalid("Pod", name, &[(e.field, e.reason)]))?;
        Ok(Some(new))
    })
}

/// `PUT /api/v1/namespaces/{name}/finalize`: only `spec.finalizers` changes.
pub fn finalize_namespace(store: &Store, name: &str, body: Value) -> Result<Object, ApiError> {
    let obj = store.update(Resource::Namespaces, "", name, |old| {
        let mut new = old.clone();
        new["spec"]["finalizers"] = body["spec"]["finalizers"].clone();
        Ok(Some(new))
    })?;
    finish_if_done(store, Resource::Namespaces, obj)
}

/// An object being deleted goes once nothing holds it: no finalizers left and, for a pod, its
/// grace period ended by the node (`deletionGracePeriodSeconds: 0`).
fn finish_if_done(store: &Store, resource: Resource, obj: Object) -> Result<Object, ApiError> {
    if obj["metadata"]["deletionTimestamp"].is_null() || has_finalizers(&obj) {
        return Ok(obj);
    }
    let done = match resource {
        Resource::Pods => obj["metadata"]["deletionGracePeriodSeconds"].as_i64() == Some(0),
        Resource::Namespaces => obj["spec"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty()),
        _ => true,
    };
    if !done {
        return Ok(obj);
    }
    match store.remove(resource, namespace_of(&obj), name_of(&obj), |_| Ok(())) {
        Ok(removed) => Ok(removed),
        Err(e) if e.code == 404 => Ok(obj),
        Err(e) => Err(e),
    }
}

fn has_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub preconditions: Option<Preconditions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

fn check_preconditions(
    resource: Resource,
    obj: &Value,
    p: Option<&Preconditions>,
) -> Result<(), ApiError> {
    let Some(p) = p else { return Ok(()) };
    let name = name_of(obj);
    if let Some(uid) = &p.uid {
        let actual = obj["metadata"]["uid"].as_str().unwrap_or_default();
        if uid != actual {
            return Err(ApiError::conflict(
                resource.plural(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                ),
            ));
        }
    }
    if let Some(rv) = &p.resource_version {
        let actual = obj["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if rv != actual {
            return Err(ApiError::conflict(
                resource.plural(),
                name,
                &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"),
            ));
        }
    }
    Ok(())
}

/// DELETE of one object. Pods are deleted gracefully (`CheckGracefulDelete`): they stay with a
/// deletionTimestamp until their node has stopped them; namespaces go Terminating and are emptied
/// by the namespace controller; anything with finalizers waits for them.
pub fn delete(
    store: &Store,
    resource: Resource,
    namespace: &str,
    name: &str,
    options: &DeleteOptions,
) -> Result<Object, ApiError> {
    let current = get(store, resource, namespace, name)?;
    check_preconditions(resource, &current, options.preconditions.as_ref())?;
    match resource {
        Resource::Namespaces => return delete_namespace(store, name),
        Resource::Pods => {
            let grace = pod_grace(&current, options.grace_period_seconds);
            if grace > 0 || has_finalizers(&current) {
                return mark_deleting(store, resource, &current, grace, options);
            }
        }
        _ if has_finalizers(&current) => {
            return mark_deleting(store, resource, &current, 0, options)
        }
        _ => {}
    }
    let uid = current["metadata"]["uid"].clone();
    store.remove(resource, namespace, name, |obj| {
        // The object may have been replaced since it was read: never delete a same-named other.
        if obj["metadata"]["uid"] != uid {
            return Err(ApiError::conflict(resource.plural(), name, "the object has been modified; please apply your changes to the latest version and try again"));
        }
        check_preconditions(resource, obj, options.preconditions.as_ref())
    })
}

/// The grace period a pod deletion gets: asked for, else the pod's own; none for a pod no node
/// runs (unscheduled or finished); negative means 1.
fn pod_grace(pod: &Value, requested: Option<i64>) -> i64 {
    let unscheduled = pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if unscheduled || finished {
        return 0;
    }
    let grace = requested
        .or(pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30);
    if grace < 0 {
        1
    } else {
        grace
    }
}

/// Sets (or shortens, never lengthens) deletionTimestamp and deletionGracePeriodSeconds.
fn mark_deleting(
    store: &Store,
    resource: Resource,
    current: &Value,
    grace: i64,
    options: &DeleteOptions,
) -> Result<Object, ApiError> {
    let uid = current["metadata"]["uid"].clone();
    let obj = store.update(resource, namespace_of(current), name_of(current), |obj| {
        if obj["metadata"]["uid"] != uid {
            return Err(ApiError::conflict(
                resource.plural(),
                name_of(obj),
                "the object has been modified",
            ));
        }
        check_preconditions(resource, obj, options.preconditions.as_ref())?;
        let now = Timestamp::now();
        let deadline = now + SignedDuration::from_secs(grace);
        if let Some(existing) = obj["metadata"]["deletionTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok())
        {
            let current_grace = obj["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0);
            if grace >= current_grace || deadline >= existing {
                return Ok(None);
            }
        }
        let mut new = obj.clone();
        new["metadata"]["deletionTimestamp"] = json!(format!("{deadline:.0}"));
        new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        if resource == Resource::Pods {
            new["metadata"]["generation"] =
                json!(obj["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
        }
        Ok(Some(new))
    })?;
    finish_if_done(store, resource, obj)
}

fn delete_namespace(store: &Store, name: &str) -> Result<Object, ApiError> {
    if SYSTEM_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(
            "namespaces",
            name,
            "this namespace may not be deleted",
        ));
    }
    store.update(Resource::Namespaces, "", name, |ns| {
        if !ns["metadata"]["deletionTimestamp"].is_null() {
            return Ok(None);
        }
        let mut new = ns.clone();
        new["metadata"]["deletionTimestamp"] = json!(objects::now());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        new["status"]["phase"] = json!("Terminating");
        Ok(Some(new))
    })
}

/// DELETE on a collection: each matching object as if deleted one by one.
pub fn delete_collection(
    store: &Store,
    resource: Resource,
    namespace: Option<&str>,
    selectors: &Selectors,
    options: &DeleteOptions,
) -> Result<Vec<Object>, ApiError> {
    let (items, _) = list(store, resource, namespace, selectors);
    let mut deleted = Vec::new();
    for obj in items {
        match delete(store, resource, namespace_of(&obj), name_of(&obj), options) {
            Ok(o) => deleted.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// The namespaces every cluster has, created on first start.
pub fn seed(store: &Store) -> Result<(), ApiError> {
    for ns in SYSTEM_NAMESPACES {
        if store.get(Resource::Namespaces, "", ns).is_none() {
            let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            create(
                store,
                Resource::Namespaces,
                None,
                body,
                FieldValidation::Strict,
            )?;
        }
        super::serviceaccounts::ensure_default_account(store, ns);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        seed(&store).unwrap();
        (dir, store)
    }

    fn pod(name: &str, node: Option<&str>) -> Value {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        p
    }

    #[test]
    fn graceful_pod_deletion_finishes_with_grace_zero_and_uid() {
        let (_d, s) = store();
        let (p, _) = create(
            &s,
            Resource::Pods,
            Some("default"),
            pod("a", Some("n1")),
            FieldValidation::Strict,
        )
        .unwrap();
        let uid = p["metadata"]["uid"].as_str().unwrap().to_owned();
        let marked = delete(
            &s,
            Resource::Pods,
            "default",
            "a",
            &DeleteOptions::default(),
        )
        .unwrap();
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
        assert!(s.get(Resource::Pods, "default", "a").is_some());
        // A longer grace never extends it.
        let again = delete(
            &s,
            Resource::Pods,
            "default",
            "a",
            &DeleteOptions {
                grace_period_seconds: Some(60),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(again["metadata"]["deletionGracePeriodSeconds"], 30);
        let wrong = DeleteOptions {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some("other".into()),
                resource_version: None,
            }),
        };
        assert_eq!(
            delete(&s, Resource::Pods, "default", "a", &wrong)
                .unwrap_err()
                .code,
            409
        );
        let right = DeleteOptions {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
        };
        delete(&s, Resource::Pods, "default", "a", &right).unwrap();
        assert!(s.get(Resource::Pods, "default", "a").is_none());
    }

    #[test]
    fn unscheduled_pods_go_at_once() {
        let (_d, s) = store();
        create(
            &s,
            Resource::Pods,
            Some("default"),
            pod("a", None),
            FieldValidation::Strict,
        )
        .unwrap();
        delete(
            &s,
            Resource::Pods,
            "default",
            "a",
            &DeleteOptions::default(),
        )
        .unwrap();
        assert!(s.get(Resource::Pods, "default", "a").is_none());
    }

    #[test]
    fn namespace_lifecycle() {
        let (_d, s) = store();
        assert_eq!(
            delete(
                &s,
                Resource::Namespaces,
                "",
                "default",
                &DeleteOptions::default()
            )
            .unwrap_err()
            .code,
            403
        );
        let e = create(
            &s,
            Resource::Pods,
            Some("nope"),
            pod("a", None),
            FieldValidation::Strict,
        )
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (404, "namespaces \"nope\" not found")
        );
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}});
        let (ns, _) = create(&s, Resource::Namespaces, None, ns, FieldValidation::Strict).unwrap();
        assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "x");
        let gone = delete(&s, Resource::Namespaces, "", "x", &DeleteOptions::default()).unwrap();
        assert_eq!(gone["status"]["phase"], "Terminating");
        assert_eq!(
            create(
                &s,
                Resource::Pods,
                Some("x"),
                pod("a", None),
                FieldValidation::Strict
            )
            .unwrap_err()
            .code,
            403
        );
        finalize_namespace(&s, "x", json!({"spec": {"finalizers": []}})).unwrap();
        assert!(s.get(Resource::Namespaces, "", "x").is_none());
    }

    #[test]
    fn status_patch_leaves_spec_and_merges_conditions() {
        let (_d, s) = store();
        create(
            &s,
            Resource::Pods,
            Some("default"),
            pod("a", Some("n1")),
            FieldValidation::Strict,
        )
        .unwrap();
        let body = br#"{"spec": {"nodeName": "elsewhere"}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}"#;
        let (p, _) = patch(
            &s,
            Resource::Pods,
            "default",
            "a",
            PatchType::Strategic,
            body,
            Write {
                status: true,
                validation: FieldValidation::Strict,
            },
        )
        .unwrap();
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(p["spec"]["nodeName"], "n1");
        let (p, _) = patch(
            &s,
            Resource::Pods,
            "default",
            "a",
            PatchType::Merge,
            br#"{"metadata": {"labels": {"k": "v"}}, "status": {"phase": "Failed"}}"#,
            Write {
                status: false,
                validation: FieldValidation::Strict,
            },
        )
        .unwrap();
        assert_eq!(p["metadata"]["labels"]["k"], "v");
        assert_eq!(p["status"]["phase"], "Running");
    }
}
