//! The links kubelet keeps in `/var/log/containers` for log shippers (Fluent Bit, Vector,
//! Promtail read `<pod>_<namespace>_<container>-<id>.log` and take the pod's identity from the
//! name): one per container instance whose log is kept, made when it starts, removed with its
//! log, and any left dangling (a crash between the two) swept at start.

use std::io;
use std::path::Path;

use crate::paths::NodePaths;

/// Points the instance's link at its log file (replacing a link of the same name).
pub fn link(
    paths: &NodePaths,
    namespace: &str,
    pod: &str,
    container: &str,
    id: &str,
    log: &Path,
) -> io::Result<()> {
    let at = paths.container_log_link(namespace, pod, container, id);
    std::fs::create_dir_all(&paths.container_logs)?;
    match std::os::unix::fs::symlink(log, &at) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&at)?;
            std::os::unix::fs::symlink(log, &at)
        }
        other => other,
    }
}

pub fn unlink(paths: &NodePaths, namespace: &str, pod: &str, container: &str, id: &str) {
    let _ = std::fs::remove_file(paths.container_log_link(namespace, pod, container, id));
}

/// Removes the links into a pod's log directory (as the directory goes): those named for the
/// pod and pointing into this instance's directory (a pod of the same name before it may have
/// left its own).
pub fn unlink_pod(paths: &NodePaths, namespace: &str, pod: &str, pod_logs: &Path) {
    let prefix = format!("{pod}_{namespace}_");
    remove_links(
        &paths.container_logs,
        |name| name.starts_with(&prefix),
        |target| target.starts_with(pod_logs),
    );
}

/// Removes links whose log is gone.
pub fn sweep(paths: &NodePaths) {
    remove_links(&paths.container_logs, |_| true, |target| !target.exists());
}

/// Removes the `.log` symlinks whose name `named` picks and whose target `doomed` does; files
/// others put there stay. Names are checked first: reading a link costs a system call, and the
/// directory holds every container's.
fn remove_links(dir: &Path, named: impl Fn(&str) -> bool, doomed: impl Fn(&Path) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.ends_with(".log") && named(n))
        {
            continue;
        }
        let path = entry.path();
        if let Ok(target) = std::fs::read_link(&path) {
            if doomed(&target) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_follow_their_logs() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = NodePaths {
            root: tmp.path().join("root"),
            run: tmp.path().join("run"),
            logs: tmp.path().join("pods"),
            container_logs: tmp.path().join("containers"),
        };
        let pod_logs = paths.pod_logs("default", "web", "u1");
        std::fs::create_dir_all(pod_logs.join("app")).unwrap();
        let log = paths.container_log("default", "web", "u1", "app", 0);
        std::fs::write(&log, "hello\n").unwrap();
        link(&paths, "default", "web", "app", "abc", &log).unwrap();
        link(&paths, "default", "web", "app", "abc", &log).unwrap();
        let at = tmp.path().join("containers/web_default_app-abc.log");
        assert_eq!(std::fs::read_to_string(&at).unwrap(), "hello\n");

        let other = paths.container_log("default", "web", "u2", "app", 0);
        std::fs::create_dir_all(other.parent().unwrap()).unwrap();
        std::fs::write(&other, "").unwrap();
        link(&paths, "default", "web", "app", "def", &other).unwrap();
        unlink_pod(&paths, "default", "web", &pod_logs);
        assert!(!at.exists() && at.symlink_metadata().is_err());
        let kept = tmp.path().join("containers/web_default_app-def.log");
        assert!(kept.exists(), "another pod's link stays");

        std::fs::remove_file(&other).unwrap();
        sweep(&paths);
        assert!(kept.symlink_metadata().is_err(), "a dangling link is swept");
    }
}
