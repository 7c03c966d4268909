//! Server-side Tables (`application/json;as=Table;v=v1;g=meta.k8s.io`) with kube-apiserver's
//! columns and cell rules, always rendered wide: kubectl hides priority-1 columns itself.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use serde_json::{json, Value};

use super::resource::Resource;
use crate::pod::table::{human_duration, pod_row};

/// (name, type, priority, description)
type Column = (&'static str, &'static str, u8, &'static str);

fn columns(resource: Resource) -> &'static [Column] {
    match resource {
        Resource::Pods => &[
            ("Name", "string", 0, "Name must be unique within a namespace."),
            ("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            ("Status", "string", 0, "The aggregate status of the containers in this pod."),
            ("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            ("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
            ("IP", "string", 1, "podIP is an IP address allocated to the pod."),
            ("Node", "string", 1, "NodeName indicates in which node this pod is scheduled."),
            ("Nominated Node", "string", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
            ("Readiness Gates", "string", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ],
        Resource::Nodes => &[
            ("Name", "string", 0, "Name must be unique within a namespace."),
            ("Status", "string", 0, "The status of the node"),
            ("Roles", "string", 0, "The roles of the node"),
            ("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
            ("Version", "string", 0, "Kubelet Version reported by the node."),
            ("Internal-IP", "string", 1, "List of addresses reachable to the node."),
            ("External-IP", "string", 1, "List of addresses reachable to the node."),
            ("OS-Image", "string", 1, "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy))."),
            ("Kernel-Version", "string", 1, "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64)."),
            ("Container-Runtime", "string", 1, "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2)."),
        ],
        Resource::Namespaces => &[
            ("Name", "string", 0, "Name must be unique within a namespace."),
            ("Status", "string", 0, "The status of the namespace"),
            ("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        ],
        Resource::Events => &[
            ("Last Seen", "string", 0, "Time when this Event was last observed"),
            ("Type", "string", 0, "Type of this event (Normal, Warning), new types could be added in the future"),
            ("Reason", "string", 0, "This should be a short, machine understandable string that gives the reason for the transition into the object's current status."),
            ("Object", "string", 0, "The object that this event is about."),
            ("Subobject", "string", 1, "The subobject (fieldPath) that this event is about."),
            ("Source", "string", 1, "The component reporting this event."),
            ("Message", "string", 0, "A human-readable description of the status of this operation."),
            ("First Seen", "string", 1, "The time at which the event was first recorded."),
            ("Count", "string", 1, "The number of times this event has occurred."),
            ("Name", "string", 1, "Name must be unique within a namespace."),
        ],
        Resource::Leases => &[
            ("Name", "string", 0, "Name must be unique within a namespace."),
            ("Holder", "string", 0, "HolderIdentity contains the identity of the holder of a current lease."),
            ("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        ],
        Resource::ConfigMaps => &[
            ("Name", "string", 0, "Name must be unique within a namespace."),
            ("Data", "string", 0, "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process."),
            ("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        ],
        Resource::ServiceAccounts => &[
            ("Name", "string", 0, "Name must be unique within a namespace."),
            ("Secrets", "string", 0, "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use."),
            ("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        ],
        Resource::Services => &[
            ("Name", "string", 0, "Name must be unique within a namespace."),
            ("Type", "string", 0, "type determines how the Service is exposed."),
            ("Cluster-IP", "string", 0, "clusterIP is the IP address of the service and is usually assigned randomly."),
            ("External-IP", "string", 0, "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service."),
            ("Port(s)", "string", 0, "The list of ports that are exposed by this service."),
            ("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
            ("Selector", "string", 1, "Route service traffic to pods with label keys and values matching this selector."),
        ],
        Resource::Secrets => &[
            ("Name", "string", 0, "Name must be unique within a namespace."),
            ("Type", "string", 0, "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types"),
            ("Data", "string", 0, "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'."),
            ("Age", "string", 0, "CreationTimestamp is a timestamp representing the server time when this object was created."),
        ],
    }
}

pub fn column_definitions(resource: Resource) -> Value {
    let cols: Vec<Value> = columns(resource)
        .iter()
        .map(|(name, ty, priority, description)| {
            let format = if *name == "Name" { "name" } else { "" };
            let ty = if resource == Resource::Events && *name == "Count" { "integer" } else { ty };
            json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
        })
        .collect();
    Value::Array(cols)
}

/// A Table of these objects; `headers` false for watch events after the first.
pub fn table(
    resource: Resource,
    objects: &[&Value],
    rv: &str,
    headers: bool,
    now: Timestamp,
) -> Value {
    let rows: Vec<Value> = objects.iter().map(|o| row(resource, o, now)).collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": if headers { column_definitions(resource) } else { Value::Null },
        "rows": rows,
    })
}

fn row(resource: Resource, obj: &Value, now: Timestamp) -> Value {
    let mut meta = obj["metadata"].clone();
    if let Some(m) = meta.as_object_mut() {
        m.remove("managedFields");
    }
    json!({
        "cells": cells(resource, obj, now),
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta},
    })
}

fn age(value: &Value, now: Timestamp) -> String {
    value
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .map(|t| human_duration(now.duration_since(t).as_secs()))
        .unwrap_or_else(|| "<unknown>".into())
}

fn or_none(value: &Value) -> String {
    value
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or("<none>")
        .to_owned()
}

fn cells(resource: Resource, obj: &Value, now: Timestamp) -> Vec<Value> {
    let created = age(&obj["metadata"]["creationTimestamp"], now);
    let name = obj["metadata"]["name"].clone();
    match resource {
        Resource::Pods => {
            let Ok(pod) = serde_json::from_value::<Pod>(obj.clone()) else {
                return vec![name];
            };
            let r = pod_row(&pod, now);
            let gates = obj["spec"]["readinessGates"].as_array().map(|gates| {
                let conds = obj["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let ready = gates
                    .iter()
                    .filter(|g| {
                        conds
                            .iter()
                            .any(|c| c["type"] == g["conditionType"] && c["status"] == "True")
                    })
                    .count();
                format!("{ready}/{}", gates.len())
            });
            vec![
                json!(r.name),
                json!(r.ready),
                json!(r.status),
                json!(r.restarts),
                json!(r.age),
                json!(r.ip),
                json!(or_none(&obj["spec"]["nodeName"])),
                json!(or_none(&obj["status"]["nominatedNodeName"])),
                json!(gates.unwrap_or_else(|| "<none>".into())),
            ]
        }
        Resource::Nodes => {
            let node: Node = serde_json::from_value(obj.clone()).unwrap_or_default();
            let status = node.status.unwrap_or_default();
            let mut state = match status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready")
            {
                Some(c) if c.status == "True" => "Ready",
                Some(_) => "NotReady",
                None => "Unknown",
            }
            .to_owned();
            if node.spec.and_then(|s| s.unschedulable).unwrap_or(false) {
                state.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = node
                .metadata
                .labels
                .iter()
                .flatten()
                .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
                    Some(role) if !role.is_empty() => Some(role.to_owned()),
                    _ if k == "kubernetes.io/role" && !v.is_empty() => Some(v.clone()),
                    _ => None,
                })
                .collect();
            roles.sort();
            let roles = if roles.is_empty() {
                "<none>".into()
            } else {
                roles.join(",")
            };
            let address = |ty: &str| {
                status
                    .addresses
                    .iter()
                    .flatten()
                    .find(|a| a.type_ == ty)
                    .map(|a| a.address.clone())
                    .unwrap_or_else(|| "<none>".into())
            };
            let info = status.node_info.unwrap_or_default();
            let unknown = |s: String| {
                if s.is_empty() {
                    "<unknown>".to_owned()
                } else {
                    s
                }
            };
            vec![
                name,
                json!(state),
                json!(roles),
                json!(created),
                json!(info.kubelet_version),
                json!(address("InternalIP")),
                json!(address("ExternalIP")),
                json!(unknown(info.os_image)),
                json!(unknown(info.kernel_version)),
                json!(unknown(info.container_runtime_version)),
            ]
        }
        Resource::Namespaces => vec![
            name,
            json!(obj["status"]["phase"].as_str().unwrap_or_default()),
            json!(created),
        ],
        Resource::Events => {
            let ev: Event = serde_json::from_value(obj.clone()).unwrap_or_default();
            let last = ev
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref())
                .map(|t| t.0)
                .or(ev.last_timestamp.as_ref().map(|t| t.0))
                .or(ev.first_timestamp.as_ref().map(|t| t.0))
                .or(ev.event_time.as_ref().map(|t| t.0));
            let since = |t: Option<Timestamp>| {
                t.map(|t| human_duration(now.duration_since(t).as_secs()))
                    .unwrap_or_else(|| "<unknown>".into())
            };
            let first = ev
                .first_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(ev.event_time.as_ref().map(|t| t.0));
            let involved = &ev.involved_object;
            let object = format!(
                "{}/{}",
                involved.kind.clone().unwrap_or_default().to_lowercase(),
                involved.name.clone().unwrap_or_default()
            );
            let source = ev.source.clone().unwrap_or_default();
            let component = source
                .component
                .clone()
                .filter(|c| !c.is_empty())
                .or(ev.reporting_component.clone())
                .unwrap_or_default();
            let host = source
                .host
                .clone()
                .filter(|h| !h.is_empty())
                .or(ev.reporting_instance.clone());
            let source = match host {
                Some(h) if !h.is_empty() => format!("{component}, {h}"),
                _ => component,
            };
            let count = ev
                .series
                .as_ref()
                .and_then(|s| s.count)
                .or(ev.count)
                .unwrap_or(1);
            vec![
                json!(since(last)),
                json!(ev.type_.clone().unwrap_or_default()),
                json!(ev.reason.clone().unwrap_or_default()),
                json!(object),
                json!(involved.field_path.clone().unwrap_or_default()),
                json!(source),
                json!(ev.message.clone().unwrap_or_default()),
                json!(since(first)),
                json!(count),
                name,
            ]
        }
        Resource::Leases => vec![
            name,
            json!(obj["spec"]["holderIdentity"].as_str().unwrap_or_default()),
            json!(created),
        ],
        Resource::ConfigMaps => vec![
            name,
            json!(
                obj["data"].as_object().map_or(0, |d| d.len())
                    + obj["binaryData"].as_object().map_or(0, |d| d.len())
            ),
            json!(created),
        ],
        Resource::ServiceAccounts => vec![
            name,
            json!(obj["secrets"].as_array().map_or(0, |s| s.len())),
            json!(created),
        ],
        Resource::Services => {
            let spec = &obj["spec"];
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(node) => format!("{}:{node}/{proto}", p["port"]),
                        None => format!("{}/{proto}", p["port"]),
                    }
                })
                .collect();
            let external = spec["externalIPs"]
                .as_array()
                .filter(|a| !a.is_empty())
                .map_or("<none>".to_owned(), |a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                });
            let selector = spec["selector"]
                .as_object()
                .map_or("<none>".to_owned(), |m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                });
            vec![
                name,
                json!(spec["type"].as_str().unwrap_or("ClusterIP")),
                json!(spec["clusterIP"].as_str().unwrap_or("<none>")),
                json!(external),
                json!(if ports.is_empty() {
                    "<none>".to_owned()
                } else {
                    ports.join(",")
                }),
                json!(created),
                json!(selector),
            ]
        }
        Resource::Secrets => vec![
            name,
            json!(obj["type"].as_str().unwrap_or_default()),
            json!(obj["data"].as_object().map_or(0, |d| d.len())),
            json!(created),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_row_cells() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let pod = json!({"metadata": {"name": "kubia", "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"a": "b"}},
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.7", "podIPs": [{"ip": "10.244.0.7"}],
                "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:01Z"}}}]}});
        let t = table(Resource::Pods, &[&pod], "7", true, now);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "kubia",
                "1/1",
                "Running",
                "0",
                "10m",
                "10.244.0.7",
                "node1",
                "<none>",
                "<none>"
            ])
        );
        assert_eq!(t["rows"][0]["object"]["metadata"]["labels"]["a"], "b");
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 9);
        assert!(table(Resource::Pods, &[&pod], "7", false, now)["columnDefinitions"].is_null());
    }

    #[test]
    fn node_row_cells() {
        let now: Timestamp = "2026-01-01T00:10:00Z".parse().unwrap();
        let node = json!({"metadata": {"name": "node1", "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/os": "linux"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "nodeInfo": {"kubeletVersion": "v1.33.0", "osImage": "Debian", "kernelVersion": "6.1", "containerRuntimeVersion": "nodelet://0.1.0",
                    "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"}}});
        let t = table(Resource::Nodes, &[&node], "1", true, now);
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "node1",
                "Ready,SchedulingDisabled",
                "control-plane",
                "10m",
                "v1.33.0",
                "10.0.0.1",
                "<none>",
                "Debian",
                "6.1",
                "nodelet://0.1.0"
            ])
        );
    }
}
