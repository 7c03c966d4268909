//! The Node object nodelet registers and keeps current, with the fields kubelet's setters fill:
//! labels, podCIDR, addresses, capacity and allocatable from the machine, the four conditions,
//! nodeInfo and the kubelet endpoint.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::config::Config;

pub const KUBELET_PORT: i32 = 10250;

pub fn kubelet_version() -> String {
    format!("v1.33.0-nodelet.{}", env!("CARGO_PKG_VERSION"))
}

pub fn labels(config: &Config, name: &str) -> BTreeMap<String, String> {
    let (os, arch) = ("linux".to_owned(), crate::apiserver::go_arch().to_owned());
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", name.to_owned()),
        ("kubernetes.io/os", os.clone()),
        ("kubernetes.io/arch", arch.clone()),
        ("beta.kubernetes.io/os", os),
        ("beta.kubernetes.io/arch", arch),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    labels.extend(config.node_labels.clone());
    labels
}

pub fn node(config: &Config, name: &str, since: jiff::Timestamp) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels(config, name)),
            annotations: Some(BTreeMap::from([(
                "node.alpha.kubernetes.io/ttl".to_owned(),
                "0".to_owned(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(config.pod_cidr.clone()),
            pod_cidrs: Some(vec![config.pod_cidr.clone()]),
            ..Default::default()
        }),
        status: Some(status(config, name, since)),
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn memory_kib() -> u64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn os_image() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| "Linux".into())
}

fn storage_bytes(path: &std::path::Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks() * s.fragment_size())
        .unwrap_or(0)
}

/// Kubelet's `nodeStatusMaxImages`.
const MAX_IMAGES: usize = 50;

/// The node's images as kubelet reports them (the scheduler's ImageLocality reads them): the
/// largest first, each named by `repository@digest` and by every tag that points at it.
pub fn images(
    store: &crate::images::ImageStore,
) -> Vec<k8s_openapi::api::core::v1::ContainerImage> {
    let mut images: Vec<_> = store
        .list()
        .unwrap_or_default()
        .into_iter()
        .map(|image| {
            let by_digest = image.names.iter().filter_map(|name| {
                let r = crate::images::Reference::parse(name).ok()?;
                Some(r.by_digest(&image.digest))
            });
            let mut names: Vec<String> = by_digest.collect();
            names.dedup();
            names.extend(image.names);
            k8s_openapi::api::core::v1::ContainerImage {
                names: Some(names),
                size_bytes: Some(image.size as i64),
            }
        })
        .collect();
    images.sort_by_key(|i| std::cmp::Reverse(i.size_bytes));
    images.truncate(MAX_IMAGES);
    images
}

pub fn status(config: &Config, name: &str, since: jiff::Timestamp) -> NodeStatus {
    let now = Time(jiff::Timestamp::now());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let resources = BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpus.to_string())),
        ("memory".to_owned(), Quantity(format!("{}Ki", memory_kib()))),
        (
            "ephemeral-storage".to_owned(),
            Quantity(storage_bytes(&config.root_dir).to_string()),
        ),
        ("pods".to_owned(), Quantity(config.max_pods.to_string())),
    ]);
    let condition = |ty: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: ty.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(Time(since)),
    };
    let mut addresses = Vec::new();
    if let Some(ip) = &config.node_ip {
        addresses.push(NodeAddress {
            type_: "InternalIP".into(),
            address: ip.clone(),
        });
    }
    addresses.push(NodeAddress {
        type_: "Hostname".into(),
        address: name.to_owned(),
    });
    let uname = nix::sys::utsname::uname().ok();
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
            ),
        ]),
        addresses: Some(addresses),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: KUBELET_PORT }),
        }),
        node_info: Some(NodeSystemInfo {
            machine_id: read("/etc/machine-id"),
            system_uuid: read("/sys/class/dmi/id/product_uuid"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            kernel_version: uname
                .as_ref()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            os_image: os_image(),
            container_runtime_version: format!("nodelet://{}", env!("CARGO_PKG_VERSION")),
            kubelet_version: kubelet_version(),
            kube_proxy_version: String::new(),
            operating_system: "linux".into(),
            architecture: crate::apiserver::go_arch().into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}
