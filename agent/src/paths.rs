//! Where the node keeps things on disk, derived from the configured directories:
//!
//! ```text
//! <rootDir>/images/                       image store (content-addressed)
//! <rootDir>/pods/<uid>/pod.json           the pod as last applied (for re-adoption)
//! <rootDir>/pods/<uid>/etc-hosts, hostname, resolv.conf
//! <rootDir>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>/
//! <rootDir>/pods/<uid>/containers/<id>/{upper,work,rootfs}
//! <runDir>/pods/<uid>/                    the shim's directory (socket, pinned namespaces, records)
//! <runDir>/volumes/<uid>/<plugin>/<name>/ API volumes (configMap, secret, projected, downwardAPI),
//!                                         on one tmpfs for the node
//! <runDir>/nodelet.sock                   the agent's local control socket
//! <podLogsDir>/<ns>_<name>_<uid>/<container>/<restartCount>.log
//! <podLogsDir>/../containers/<pod>_<ns>_<container>-<id>.log   symlinks for log shippers
//! ```

use std::path::PathBuf;

use nodelet_sandbox::shim::ShimDir;

use crate::config::Config;

#[derive(Clone, Debug)]
pub struct NodePaths {
    pub root: PathBuf,
    pub run: PathBuf,
    pub logs: PathBuf,
    /// kubelet's `/var/log/containers`: beside the pod logs directory (`/var/log/pods`).
    pub container_logs: PathBuf,
}

impl NodePaths {
    pub fn new(config: &Config) -> Self {
        NodePaths {
            root: config.root_dir.clone(),
            run: config.run_dir.clone(),
            logs: config.pod_logs_dir.clone(),
            container_logs: config
                .pod_logs_dir
                .parent()
                .unwrap_or(std::path::Path::new("/"))
                .join("containers"),
        }
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn pods_root(&self) -> PathBuf {
        self.root.join("pods")
    }
    pub fn pod_root(&self, uid: &str) -> PathBuf {
        self.pods_root().join(uid)
    }
    pub fn pod_record(&self, uid: &str) -> PathBuf {
        self.pod_root(uid).join("pod.json")
    }
    pub fn empty_dir(&self, uid: &str, volume: &str) -> PathBuf {
        self.pod_root(uid)
            .join("volumes/kubernetes.io~empty-dir")
            .join(volume)
    }
    /// The tmpfs that holds every pod's API volumes: one mount for the node, not one per
    /// volume, because every mount the node has is copied into each new container's mount
    /// namespace (with a thousand pods, per-pod mounts made starting a container cost
    /// milliseconds).
    pub fn api_volumes(&self) -> PathBuf {
        self.run.join("volumes")
    }
    pub fn api_volumes_of(&self, uid: &str) -> PathBuf {
        self.api_volumes().join(uid)
    }
    /// A volume the agent fills (`plugin` is kubelet's directory name for its type). Earlier
    /// builds mounted a tmpfs for each in the pod's directory: a pod adopted from one keeps
    /// using that.
    pub fn volume_dir(&self, uid: &str, plugin: &str, volume: &str) -> PathBuf {
        let legacy = self.pod_root(uid).join("volumes").join(plugin).join(volume);
        if crate::pod::volumes::is_mount_point(&legacy) {
            return legacy;
        }
        self.api_volumes_of(uid).join(plugin).join(volume)
    }
    /// Where a container's `subPath` mount is bound (kubelet's layout).
    pub fn subpath(&self, uid: &str, volume: &str, container: &str, index: usize) -> PathBuf {
        self.pod_root(uid)
            .join("volume-subpaths")
            .join(volume)
            .join(container)
            .join(index.to_string())
    }
    pub fn container_dir(&self, uid: &str, id: &str) -> PathBuf {
        self.pod_root(uid).join("containers").join(id)
    }
    pub fn shims(&self) -> PathBuf {
        self.run.join("pods")
    }
    pub fn shim(&self, uid: &str) -> ShimDir {
        ShimDir::new(self.shims().join(uid))
    }
    pub fn control_socket(&self) -> PathBuf {
        self.run.join("nodelet.sock")
    }
    /// kubelet's `<ns>_<name>_<uid>`, with the name cut so the whole fits NAME_MAX (255): a
    /// 253-character pod name is valid, a 350-character file name is not.
    pub fn pod_logs(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        let room = 255usize.saturating_sub(namespace.len() + uid.len() + 2);
        let cut = name
            .char_indices()
            .nth(room)
            .map_or(name, |(i, _)| &name[..i]);
        self.logs.join(format!("{namespace}_{cut}_{uid}"))
    }
    pub fn container_log(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        container: &str,
        attempt: u32,
    ) -> PathBuf {
        self.pod_logs(namespace, name, uid)
            .join(container)
            .join(format!("{attempt}.log"))
    }
    /// The link log shippers read a container's log by (kubelet's `BuildContainerLogsPath`).
    pub fn container_log_link(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        id: &str,
    ) -> PathBuf {
        self.container_logs
            .join(format!("{pod}_{namespace}_{container}-{id}.log"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_directories_fit_a_file_name() {
        let paths = super::NodePaths {
            root: "/r".into(),
            run: "/run".into(),
            logs: "/logs".into(),
            container_logs: "/containers".into(),
        };
        let name = "n".repeat(253);
        let ns = "s".repeat(63);
        let dir = paths.pod_logs(&ns, &name, "0123456789abcdef0123456789abcdef0123");
        let file = dir.file_name().unwrap().len();
        assert_eq!(file, 255);
        assert_eq!(
            paths.pod_logs("default", "web", "u"),
            std::path::Path::new("/logs/default_web_u")
        );
    }
}
