//! The files kubelet manages inside every container of a pod: /etc/hosts and /etc/resolv.conf
//! (runtime-defaults.md §7), written once per pod and bind-mounted into each container.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use nodelet_sandbox::protocol;

use super::build::{hostname, pod_spec};
use super::status::Instance;

/// kubelet's managed /etc/hosts (runtime-defaults.md §7); the pod line once the pod has an IP.
pub fn hosts_file(pod: &Pod, pod_ip: Option<&str>) -> String {
    // A hostNetwork pod sees the node's own hosts file (kubelet copies it), plus its aliases.
    let mut out = if pod_spec(pod).host_network == Some(true) {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        String::new()
    };
    if !out.is_empty() {
        out = format!("# Kubernetes-managed hosts file (host network).\n{out}");
    } else {
        out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    }
    if let Some(ip) = pod_ip.filter(|_| pod_spec(pod).host_network != Some(true)) {
        out.push_str(&format!("{ip}\t{}\n", hostname(pod)));
    }
    let aliases = pod_spec(pod).host_aliases.clone().unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            out.push_str(&format!(
                "{}\t{}\n",
                a.ip,
                a.hostnames.unwrap_or_default().join("\t")
            ));
        }
    }
    out
}

/// /etc/resolv.conf by dnsPolicy (kubelet `GetPodDNS`); without cluster DNS, ClusterFirst falls
/// back to the node's resolver, as kubelet does.
pub fn resolv_conf(
    pod: &Pod,
    host_resolv: &str,
    cluster_dns: &[String],
    cluster_domain: &str,
) -> String {
    let spec = pod_spec(pod);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_lines = |prefix: &str| -> Vec<String> {
        host_resolv
            .lines()
            .filter_map(|l| l.trim().strip_prefix(prefix))
            .flat_map(|rest| {
                rest.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (mut servers, mut searches, mut options) = match policy {
        "None" => (vec![], vec![], vec![]),
        // kubelet: a hostNetwork pod with ClusterFirst uses the node's resolver.
        "ClusterFirst" if spec.host_network == Some(true) => (
            host_lines("nameserver "),
            host_lines("search "),
            host_lines("options "),
        ),
        "ClusterFirst" | "ClusterFirstWithHostNet" if !cluster_dns.is_empty() => {
            let mut s = vec![
                format!("{namespace}.svc.{cluster_domain}"),
                format!("svc.{cluster_domain}"),
                cluster_domain.to_owned(),
            ];
            s.extend(host_lines("search "));
            (cluster_dns.to_vec(), s, vec!["ndots:5".to_owned()])
        }
        _ => (
            host_lines("nameserver "),
            host_lines("search "),
            host_lines("options "),
        ),
    };
    if let Some(cfg) = &spec.dns_config {
        servers.extend(cfg.nameservers.clone().unwrap_or_default());
        searches.extend(cfg.searches.clone().unwrap_or_default());
        for o in cfg.options.clone().unwrap_or_default() {
            let name = o.name.unwrap_or_default();
            options.retain(|x| x.split(':').next() != Some(name.as_str()));
            options.push(match o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    let dedup = |v: &mut Vec<String>| {
        let mut seen = std::collections::HashSet::new();
        v.retain(|x| seen.insert(x.clone()));
    };
    dedup(&mut servers);
    dedup(&mut searches);
    servers.truncate(3);
    searches.truncate(32);
    let mut out = String::new();
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for s in servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// `lost.json` in the pod's directory: each container's newest instance in a sandbox that was
/// lost, so that a restarted agent still counts the restart and shows the `lastState`.
fn lost_record(paths: &crate::paths::NodePaths, uid: &str) -> std::path::PathBuf {
    paths.pod_root(uid).join("lost.json")
}

pub fn save_lost(
    paths: &crate::paths::NodePaths,
    uid: &str,
    lost: &HashMap<String, Instance>,
) -> std::io::Result<()> {
    let records: Vec<&protocol::ContainerStatus> = lost.values().map(|i| &i.record).collect();
    let path = lost_record(paths, uid);
    std::fs::create_dir_all(paths.pod_root(uid))?;
    crate::write_private(&path, &serde_json::to_vec(&records)?)
}

pub fn load_lost(paths: &crate::paths::NodePaths, uid: &str) -> HashMap<String, Instance> {
    let records: Vec<protocol::ContainerStatus> = std::fs::read(lost_record(paths, uid))
        .ok()
        .and_then(|data| serde_json::from_slice(&data).ok())
        .unwrap_or_default();
    records
        .into_iter()
        .map(|record| {
            let instance = Instance {
                record,
                start_error: None,
                previous_sandbox: true,
            };
            (instance.record.name.clone(), instance)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        super::super::manifest::parse(yaml.as_bytes()).unwrap()
    }

    #[test]
    fn hosts_and_resolv_conf() {
        let p = pod("metadata: {name: web, namespace: ns1}\nspec: {containers: [{name: a, image: b}], hostAliases: [{ip: 10.1.2.3, hostnames: [foo.local, bar.local]}]}");
        let hosts = hosts_file(&p, Some("10.244.1.7"));
        assert!(hosts.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(hosts.contains(
            "10.244.1.7\tweb\n\n# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"
        ));
        let host = "nameserver 1.1.1.1\nsearch corp\noptions edns0\n";
        assert_eq!(
            resolv_conf(&p, host, &[], "cluster.local"),
            "search corp\nnameserver 1.1.1.1\noptions edns0\n"
        );
        assert_eq!(
            resolv_conf(&p, host, &["10.96.0.10".into()], "cluster.local"),
            "search ns1.svc.cluster.local svc.cluster.local cluster.local corp\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }
}
