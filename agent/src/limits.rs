//! The kernel limits a node of `maxPods` pods needs, checked at start: a limit too low for that
//! many pods does not fail at once but later, one pod at a time and far from its cause (a
//! neighbour table overflowing, inotify instances running out inside containers). The agent does
//! not change them (they are the machine's, not the node agent's); it says which, and to what.

use std::path::Path;

/// A sysctl and the value `max_pods` pods need at least.
struct Need {
    name: &'static str,
    least: fn(u64) -> u64,
}

const NEEDS: [Need; 6] = [
    // Every pod's processes (up to podPidsLimit each, but most pods run a handful).
    Need {
        name: "kernel.pid_max",
        least: |pods| 32_768.max(pods * 64),
    },
    Need {
        name: "fs.file-max",
        least: |pods| 65_536.max(pods * 256),
    },
    // Programs in containers (and the agent) watch files: instances are per user, root here.
    Need {
        name: "fs.inotify.max_user_instances",
        least: |pods| 128.max(pods),
    },
    Need {
        name: "fs.inotify.max_user_watches",
        least: |pods| 8_192.max(pods * 64),
    },
    // One neighbour entry per pod on the bridge, and more for the node's own links.
    Need {
        name: "net.ipv4.neigh.default.gc_thresh3",
        least: |pods| pods + 256,
    },
    Need {
        name: "net.netfilter.nf_conntrack_max",
        least: |pods| 65_536.max(pods * 128),
    },
];

/// Warnings for the limits below what `max_pods` pods need (a limit the kernel does not have,
/// as conntrack before its module loads, is not checked).
pub fn check(max_pods: usize, read: impl Fn(&str) -> Option<u64>) -> Vec<String> {
    let pods = max_pods as u64;
    NEEDS
        .iter()
        .filter_map(|need| {
            let have = read(need.name)?;
            let least = (need.least)(pods);
            (have < least).then(|| {
                format!(
                    "kernel limit {} is {have}, below {least} for maxPods {max_pods}: raise it (sysctl -w {}={least}, and in /etc/sysctl.d to keep it)",
                    need.name, need.name
                )
            })
        })
        .collect()
}

/// A sysctl of the machine, from /proc/sys.
pub fn read_sysctl(name: &str) -> Option<u64> {
    let path = Path::new("/proc/sys").join(name.replace('.', "/"));
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_scale_with_max_pods() {
        let low = |name: &str| match name {
            "fs.inotify.max_user_instances" => Some(128),
            "net.ipv4.neigh.default.gc_thresh3" => Some(1024),
            "net.netfilter.nf_conntrack_max" => None,
            _ => Some(u64::MAX),
        };
        assert!(
            check(110, low).is_empty(),
            "kubelet's default density fits the defaults"
        );
        let warnings = check(1000, low);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("fs.inotify.max_user_instances is 128, below 1000"));
        assert!(warnings[1].contains("gc_thresh3 is 1024, below 1256"));
    }
}
