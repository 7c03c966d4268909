//! The control loops a single-node API needs besides storage: a scheduler that binds pods to a
//! node whose labels match their nodeSelector (or marks them Unschedulable with a
//! FailedScheduling event), and the namespace controller that empties a Terminating namespace
//! and then removes it. Both react to every change and also look again every few seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::warn;

use super::error::ApiError;
use super::handlers::{self, DeleteOptions, Selectors};
use super::objects::{self, name_of, namespace_of, FieldValidation};
use super::resource::Resource;
use super::store::Store;

const RESYNC: Duration = Duration::from_secs(5);

/// kube-apiserver's `--event-ttl` default: an event is kept an hour after its last update.
const EVENT_TTL: Duration = Duration::from_secs(3600);

pub async fn run(store: Arc<Store>, ca_pem: String) {
    let mut changes = store.subscribe();
    let mut scheduler = Scheduler::default();
    let mut events_swept = tokio::time::Instant::now();
    loop {
        scheduler.pass(&store);
        namespaces(&store);
        super::serviceaccounts::ensure_defaults(&store, &ca_pem);
        if events_swept.elapsed() >= Duration::from_secs(60) {
            expire_events(&store, jiff::Timestamp::now(), EVENT_TTL);
            events_swept = tokio::time::Instant::now();
        }
        tokio::select! {
            _ = changes.recv() => {
                // Let a burst of changes settle, then look once.
                tokio::time::sleep(Duration::from_millis(5)).await;
                while changes.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// Deletes the events last written more than `ttl` before `now`.
fn expire_events(store: &Store, now: jiff::Timestamp, ttl: Duration) {
    let written = |e: &Value| {
        ["lastTimestamp", "eventTime"]
            .iter()
            .map(|f| &e[f])
            .chain([&e["metadata"]["creationTimestamp"]])
            .filter_map(|t| t.as_str()?.parse::<jiff::Timestamp>().ok())
            .max()
    };
    let cutoff = now - jiff::SignedDuration::try_from(ttl).unwrap_or_default();
    for event in all(store, Resource::Events, None) {
        if written(&event).is_some_and(|t| t < cutoff) {
            let _ = store.remove(
                Resource::Events,
                namespace_of(&event),
                name_of(&event),
                |_| Ok(()),
            );
        }
    }
}

fn all(store: &Store, resource: Resource, namespace: Option<&str>) -> Vec<Arc<Value>> {
    store.list(resource, namespace).0
}

#[derive(Default)]
struct Scheduler {
    /// The last FailedScheduling message reported per pod UID, so it is said once per change.
    reported: HashMap<String, String>,
}

impl Scheduler {
    fn pass(&mut self, store: &Store) {
        let nodes = all(store, Resource::Nodes, None);
        let pods = all(store, Resource::Pods, None);
        let mut load: HashMap<String, usize> = HashMap::new();
        for p in &pods {
            if let Some(n) = p["spec"]["nodeName"].as_str() {
                *load.entry(n.to_owned()).or_default() += 1;
            }
        }
        self.reported
            .retain(|uid, _| pods.iter().any(|p| p["metadata"]["uid"] == *uid.as_str()));
        for pod in pods.iter().filter(|p| {
            p["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
                && p["metadata"]["deletionTimestamp"].is_null()
                && p["spec"]["schedulerName"]
                    .as_str()
                    .is_none_or(|s| s == "default-scheduler")
        }) {
            let fits: Vec<&Arc<Value>> = nodes.iter().filter(|n| fits(pod, n)).collect();
            let chosen = fits
                .iter()
                .min_by_key(|n| load.get(name_of(n)).copied().unwrap_or(0));
            let result = match chosen {
                Some(node) => {
                    let node = name_of(node).to_owned();
                    *load.entry(node.clone()).or_default() += 1;
                    bind(store, pod, &node)
                }
                None => self.unschedulable(store, pod, nodes.len()),
            };
            if let Err(e) = result {
                if e.code != 404 && e.code != 409 {
                    warn!(pod = name_of(pod), error = %e.message, "scheduling");
                }
            }
        }
    }

    fn unschedulable(&mut self, store: &Store, pod: &Value, nodes: usize) -> Result<(), ApiError> {
        let message = if nodes == 0 {
            "no nodes available to schedule pods".to_owned()
        } else {
            format!("0/{nodes} nodes are available: {nodes} node(s) didn't match Pod's node affinity/selector. preemption: 0/{nodes} nodes are available: {nodes} Preemption is not helpful for scheduling.")
        };
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if self.reported.get(&uid) == Some(&message) {
            return Ok(());
        }
        set_scheduled_condition(store, pod, None, "False", Some(("Unschedulable", &message)))?;
        record_event(
            store,
            pod,
            "Warning",
            "FailedScheduling",
            &message,
            "default-scheduler",
            None,
        )?;
        self.reported.insert(uid, message);
        Ok(())
    }
}

/// A node fits when it is schedulable and carries every label of the pod's nodeSelector.
fn fits(pod: &Value, node: &Value) -> bool {
    if node["spec"]["unschedulable"].as_bool().unwrap_or(false) {
        return false;
    }
    let labels = super::selector::labels_of(node);
    pod["spec"]["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
}

fn bind(store: &Store, pod: &Value, node: &str) -> Result<(), ApiError> {
    set_scheduled_condition(store, pod, Some(node), "True", None)?;
    let (ns, name) = (namespace_of(pod), name_of(pod));
    record_event(
        store,
        pod,
        "Normal",
        "Scheduled",
        &format!("Successfully assigned {ns}/{name} to {node}"),
        "default-scheduler",
        None,
    )
}

fn set_scheduled_condition(
    store: &Store,
    pod: &Value,
    node: Option<&str>,
    status: &str,
    reason: Option<(&str, &str)>,
) -> Result<(), ApiError> {
    let uid = pod["metadata"]["uid"].clone();
    store.update(Resource::Pods, namespace_of(pod), name_of(pod), |current| {
        if current["metadata"]["uid"] != uid || !current["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
            return Err(ApiError::conflict("pods", name_of(current), "the pod changed while being scheduled"));
        }
        let mut new = current.clone();
        if let Some(node) = node {
            new["spec"]["nodeName"] = json!(node);
        }
        let mut condition = json!({"type": "PodScheduled", "status": status, "lastProbeTime": null, "lastTransitionTime": objects::now()});
        if let Some((r, m)) = reason {
            condition["reason"] = json!(r);
            condition["message"] = json!(m);
        }
        let conditions = new["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let mut conditions: Vec<Value> = conditions.into_iter().filter(|c| c["type"] != "PodScheduled").collect();
        conditions.insert(0, condition);
        new["status"]["conditions"] = json!(conditions);
        Ok(Some(new))
    })?;
    Ok(())
}

/// Records a core/v1 Event about `object`, as the scheduler's and kubelet's recorders do.
pub fn record_event(
    store: &Store,
    object: &Value,
    ty: &str,
    reason: &str,
    message: &str,
    component: &str,
    host: Option<&str>,
) -> Result<(), ApiError> {
    let ns = match namespace_of(object) {
        "" => "default",
        ns => ns,
    };
    let now = objects::now();
    let mut source = json!({"component": component});
    if let Some(h) = host {
        source["host"] = json!(h);
    }
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{}.{}", name_of(object), crate::random_hex(8)), "namespace": ns},
        "involvedObject": {
            "kind": object["kind"], "namespace": namespace_of(object), "name": name_of(object),
            "uid": object["metadata"]["uid"], "apiVersion": object["apiVersion"],
            "resourceVersion": object["metadata"]["resourceVersion"],
        },
        "reason": reason, "message": message, "source": source,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": ty,
        "reportingComponent": component, "reportingInstance": host.unwrap_or_default(),
    });
    handlers::create(
        store,
        Resource::Events,
        Some(ns),
        event,
        FieldValidation::Ignore,
    )
    .map(|_| ())
}

/// Empties each Terminating namespace (pods gracefully, the rest at once) and removes it once no
/// pod is left.
fn namespaces(store: &Store) {
    let everything = Selectors::parse(Resource::Pods, None, None).expect("empty selectors");
    for ns in all(store, Resource::Namespaces, None) {
        if ns["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let name = name_of(&ns);
        for r in [
            Resource::Pods,
            Resource::Events,
            Resource::Leases,
            Resource::Secrets,
            Resource::ConfigMaps,
            Resource::ServiceAccounts,
        ] {
            if let Err(e) = handlers::delete_collection(
                store,
                r,
                Some(name),
                &everything,
                &DeleteOptions::default(),
            ) {
                warn!(namespace = name, error = %e.message, "delete namespace content");
            }
        }
        if all(store, Resource::Pods, Some(name)).is_empty() {
            let body = json!({"spec": {"finalizers": []}});
            if let Err(e) = handlers::finalize_namespace(store, name, body) {
                warn!(namespace = name, error = %e.message, "finalize namespace");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_expire_an_hour_after_their_last_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("api.db")).unwrap();
        let now: jiff::Timestamp = "2026-12-01T12:00:00Z".parse().unwrap();
        for (name, created, last) in [
            ("old", "2026-12-01T10:00:00Z", "2026-12-01T10:30:00Z"),
            ("repeated", "2026-12-01T10:00:00Z", "2026-12-01T11:30:00Z"),
            ("new", "2026-12-01T11:59:00Z", "2026-12-01T11:59:00Z"),
        ] {
            let event = json!({"metadata": {"name": name, "namespace": "default",
                "creationTimestamp": created}, "lastTimestamp": last});
            store.create(Resource::Events, event).unwrap();
        }
        expire_events(&store, now, EVENT_TTL);
        let left: Vec<String> = all(&store, Resource::Events, None)
            .iter()
            .map(|e| name_of(e).to_owned())
            .collect();
        assert_eq!(left, ["new", "repeated"]);
    }
}
