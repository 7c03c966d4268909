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
use crate::network::hostports::{conflict, Mapping};

const RESYNC: Duration = Duration::from_secs(5);

/// kube-apiserver's `--event-ttl` default: an event is kept an hour after its last update.
const EVENT_TTL: Duration = Duration::from_secs(3600);

pub async fn run(
    store: Arc<Store>,
    ca_pem: String,
    service: std::net::SocketAddr,
    dashboard: bool,
) {
    let mut changes = store.subscribe();
    let mut scheduler = Scheduler::default();
    let mut events_swept = tokio::time::Instant::now();
    loop {
        scheduler.pass(&store);
        namespaces(&store);
        super::serviceaccounts::ensure_defaults(&store, &ca_pem);
        kubernetes_service(&store, service);
        if dashboard {
            super::dashboard::ensure(&store, service);
        }
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

/// The `kubernetes` Service in `default`, as kube-apiserver keeps it: its cluster IP is where
/// pods reach this API (the pod network's gateway; there is no service proxy), the port its
/// own.
fn kubernetes_service(store: &Store, at: std::net::SocketAddr) {
    let ip = at.ip().to_string();
    let family = if at.is_ipv4() { "IPv4" } else { "IPv6" };
    let spec = json!({
        "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
        "ipFamilies": [family], "ipFamilyPolicy": "SingleStack",
        "ports": [{"name": "https", "port": at.port(), "protocol": "TCP", "targetPort": at.port()}],
        "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
    });
    let labels = json!({"component": "apiserver", "provider": "kubernetes"});
    keep_service(store, "default", "kubernetes", labels, spec);
}

/// One of the API's own Services: made again if missing, its spec corrected if it changed.
pub fn keep_service(store: &Store, namespace: &str, name: &str, labels: Value, spec: Value) {
    super::serviceaccounts::keep(
        store,
        Resource::Services,
        namespace,
        name,
        "spec",
        spec,
        |spec| {
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": spec, "status": {"loadBalancer": {}}})
        },
    );
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
        // Bound pods that still run, per node (what counts against a node's `pods`).
        let mut load: HashMap<String, usize> = HashMap::new();
        for p in &pods {
            let finished = matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
            if let (Some(n), false) = (p["spec"]["nodeName"].as_str(), finished) {
                *load.entry(n.to_owned()).or_default() += 1;
            }
        }
        self.reported
            .retain(|uid, _| pods.iter().any(|p| p["metadata"]["uid"] == *uid.as_str()));
        // The host ports each node's running pods hold (kube-scheduler's NodePorts filter).
        let mut taken: HashMap<String, Vec<Mapping>> = HashMap::new();
        for p in pods.iter().filter(|p| has_host_ports(p)) {
            let running = !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
            if let (Some(n), true) = (p["spec"]["nodeName"].as_str(), running) {
                taken
                    .entry(n.to_owned())
                    .or_default()
                    .extend(mappings_of(p));
            }
        }
        for pod in pods.iter().filter(|p| {
            p["spec"]["nodeName"].as_str().is_none_or(str::is_empty)
                && p["metadata"]["deletionTimestamp"].is_null()
                && p["spec"]["schedulerName"]
                    .as_str()
                    .is_none_or(|s| s == "default-scheduler")
        }) {
            let wanted = if has_host_ports(pod) {
                mappings_of(pod)
            } else {
                Vec::new()
            };
            let verdicts: Vec<(&Arc<Value>, Result<(), Misfit>)> = nodes
                .iter()
                .map(|n| {
                    let free = taken
                        .get(name_of(n))
                        .is_none_or(|t| conflict(&wanted, t).is_none());
                    let room = pods_allowed(n)
                        .is_none_or(|max| load.get(name_of(n)).copied().unwrap_or(0) < max);
                    let verdict = fits(pod, n)
                        .and(if room {
                            Ok(())
                        } else {
                            Err(Misfit::TooManyPods)
                        })
                        .and(if free { Ok(()) } else { Err(Misfit::Ports) });
                    (n, verdict)
                })
                .collect();
            let chosen = verdicts
                .iter()
                .filter(|(_, v)| v.is_ok())
                .map(|(n, _)| n)
                .min_by_key(|n| load.get(name_of(n)).copied().unwrap_or(0));
            let result = match chosen {
                Some(node) => {
                    let node = name_of(node).to_owned();
                    *load.entry(node.clone()).or_default() += 1;
                    taken.entry(node.clone()).or_default().extend(wanted);
                    bind(store, pod, &node)
                }
                None => {
                    let misfits: Vec<Misfit> =
                        verdicts.into_iter().filter_map(|(_, v)| v.err()).collect();
                    self.unschedulable(store, pod, &misfits)
                }
            };
            if let Err(e) = result {
                if e.code != 404 && e.code != 409 {
                    warn!(pod = name_of(pod), error = %e.message, "scheduling");
                }
            }
        }
    }

    /// kube-scheduler's FailedScheduling message: each reason with the number of nodes it ruled
    /// out, sorted, then what preemption could do.
    fn unschedulable(
        &mut self,
        store: &Store,
        pod: &Value,
        misfits: &[Misfit],
    ) -> Result<(), ApiError> {
        let nodes = misfits.len();
        let message = if nodes == 0 {
            "no nodes available to schedule pods".to_owned()
        } else {
            let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
            for m in misfits {
                *counts.entry(m.reason()).or_default() += 1;
            }
            let reasons: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
            // Only a port held by another pod could be freed by preempting it.
            let ports = misfits
                .iter()
                .filter(|m| matches!(m, Misfit::Ports | Misfit::TooManyPods))
                .count();
            let preemption = if ports > 0 {
                format!("{ports} No preemption victims found for incoming pod")
            } else {
                format!("{nodes} Preemption is not helpful for scheduling")
            };
            format!("0/{nodes} nodes are available: {}. preemption: 0/{nodes} nodes are available: {preemption}.", reasons.join(", "))
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

/// Why a node cannot take a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Misfit {
    Unschedulable,
    Selector,
    TooManyPods,
    Ports,
}

impl Misfit {
    fn reason(self) -> &'static str {
        match self {
            Misfit::Unschedulable => "node(s) were unschedulable",
            Misfit::Selector => "node(s) didn't match Pod's node affinity/selector",
            Misfit::Ports => "node(s) didn't have free ports for the requested pod ports",
            Misfit::TooManyPods => "Too many pods",
        }
    }
}

/// A node fits when it is schedulable and carries every label of the pod's nodeSelector.
fn fits(pod: &Value, node: &Value) -> Result<(), Misfit> {
    if node["spec"]["unschedulable"].as_bool().unwrap_or(false) {
        return Err(Misfit::Unschedulable);
    }
    let labels = super::selector::labels_of(node);
    let matches = pod["spec"]["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    if matches {
        Ok(())
    } else {
        Err(Misfit::Selector)
    }
}

/// How many pods the node takes (`status.allocatable.pods`, else its capacity), if it says.
fn pods_allowed(node: &Value) -> Option<usize> {
    let status = &node["status"];
    [&status["allocatable"]["pods"], &status["capacity"]["pods"]]
        .iter()
        .find_map(|q| q.as_str()?.parse().ok())
}

/// Whether the pod holds node ports (a cheap look before decoding it): host ports, or any port
/// of a hostNetwork pod.
fn has_host_ports(pod: &Value) -> bool {
    let host_network = pod["spec"]["hostNetwork"] == true;
    ["containers", "initContainers"].iter().any(|list| {
        pod["spec"][list].as_array().into_iter().flatten().any(|c| {
            c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| host_network || p["hostPort"].as_i64().is_some_and(|h| h > 0))
        })
    })
}

fn mappings_of(pod: &Value) -> Vec<Mapping> {
    serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(pod.clone())
        .map(|p| crate::network::hostports::held(&p))
        .unwrap_or_default()
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
        "metadata": {"name": crate::source::events::name(name_of(object), jiff::Timestamp::now()), "namespace": ns},
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
