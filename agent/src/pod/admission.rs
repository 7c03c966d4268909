//! The node's own admission of a pod (kubelet's `canAdmitPod` handlers): what kube-apiserver
//! accepts but this node will not run. A rejected pod never gets a sandbox; it is `Failed` with
//! kubelet's reason and `Pod was rejected: ...` message.

use k8s_openapi::api::core::v1::Pod;

use super::build::pod_spec;
use crate::network::hostports::{conflict, held, Mapping};

/// kubelet's safe sysctls (`pkg/kubelet/sysctl/safe_sysctls.go`, 1.33): namespaced, and unable
/// to hurt other pods or the node.
const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// Why the node refuses a pod: (reason, message), as kubelet reports them. `others` are the
/// pods the node runs already (for their host ports).
pub fn check<'a>(
    pod: &Pod,
    allowed_unsafe: &[String],
    others: impl Iterator<Item = &'a [Mapping]>,
) -> Option<(&'static str, String)> {
    sysctls(pod, allowed_unsafe)
        .map(|m| ("SysctlForbidden", m))
        .or_else(|| apparmor(pod).map(|m| ("AppArmor", m)))
        .or_else(|| host_ports(pod, others).map(|m| ("NodePorts", m)))
        .map(|(reason, m)| (reason, format!("Pod was rejected: {m}")))
}

/// kubelet's resource fit for pods: `used` admitted pods already, `capacity` the node's
/// `maxPods`.
pub fn pods(used: usize, capacity: usize) -> Option<(&'static str, String)> {
    (used >= capacity).then(|| {
        ("OutOfpods", format!("Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {used}, capacity: {capacity}"))
    })
}

/// kubelet's NodePorts predicate: no two admitted pods of the node hold the same host port.
fn host_ports<'a>(pod: &Pod, mut others: impl Iterator<Item = &'a [Mapping]>) -> Option<String> {
    let mine = held(pod);
    if mine.is_empty() {
        return None;
    }
    others.find_map(|other| conflict(&mine, other)).map(|_| {
        "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"
            .to_owned()
    })
}

/// kubelet's `NormalizeName`: a name whose first separator is `/` has its dots and slashes
/// swapped (`net/ipv4/conf/eth0.100/forwarding` is `net.ipv4.conf.eth0/100.forwarding`).
pub fn normalize(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect(),
        _ => name.to_owned(),
    }
}

/// kubelet's sysctl allow-list admission: safe or allowed by the node, namespaced, and not in a
/// namespace the pod shares with the node.
fn sysctls(pod: &Pod, allowed_unsafe: &[String]) -> Option<String> {
    let spec = pod_spec(pod);
    let list = spec.security_context.as_ref()?.sysctls.as_ref()?;
    for s in list {
        let name = normalize(&s.name);
        let allowed = SAFE_SYSCTLS.contains(&name.as_str())
            || allowed_unsafe
                .iter()
                .any(|pattern| match pattern.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => *pattern == name,
                });
        if !allowed {
            return Some(format!("forbidden sysctl: {name:?} not allowlisted"));
        }
        let ipc = name.starts_with("kernel.shm")
            || name.starts_with("kernel.msg")
            || name == "kernel.sem"
            || name.starts_with("fs.mqueue.");
        let net = name.starts_with("net.");
        if !ipc && !net {
            return Some(format!(
                "forbidden sysctl: {name:?} not a namespaced sysctl"
            ));
        }
        if net && spec.host_network == Some(true) {
            return Some(format!(
                "forbidden sysctl: {name:?} not allowed with host net enabled"
            ));
        }
        if ipc && spec.host_ipc == Some(true) {
            return Some(format!(
                "forbidden sysctl: {name:?} not allowed with host ipc enabled"
            ));
        }
    }
    None
}

/// AppArmor: nodelet applies no AppArmor profile, so a pod that asks for one (field or the
/// beta annotation) other than `Unconfined` is refused, with kubelet's message on hosts without
/// AppArmor.
fn apparmor(pod: &Pod) -> Option<String> {
    let spec = pod_spec(pod);
    let confined = |t: &str| t != "Unconfined";
    let fields = spec
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.as_ref())
        .into_iter()
        .chain(
            super::status::containers(pod)
                .filter_map(|(c, _)| c.security_context.as_ref()?.app_armor_profile.as_ref()),
        )
        .any(|p| confined(&p.type_));
    let annotations = pod.metadata.annotations.iter().flatten().any(|(k, v)| {
        k.starts_with("container.apparmor.security.beta.kubernetes.io/") && v != "unconfined"
    });
    if !fields && !annotations {
        return None;
    }
    let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y");
    Some(if enabled {
        "Cannot enforce AppArmor: nodelet does not apply AppArmor profiles".to_owned()
    } else {
        "Cannot enforce AppArmor: AppArmor is not enabled on the host".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        super::super::manifest::parse(yaml.as_bytes()).unwrap()
    }

    fn check_alone(pod: &Pod, allowed: &[String]) -> Option<(&'static str, String)> {
        check(pod, allowed, std::iter::empty())
    }

    #[test]
    fn sysctls_as_kubelet_admits_them() {
        let with = |sysctls: &str, extra: &str| {
            pod(&format!("metadata: {{name: p}}\nspec: {{{extra}securityContext: {{sysctls: [{sysctls}]}}, containers: [{{name: c, image: i}}]}}"))
        };
        assert_eq!(
            check_alone(
                &with("{name: net.ipv4.tcp_syncookies, value: '1'}", ""),
                &[]
            ),
            None
        );
        let (reason, message) =
            check_alone(&with("{name: kernel.msgmax, value: '1'}", ""), &[]).unwrap();
        assert_eq!(reason, "SysctlForbidden");
        assert_eq!(
            message,
            "Pod was rejected: forbidden sysctl: \"kernel.msgmax\" not allowlisted"
        );
        assert_eq!(
            check_alone(
                &with("{name: kernel.msgmax, value: '1'}", ""),
                &["kernel.msg*".into()]
            ),
            None
        );
        let host = check_alone(
            &with(
                "{name: net/ipv4/tcp_syncookies, value: '1'}",
                "hostNetwork: true, ",
            ),
            &[],
        );
        assert!(host
            .unwrap()
            .1
            .contains("not allowed with host net enabled"));
        assert_eq!(
            normalize("net/ipv4/conf/eth0.100/forwarding"),
            "net.ipv4.conf.eth0/100.forwarding"
        );
        let global = check_alone(
            &with("{name: vm.swappiness, value: '1'}", ""),
            &["vm.swappiness".into()],
        );
        assert!(global.unwrap().1.contains("not a namespaced sysctl"));
    }
}
