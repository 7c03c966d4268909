//! `metrics.k8s.io/v1beta1` as metrics-server serves it (what `kubectl top` and the HPA read):
//! NodeMetrics and PodMetrics from the kubelet's Summary, CPU as a rate over the sampler's
//! window and memory as the working set, in metrics-server's units.
//!
//! Only the node whose kubelet runs in this process has figures; other nodes are left out, as
//! metrics-server leaves out a node it cannot scrape.

use serde_json::{json, Value};

use super::error::ApiError;
use super::selector::LabelSelector;
use crate::kubelet::summary::{CpuStats, Summary};

pub const GROUP_VERSION: &str = "metrics.k8s.io/v1beta1";

/// The figure's window as metrics-server writes it (`10.015s`).
fn window(cpu: &CpuStats) -> String {
    format!("{:.3}s", cpu.window.as_secs_f64())
}

fn cpu(nano_cores: u64) -> String {
    format!("{nano_cores}n")
}

fn memory(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// This node's NodeMetrics, with the Node's labels, if its CPU rate is known yet.
pub fn node(summary: &Summary, node: Option<&Value>) -> Option<Value> {
    let n = &summary.node;
    let rate = n.cpu.usage_nano_cores?;
    let labels = node.map_or(Value::Null, |o| o["metadata"]["labels"].clone());
    Some(json!({
        "kind": "NodeMetrics", "apiVersion": GROUP_VERSION,
        "metadata": {"name": n.node_name, "creationTimestamp": super::objects::now(), "labels": labels},
        "timestamp": n.cpu.time, "window": window(&n.cpu),
        "usage": {"cpu": cpu(rate), "memory": memory(n.memory.working_set_bytes)},
    }))
}

/// PodMetrics for the pods in `namespace` (all when `None`) whose every running container
/// has a CPU rate; `object` gives a pod's API object (for its labels), `None` when it is gone.
pub fn pods(
    summary: &Summary,
    namespace: Option<&str>,
    object: impl Fn(&str, &str) -> Option<Value>,
) -> Vec<Value> {
    summary
        .pods
        .iter()
        .filter(|p| namespace.is_none_or(|ns| p.pod_ref.namespace == ns))
        .filter_map(|p| {
            let obj = object(&p.pod_ref.namespace, &p.pod_ref.name)?;
            if obj["metadata"]["uid"] != p.pod_ref.uid.as_str() {
                return None;
            }
            let containers: Option<Vec<Value>> = p
                .containers
                .iter()
                .map(|c| {
                    Some(json!({"name": c.name, "usage": {
                        "cpu": cpu(c.cpu.usage_nano_cores?),
                        "memory": memory(c.memory.working_set_bytes),
                    }}))
                })
                .collect();
            let containers = containers.filter(|c| !c.is_empty())?;
            let (time, win) = p.containers.first().map(|c| (c.cpu.time, window(&c.cpu)))?;
            Some(json!({
                "kind": "PodMetrics", "apiVersion": GROUP_VERSION,
                "metadata": {
                    "name": p.pod_ref.name, "namespace": p.pod_ref.namespace,
                    "creationTimestamp": super::objects::now(), "labels": obj["metadata"]["labels"],
                },
                "timestamp": time, "window": win, "containers": containers,
            }))
        })
        .collect()
}

pub fn list(kind: &str, items: Vec<Value>, selector: Option<&str>) -> Result<Value, ApiError> {
    let selector = selector.map(LabelSelector::parse).transpose()?;
    let items: Vec<Value> = items
        .into_iter()
        .filter(|i| selector.as_ref().is_none_or(|s| s.matches_object(i)))
        .collect();
    Ok(json!({"kind": kind, "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}))
}

/// The group's entries for discovery: (plural, kind, namespaced).
pub const RESOURCES: [(&str, &str, bool); 2] = [
    ("nodes", "NodeMetrics", false),
    ("pods", "PodMetrics", true),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_metrics_servers() {
        assert_eq!(cpu(1_500_000), "1500000n");
        assert_eq!(memory(100 * 1024 * 1024), "102400Ki");
        assert_eq!(memory(1000), "1000");
    }
}
