//! `containers[].ports[].hostPort`, as the CNI `portmap` plugin maps it: DNAT on the node from
//! `hostIP:hostPort` (any of the node's own addresses when `hostIP` is unset) to
//! `podIP:containerPort`, for traffic arriving from elsewhere (prerouting) and for connections
//! the node itself opens (output). One table, `inet nodelet_hostports`; every rule carries the
//! pod's UID as its comment, so that only the pods that ask have rules and they go with the pod.
//! Not mapped: connections to 127.0.0.1 (portmap's `snat` localhost path, which needs
//! `route_localnet`) and a pod reaching its own hostPort through the node (hairpin NAT).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

use super::masq::{nft, Error};

pub const TABLE: &str = "nodelet_hostports";
/// The file in the shim's directory that says the pod has rules here.
pub const MARKER: &str = "hostports";

/// One mapping: protocol, node address (none: every local one), node port, pod port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub protocol: String,
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
}

/// The pod's mappings (none for a hostNetwork pod: its ports are the node's already).
pub fn mappings(pod: &Pod) -> Vec<Mapping> {
    if pod
        .spec
        .as_ref()
        .is_some_and(|s| s.host_network == Some(true))
    {
        return Vec::new();
    }
    held(pod)
}

/// The node ports the pod holds, for conflicts: its host ports, and for a hostNetwork pod every
/// container port (kube-apiserver defaults `hostPort` to `containerPort` there).
pub fn held(pod: &Pod) -> Vec<Mapping> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let host_network = spec.host_network == Some(true);
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    let ports = containers.flat_map(|c| c.ports.iter().flatten());
    ports
        .filter(|p| host_network || p.host_port.is_some_and(|h| h > 0))
        .map(|p| Mapping {
            protocol: p
                .protocol
                .clone()
                .unwrap_or_else(|| "TCP".into())
                .to_lowercase(),
            host_ip: p
                .host_ip
                .as_deref()
                .and_then(|ip| ip.parse().ok())
                .filter(|ip: &IpAddr| !ip.is_unspecified()),
            host_port: p.host_port.filter(|h| *h > 0).unwrap_or(p.container_port) as u16,
            container_port: p.container_port as u16,
        })
        .collect()
}

/// Whether two pods' mappings would take the same node port (kube-scheduler's NodePorts: same
/// protocol and port, and the same address or either on every address).
pub fn conflict(a: &[Mapping], b: &[Mapping]) -> Option<u16> {
    a.iter()
        .find(|x| {
            b.iter().any(|y| {
                x.protocol == y.protocol
                    && x.host_port == y.host_port
                    && (x.host_ip.is_none() || y.host_ip.is_none() || x.host_ip == y.host_ip)
            })
        })
        .map(|m| m.host_port)
}

/// Adds the pod's rules (the table and chains first, if missing).
pub async fn add(uid: &str, pod_ip: IpAddr, mappings: &[Mapping]) -> Result<(), Error> {
    let family = if pod_ip.is_ipv4() { "ip" } else { "ip6" };
    let target = match pod_ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let mut script = format!(
        "table inet {TABLE} {{\n  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n  chain output {{ type nat hook output priority -100; policy accept; }}\n}}\n"
    );
    for m in mappings
        .iter()
        .filter(|m| m.host_ip.is_none_or(|ip| ip.is_ipv4() == pod_ip.is_ipv4()))
    {
        let to = match &m.host_ip {
            Some(ip) => format!("{family} daddr {ip}"),
            None => "fib daddr type local".to_owned(),
        };
        let proto = &m.protocol;
        let (hp, cp) = (m.host_port, m.container_port);
        script.push_str(&format!(
            "add rule inet {TABLE} prerouting {to} {proto} dport {hp} dnat {family} to {target}:{cp} comment \"{uid}\"\n"
        ));
        let loopback = if pod_ip.is_ipv4() {
            "127.0.0.0/8"
        } else {
            "::1"
        };
        script.push_str(&format!(
            "add rule inet {TABLE} output {to} {family} daddr != {loopback} {proto} dport {hp} dnat {family} to {target}:{cp} comment \"{uid}\"\n"
        ));
    }
    nft(&["-f", "-"], Some(&script)).await.map(drop)
}

/// Removes the pod's rules; a missing table or rule is fine.
pub async fn remove(uid: &str) -> Result<(), Error> {
    for chain in ["prerouting", "output"] {
        super::masq::remove_rules(TABLE, chain, uid).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ports: &str) -> Pod {
        crate::pod::manifest::parse(
            format!("metadata: {{name: p}}\nspec: {{containers: [{{name: c, image: i, ports: [{ports}]}}]}}").as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn conflicts_as_the_scheduler_sees_them() {
        let any = mappings(&pod("{containerPort: 80, hostPort: 8080}"));
        let one = mappings(&pod(
            "{containerPort: 80, hostPort: 8080, hostIP: 192.0.2.1}",
        ));
        let other = mappings(&pod(
            "{containerPort: 80, hostPort: 8080, hostIP: 192.0.2.2}",
        ));
        let udp = mappings(&pod("{containerPort: 80, hostPort: 8080, protocol: UDP}"));
        assert_eq!(conflict(&any, &one), Some(8080));
        assert_eq!(conflict(&one, &other), None);
        assert_eq!(conflict(&any, &udp), None);
        assert!(mappings(&pod("{containerPort: 80}")).is_empty());
        // A hostNetwork pod maps nothing but holds its ports.
        let host: Pod = crate::pod::manifest::parse(
            b"metadata: {name: h}\nspec: {hostNetwork: true, containers: [{name: c, image: i, ports: [{containerPort: 8080}]}]}",
        )
        .unwrap();
        assert!(mappings(&host).is_empty());
        assert_eq!(conflict(&held(&host), &any), Some(8080));
    }
}
